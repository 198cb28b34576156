"""Encodec (transformers' EncodecModel, e.g. facebook/encodec_32khz) -> an anygpt_jax codec dir.

    python -m converters.encodec --hf_dir DIR --out OUT
    python -m converters.encodec --safetensors FILE [--config config.json] --out OUT

The output (config.json + params.safetensors) loads with
`anygpt_jax.modalities.music.MusicTokenizer.load(OUT)`. Weight norm is folded; both key styles
(`weight_g`/`weight_v` and `parametrizations.weight.original0/1`) are read. Missing, unknown or
wrongly shaped tensors are refused with their names, and nothing is left behind on error.

The SEANet key table here also serves converters/speechtokenizer.py: SpeechTokenizer reuses
Encodec's modules, so only the key prefixes differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable

import numpy as np

from anygpt_jax import storage
from anygpt_jax.modalities.audio_layers import SEANetConfig, seanet_layout
from anygpt_jax.modalities.codec import check_params, save_codec

from .common import (
    ConversionError,
    SafetensorsFile,
    TensorReader,
    check_paths,
    fold_weight_norm,
    output_dir,
    read_json,
    run_conversion,
    torch_to_numpy,
)

KIND = "encodec"


@dataclasses.dataclass(frozen=True)
class TorchNames:
    """Where a reference implementation keeps the SEANet codec's tensors."""

    encoder: str  # prefix of the encoder's Sequential, up to the index
    decoder: str
    conv: str  # path from a conv layer to its nn.Conv1d
    convtr: str
    codebook: str  # format string with {q}
    ignored: str  # regex of tensors that inference does not need


ENCODEC_NAMES = TorchNames(
    encoder="encoder.layers.", decoder="decoder.layers.", conv="conv", convtr="conv",
    codebook="quantizer.layers.{q}.codebook.embed",
    ignored=r"quantizer\.layers\.\d+\.codebook\.(inited|cluster_size|embed_avg)",
)


class TorchTensors:
    """Reads tensors by name and remembers which were used (the rest must be ignorable)."""

    def __init__(self, keys: list[str], get: Callable[[str], np.ndarray], source: str):
        self.keys, self._get, self.source, self.used = set(keys), get, source, set()

    @classmethod
    def from_state_dict(cls, state: dict, source: str = "state dict") -> TorchTensors:
        """Wraps an in-memory torch state dict."""
        return cls(list(state), lambda k: torch_to_numpy(state[k]), source)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def get(self, key: str) -> np.ndarray:
        if key not in self.keys:
            raise ConversionError(f"{self.source}: missing tensor {key!r}")
        self.used.add(key)
        return np.asarray(self._get(key), dtype=np.float32)

    def weight(self, module: str) -> np.ndarray:
        """A module's weight, with weight norm folded if it has it (either key style)."""
        for g, v in (("weight_g", "weight_v"),
                     ("parametrizations.weight.original0", "parametrizations.weight.original1")):
            if f"{module}.{g}" in self.keys:
                try:
                    return fold_weight_norm(self.get(f"{module}.{g}"), self.get(f"{module}.{v}"))
                except ConversionError as e:
                    raise ConversionError(f"{self.source}: {module}: {e}") from e
        return self.get(f"{module}.weight")


def conv_params(t: TorchTensors, module: str, transposed: bool) -> dict[str, np.ndarray]:
    """A torch Conv1d / ConvTranspose1d at `module` -> {"kernel": (k, in, out), "bias"}."""
    weight = t.weight(module)
    # torch Conv1d (out, in, k) and ConvTranspose1d (in, out, k) -> (k, in, out)
    kernel = weight.transpose(2, 0, 1) if transposed else weight.transpose(2, 1, 0)
    return {"kernel": kernel, "bias": t.get(f"{module}.bias")}


def lstm_params(t: TorchTensors, module: str, num_layers: int, bidirectional: bool) -> dict:
    """A torch nn.LSTM at `module` -> audio_layers.LSTM parameters (its layout, biases summed)."""
    out = {}
    for n in range(num_layers):
        for s in ["", "_reverse"] if bidirectional else [""]:
            out[f"w_ih_l{n}{s}"] = t.get(f"{module}.weight_ih_l{n}{s}")
            out[f"w_hh_l{n}{s}"] = t.get(f"{module}.weight_hh_l{n}{s}")
            out[f"bias_l{n}{s}"] = (t.get(f"{module}.bias_ih_l{n}{s}")
                                    + t.get(f"{module}.bias_hh_l{n}{s}"))
    return out


def seanet_params_from_torch(t: TorchTensors, config: SEANetConfig,
                             names: TorchNames) -> dict[str, np.ndarray]:
    """Maps a reference state dict onto the flat parameters of SEANetCodec(config)."""
    params: dict[str, np.ndarray] = {}
    for part, prefix in (("encoder", names.encoder), ("decoder", names.decoder)):
        for i, (kind, kwargs) in enumerate(seanet_layout(config, decoder=part == "decoder")):
            base = f"{prefix}{i}"
            if kind in ("conv", "convtr"):
                layer = conv_params(t, f"{base}.{names.conv if kind == 'conv' else names.convtr}",
                              kind == "convtr")
            elif kind == "res":
                layer = {}
                subs = ["block.1", "block.3"] + ([] if config.true_skip else ["shortcut"])
                for sub in subs:
                    conv = conv_params(t, f"{base}.{sub}.{names.conv}", False)
                    layer.update({f"{sub.replace('.', '_')}/{k}": v for k, v in conv.items()})
            elif kind == "lstm":
                layer = lstm_params(t, f"{base}.lstm", config.lstm_layers, kwargs["bidirectional"])
            else:
                continue
            params.update({f"{part}/layers_{i}/{k}": v for k, v in layer.items()})
    params["codebooks"] = np.stack(
        [t.get(names.codebook.format(q=q)) for q in range(config.n_q)])
    _check(params, config, t, names)
    return params


