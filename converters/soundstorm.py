"""SoundStorm (the SpeechTokenizer authors' soundstorm-pytorch fork, as AnyGPT ships it:
speechtokenizer_soundstorm_mls.pt) -> an anygpt_jax SoundStorm directory.

    python -m converters.soundstorm --ckpt speechtokenizer_soundstorm_mls.pt --out OUT

The output (config.json + params.safetensors) loads with
`anygpt_jax.modalities.soundstorm.SoundStorm.load(OUT)`. The checkpoint is a state dict (or a
training checkpoint with it under "model"); its shapes give the config, except the number of
attention heads (`--heads`, 8 for AnyGPT's); a directory of safetensors or .bin shards works
too. Two key layouts are read: AnyGPT's copy of the
fork (`conv.net1` / `conv.ds_conv` / `conv.net2`) and the fork's own (`conv.net.N`). Missing,
unknown or wrongly shaped tensors are refused with their names; nothing is left behind on error.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from anygpt_jax import storage
from anygpt_jax.modalities.soundstorm import expected_param_shapes, save_soundstorm
from anygpt_jax.modalities.soundstorm_model import SoundStormConfig

from .common import (
    ConversionError,
    TensorReader,
    check_paths,
    load_torch_state_dict,
    output_dir,
    run_conversion,
)
from .encodec import TorchTensors

LAYER = "net.conformer.layers.{i}."

# Per block: our name -> (torch key under the block, transform). Linear weights (out, in) are
# transposed to kernels (in, out); 1x1 convs (out, in, 1) likewise; the depthwise conv
# (channels, 1, k) becomes (k, channels); the channel norm's gamma (1, C, 1) becomes (C,).
_LINEAR = "linear"
_COMMON_BLOCK = {
    "attn/norm/scale": ("attn.norm.weight", None),
    "attn/norm/bias": ("attn.norm.bias", None),
    "attn/query/kernel": ("attn.fn.to_q.weight", _LINEAR),
    "attn/key_value/kernel": ("attn.fn.to_kv.weight", _LINEAR),
    "attn/out/kernel": ("attn.fn.to_out.weight", _LINEAR),
    "attn/out/bias": ("attn.fn.to_out.bias", None),
    "post_norm/scale": ("post_norm.weight", None),
    "post_norm/bias": ("post_norm.bias", None),
}
for _ff in ("ff1", "ff2"):
    _COMMON_BLOCK.update({
        f"{_ff}/norm/scale": (f"{_ff}.fn.norm.weight", None),
        f"{_ff}/norm/bias": (f"{_ff}.fn.norm.bias", None),
        f"{_ff}/fc1/kernel": (f"{_ff}.fn.fn.net.0.weight", _LINEAR),
        f"{_ff}/fc1/bias": (f"{_ff}.fn.fn.net.0.bias", None),
        f"{_ff}/fc2/kernel": (f"{_ff}.fn.fn.net.3.weight", _LINEAR),
        f"{_ff}/fc2/bias": (f"{_ff}.fn.fn.net.3.bias", None),
    })

# Where each layout keeps the convolution module (AnyGPT's copy split the fork's Sequential
# in three so the depthwise conv can take a padding mask).
CONV_LAYOUTS = {
    "anygpt": {"norm": "conv.net1.0", "pointwise_in": "conv.net1.2",
               "depthwise": "conv.ds_conv.conv", "chan_norm": "conv.net2.1",
               "pointwise_out": "conv.net2.2"},
    "fork": {"norm": "conv.net.0", "pointwise_in": "conv.net.2", "depthwise": "conv.net.4.conv",
             "chan_norm": "conv.net.6", "pointwise_out": "conv.net.7"},
}

TOP_LEVEL = {
    "semantic_embed/embedding": ("semantic_token_emb.weight", None),
    "code_embed/embedding": ("net.code_embeds.weight", None),
    "heads/kernel": ("net.heads.0.weight", _LINEAR),
    "heads/bias": ("net.heads.0.bias", None),
    "logits_norm/scale": ("net.to_logits.0.weight", None),
    "logits_norm/bias": ("net.to_logits.0.bias", None),
    "logits_kernel": ("net.to_logits.2.weight", None),  # EinMix 'gq d l': already (Q, dim, L)
    "logits_bias": ("net.to_logits.2.bias", "einmix_bias"),  # einops keeps it (1, 1, Q, L)
}

# Buffers some versions save; all are recomputed here.
IGNORED = re.compile(r"(net\.)?(conformer\.rotary_emb\.inv_freq|quantizer_offsets|mask_tokens)$")
UNSUPPORTED = {
    "net.embedding_proj.": "grouped quantizers (grouped_quantizers > 1)",
    "net.conformer.rel_pos_bias.": "T5 relative position bias (t5_rel_pos_bias=True)",
    "to_value_residual_mix": "value-residual attention (soundstorm-pytorch >= 0.5)",
    ".branch.": "hyper-connection residual streams (soundstorm-pytorch >= 0.5)",
}


def block_table(layout: str) -> dict[str, tuple[str, str | None]]:
    """Our per-block parameter name -> (torch key under `net.conformer.layers.{i}.`, transform)."""
    conv = CONV_LAYOUTS[layout]
    table = dict(_COMMON_BLOCK)
    table.update({
        "conv/norm/scale": (f"{conv['norm']}.weight", None),
        "conv/norm/bias": (f"{conv['norm']}.bias", None),
        "conv/pointwise_in/kernel": (f"{conv['pointwise_in']}.weight", "conv1x1"),
        "conv/pointwise_in/bias": (f"{conv['pointwise_in']}.bias", None),
        "conv/depthwise_kernel": (f"{conv['depthwise']}.weight", "depthwise"),
        "conv/depthwise_bias": (f"{conv['depthwise']}.bias", None),
        "conv/chan_norm_scale": (f"{conv['chan_norm']}.gamma", "gamma"),
        "conv/pointwise_out/kernel": (f"{conv['pointwise_out']}.weight", "conv1x1"),
        "conv/pointwise_out/bias": (f"{conv['pointwise_out']}.bias", None),
    })
    return table


def transform(x: np.ndarray, how: str | None, key: str) -> np.ndarray:
    """A torch tensor -> our layout, as the key table's `how` says (see above)."""
    if how == "einmix_bias":
        return x.reshape(x.shape[-2:]) if x.ndim >= 2 and x.size == np.prod(x.shape[-2:]) else x
    expected_ndim = {None: x.ndim, _LINEAR: 2, "conv1x1": 3, "depthwise": 3, "gamma": 3}[how]
    if x.ndim != expected_ndim:
        raise ConversionError(f"{key}: expected a {expected_ndim}-d tensor, got shape {x.shape}")
    if how == _LINEAR:
        return x.T
    if how == "conv1x1":
        return x[:, :, 0].T if x.shape[2] == 1 else x  # a wrong kernel size fails the shape check
    if how == "depthwise":
        return x[:, 0, :].T if x.shape[1] == 1 else x
    if how == "gamma":
        return x.reshape(-1) if x.shape[0] == 1 and x.shape[2] == 1 else x
    return x


