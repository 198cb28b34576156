"""SoundStorm's network in Flax: a conformer over SpeechTokenizer frames (AnyGPT's speech decoder).

Each frame carries the sum of its acoustic code embeddings (RVQ layers 2-8, one table per
layer, each with an extra mask code) plus the embedding of its semantic (layer-1) code; the
conformer (macaron feed-forwards, rotary self-attention, depthwise-convolution module, post
LayerNorm) is followed by one projection per acoustic layer and per-layer logit matrices. This
is the architecture of the SpeechTokenizer authors' SoundStorm (a soundstorm-pytorch fork) as
AnyGPT ships it; the converter maps its state dict onto the parameters here:

    semantic_embed/embedding (num_semantic, dim)     code_embed/embedding (Q*(L+1), dim)
    conformer/layers/...  (leading `depth` axis; see ConformerBlock)
    heads/{kernel (dim, Q*dim), bias}   logits_norm/{scale, bias}
    logits_kernel (Q, dim, L)   logits_bias (Q, L)

with Q acoustic quantizers and L codes each. Layout is (batch, frames, features); `valid`
(batch, frames) marks real frames of a padded batch, which then match each item run alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from anygpt_jax.model.attention import apply_rotary, dot_product_attention

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SoundStormConfig:
    """Shape of a SoundStorm network; the defaults are the checkpoint AnyGPT ships."""

    dim: int = 1024
    depth: int = 12
    heads: int = 8
    dim_head: int = 128
    ff_mult: int = 4
    conv_expansion: int = 2
    conv_kernel: int = 31
    codebook_size: int = 1024  # codes per acoustic layer; the mask code is codebook_size
    num_quantizers: int = 7  # acoustic layers (RVQ 2-8)
    num_semantic: int = 1024  # semantic (RVQ-1) codes
    rotary_theta: float = 10000.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value <= 0:
                raise ValueError(f"SoundStormConfig.{field.name} must be positive, got {value}")
        if self.dim_head % 2:
            raise ValueError(
                f"SoundStormConfig.dim_head must be even (rotary), got {self.dim_head}")

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> SoundStormConfig:
        """Builds a config from a dict, naming unknown fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown SoundStorm config fields {unknown}")
        return cls(**d)


def same_padding(kernel_size: int) -> tuple[int, int]:
    """(left, right) zero padding that keeps the length, as the reference computes it."""
    pad = kernel_size // 2
    return pad, pad - (kernel_size + 1) % 2


def _layer_norm(name: str) -> nn.LayerNorm:
    # torch.nn.LayerNorm: eps 1e-5, two-pass variance.
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


def _mask_frames(x: Array, valid: Array | None) -> Array:
    return x if valid is None else jnp.where(valid[:, :, None], x, 0)


class FeedForward(nn.Module):
    """PreNorm feed-forward: LayerNorm, Linear, Swish, Linear."""

    dim: int
    mult: int
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = _layer_norm("norm")(x)
        h = nn.Dense(self.dim * self.mult, precision=self.precision, name="fc1")(h)
        h = nn.swish(h)
        return nn.Dense(self.dim, precision=self.precision, name="fc2")(h)


class SelfAttention(nn.Module):
    """PreNorm multi-head self-attention with rotary positions on q and k (no q/k/v biases)."""

    config: SoundStormConfig
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, x: Array, positions: Array, valid: Array | None) -> Array:
        cfg = self.config
        batch, length, _ = x.shape
        inner = cfg.heads * cfg.dim_head
        h = _layer_norm("norm")(x)
        q = nn.Dense(inner, use_bias=False, precision=self.precision, name="query")(h)
        kv = nn.Dense(2 * inner, use_bias=False, precision=self.precision, name="key_value")(h)
        k, v = jnp.split(kv, 2, axis=-1)  # the reference's to_kv(x).chunk(2): keys first
        shape = (batch, length, cfg.heads, cfg.dim_head)
        q = apply_rotary(q.reshape(shape), positions, cfg.rotary_theta)
        k = apply_rotary(k.reshape(shape), positions, cfg.rotary_theta)
        if valid is None:
            mask = jnp.ones((1, 1, 1, 1, length), bool)
        else:
            mask = valid[:, None, None, None, :]  # padding keys get no weight
        out = dot_product_attention(q, k, v.reshape(shape), mask, x.dtype)
        out = out.reshape(batch, length, inner)
        return nn.Dense(cfg.dim, precision=self.precision, name="out")(out)


