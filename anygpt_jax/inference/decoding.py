"""What greedy/sampling and beam search share: prompt batches, model steps, the score pipeline.

Shapes are bucketed (batch and new tokens to powers of two, prompt length to two sizes per
octave) so that a server compiles a handful of programs, not one per request; settings that
only change values (temperature, top-p, penalties, budgets, stop ids) are traced arguments,
not compile keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from anygpt_jax.inference import constraints, processors
from anygpt_jax.inference.settings import GenerationSettings
from anygpt_jax.model import KVCache, Transformer

MIN_LENGTH_BUCKET = 16
# Prompt lengths get two buckets per octave (.., 64, 96, 128, 192, ..): padding wastes at most
# a third of a prefill, not half, for twice the prefill programs.
PROMPT_BUCKETS_PER_OCTAVE = 2


def bucket(n: int, minimum: int = MIN_LENGTH_BUCKET, per_octave: int = 1) -> int:
    """The smallest bucket >= max(n, minimum): powers of two, and with `per_octave` > 1 that
    many evenly spaced sizes from each power of two to the next (2: 64, 96, 128, 192, ...)."""
    n = max(int(n), minimum, 1)
    top = 1 << (n - 1).bit_length()
    step = top // (2 * per_octave)
    return top if step < 1 else -(-n // step) * step


@dataclasses.dataclass(frozen=True)
class Plan:
    """The static part of a generation program (a change here means a new compilation)."""

    do_sample: bool
    top_k: int
    use_top_p: bool
    use_penalty: bool
    constrain: bool
    num_beams: int = 1
    num_stop: int = 0  # beam search keeps (1 + num_stop) * num_beams candidates, as transformers
    early_stopping: bool | str = False

    @classmethod
    def of(cls, settings: GenerationSettings, constrain: bool, num_stop: int) -> Plan:
        """The plan of `settings`; filters that do nothing are left out of the program."""
        beams = settings.num_beams > 1
        return cls(
            do_sample=settings.do_sample,
            top_k=settings.top_k if settings.do_sample else 0,
            use_top_p=settings.do_sample and settings.top_p < 1.0,
            use_penalty=settings.repetition_penalty != 1.0,
            constrain=constrain,
            num_beams=settings.num_beams,
            num_stop=num_stop if beams else 0,
            early_stopping=settings.early_stopping if beams else False,
        )

    @property
    def min_tokens_to_keep(self) -> int:
        """What top-k/top-p must keep: transformers keeps num_stop + 1 ids in beam sampling."""
        return self.num_stop + 1 if self.num_beams > 1 else 1


@flax.struct.dataclass
class Knobs:
    """The traced part of the settings: changing them reuses the compiled program."""

    temperature: jax.Array
    top_p: jax.Array
    repetition_penalty: jax.Array
    length_penalty: jax.Array
    min_new_tokens: jax.Array
    max_new_tokens: jax.Array
    stop_mask: jax.Array  # bool [padded vocab]
    # n ** length_penalty for n new tokens (row 0 unused), computed in float64 then rounded,
    # as transformers' Python-float denominators are.
    length_denominators: jax.Array

    @classmethod
    def of(
        cls, settings: GenerationSettings, stop_ids: Sequence[int], padded_vocab: int, slots: int
    ) -> Knobs:
        """The traced settings of a request with room for `slots` new tokens."""
        stop = np.zeros(padded_vocab, bool)
        stop[list(stop_ids)] = True
        f32 = lambda x: np.float32(x)  # noqa: E731
        lp = float(settings.length_penalty)
        denominators = np.array([1.0] + [n**lp for n in range(1, slots + 1)], np.float32)
        return cls(
            temperature=f32(settings.temperature),
            top_p=f32(settings.top_p),
            repetition_penalty=f32(settings.repetition_penalty),
            length_penalty=f32(settings.length_penalty),
            min_new_tokens=np.int32(settings.min_new_tokens),
            max_new_tokens=np.int32(settings.max_new_tokens),
            stop_mask=stop,
            length_denominators=denominators,
        )


@flax.struct.dataclass
class PromptBatch:
    """Left-padded prompts [rows, length]; padding rows (`real` False) only fill a bucket."""

    ids: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    next_position: jax.Array  # [rows] position of the first new token (the prompt's length)
    real: jax.Array  # [rows] bool
    span: jax.Array  # [rows] constraint state after the prompt (see constraints.py)
    pos: jax.Array
    seen: jax.Array | None  # bool [rows, padded vocab]: ids in the prompt, for the penalty


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> list[np.ndarray]:
    """Prompts as int arrays; empty prompts, non-integers and out-of-range ids are refused."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence | np.ndarray):
        raise TypeError(f"prompts must be a sequence of id sequences, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, (int, np.integer)):
            raise TypeError(
                "prompts must be a sequence of id sequences; wrap a single prompt in a list"
            )
        arr = np.asarray(prompt)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(
                f"prompt {i} must be a flat sequence of int ids, got {arr.dtype} {arr.shape}"
            )
        if arr.size == 0:
            raise ValueError(f"prompt {i} is empty")
        bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
        if bad.size:
            raise ValueError(
                f"prompt {i}: id {int(arr[bad[0]])} at position {int(bad[0])} is outside "
                f"[0, {vocab_size})"
            )
        out.append(arr.astype(np.int32))
    return out


def make_batch(
    prompts: list[np.ndarray],
    rows: int,
    padded_vocab: int,
    states: list[tuple[int, int]],
    with_seen: bool,
) -> PromptBatch:
    """Left-pads `prompts` to a bucketed length in a batch of `rows` rows (host numpy)."""
    length = bucket(max(len(p) for p in prompts), per_octave=PROMPT_BUCKETS_PER_OCTAVE)
    ids = np.zeros((rows, length), np.int32)
    segments = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    next_position = np.zeros(rows, np.int32)
    real = np.zeros(rows, bool)
    span, pos = np.zeros(rows, np.int32), np.zeros(rows, np.int32)
    seen = np.zeros((rows, padded_vocab), bool) if with_seen else None
    for r, p in enumerate(prompts):
        n = len(p)
        ids[r, length - n :] = p
        segments[r, length - n :] = 1
        positions[r, length - n :] = np.arange(n)
        next_position[r], real[r] = n, True
        span[r], pos[r] = states[r]
        if seen is not None:
            seen[r, p] = True
    return PromptBatch(ids, positions, segments, next_position, real, span, pos, seen)


@flax.struct.dataclass
class LayerCaches:
    """The KV cache of an unrolled model as one array per layer, [rows, kv_heads, length, d].

    Separate arrays let each decode step write its new slot in place; the stacked KVCache
    would be sliced per layer and stacked again, copying the whole cache every token.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    segment_ids: jax.Array
    index: jax.Array


Cache = KVCache | LayerCaches


def prefill(
    model: Transformer, params, batch: PromptBatch, cache_length: int, copies: int = 1
) -> tuple[jax.Array, Cache]:
    """Runs the prompts into a fresh cache; returns the last position's logits [rows, vocab].

    Only the last hidden state is projected to the vocabulary. `copies` > 1 repeats each row's
    cache and logits (beams of one prompt share its prefill). Unrolled models get their cache
    as LayerCaches, scanned ones keep the stacked KVCache their layer scan reads.
    """
    rows = batch.ids.shape[0]
    cache = KVCache.init(model.config, rows, cache_length)
    hidden, cache = model.apply(
        {"params": params},
        batch.ids,
        batch.positions,
        batch.segment_ids,
        cache=cache,
        return_hidden=True,
    )
    logits = model.apply({"params": params}, hidden[:, -1:], method=Transformer.project)[:, 0]
    if copies > 1:
        rep = lambda x: jnp.repeat(x, copies, axis=0)  # noqa: E731
        logits = rep(logits)
        cache = cache.replace(
            keys=jnp.repeat(cache.keys, copies, axis=1),
            values=jnp.repeat(cache.values, copies, axis=1),
            segment_ids=rep(cache.segment_ids),
        )
    if not model.config.scan_layers:
        layers = range(model.config.num_layers)
        cache = LayerCaches(
            keys=tuple(cache.keys[i] for i in layers),
            values=tuple(cache.values[i] for i in layers),
            segment_ids=cache.segment_ids,
            index=cache.index,
        )
    return logits, cache


def step(
    model: Transformer, params, tokens: jax.Array, positions: jax.Array, cache: Cache
) -> tuple[jax.Array, Cache]:
    """One decode step: tokens [rows] at positions [rows] -> next logits [rows, vocab]."""
    args = (tokens[:, None], positions[:, None], jnp.ones_like(tokens)[:, None])
    if isinstance(cache, LayerCaches):
        logits, cache = model.apply({"params": params}, *args, cache, method=_decode_layers)
    else:
        logits, cache = model.apply({"params": params}, *args, cache=cache)
    return logits[:, 0], cache


def _decode_layers(
    module: Transformer, ids, positions, segment_ids, cache: LayerCaches
) -> tuple[jax.Array, LayerCaches]:
    """Transformer.__call__ for an unrolled model over per-layer caches (same modules)."""
    x = nn.with_logical_constraint(
        module.embed_tokens(ids), ("activation_batch", "activation_length", "activation_embed")
    )
    cache_segment_ids = jax.lax.dynamic_update_slice(
        cache.segment_ids, segment_ids, (0, cache.index)
    )
    keys, values = [], []
    for i, layer in enumerate(module.layers):
        x, (k, v) = layer(
            x,
            positions,
            segment_ids,
            cache_segment_ids,
            cache.index,
            (cache.keys[i], cache.values[i]),
        )
        keys.append(k)
        values.append(v)
    logits = module.project(module.norm(x))
    new = LayerCaches(tuple(keys), tuple(values), cache_segment_ids, cache.index + ids.shape[1])
    return logits, new


def reorder_cache(cache: Cache, rows: jax.Array) -> Cache:
    """The cache of rows `rows` (beam search keeps the beams it continues)."""
    if isinstance(cache, LayerCaches):
        return cache.replace(
            keys=tuple(k[rows] for k in cache.keys),
            values=tuple(v[rows] for v in cache.values),
            segment_ids=cache.segment_ids[rows],
        )
    return cache.replace(
        keys=cache.keys[:, rows], values=cache.values[:, rows], segment_ids=cache.segment_ids[rows]
    )


def process_scores(
    scores: jax.Array,
    new_tokens: jax.Array,
    plan: Plan,
    knobs: Knobs,
    table: constraints.SpanTable | None,
    span: jax.Array,
    pos: jax.Array,
    seen: jax.Array | None,
) -> jax.Array:
    """transformers' processor order: penalty, min new tokens, constraint, then the warpers.

    `new_tokens` is how many tokens each row has generated: [rows], or a scalar when all
    rows step together (beam search).
    """
    if plan.use_penalty:
        scores = processors.repetition_penalty(scores, seen, knobs.repetition_penalty)
    early = jnp.reshape(new_tokens < knobs.min_new_tokens, (-1, 1))  # [rows or 1, 1]
    hold_stop = knobs.stop_mask[None, :] & early
    if plan.constrain:
        remaining = jnp.broadcast_to(knobs.max_new_tokens - new_tokens, span.shape)
        allowed = constraints.allowed_mask(table, span, pos, remaining)
        # Where a span's end marker is a stop id and nothing else may follow, the span wins.
        hold_stop = hold_stop & jnp.any(allowed & ~hold_stop, axis=-1, keepdims=True)
        scores = processors.suppress(scores, hold_stop | ~allowed)
    else:
        scores = processors.suppress(scores, hold_stop)
    if plan.do_sample:
        scores = processors.temperature(scores, knobs.temperature)
        if plan.top_k:
            scores = processors.top_k(scores, plan.top_k, plan.min_tokens_to_keep)
        if plan.use_top_p:
            scores = processors.top_p(scores, knobs.top_p, plan.min_tokens_to_keep)
    return scores


def traced(model: Transformer, rules, fn):
    """`fn(model, ...)` traced under the logical-axis rules (activation sharding names)."""

    def wrapped(*args, **kwargs):
        with nn.logical_axis_rules(rules):
            return fn(model, *args, **kwargs)

    return wrapped
