"""SEANet convolutions, LSTMs and residual vector quantization shared by both audio codecs.

Layout is channels-last, (batch, time, channels). Every layer takes optional per-item `lengths`
(int32, (batch,)): items of a padded batch then come out exactly as if each ran alone, because
reflect padding and the backward LSTM start at each item's own end. With `lengths=None` all
items are full length and the cheaper static padding is used.

Parameter shapes (the converters produce these): conv and transposed-conv kernels (k, in, out);
LSTM as PyTorch lays it out, per layer n and direction ("" or "_reverse"): `w_ih_l{n}` (4H, in),
`w_hh_l{n}` (4H, H), `bias_l{n}` (4H,) with gate order i, f, g, o and the two biases summed;
codebooks (n_q, codebook_size, dim).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from anygpt_jax.array_ops import argmax

Array = jax.Array
PAD_MODES = ("reflect", "constant")


def ceil_div(a, b):
    """Integer ceil(a / b); works on Python ints and integer arrays alike."""
    return -(-a // b)


def conv_paddings(kernel_eff: int, stride: int, causal: bool) -> tuple[int, int]:
    """Fixed (left, right) padding of a SEANet conv; the extra right padding comes on top."""
    total = kernel_eff - stride
    if causal:
        return total, 0
    right = total // 2  # asymmetric for odd totals, the extra sample goes left
    return total - right, right


def _static_pad(x: Array, left: int, right: int, mode: str) -> Array:
    """PyTorch `pad1d` on the time axis, including its zero extension of too-short inputs."""
    if mode != "reflect":
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)))
    length = x.shape[1]
    extra = max(0, max(left, right) - length + 1)  # reflect needs length > pad
    if extra:
        x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    x = jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="reflect")
    return x[:, : x.shape[1] - extra]


def _dynamic_pad(
    x: Array, lengths: Array, left: int, right: int, stride: int, out_len: int, mode: str
) -> Array:
    """Per-item version of `_static_pad` plus the stride's extra right padding, by one gather.

    Output position i of item b holds what PyTorch's padding would put there for that item
    alone; positions past the item's own padded length are don't-care.
    """
    lengths = lengths[:, None]
    j = jnp.broadcast_to(jnp.arange(out_len)[None, :] - left, (x.shape[0], out_len))
    if mode == "reflect":
        extra = (-lengths) % stride
        max_pad = jnp.maximum(left, right + extra)
        ext_len = jnp.maximum(lengths, max_pad + 1)  # the zero-extended length PyTorch reflects
        j = jnp.where(j < 0, -j, jnp.where(j >= ext_len, 2 * (ext_len - 1) - j, j))
    valid = (j >= 0) & (j < lengths)
    gathered = jax.vmap(lambda xb, ib: xb[ib])(x, jnp.clip(j, 0, x.shape[1] - 1))
    return jnp.where(valid[..., None], gathered, 0)


def mask_time(x: Array, lengths: Array | None) -> Array:
    """Zeroes frames at or past each item's length (what a lone item would not have)."""
    if lengths is None:
        return x
    return jnp.where(jnp.arange(x.shape[1])[None, :, None] < lengths[:, None, None], x, 0)


def reverse_time(x: Array, lengths: Array | None) -> Array:
    """Reverses each item within its own length; frames past it are don't-care."""
    if lengths is None:
        return x[:, ::-1]
    idx = jnp.clip(lengths[:, None] - 1 - jnp.arange(x.shape[1])[None, :], 0, x.shape[1] - 1)
    return jax.vmap(lambda xb, ib: xb[ib])(x, idx)


