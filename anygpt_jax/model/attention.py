"""Rotary embeddings and the attention computation (XLA path; TPU kernels plug in here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# A large finite negative instead of -inf: a fully masked row (padding) then gives a uniform
# softmax rather than NaN, and fp32/bf16 never overflow when it is added to.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def rope_inverse_frequencies(head_dim: int, theta: float) -> jax.Array:
    """inv_freq exactly as transformers' default LLaMA rotary embedding computes it (fp32)."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.int32).astype(jnp.float32) / head_dim
    return 1.0 / (theta**exponents)


def apply_rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate-half RoPE on x [batch, length, heads, head_dim] at integer positions [batch, length].

    The rotate-half layout is transformers' own, so HF q/k weights import with no permutation.
    """
    head_dim = x.shape[-1]
    inv_freq = rope_inverse_frequencies(head_dim, theta)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    half = head_dim // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention_mask(
    query_slots: jax.Array,
    key_slots: jax.Array,
    query_segments: jax.Array,
    key_segments: jax.Array,
) -> jax.Array:
    """Boolean [batch, 1, 1, q, k]: causal in slot order and within the same packed segment.

    Segment 0 marks padding; a key of segment 0 is never attended to by a real token.
    """
    causal = key_slots[None, :] <= query_slots[:, None]  # [q, k]
    same_segment = query_segments[:, :, None] == key_segments[:, None, :]  # [b, q, k]
    real_key = (key_segments != 0)[:, None, :]
    mask = causal[None] & same_segment & real_key
    return mask[:, None, None]


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    dtype: jnp.dtype,
    heads_first: bool = False,
) -> jax.Array:
    """Grouped-query attention: query [b, q, heads, d], key/value [b, s, kv_heads, d].

    heads_first: key/value are [b, kv_heads, s, d] (the KV cache's layout).
    Softmax is in fp32 whatever the compute dtype, as transformers' LLaMA does.
    """
    batch, q_len, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1 if heads_first else 2]
    groups = num_heads // num_kv_heads
    query = query.reshape(batch, q_len, num_kv_heads, groups, head_dim)
    scale = head_dim**-0.5
    kv = "bksd" if heads_first else "bskd"
    scores = jnp.einsum(f"bqkgd,{kv}->bkgqs", query, key).astype(jnp.float32) * scale
    scores = jnp.where(mask, scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    # The dot's own output order, then the transpose: XLA:CPU runs "->bqkgd" directly as a
    # slow strided dot (6x slower for a decode step at batch 16).
    out = jnp.einsum(f"bkgqs,{kv}->bkgqd", probs, value).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, q_len, num_heads, head_dim)