def detect_layout(keys: set[str], where: str) -> str:
    """'anygpt' or 'fork' from the keys; refuses variants of the architecture it cannot run."""
    for marker, feature in UNSUPPORTED.items():
        hits = sorted(k for k in keys if marker in k)
        if hits:
            raise ConversionError(f"{where}: {feature} is not supported (e.g. {hits[0]!r})")
    for layout, names in CONV_LAYOUTS.items():
        if LAYER.format(i=0) + names["depthwise"] + ".weight" in keys:
            return layout
    raise ConversionError(
        f"{where}: no SoundStorm conformer found (expected "
        f"{LAYER.format(i=0) + CONV_LAYOUTS['anygpt']['depthwise']}.weight or "
        f"{LAYER.format(i=0) + CONV_LAYOUTS['fork']['depthwise']}.weight)")


def config_from_tensors(t: TorchTensors, layout: str, heads: int) -> SoundStormConfig:
    """Reads the architecture off the tensor shapes (attention heads excepted)."""
    def shape(key: str) -> tuple[int, ...]:
        return tuple(t.get(key).shape)

    numbered = (re.match(r"net\.conformer\.layers\.(\d+)\.", k) for k in t.keys)
    layer_ids = {int(m.group(1)) for m in numbered if m}
    depth = len(layer_ids)
    if layer_ids != set(range(depth)):
        raise ConversionError(f"{t.source}: conformer layers are not numbered 0..{depth - 1}: "
                              f"{sorted(layer_ids)}")
    num_semantic, dim = shape("semantic_token_emb.weight")
    logits_shape = shape("net.to_logits.2.weight")
    if len(logits_shape) != 3:
        raise ConversionError(f"{t.source}: net.to_logits.2.weight: expected (quantizers, dim, "
                              f"codes), got {logits_shape}")
    num_q, _, codebook = logits_shape
    first, conv = LAYER.format(i=0), CONV_LAYOUTS[layout]
    inner = shape(first + "attn.fn.to_q.weight")[0]
    if heads < 1 or inner % heads:
        raise ConversionError(f"{t.source}: attention width {inner} is not divisible by "
                              f"--heads {heads}")
    depthwise = shape(first + conv["depthwise"] + ".weight")
    ff = shape(first + "ff1.fn.fn.net.0.weight")[0]
    for what, value in (("feed-forward width", ff), ("conv width", depthwise[0])):
        if value % dim:
            raise ConversionError(f"{t.source}: {what} {value} is not a multiple of dim {dim}")
    try:
        return SoundStormConfig(
            dim=dim, depth=depth, heads=heads, dim_head=inner // heads, ff_mult=ff // dim,
            conv_expansion=depthwise[0] // dim, conv_kernel=depthwise[-1], codebook_size=codebook,
            num_quantizers=num_q, num_semantic=num_semantic)
    except ValueError as e:
        raise ConversionError(f"{t.source}: {e}") from e