class SConv1d(nn.Module):
    """SEANet Conv1d: reflect (or zero) padding so the output has ceil(T / stride) frames."""

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    causal: bool = False
    pad_mode: str = "reflect"
    precision: lax.Precision = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array, lengths: Array | None = None) -> tuple[Array, Array | None]:
        if self.stride > 1 and self.dilation > 1:
            # The two references compute the extra padding differently in this case only.
            raise ValueError("SConv1d: stride > 1 together with dilation > 1 is not supported")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"SConv1d: pad_mode {self.pad_mode!r} not in {PAD_MODES}")
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (self.kernel_size, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        k_eff = (self.kernel_size - 1) * self.dilation + 1
        left, right = conv_paddings(k_eff, self.stride, self.causal)
        n_out = ceil_div(x.shape[1], self.stride)
        padded_len = left + right + n_out * self.stride
        if lengths is None:
            extra = n_out * self.stride - x.shape[1]
            x = _static_pad(x, left, right + extra, self.pad_mode)
        else:
            x = _dynamic_pad(x, lengths, left, right, self.stride, padded_len, self.pad_mode)
            lengths = ceil_div(lengths, self.stride)
        y = lax.conv_general_dilated(
            x, kernel.astype(x.dtype), (self.stride,), "VALID", rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"), precision=self.precision,
        )
        return y + bias.astype(x.dtype), lengths


class SConvTranspose1d(nn.Module):
    """SEANet ConvTranspose1d: full transposed conv, then (kernel - stride) samples trimmed."""

    features: int
    kernel_size: int
    stride: int
    causal: bool = False
    trim_right_ratio: float = 1.0
    precision: lax.Precision = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array, lengths: Array | None = None) -> tuple[Array, Array | None]:
        k, s = self.kernel_size, self.stride
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, x.shape[-1], self.features)
        ).astype(x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        # Frames past an item's end would leak into its last output samples.
        x = mask_time(x, lengths)
        batch, frames, _ = x.shape
        if k % s == 0:
            # One matmul, then overlap-add of the k // s shifted pieces: faster than a
            # dilated-input convolution on CPU and TPU alike.
            m = k // s
            y = jnp.einsum("btc,kco->btko", x, kernel, precision=self.precision)
            y = y.reshape(batch, frames, m, s, self.features)
            full = sum(
                jnp.pad(y[:, :, i], ((0, 0), (i, m - 1 - i), (0, 0), (0, 0))) for i in range(m)
            )
            full = full.reshape(batch, (frames + m - 1) * s, self.features)
        else:
            full = lax.conv_general_dilated(
                x, kernel[::-1], (1,), [(k - 1, k - 1)], lhs_dilation=(s,),
                dimension_numbers=("NWC", "WIO", "NWC"), precision=self.precision,
            )
        total = k - s
        right = math.ceil(total * self.trim_right_ratio) if self.causal else total // 2
        left = total - right
        y = full[:, left : full.shape[1] - right] + bias.astype(x.dtype)
        return y, None if lengths is None else lengths * s


class LSTM(nn.Module):
    """PyTorch nn.LSTM (zero initial state), optionally bidirectional, plus SEANet's skip.

    The skip adds the input (tiled twice when bidirectional) to the last layer's output.
    """

    hidden: int
    num_layers: int = 2
    bidirectional: bool = False
    skip: bool = True
    precision: lax.Precision = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array, lengths: Array | None = None) -> tuple[Array, Array | None]:
        # One array per direction in the layout the computation reads: slicing a stacked
        # (dirs, ...) parameter or transposing it inside the jit copied ~100 MiB of weights on
        # every call on CPU, ~100 ms of a 1.4 s SpeechTokenizer encode at batch 1.
        suffixes = ["", "_reverse"] if self.bidirectional else [""]
        dirs, h4 = len(suffixes), 4 * self.hidden
        init = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
        y = x
        for layer in range(self.num_layers):
            w_ih, w_hh, bias = [], [], []
            for s in suffixes:
                w_ih.append(self.param(f"w_ih_l{layer}{s}", init, (h4, y.shape[-1])))
                w_hh.append(self.param(f"w_hh_l{layer}{s}", init, (h4, self.hidden)))
                bias.append(self.param(f"bias_l{layer}{s}", nn.initializers.zeros, (h4,)))
            # The input projection of every step at once; only h @ w_hh stays in the scan.
            inputs = [y] if dirs == 1 else [y, reverse_time(y, lengths)]
            xw = [
                (jnp.einsum("btc,gc->btg", inp, w.astype(x.dtype), precision=self.precision)
                 + b.astype(x.dtype)).transpose(1, 0, 2)
                for inp, w, b in zip(inputs, w_ih, bias, strict=True)
            ]  # per direction (time, batch, 4H)
            hs = _lstm_scan(xw, [w.astype(x.dtype) for w in w_hh], self.precision)
            outs = [hs[0].transpose(1, 0, 2)]
            if dirs == 2:
                outs.append(reverse_time(hs[1].transpose(1, 0, 2), lengths))
            y = jnp.concatenate(outs, axis=-1)
        if self.skip:
            y = y + (jnp.concatenate([x] * dirs, axis=-1) if dirs == 2 else x)
        return y, lengths