class ConvModule(nn.Module):
    """LayerNorm, pointwise conv + GLU, depthwise conv, Swish, channel norm, pointwise conv.

    Padded frames are zeroed around the depthwise conv (as the reference does with its mask),
    so a real frame near the end sees the zeros a lone item would.
    """

    config: SoundStormConfig
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, x: Array, valid: Array | None) -> Array:
        cfg = self.config
        inner = cfg.dim * cfg.conv_expansion
        h = _layer_norm("norm")(x)
        h = nn.Dense(2 * inner, precision=self.precision, name="pointwise_in")(h)
        out, gate = jnp.split(h, 2, axis=-1)
        h = _mask_frames(out * jax.nn.sigmoid(gate), valid)
        kernel = self.param("depthwise_kernel", nn.initializers.lecun_normal(),
                            (cfg.conv_kernel, inner))
        bias = self.param("depthwise_bias", nn.initializers.zeros, (inner,))
        left, right = same_padding(cfg.conv_kernel)
        padded = jnp.pad(h, ((0, 0), (left, right), (0, 0)))
        length = h.shape[1]
        # A depthwise conv as a sum of shifted products: one fused loop on every backend,
        # where a grouped convolution with `inner` groups is slow on XLA:CPU.
        acc = padded[:, 0:length] * kernel[0]
        for j in range(1, cfg.conv_kernel):
            acc = acc + padded[:, j : j + length] * kernel[j]
        h = _mask_frames(acc + bias, valid)
        h = nn.swish(h)
        # ChanLayerNorm: biased variance over channels clamped at 1e-6, scale only.
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        scale = self.param("chan_norm_scale", nn.initializers.ones, (inner,))
        h = (h - mean) * lax.rsqrt(jnp.maximum(var, 1e-6)) * scale
        return nn.Dense(cfg.dim, precision=self.precision, name="pointwise_out")(h)


class ConformerBlock(nn.Module):
    """x += ff1/2; x += attn; x += conv; x += ff2/2; LayerNorm. Scan-shaped (carry, None)."""

    config: SoundStormConfig
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, x: Array, side: tuple[Array, Array | None]) -> tuple[Array, None]:
        positions, valid = side
        cfg = self.config
        x = x + 0.5 * FeedForward(cfg.dim, cfg.ff_mult, self.precision, name="ff1")(x)
        x = x + SelfAttention(cfg, self.precision, name="attn")(x, positions, valid)
        x = x + ConvModule(cfg, self.precision, name="conv")(x, valid)
        x = x + 0.5 * FeedForward(cfg.dim, cfg.ff_mult, self.precision, name="ff2")(x)
        return _layer_norm("post_norm")(x), None


class Conformer(nn.Module):
    """`depth` ConformerBlocks: scanned (the stored layout: parameters stacked on a leading
    axis under `layers`) or unrolled (`layers_{i}`; model.unstack_layers converts).

    Unrolled is faster on CPU, where a scan copies every layer's weights out of the stacked
    arrays on each network pass; scanned keeps one compiled block, so compile time does not
    grow with depth.
    """

    config: SoundStormConfig
    precision: lax.Precision | None = None
    scan_layers: bool = True

    @nn.compact
    def __call__(self, x: Array, positions: Array, valid: Array | None) -> Array:
        if not self.scan_layers:
            for i in range(self.config.depth):
                x, _ = ConformerBlock(self.config, self.precision, name=f"layers_{i}")(
                    x, (positions, valid))
            return x
        blocks = nn.scan(
            ConformerBlock, variable_axes={"params": 0}, split_rngs={"params": True},
            variable_broadcast=False, in_axes=nn.broadcast, length=self.config.depth,
        )
        x, _ = blocks(self.config, self.precision, name="layers")(x, (positions, valid))
        return x


class SoundStormNet(nn.Module):
    """Codes (batch, frames, Q) with mask codes + semantic codes (batch, frames) -> logits.

    Returns float32 logits (batch, frames, Q, codebook_size).
    """

    config: SoundStormConfig
    precision: lax.Precision | None = None
    scan_layers: bool = True  # see Conformer

    @nn.compact
    def __call__(self, codes: Array, semantic: Array, valid: Array | None = None) -> Array:
        cfg = self.config
        batch, length, num_q = codes.shape
        if num_q != cfg.num_quantizers:
            raise ValueError(f"codes: expected {cfg.num_quantizers} acoustic layers, got {num_q}")
        # One table for all layers: layer q's codes (mask code included) start at q * (L + 1).
        offsets = jnp.arange(num_q, dtype=jnp.int32) * (cfg.codebook_size + 1)
        code_embed = nn.Embed(num_q * (cfg.codebook_size + 1), cfg.dim, name="code_embed")
        x = jnp.sum(code_embed(codes.astype(jnp.int32) + offsets), axis=2)
        x = x + nn.Embed(cfg.num_semantic, cfg.dim, name="semantic_embed")(semantic)
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        x = Conformer(cfg, self.precision, self.scan_layers, name="conformer")(x, positions, valid)
        h = nn.Dense(num_q * cfg.dim, precision=self.precision, name="heads")(x)
        h = _layer_norm("logits_norm")(h.reshape(batch, length, num_q, cfg.dim))
        kernel = self.param("logits_kernel", nn.initializers.lecun_normal(),
                            (num_q, cfg.dim, cfg.codebook_size))
        bias = self.param("logits_bias", nn.initializers.zeros, (num_q, cfg.codebook_size))
        logits = jnp.einsum("btqd,qdl->btql", h, kernel, precision=self.precision) + bias
        return logits.astype(jnp.float32)
