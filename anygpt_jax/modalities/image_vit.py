"""Vision Transformer layers of the SEED image tokenizer (Flax linen).

`EvaViT` is EVA-CLIP's ViT as BLIP-2 and SEED use it: patch embedding, class token, absolute
position embedding, pre-norm blocks whose fused qkv projection has q and v biases but no k bias,
exact GELU, and no final norm. `Block` with `qkv_bias="qkv"` is the plain timm ViT block that
SEED's decode head stacks. Kernels are (in, out): a torch Linear weight transposed.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

Dtype = Any


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    mask: jnp.ndarray | None = None,
    precision: lax.Precision | None = None,
) -> jnp.ndarray:
    """Multi-head attention on (batch, length, heads, head_dim) tensors; mask broadcasts to
    (batch, heads, q_len, k_len) with True where attention is allowed. Softmax runs in fp32."""
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k, precision=precision)
    scores = scores.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=precision)


class SelfAttention(nn.Module):
    """Fused-qkv self-attention; `qkv_bias` is "qv" (EVA: no k bias) or "qkv" (timm ViT)."""

    width: int
    heads: int
    qkv_bias: str = "qkv"
    dtype: Dtype = jnp.float32
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        batch, length, _ = x.shape
        dense = dict(dtype=self.dtype, precision=self.precision)
        qkv = nn.Dense(3 * self.width, use_bias=self.qkv_bias == "qkv", name="qkv", **dense)(x)
        if self.qkv_bias == "qv":
            q_bias = self.param("q_bias", nn.initializers.zeros, (self.width,))
            v_bias = self.param("v_bias", nn.initializers.zeros, (self.width,))
            qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        # torch lays the fused output out as [3][heads][head_dim]
        qkv = qkv.reshape(batch, length, 3, self.heads, self.width // self.heads)
        out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], precision=self.precision)
        out = out.reshape(batch, length, self.width)
        return nn.Dense(self.width, name="proj", **dense)(out)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    hidden: int
    dtype: Dtype = jnp.float32
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        dense = dict(dtype=self.dtype, precision=self.precision)
        h = nn.gelu(nn.Dense(self.hidden, name="fc1", **dense)(x), approximate=False)
        return nn.Dense(x.shape[-1], name="fc2", **dense)(h)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    width: int
    heads: int
    mlp: int
    eps: float = 1e-6
    qkv_bias: str = "qkv"
    dtype: Dtype = jnp.float32
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        norm = dict(epsilon=self.eps, dtype=self.dtype)
        x = x + SelfAttention(
            self.width, self.heads, self.qkv_bias, self.dtype, self.precision, name="attn"
        )(nn.LayerNorm(name="norm1", **norm)(x))
        return x + Mlp(self.mlp, self.dtype, self.precision, name="mlp")(
            nn.LayerNorm(name="norm2", **norm)(x)
        )


class _ScanBlock(Block):
    """A Block with nn.scan's (carry, input) -> (carry, output) signature."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, _: Any = None):  # type: ignore[override]
        return super().__call__(x), None


class EvaViT(nn.Module):
    """EVA-CLIP ViT (BLIP-2 variant): (batch, H, W, 3) normalized pixels -> (batch, 1 + N, width).

    With `scan_blocks` (the stored layout) the blocks' parameters carry a leading `depth` axis
    under `blocks`; without, each block has its own `blocks_{i}` (model.unstack_layers(p,
    "blocks") converts). Unrolled is faster on CPU, where a scan copies every block's weights
    out of the stacked arrays on each call.
    """

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp: int
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    precision: lax.Precision | None = None
    scan_blocks: bool = True

    @nn.compact
    def __call__(self, pixels: jnp.ndarray) -> jnp.ndarray:
        batch, height, width, channels = pixels.shape
        p = self.patch_size
        grid = self.image_size // p
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"EvaViT: expected {self.image_size}x{self.image_size} pixels, got {height}x{width}"
            )
        # A stride-p conv is a matmul over non-overlapping patches (kernel stored HWIO).
        kernel = self.param(
            "patch_kernel", nn.initializers.lecun_normal(), (p, p, channels, self.width)
        )
        bias = self.param("patch_bias", nn.initializers.zeros, (self.width,))
        patches = pixels.reshape(batch, grid, p, grid, p, channels).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(batch, grid * grid, p * p * channels).astype(self.dtype)
        x = jnp.einsum(
            "bnk,kw->bnw",
            patches,
            kernel.reshape(-1, self.width).astype(self.dtype),
            precision=self.precision,
        ) + bias.astype(self.dtype)
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.width))
        pos = self.param(
            "pos_embed", nn.initializers.normal(0.02), (1, grid * grid + 1, self.width)
        )
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.width)), x], 1)
        x = x + pos.astype(x.dtype)
        block_args = (self.width, self.heads, self.mlp, self.eps, "qv", self.dtype, self.precision)
        if not self.scan_blocks:
            for i in range(self.depth):
                x = Block(*block_args, name=f"blocks_{i}")(x)
            return x
        blocks = nn.scan(
            _ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=self.depth
        )
        x, _ = blocks(*block_args, name="blocks")(x, None)
        return x
