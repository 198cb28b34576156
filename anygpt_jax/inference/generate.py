"""`generate`: batched greedy, sampling and beam search with a jitted prefill + KV-cache decode.

One request is one device program: prefill of the left-padded prompts, then a lax.while_loop
that picks a token, writes it and runs the decode step for every row, until each row has hit a
stop id or the budget of new tokens. Nothing returns to the host between tokens.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from anygpt_jax import partitioning
from anygpt_jax.array_ops import argmax
from anygpt_jax.inference import beam, constraints, decoding
from anygpt_jax.inference.settings import GenerationSettings
from anygpt_jax.model import Transformer

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from anygpt_jax.model import ModelConfig
    from anygpt_jax.vocab import MergedVocabulary


class Generator(Protocol):
    """What `generate` needs of a model (anygpt_jax.AnyGPT is one): its config, vocabulary
    (None without one), parameters, the Transformer module and the mesh they live on."""

    config: ModelConfig
    vocab: MergedVocabulary | None
    params: Any
    model: Transformer
    mesh: Mesh | None

# Chat-end markers that stop generation by default, besides </s>, when the vocabulary has them.
DEFAULT_STOP_MARKERS = ("<eos>", "<eom>")

# Compiled programs and constraint tables per loaded model (dropped with the model).
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def default_stop_ids(vocab: MergedVocabulary) -> list[int]:
    """</s> and the chat end markers (<eos>, <eom>) that `vocab` has."""
    ids = [vocab.eos_id]
    markers = vocab.marker_ids
    ids += [markers[m] for m in DEFAULT_STOP_MARKERS if m in markers]
    return ids


def check_length(prompt_tokens: int, max_new_tokens: int, context: int,
                 where: str = "prompt", limit: int | None = None) -> None:
    """Refuses a prompt that, with `max_new_tokens`, does not fit the model's `context`
    (positions it was trained for), or that is longer than `limit`; names the lengths."""
    if limit is not None and prompt_tokens > limit:
        raise ValueError(f"{where} has {prompt_tokens} tokens, more than the limit of {limit}")
    if prompt_tokens + max_new_tokens > context:
        raise ValueError(
            f"{where} has {prompt_tokens} tokens; with max_new_tokens={max_new_tokens} that "
            f"is {prompt_tokens + max_new_tokens}, past the model's context of {context} "
            f"(max_position_embeddings)"
        )


def generate(
    model: Generator,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings | None = None,
    *,
    seed: int | Sequence[int] = 0,
    stop_ids: Sequence[int] | None = None,
    constrain: bool = True,
    on_tokens: Callable[[list[list[int]]], None] | None = None,
    chunk: int = 1,
) -> list[list[int]]:
    """New ids of each prompt, up to and including its stop id (or max_new_tokens of them).

    settings: defaults to GenerationSettings() (gin-configurable). stop_ids: default </s> plus
    the vocabulary's <eos>/<eom>. constrain: inside a modality span only that modality's codes
    (in codebook order) and, at a valid length, its end marker may be generated, so every span
    parses; a prompt ending with a start marker (e.g. `<soim>`) starts inside that span.
    Sampling is deterministic for a seed, and a row's draws do not depend on the padding.
    seed: one int for the request (prompt i draws from stream i), or one per prompt: then each
    prompt draws what it would draw alone with its seed, so batching changes no sample.
    on_tokens: called with each prompt's ids new since the last call, every `chunk` decode
    steps (streaming; not with beam search); the ids are the same as without it.
    On a CPU host unrolled layers (`AnyGPT.load(d, scan_layers=False)`) decode batches ~10%
    faster than the layer scan, which copies each layer's slice of the stacked cache to attend
    over it; at batch 1 the two are even.
    """
    settings = GenerationSettings() if settings is None else settings
    if not isinstance(settings, GenerationSettings):
        raise TypeError(f"settings must be a GenerationSettings, got {type(settings).__name__}")
    cfg, vocab = model.config, model.vocab
    arrays = decoding.check_prompts(prompts, cfg.vocab_size)
    for i, p in enumerate(arrays):
        check_length(len(p), settings.max_new_tokens, cfg.max_position_embeddings, f"prompt {i}")
    if stop_ids is None:
        if vocab is None:
            raise ValueError(
                "the model has no vocabulary (no vocab/ in its directory): pass stop_ids"
            )
        stop_ids = default_stop_ids(vocab)
    stop_ids = sorted({int(i) for i in stop_ids})
    bad = [i for i in stop_ids if not 0 <= i < cfg.vocab_size]
    if bad:
        raise ValueError(f"stop_ids {bad} are outside [0, {cfg.vocab_size})")

    table = None
    states = [(0, 0)] * len(arrays)
    if constrain:
        if vocab is None:
            raise ValueError(
                "constrain=True needs the model's vocabulary (no vocab/ in its directory); "
                "pass constrain=False"
            )
        table = _programs(model).get("table")
        if table is None:
            table = _programs(model)["table"] = constraints.span_table(vocab, cfg.padded_vocab_size)
        states = [
            constraints.prompt_state(vocab, table, p, where=f"prompt {i}")
            for i, p in enumerate(arrays)
        ]
        for i, (span, pos) in enumerate(states):
            need = constraints.state_need(table, span, pos)
            if need > settings.max_new_tokens:
                name = vocab.modality_names[span]
                raise ValueError(
                    f"prompt {i} ends inside an open {name} span that needs {need} more tokens to "
                    f"close, but max_new_tokens={settings.max_new_tokens}"
                )

    plan = decoding.Plan.of(settings, constrain, len(stop_ids))
    slots = decoding.bucket(settings.max_new_tokens)
    knobs = decoding.Knobs.of(settings, stop_ids, cfg.padded_vocab_size, slots)
    rows = _rows(len(arrays), model.mesh)
    batch = decoding.make_batch(arrays, rows, cfg.padded_vocab_size, states, plan.use_penalty)
    args = (model.params, batch, knobs, table, row_keys(seed, len(arrays), rows))
    if on_tokens is not None and plan.num_beams > 1:
        raise ValueError("streaming (on_tokens) needs num_beams == 1: beams reorder their past")
    if on_tokens is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    with jax.set_mesh(model.mesh) if model.mesh is not None else contextlib.nullcontext():
        if model.mesh is not None:
            args = _place(args, model.mesh)
        if on_tokens is None:
            tokens, counts = _program(model, plan)(*args, num_slots=slots)
        else:
            tokens, counts = _stream(model, plan, args, slots, settings.max_new_tokens,
                                     len(arrays), on_tokens, chunk)
    tokens, counts = np.asarray(tokens), np.asarray(counts)
    return [tokens[r, : counts[r]].tolist() for r in range(len(arrays))]


def _stream(model: Generator, plan: decoding.Plan, args: tuple, slots: int, budget: int,
            n: int, on_tokens: Callable[[list[list[int]]], None], chunk: int):
    """sample_loop in chunks of `chunk` steps, handing each prompt's new ids to `on_tokens`."""
    start, advance = _stream_programs(model, plan)
    params, _, knobs, table, keys = args
    state = start(*args, num_slots=slots)
    sent, t = [0] * n, 0
    while True:
        t = min(t + chunk, budget)
        state = advance(params, knobs, table, keys, state, np.int32(t))
        # One host copy of each small array, sliced in numpy (eager jax slicing costs ~0.1 ms
        # an op, as much as a decode step of a small model).
        host = jax.device_get({k: state[k] for k in ("counts", "done", "t", "tokens")})
        counts = host["counts"][:n]
        done = bool(host["done"].all()) or int(host["t"]) < t or t >= budget
        tokens = host["tokens"]
        new = [tokens[r, sent[r] : counts[r]].tolist() for r in range(n)]
        if any(new):
            on_tokens(new)
        sent = [int(c) for c in counts]
        if done:
            return state["tokens"], state["counts"]