def _check(params: dict, config: SEANetConfig, t: TorchTensors, names: TorchNames) -> None:
    try:
        check_params(config, params, where=t.source)
    except ValueError as e:
        raise ConversionError(f"{e} (do config and checkpoint belong together?)") from e
    unknown = sorted(k for k in t.keys - t.used if not re.fullmatch(names.ignored, k))
    if unknown:
        raise ConversionError(f"{t.source}: unexpected tensors (config and checkpoint disagree?): "
                              + ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else ""))


def seanet_config_from_encodec(hf: dict, where: str) -> SEANetConfig:
    """transformers' EncodecConfig (as a dict) -> SEANetConfig; unsupported options refused."""
    c = {**_ENCODEC_DEFAULTS, **hf}
    unsupported = {
        "norm_type": c["norm_type"] != "weight_norm",
        "normalize": bool(c["normalize"]),
        "chunk_length_s": c["chunk_length_s"] is not None,
        "audio_channels": c["audio_channels"] != 1,
        "codebook_dim": c.get("codebook_dim") not in (None, c["hidden_size"]),
        "pad_mode": c["pad_mode"] not in ("reflect", "constant"),
    }
    bad = [f"{k}={c.get(k)!r}" for k, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ConversionError(f"{where}: unsupported Encodec options: {', '.join(bad)}")
    ratios = tuple(int(r) for r in c["upsampling_ratios"])
    frame_rate = math.ceil(c["sampling_rate"] / int(np.prod(ratios)))
    bits = math.ceil(math.log2(c["codebook_size"]))
    # transformers' EncodecConfig.num_quantizers: RVQ layers in the checkpoint.
    n_q = int(1000 * c["target_bandwidths"][-1] // (frame_rate * bits))
    if n_q < 1:
        raise ConversionError(f"{where}: target_bandwidths {c['target_bandwidths']} give no "
                              "quantizer")
    return SEANetConfig(
        sample_rate=int(c["sampling_rate"]), dimension=int(c["hidden_size"]),
        n_filters=int(c["num_filters"]), ratios=ratios, n_q=n_q,
        codebook_size=int(c["codebook_size"]), channels=1,
        n_residual_layers=int(c["num_residual_layers"]), kernel_size=int(c["kernel_size"]),
        last_kernel_size=int(c["last_kernel_size"]),
        residual_kernel_size=int(c["residual_kernel_size"]),
        dilation_base=int(c["dilation_growth_rate"]), causal=bool(c["use_causal_conv"]),
        pad_mode=c["pad_mode"], compress=int(c["compress"]),
        true_skip=not c["use_conv_shortcut"], lstm_layers=int(c["num_lstm_layers"]),
        encoder_bidirectional=False, trim_right_ratio=float(c["trim_right_ratio"]),
    )


# transformers' EncodecConfig defaults, for config.json files that omit a field.
_ENCODEC_DEFAULTS = dict(
    target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0], sampling_rate=24000, audio_channels=1,
    normalize=False, chunk_length_s=None, hidden_size=128, num_filters=32,
    num_residual_layers=1, upsampling_ratios=[8, 5, 4, 2], norm_type="weight_norm",
    kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2,
    use_causal_conv=True, pad_mode="reflect", compress=2, num_lstm_layers=2,
    trim_right_ratio=1.0, codebook_size=1024, codebook_dim=None, use_conv_shortcut=True,
)


def convert(out: str, hf_dir: str | None = None, safetensors: str | None = None,
            config: str | None = None, key_prefix: str = "") -> str:
    """Converts an Encodec checkpoint (HF directory or one safetensors file) into `out`."""
    if (hf_dir is None) == (safetensors is None):
        raise ConversionError("give exactly one of hf_dir or safetensors")
    check_paths(inputs=(hf_dir, safetensors, config), outputs=(out,))
    if hf_dir is not None:
        config = config or storage.join(hf_dir, "config.json")
        reader = TensorReader(hf_dir)
        source = hf_dir
    else:
        if not storage.isfile(safetensors):
            raise ConversionError(f"missing file: {safetensors}")
        config = config or os.fspath(storage.path(safetensors).parent / "config.json")
        reader = SafetensorsFile(safetensors)
        source = safetensors
    hf_config = read_json(config)
    seanet = seanet_config_from_encodec(hf_config, config)
    keys = [k[len(key_prefix):] for k in reader.keys() if k.startswith(key_prefix)]
    if not keys:
        raise ConversionError(f"{source}: no tensors named {key_prefix!r}...")
    tensors = TorchTensors(keys, lambda k: reader.get(key_prefix + k), source)
    params = seanet_params_from_torch(tensors, seanet, ENCODEC_NAMES)
    with output_dir(out) as tmp:
        save_codec(tmp, KIND, seanet, params, hf_config)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.encodec",
        description="Convert transformers' Encodec weights into an anygpt_jax codec directory.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf_dir", help="directory with config.json and model weights")
    src.add_argument("--safetensors", help="one safetensors file of EncodecModel weights")
    parser.add_argument("--config", help="EncodecConfig JSON (default: config.json beside the "
                                         "weights)")
    parser.add_argument("--key_prefix", default="",
                        help="prefix to strip, e.g. 'audio_encoder.' for a MusicGen checkpoint")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    args = parser.parse_args(argv)
    return run_conversion(
        lambda: convert(args.out, args.hf_dir, args.safetensors, args.config, args.key_prefix),
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