def _lstm_scan(xw: list[Array], w_hh: list[Array], precision: lax.Precision) -> list[Array]:
    """Runs the recurrence of each direction in its own scan; returns (time, batch, H) each.

    `w_hh` (4H, H) per direction: at batch 1 the step is a matrix-vector product bound by
    memory, and this layout reads 25% faster on CPU than (H, 4H). One scan per direction keeps
    a single direction's weights (16 MiB at H=1024) resident in the last-level cache;
    interleaving both directions in one scan streamed twice that every step and was ~30% slower.
    """
    _, batch, h4 = xw[0].shape
    zeros = jnp.zeros((batch, h4 // 4), xw[0].dtype)

    def run(x_d: Array, w_d: Array) -> Array:
        def step(carry, xw_t):
            h, c = carry
            gates = xw_t + jnp.einsum("gh,bh->bg", w_d, h, precision=precision)
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        return lax.scan(step, (zeros, zeros), x_d)[1]

    return [run(x_d, w_d) for x_d, w_d in zip(xw, w_hh, strict=True)]


def rvq_encode(x: Array, codebooks: Array, precision: lax.Precision) -> Array:
    """Residual VQ: per layer the Euclidean-nearest code (first index on exact ties).

    x (batch, time, dim), codebooks (n_q, size, dim) -> codes (n_q, batch, time) int32.
    """
    codes = []
    residual = x
    for q in range(codebooks.shape[0]):
        embed = codebooks[q].astype(x.dtype)
        # The references' expression, term for term, so near-ties break the same way.
        dist = -(
            jnp.sum(residual**2, axis=-1, keepdims=True)
            - 2 * jnp.einsum("btd,kd->btk", residual, embed, precision=precision)
            + jnp.sum(embed**2, axis=-1)
        )
        idx = argmax(dist)
        residual = residual - embed[idx]
        codes.append(idx)
    return jnp.stack(codes)


def rvq_decode(codes: Array, codebooks: Array) -> Array:
    """Sum of the looked-up codes of each layer: (n_q, batch, time) -> (batch, time, dim)."""
    out = jnp.zeros((), codebooks.dtype)
    for q in range(codes.shape[0]):
        out = out + codebooks[q][codes[q]]
    return out


@dataclasses.dataclass(frozen=True)
class SEANetConfig:
    """Hyper-parameters of a SEANet codec (encoder, RVQ, decoder); `ratios` in decoder order."""

    sample_rate: int
    dimension: int
    n_filters: int
    ratios: tuple[int, ...]
    n_q: int
    codebook_size: int
    channels: int = 1
    n_residual_layers: int = 1
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    causal: bool = False
    pad_mode: str = "reflect"
    compress: int = 2
    true_skip: bool = False  # identity shortcut in residual blocks instead of a 1x1 conv
    lstm_layers: int = 2
    encoder_bidirectional: bool = False
    trim_right_ratio: float = 1.0

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.ratios))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SEANetConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"SEANetConfig: unknown fields {unknown}")
        data = dict(data)
        data["ratios"] = tuple(data["ratios"])
        return cls(**data)


class ResBlock(nn.Module):
    """SEANet residual block: shortcut(x) + conv1x1(elu(conv_k(elu(x)))), dilated first conv."""

    config: SEANetConfig
    dim: int
    dilation: int
    precision: lax.Precision = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array, lengths: Array | None) -> tuple[Array, Array | None]:
        cfg = self.config
        conv = dict(causal=cfg.causal, pad_mode=cfg.pad_mode, precision=self.precision)
        # Names follow the reference's Sequential indices (block.1, block.3) for the converters.
        h, _ = SConv1d(self.dim // cfg.compress, cfg.residual_kernel_size, dilation=self.dilation,
                       name="block_1", **conv)(nn.elu(x), lengths)
        h, _ = SConv1d(self.dim, 1, name="block_3", **conv)(nn.elu(h), lengths)
        if cfg.true_skip:
            return x + h, lengths
        return SConv1d(self.dim, 1, name="shortcut", **conv)(x, lengths)[0] + h, lengths


