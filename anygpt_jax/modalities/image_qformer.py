"""SEED's causal Q-Former (BLIP-2's BERT-style querying transformer, queries only) in Flax.

Learned query tokens pass a LayerNorm, then post-norm BERT layers: self-attention among the
queries (causal in SEED: query i sees queries 0..i), cross-attention to the image features in
every `cross_attention_freq`-th layer (layers 0, 2, ... for 2), and the query FFN. No text
branch: SEED's tokenizer never feeds text through it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from anygpt_jax.modalities.image_vit import attention

Dtype = Any


class BertAttention(nn.Module):
    """query/key/value projections, attention, then dense + residual + LayerNorm (post-norm)."""

    width: int
    heads: int
    eps: float
    dtype: Dtype = jnp.float32
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, context: jnp.ndarray, mask: jnp.ndarray | None = None
    ) -> jnp.ndarray:
        dense = dict(dtype=self.dtype, precision=self.precision)
        head_dim = self.width // self.heads

        def split(t):
            return t.reshape(*t.shape[:2], self.heads, head_dim)

        q = split(nn.Dense(self.width, name="query", **dense)(x))
        k = split(nn.Dense(self.width, name="key", **dense)(context))
        v = split(nn.Dense(self.width, name="value", **dense)(context))
        out = attention(q, k, v, mask, self.precision).reshape(*x.shape[:2], self.width)
        out = nn.Dense(self.width, name="dense", **dense)(out)
        return nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(out + x)


class QFormerLayer(nn.Module):
    """Self-attention, optional cross-attention to the image, query FFN (each post-norm)."""

    width: int
    heads: int
    mlp: int
    eps: float
    cross_attention: bool
    dtype: Dtype = jnp.float32
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, image: jnp.ndarray, mask: jnp.ndarray | None) -> jnp.ndarray:
        args = (self.width, self.heads, self.eps, self.dtype, self.precision)
        x = BertAttention(*args, name="attention")(x, x, mask)
        if self.cross_attention:
            x = BertAttention(*args, name="crossattention")(x, image)
        dense = dict(dtype=self.dtype, precision=self.precision)
        h = nn.gelu(nn.Dense(self.mlp, name="intermediate", **dense)(x), approximate=False)
        h = nn.Dense(self.width, name="output", **dense)(h)
        return nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="output_norm")(h + x)


class QFormer(nn.Module):
    """(batch, tokens, image_width) image features -> (batch, num_queries, width) query states."""

    num_queries: int
    width: int
    depth: int
    heads: int
    mlp: int
    cross_attention_freq: int = 2
    eps: float = 1e-12
    causal: bool = True
    dtype: Dtype = jnp.float32
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, image: jnp.ndarray) -> jnp.ndarray:
        queries = self.param(
            "query_tokens", nn.initializers.normal(0.02), (1, self.num_queries, self.width)
        )
        x = jnp.broadcast_to(queries, (image.shape[0], *queries.shape[1:])).astype(self.dtype)
        x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="embed_norm")(x)
        mask = None
        if self.causal:
            mask = jnp.tril(jnp.ones((self.num_queries, self.num_queries), bool))[None, None]
        image = image.astype(self.dtype)
        for i in range(self.depth):
            x = QFormerLayer(
                self.width,
                self.heads,
                self.mlp,
                self.eps,
                i % self.cross_attention_freq == 0,
                self.dtype,
                self.precision,
                name=f"layer_{i}",
            )(x, image, mask)
        return x
