"""SoundStorm's MaskGIT-style decoding, as the SpeechTokenizer authors' fork runs it for AnyGPT.

The sequence is [voice prompt frames | frames to generate | padding]; every frame has a semantic
code and Q acoustic codes (mask code where unknown). The first `full_levels` acoustic layers
(AnyGPT: 1) are decoded in steps + 1 network passes, the others in one argmax pass each:

- full pass i of layer q: keep the top ceil((1 - thres) * L) logits of every code slot, pick
  codes by argmax at i = 0 and by Gumbel sampling at temperature i / steps after that (argmax
  once no slot is left masked, when greedy); fill every masked slot with its pick; then mask
  again the `count_i` slots of highest 1 - p(pick) among all slots of all layers, with
  count_i = floor(cos(pi/2 * i / steps) * frames) in torch's float32 arithmetic (frames
  counting the prompt; see `cosine_schedule`), plus every slot of the layers above q; prompt
  slots are never masked.
- one pass of layer q >= full_levels: argmax, written to layers q..Q-1.

Deviation from the reference, on by default (`keep_prompt`): its single passes also write
layers q..Q-1 of the prompt frames, so later layers see the model's guesses in place of the
voice prompt's real codes; here the prompt prefix is never overwritten. `keep_prompt=False`
reproduces the reference exactly (the parity tests use it).

Everything runs in one jitted `lax.fori_loop` over a pass plan held in an array, so the network
is compiled once and step counts up to 9 share one program; padded frames (`valid` False) are
excluded from attention, from the depthwise conv and from the ranking, so each item of a padded
batch decodes as it would alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from anygpt_jax.array_ops import argmax

Array = jax.Array
LogitsFn = Callable[[Array, Array, Array], Array]  # (codes, semantic, valid) -> logits


# torch's float32 cos (SLEEF, in its AVX2/AVX512 kernels) is one ulp off the correctly rounded
# value at these schedule points, the only ones for 1-16 steps: argument bits -> result bits.
_TORCH_COS = {0x3E490FDB: 0x3F7B14BF,  # pi/2 * 1/8
              0x3F8F9D9D: 0x3EDE2600}  # pi/2 * 5/7


def cosine_schedule(steps: int) -> np.ndarray:
    """float32 cos(pi/2 * t) at t = linspace(0, 1, steps + 1), bit for bit as torch computes it
    on x86 CPUs (AVX2/AVX512), since the last bit decides re-mask counts (3 steps: 0.50000006).

    torch's linspace fills the first half as i * step and the second as 1 - (steps - i) * step
    in one fused multiply-add; its cos is correctly rounded but at the points in `_TORCH_COS`.
    Exact for 1-16 steps (tested); beyond, torch's cos is one ulp off at a few more points
    (the first at 20 steps), which can move a count by one. torch's plain-C kernels (no AVX2)
    round some points differently (9 steps: t_6 is rounded twice), and CUDA's may.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = steps + 1
    step = np.float32(1.0) / np.float32(steps)
    i = np.arange(n)
    head = i.astype(np.float32) * step
    # k * step and 1 - k * step are exact in float64, so one rounding to float32 is the FMA's.
    tail = (1.0 - (n - 1 - i) * np.float64(step)).astype(np.float32)
    x = (np.where(i < n // 2, head, tail) * np.float32(math.pi)) / np.float32(2)
    # float64 cos rounded to float32 gives the correctly rounded value at these points
    # (numpy's and XLA's float32 cos do not always).
    cos = np.asarray([math.cos(v) for v in x.tolist()], np.float32)
    for k, arg in enumerate(x.view(np.uint32).tolist()):
        if arg in _TORCH_COS:
            cos[k] = np.uint32(_TORCH_COS[arg]).view(np.float32)
    return cos


def remask_counts(steps: int, lengths: np.ndarray) -> np.ndarray:
    """int32 (steps + 1, batch): slots masked again after full pass i, for sequence lengths
    (prompt frames included), truncated from float32 as in the reference."""
    lengths = np.asarray(lengths, np.float32)
    return (cosine_schedule(steps)[:, None] * lengths[None, :]).astype(np.int32)


def top_k_size(codebook_size: int, thres: float) -> int:
    """Codes kept by the reference's top-k filter: ceil((1 - thres) * codebook_size)."""
    if not 0.0 <= thres < 1.0:
        raise ValueError(f"top_k_thres must be in [0, 1), got {thres}")
    return max(1, math.ceil((1 - thres) * codebook_size))


def pass_plan(steps: int, num_quantizers: int, full_levels: int) -> np.ndarray:
    """int32 (passes, 3): (acoustic layer, step index, is a full pass) of every network pass."""
    if not 0 <= full_levels <= num_quantizers:
        raise ValueError(f"full_levels must be in 0..{num_quantizers}, got {full_levels}")
    plan = [(q, i, 1) for q in range(full_levels) for i in range(steps + 1)]
    plan += [(q, 0, 0) for q in range(full_levels, num_quantizers)]
    return np.asarray(plan, np.int32)


def decode_plan(steps: int, num_quantizers: int, full_levels: int, lengths: np.ndarray,
                bucket: int = 16) -> tuple[np.ndarray, np.ndarray, int]:
    """(pass plan, re-mask counts, number of passes), the first two padded to a multiple of
    `bucket` rows so that nearby step counts share one compiled decoder."""
    plan = pass_plan(steps, num_quantizers, full_levels)
    counts = remask_counts(steps, lengths)

    def pad(a):
        return np.pad(a, ((0, -len(a) % bucket), (0, 0)))

    return pad(plan), pad(counts), len(plan)


_SIGN = np.uint32(0x80000000)


def top_k_threshold(x: Array, k: int) -> Array:
    """Per row of the last axis, a value t such that exactly the k largest entries are >= t
    (t is the k-th largest itself when equal values straddle the cut).

    A bisection over the floats' order-preserving integer keys, stopping once every row is
    cut: tens of counting passes, where XLA:CPU's sort-based top_k is several times slower.
    """
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    keys = jnp.where(bits >= _SIGN, ~bits, bits | _SIGN)  # larger float -> larger key

    def count(t):
        return jnp.sum(keys >= t[..., None], axis=-1, dtype=jnp.int32)

    def unfinished(state):
        lo, hi, n = state
        return jnp.any((n != k) & (lo < hi))

    def halve(state):  # keeps count(keys >= lo) = n >= k
        lo, hi, n = state
        d = hi - lo
        mid = lo + (d >> 1) + (d & 1)  # ceil((lo + hi) / 2) without overflow
        c = count(mid)
        ok = c >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1), jnp.where(ok, c, n)

    start = (jnp.min(keys, axis=-1), jnp.max(keys, axis=-1),
             jnp.full(x.shape[:-1], x.shape[-1], jnp.int32))
    lo, _, _ = lax.while_loop(unfinished, halve, start)
    bits = jnp.where(lo >= _SIGN, lo & ~_SIGN, ~lo)
    return lax.bitcast_convert_type(bits, jnp.float32)


def frame_gumbel(key: Array, shape: tuple[int, ...]) -> Array:
    """Gumbel noise (batch, frames, ...) drawn per (item, frame) from `key`, so an item's noise
    does not depend on the batch size or on the padding after it."""
    batch, length, *rest = shape

    def item(b):
        item_key = jax.random.fold_in(key, b)
        return jax.vmap(lambda t: jax.random.gumbel(jax.random.fold_in(item_key, t), rest))(
            jnp.arange(length))

    return jax.vmap(item)(jnp.arange(batch))


def maskgit_decode(
    logits_fn: LogitsFn,
    semantic: Array,
    codes: Array,
    generate: Array,
    valid: Array,
    plan: Array,
    num_passes: Array,
    counts: Array,
    steps: Array,
    key: Array,
    *,
    top_k: int,
    greedy: bool,
    sample: bool,
    keep_prompt: bool,
    mask_id: int,
) -> Array:
    """Decodes acoustic codes (batch, frames, Q): `codes` holds the prompt's codes where
    `generate` (batch, frames) is False; the result holds generated codes where it is True.

    `valid` (batch, frames) marks real frames; `plan`, `num_passes` and `counts` come from
    `decode_plan` for `steps` (all traced, so step counts need no recompiling); `key` seeds
    the Gumbel sampling (the only randomness); `sample=False` leaves the noise out, so every
    pick is an argmax (deterministic decoding whatever the number of steps).
    """
    batch, length, num_q = codes.shape
    layer = jnp.arange(num_q, dtype=jnp.int32)
    gen = generate[:, :, None]
    valid3 = jnp.broadcast_to(valid[:, :, None], codes.shape)
    writable = gen if keep_prompt else valid3
    mask = jnp.broadcast_to(gen, codes.shape)
    codes = jnp.where(mask, mask_id, codes).astype(jnp.int32)

    def full_pass(p, q, i, logits, codes, mask):
        count = counts[i]  # (batch,)
        # The reference keeps the top-k logits of each slot; its picks and confidences need
        # only the k-th largest value, found without sorting (see top_k_threshold).
        threshold = top_k_threshold(logits, top_k)[..., None]
        top = jnp.max(logits, axis=-1, keepdims=True)
        above = logits > threshold
        exp = jnp.exp(logits - top)
        # Softmax over the kept logits; ties at the threshold count as often as top-k keeps them.
        total = jnp.sum(jnp.where(above, exp, 0.0), axis=-1) + (
            top_k - jnp.sum(above, axis=-1)) * jnp.exp(threshold - top)[..., 0]
        picked = argmax(logits)  # temperature 0 is argmax
        if sample:
            temperature = jnp.maximum(i.astype(jnp.float32) / steps.astype(jnp.float32), 1e-10)
            noise = frame_gumbel(jax.random.fold_in(key, p), logits.shape)
            kept = jnp.where(logits >= threshold, logits / temperature + noise, -jnp.inf)
            use_argmax = (i == 0) | (greedy & (count == 0))
            picked = jnp.where(use_argmax[:, None, None], picked,
                               argmax(kept))
        prob = jnp.take_along_axis(exp, picked[..., None], axis=-1)[..., 0] / total
        codes = jnp.where(mask, picked, codes)
        score = jnp.where(valid3, 1.0 - prob, -jnp.inf).reshape(batch, length * num_q)
        # Slot rank by descending uncertainty over all layers' slots ('b (n q)' order).
        rank = jnp.argsort(jnp.argsort(-score, axis=-1, stable=True), axis=-1, stable=True)
        remask = (rank < count[:, None]).reshape(codes.shape) | (layer > q)
        remask = remask & gen
        again = (count > 0)[:, None, None]  # a count of 0 leaves the mask as it was
        return jnp.where(again & remask, mask_id, codes), jnp.where(again, remask, mask)

    def single_pass(q, logits, codes, mask):
        picked = argmax(logits)
        codes = jnp.where((layer >= q) & writable, picked, codes)
        return codes, mask & (layer != q)

    def body(p, state):
        codes, mask = state
        q, i, full = plan[p, 0], plan[p, 1], plan[p, 2]
        logits = logits_fn(codes, semantic, valid)
        return lax.cond(
            full == 1,
            lambda: full_pass(p, q, i, logits, codes, mask),
            lambda: single_pass(q, logits, codes, mask),
        )

    codes, _ = lax.fori_loop(0, num_passes, body, (codes, mask))
    return codes
