"""Beam search (and beam sampling) with transformers' semantics, as one jitted while_loop.

It follows transformers' vectorized beam search step for step, so the same checkpoint gives the
same beams: each step keeps the (1 + number of stop ids) x num_beams best continuations over
all beams of a prompt; those that end in a stop id (or reach max_new_tokens) compete, scored
sum(log p) / new_length ** length_penalty, for the num_beams finished slots (only the first
num_beams candidates may finish); the best num_beams others keep running. `early_stopping`:
True stops a prompt once num_beams are finished; False stops when the best running score,
penalized at the current length, cannot beat the worst finished one; "never" (with
length_penalty > 0) judges that at max length instead. Beam sampling draws the candidates
without replacement instead of taking the best ones.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from anygpt_jax.inference import constraints, decoding, processors
from anygpt_jax.model import Transformer

# transformers' "impossible" score for beams that must not be picked.
NEG = -1.0e9


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [B, n, ...] gathered along axis 1 by index [B, m] -> [B, m, ...]."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def beam_loop(
    model: Transformer,
    plan: decoding.Plan,
    params: Any,
    batch: decoding.PromptBatch,
    knobs: decoding.Knobs,
    table: constraints.SpanTable | None,
    keys: jax.Array,
    *,
    num_slots: int,
) -> tuple[jax.Array, jax.Array]:
    """Beam search over every row: the best finished beam's (tokens [B, num_slots], counts [B]).

    keys: one PRNG key per row (beam sampling draws each row's candidates from its own)."""
    rows, length = batch.ids.shape
    k = plan.num_beams
    keep = max(2, 1 + plan.num_stop) * k
    logits, cache = decoding.prefill(model, params, batch, length + num_slots, copies=k)
    vocab = logits.shape[-1]
    real = batch.real
    flat = lambda x: x.reshape((rows * k,) + x.shape[2:])  # noqa: E731
    beams = lambda x: jnp.repeat(x[:, None], k, axis=1)  # noqa: E731
    row_offsets = (jnp.arange(rows) * k)[:, None]
    is_top = jnp.arange(keep) < k
    denominators = knobs.length_denominators

    def cond(c):
        return (
            (c["t"] < knobs.max_new_tokens)
            & jnp.any(c["unsatisfied"] & real)
            & ~(jnp.all(c["fin_done"] | ~real[:, None]) & (plan.early_stopping is True))
            & ~jnp.all(c["hits"] | ~real[:, None])
        )

    def body(c):
        t = c["t"]
        log_probs = jax.nn.log_softmax(c["logits"], axis=-1)
        scores = decoding.process_scores(
            log_probs, t, plan, knobs, table, flat(c["span"]), flat(c["pos"]), c["seen"]
        )
        acc = scores.reshape(rows, k, vocab) + c["run_scores"][:, :, None]
        acc = acc.reshape(rows, k * vocab)
        if plan.do_sample:
            step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, t)
            pick = jax.vmap(
                lambda key, row: processors.sample_without_replacement(key, row[None], keep)[0]
            )(step_keys, acc)
            cand_lp = jnp.take_along_axis(acc, pick, axis=1)
        else:
            cand_lp, pick = jax.lax.top_k(acc, keep)
        cand_beam, cand_tok = pick // vocab, (pick % vocab).astype(jnp.int32)
        cand_tokens = _take(c["run_tokens"], cand_beam)
        cand_tokens = jax.lax.dynamic_update_slice(cand_tokens, cand_tok[:, :, None], (0, 0, t))
        hits = knobs.stop_mask[cand_tok] | (t + 1 >= knobs.max_new_tokens)

        # Running beams: the best candidates that did not stop.
        run_lp = cand_lp + hits * NEG
        _, sel = jax.lax.top_k(run_lp, k)
        src = _take(cand_beam, sel)
        token = _take(cand_tok, sel)
        out = dict(c)
        out["run_tokens"] = _take(cand_tokens, sel)
        out["run_scores"] = _take(run_lp, sel)
        if plan.constrain:
            span, pos = constraints.advance(
                table, _take(c["span"], src), _take(c["pos"], src), token
            )
            out["span"], out["pos"] = span, pos
        origin = (row_offsets + src).reshape(-1)
        if plan.use_penalty:
            seen = c["seen"][origin]
            out["seen"] = seen.at[jnp.arange(rows * k), token.reshape(-1)].set(True)
        cache = decoding.reorder_cache(c["cache"], origin)

        # Finished beams: candidates among the first k that stopped, if they beat the kept ones.
        done = hits & is_top[None, :]
        fin_lp = cand_lp / denominators[t + 1]
        full = jnp.all(c["fin_done"], axis=1, keepdims=True) & (plan.early_stopping is True)
        fin_lp = fin_lp + full * NEG + (~c["unsatisfied"])[:, None] * NEG + (~done) * NEG
        merged_scores = jnp.concatenate([c["fin_scores"], fin_lp], axis=1)
        _, best = jax.lax.top_k(merged_scores, k)
        pick_best = lambda old, new: _take(jnp.concatenate([old, new], axis=1), best)  # noqa: E731
        out["fin_scores"] = _take(merged_scores, best)
        out["fin_tokens"] = pick_best(c["fin_tokens"], cand_tokens)
        out["fin_len"] = pick_best(c["fin_len"], jnp.full((rows, keep), t + 1, jnp.int32))
        out["fin_done"] = pick_best(c["fin_done"], done)

        out["logits"], out["cache"] = decoding.step(
            model, params, token.reshape(-1), flat(c["position"]), cache
        )
        out["position"] = c["position"] + 1
        out["hits"] = hits
        out["t"] = t + 1

        # Can a running beam still beat the worst finished one? (transformers' heuristic)
        never = (plan.early_stopping == "never") & (knobs.length_penalty > 0)
        hypothetical = jnp.where(never, knobs.max_new_tokens, t + 1)
        best_running = out["run_scores"][:, :1] / denominators[hypothetical]
        worst = jnp.where(out["fin_done"], jnp.min(out["fin_scores"], axis=1, keepdims=True), NEG)
        out["unsatisfied"] = c["unsatisfied"] & jnp.any(best_running > worst, axis=-1)
        return out

    init = dict(
        t=jnp.zeros((), jnp.int32),
        logits=logits,
        cache=cache,
        run_tokens=jnp.zeros((rows, k, num_slots), jnp.int32),
        run_scores=jnp.where(jnp.arange(k) == 0, 0.0, NEG)[None]
        .repeat(rows, 0)
        .astype(jnp.float32),
        span=beams(batch.span),
        pos=beams(batch.pos),
        seen=None if batch.seen is None else jnp.repeat(batch.seen, k, axis=0),
        position=beams(batch.next_position),
        fin_tokens=jnp.zeros((rows, k, num_slots), jnp.int32),
        fin_scores=jnp.full((rows, k), NEG, jnp.float32),
        fin_len=jnp.zeros((rows, k), jnp.int32),
        fin_done=jnp.zeros((rows, k), bool),
        unsatisfied=real,
        hits=jnp.zeros((rows, keep), bool),
    )
    final = jax.lax.while_loop(cond, body, init)
    return final["fin_tokens"][:, 0], final["fin_len"][:, 0]