def params_from_torch(t: TorchTensors, config: SoundStormConfig, layout: str
                      ) -> dict[str, np.ndarray]:
    """Maps a state dict onto SoundStormNet(config)'s flat parameters (layers stacked)."""
    expected = expected_param_shapes(config)
    params: dict[str, np.ndarray] = {}

    def take(key: str, how: str | None, want: tuple[int, ...]) -> np.ndarray:
        value = transform(t.get(key), how, key)
        if value.shape != want:
            raise ConversionError(f"{t.source}: {key}: shape {t.get(key).shape} does not fit "
                                  f"the model (expected {want} after conversion)")
        return value

    for name, (key, how) in TOP_LEVEL.items():
        params[name] = take(key, how, expected[name])
    for name, (key, how) in block_table(layout).items():
        want = expected[f"conformer/layers/{name}"][1:]
        params[f"conformer/layers/{name}"] = np.stack(
            [take(LAYER.format(i=i) + key, how, want) for i in range(config.depth)])
    unused = sorted(k for k in t.keys - t.used if not IGNORED.search(k))
    if unused:
        raise ConversionError(f"{t.source}: unexpected tensors {unused[:8]}"
                              f"{' ...' if len(unused) > 8 else ''}")
    return params


def read_tensors(ckpt: str) -> TorchTensors:
    """The tensors of a .pt state dict file, or of a directory of safetensors / .bin shards."""
    if storage.isdir(ckpt):
        reader = TensorReader(ckpt)
        return TorchTensors(reader.keys(), reader.get, ckpt)
    return TorchTensors.from_state_dict(load_torch_state_dict(ckpt), ckpt)


def convert(ckpt: str, out: str, heads: int = 8) -> str:
    """Converts a SoundStorm checkpoint (file or shard directory) into the directory `out`."""
    check_paths(inputs=(ckpt,), outputs=(out,))
    tensors = read_tensors(ckpt)
    layout = detect_layout(tensors.keys, ckpt)
    config = config_from_tensors(tensors, layout, heads)
    tensors.used.clear()  # reading shapes is not using a tensor
    params = params_from_torch(tensors, config, layout)
    with output_dir(out) as tmp:
        save_soundstorm(tmp, config, params,
                        {"checkpoint": storage.path(ckpt).name, "layout": layout})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.soundstorm",
        description="Convert a SoundStorm checkpoint (soundstorm-speechtokenizer / AnyGPT's "
                    "speechtokenizer_soundstorm_mls.pt) into an anygpt_jax directory.")
    parser.add_argument("--ckpt", required=True,
                        help="the SoundStorm state dict (.pt), or a directory of safetensors")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    parser.add_argument("--heads", type=int, default=8,
                        help="attention heads (not stored in the checkpoint; AnyGPT's: 8)")
    args = parser.parse_args(argv)
    return run_conversion(lambda: convert(args.ckpt, args.out, args.heads), args.out)


if __name__ == "__main__":
    sys.exit(main())
