"""Logits processors as pure jnp functions on scores [rows, vocab], matching transformers'.

Each mirrors the transformers processor of the same role (RepetitionPenaltyLogitsProcessor,
MinNewTokensLengthLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper), so the same settings pick from the same distribution. Removed ids get
-inf, as there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FILTERED = -jnp.inf


def repetition_penalty(scores: jax.Array, seen: jax.Array, penalty: jax.Array | float) -> jax.Array:
    """Scores of ids already in the sequence (`seen`, bool like scores) divided by `penalty`.

    Negative scores are multiplied instead, so a penalty > 1 always lowers a seen id.
    """
    penalized = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalized, scores)


def suppress(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """-inf where `mask` (broadcast against scores) is True."""
    return jnp.where(mask, FILTERED, scores)


def temperature(scores: jax.Array, value: jax.Array | float) -> jax.Array:
    """Scores divided by the temperature."""
    return scores / value


def top_k(scores: jax.Array, k: int, min_tokens_to_keep: int = 1) -> jax.Array:
    """Keeps the k best scores of each row (ties with the k-th are kept); k is static."""
    k = min(max(k, min_tokens_to_keep), scores.shape[-1])
    kth = jax.lax.top_k(scores, k)[0][..., -1:]
    return jnp.where(scores < kth, FILTERED, scores)


def top_p(scores: jax.Array, p: jax.Array | float, min_tokens_to_keep: int = 1) -> jax.Array:
    """Nucleus filter: drops the least likely ids whose total probability is <= 1 - p.

    As transformers: sort ascending, remove ids while the cumulative probability is <= 1 - p,
    always keep the `min_tokens_to_keep` best. The kept ids are the scores >= a threshold.
    """
    ascending = jnp.sort(scores, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    remove = cumulative <= 1 - p
    n = scores.shape[-1]
    remove = remove & (jnp.arange(n) < n - min_tokens_to_keep)
    # The removed ids form a prefix of the ascending order: the first kept one is the threshold.
    first_kept = jnp.sum(remove, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ascending, first_kept, axis=-1)
    return jnp.where(scores < threshold, FILTERED, scores)


def sample_rows(keys: jax.Array, scores: jax.Array) -> jax.Array:
    """One id per row drawn from softmax(scores), row r with its own key keys[r]."""
    return jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, scores).astype(
        jnp.int32
    )


def sample_without_replacement(key: jax.Array, scores: jax.Array, k: int) -> jax.Array:
    """k distinct ids per row drawn from softmax(scores) without replacement (Gumbel top-k).

    The same distribution as torch.multinomial(softmax(scores), k, replacement=False).
    """
    gumbel = jax.random.gumbel(key, scores.shape, jnp.float32)
    return jax.lax.top_k(scores + gumbel, k)[1].astype(jnp.int32)