def row_keys(seed: int | Sequence[int], num_prompts: int, rows: int) -> jax.Array:
    """One PRNG key per batch row: fold_in(key(seed), i) for an int seed, else
    fold_in(key(seed[i]), 0), which is what prompt i alone with seed[i] gets."""
    if isinstance(seed, (int, np.integer)):
        return _seed_row_keys(int(seed), rows)
    seeds = [int(s) for s in seed]
    if len(seeds) != num_prompts:
        raise ValueError(f"{len(seeds)} seeds for {num_prompts} prompts: give one per prompt")
    seeds += [0] * (rows - num_prompts)  # padding rows: their draws are discarded
    return _own_seed_keys(jnp.asarray(seeds))


# Traced once, not per call: eager vmap retraces each time (~2 ms, a server's every round).
@functools.lru_cache(maxsize=64)
def _seed_row_keys(seed: int, rows: int) -> jax.Array:
    return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.arange(rows))


@jax.jit
def _own_seed_keys(seeds: jax.Array) -> jax.Array:
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 0))(seeds)


def sample_loop(
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
    """Greedy or sampled decoding of every row: (tokens [rows, num_slots], counts [rows]).

    keys: one PRNG key per row (`row_keys`)."""
    state = sample_start(model, plan, params, batch, knobs, table, keys, num_slots=num_slots)
    final = sample_advance(model, plan, params, knobs, table, keys, state, num_slots)
    return final["tokens"], final["counts"]


def sample_start(model: Transformer, plan: decoding.Plan, params: Any,
                 batch: decoding.PromptBatch, knobs: decoding.Knobs,
                 table: constraints.SpanTable | None, keys: jax.Array, *,
                 num_slots: int) -> dict:
    """The prompts' prefill: the decoding state before the first new token."""
    del plan, knobs, table, keys  # the signature of every program of a plan
    rows, length = batch.ids.shape
    logits, cache = decoding.prefill(model, params, batch, length + num_slots)
    return dict(
        t=jnp.zeros((), jnp.int32),
        logits=logits,
        cache=cache,
        tokens=jnp.zeros((rows, num_slots), jnp.int32),
        counts=jnp.zeros(rows, jnp.int32),
        done=~batch.real,
        span=batch.span,
        pos=batch.pos,
        seen=batch.seen,
        position=batch.next_position,
    )


def sample_advance(model: Transformer, plan: decoding.Plan, params: Any,
                   knobs: decoding.Knobs, table: constraints.SpanTable | None,
                   keys: jax.Array, state: dict, until: jax.Array | int) -> dict:
    """Decodes from `state` until every row is done, max_new_tokens, or `until` new tokens
    (a streaming caller advances in chunks; the tokens are the same either way)."""

    def cond(c):
        return (c["t"] < jnp.minimum(knobs.max_new_tokens, until)) & ~jnp.all(c["done"])

    def body(c):
        return {**decode_step(model, plan, params, knobs, table, keys, c), "t": c["t"] + 1}

    return jax.lax.while_loop(cond, body, state)


def decode_step(model: Transformer, plan: decoding.Plan, params: Any, knobs: decoding.Knobs,
                table: constraints.SpanTable | None, keys: jax.Array, c: dict) -> dict:
    """One token for every row that is not done, each row at its own count of new tokens
    (`counts`: rows of a continuous batch joined at different steps), then the model step.

    A row is done at a stop id or at max_new_tokens; a done row's token is discarded.
    """
    done, made = c["done"], c["counts"]
    scores = decoding.process_scores(
        c["logits"], made, plan, knobs, table, c["span"], c["pos"], c["seen"]
    )
    if plan.do_sample:
        step_keys = jax.vmap(jax.random.fold_in)(keys, made)
        token = decoding.processors.sample_rows(step_keys, scores)
    else:
        token = argmax(scores)
    token = jnp.where(done, 0, token)
    rows = jnp.arange(token.shape[0])
    out = dict(c)
    out["tokens"] = c["tokens"].at[rows, made].set(token, mode="drop")
    out["counts"] = made + (~done).astype(jnp.int32)
    if plan.constrain:
        span, pos = constraints.advance(table, c["span"], c["pos"], token)
        out["span"] = jnp.where(done, c["span"], span)
        out["pos"] = jnp.where(done, c["pos"], pos)
    if plan.use_penalty:
        out["seen"] = c["seen"].at[rows, token].set(True)
    out["done"] = done | knobs.stop_mask[token] | (out["counts"] >= knobs.max_new_tokens)
    out["logits"], out["cache"] = decoding.step(model, params, token, c["position"], c["cache"])
    out["position"] = c["position"] + 1
    return out


def _programs(model: Generator) -> dict:
    return _PROGRAMS.setdefault(model, {})


def _program(model: Generator, plan: decoding.Plan):
    """The jitted program of `plan` for this model (jax.jit then caches it per shape)."""
    programs = _programs(model)
    if plan not in programs:
        loop = beam.beam_loop if plan.num_beams > 1 else sample_loop
        fn = decoding.traced(
            model.model, partitioning.logical_axis_rules(), functools.partial(_call, loop, plan)
        )
        programs[plan] = jax.jit(fn, static_argnames=("num_slots",))
    return programs[plan]


def _stream_programs(model: Generator, plan: decoding.Plan):
    """The jitted (prefill, advance) pair of `plan` that streaming generation runs."""
    programs = _programs(model)
    key = ("stream", plan)
    if key not in programs:
        rules = partitioning.logical_axis_rules()
        start = decoding.traced(model.model, rules, functools.partial(_call, sample_start, plan))
        advance = decoding.traced(model.model, rules,
                                  functools.partial(_call, sample_advance, plan))
        programs[key] = (jax.jit(start, static_argnames=("num_slots",)),
                         jax.jit(advance, donate_argnames=("state",)))
    return programs[key]


def _call(loop, plan, model, *args, **kwargs):
    return loop(model, plan, *args, **kwargs)


def _rows(n: int, mesh) -> int:
    """Batch rows for n prompts: a power of two, and a multiple of the batch shards."""
    rows = decoding.bucket(n, minimum=1)
    if mesh is not None:
        axes = partitioning.batch_sharding(mesh).spec[0]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        shards = math.prod(mesh.shape[a] for a in axes)
        rows = -(-rows // shards) * shards
    return rows


def _place(args, mesh):
    """Puts the batch on the mesh sharded over rows like training inputs; the rest replicated."""
    params, batch, knobs, table, keys = args
    rows_sharding = partitioning.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, PartitionSpec())

    def put(x):
        if x is None:
            return None
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.device_put(x, replicated)
        spec = PartitionSpec(*rows_sharding.spec[:1], *([None] * (x.ndim - 1)))
        return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))

    batch = jax.tree_util.tree_map(put, batch)
    knobs = jax.device_put(knobs, replicated)
    table = None if table is None else jax.device_put(table, replicated)
    return params, batch, knobs, table, jax.device_put(keys, replicated)