def seanet_layout(cfg: SEANetConfig, decoder: bool) -> list[tuple[str, dict]]:
    """The reference's nn.Sequential as (kind, kwargs); entry i is its index i (ELUs count).

    Kinds: conv, convtr, res, lstm, elu. The converters read it to know each index's layer.
    """
    n_res = range(cfg.n_residual_layers)
    if not decoder:
        width = cfg.n_filters
        layers = [("conv", dict(features=width, kernel_size=cfg.kernel_size))]
        for ratio in reversed(cfg.ratios):
            layers += [("res", dict(dim=width, dilation=cfg.dilation_base**j)) for j in n_res]
            width *= 2
            layers += [("elu", {}), ("conv", dict(features=width, kernel_size=2 * ratio,
                                                  stride=ratio))]
        if cfg.lstm_layers:
            layers.append(("lstm", dict(hidden=width, bidirectional=cfg.encoder_bidirectional)))
        return layers + [("elu", {}), ("conv", dict(features=cfg.dimension,
                                                    kernel_size=cfg.last_kernel_size))]
    width = cfg.n_filters * 2 ** len(cfg.ratios)
    layers = [("conv", dict(features=width, kernel_size=cfg.kernel_size))]
    if cfg.lstm_layers:
        layers.append(("lstm", dict(hidden=width, bidirectional=False)))
    for ratio in cfg.ratios:
        width //= 2
        layers += [("elu", {}), ("convtr", dict(features=width, kernel_size=2 * ratio,
                                                stride=ratio))]
        layers += [("res", dict(dim=width, dilation=cfg.dilation_base**j)) for j in n_res]
    return layers + [("elu", {}), ("conv", dict(features=cfg.channels,
                                                kernel_size=cfg.last_kernel_size))]


class SEANet(nn.Module):
    """SEANet encoder (waveform -> latents) or decoder (latents -> waveform), channels-last.

    Submodules are named `layers_{i}` after the reference's Sequential index i, so one key
    table serves both SpeechTokenizer and transformers' Encodec.
    """

    config: SEANetConfig
    decoder: bool
    precision: lax.Precision = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array, lengths: Array | None = None) -> tuple[Array, Array | None]:
        cfg, p = self.config, self.precision
        conv = dict(causal=cfg.causal, pad_mode=cfg.pad_mode, precision=p)
        makers = {
            "conv": lambda **kw: SConv1d(**kw, **conv),
            "convtr": lambda **kw: SConvTranspose1d(
                **kw, causal=cfg.causal, trim_right_ratio=cfg.trim_right_ratio, precision=p
            ),
            "res": lambda **kw: ResBlock(cfg, **kw, precision=p),
            "lstm": lambda **kw: LSTM(**kw, num_layers=cfg.lstm_layers, precision=p),
        }
        for i, (kind, kwargs) in enumerate(seanet_layout(cfg, self.decoder)):
            if kind == "elu":
                x = nn.elu(x)
            else:
                x, lengths = makers[kind](**kwargs, name=f"layers_{i}")(x, lengths)
        return x, lengths


class SEANetCodec(nn.Module):
    """Encoder, residual VQ and decoder; `encode` and `decode` are its two entry points."""

    config: SEANetConfig
    precision: lax.Precision = lax.Precision.HIGHEST

    def setup(self):
        cfg = self.config
        self.encoder = SEANet(cfg, decoder=False, precision=self.precision)
        self.decoder = SEANet(cfg, decoder=True, precision=self.precision)
        self.codebooks = self.param(
            "codebooks", nn.initializers.normal(1.0), (cfg.n_q, cfg.codebook_size, cfg.dimension)
        )

    def encode(self, wav: Array, lengths: Array | None = None, n_q: int | None = None) -> Array:
        """(batch, samples, channels) -> codes (n_q, batch, frames) int32."""
        latents, _ = self.encoder(wav, lengths)
        return rvq_encode(latents, self.codebooks[: n_q or self.config.n_q], self.precision)

    def decode(self, codes: Array, lengths: Array | None = None) -> Array:
        """Codes (n, batch, frames), the first n RVQ layers -> (batch, frames * hop, channels)."""
        latents = rvq_decode(codes, self.codebooks[: codes.shape[0]])
        return self.decoder(latents, lengths)[0]

    def __call__(self, wav: Array, lengths: Array | None = None) -> Array:
        """Encode then decode (used to initialize every parameter at once)."""
        frames = None if lengths is None else ceil_div(lengths, self.config.hop_length)
        return self.decode(self.encode(wav, lengths), frames)
