"""SpeechTokenizer (ZhangXInFD/SpeechTokenizer: config.json + ckpt.dev) -> an anygpt_jax codec dir.

    python -m converters.speechtokenizer --config config.json --ckpt ckpt.dev --out OUT

The output (config.json + params.safetensors) loads with
`anygpt_jax.modalities.speech.SpeechTokenizer.load(OUT)`. Weight norm is folded (either key
style); the semantic-distillation head `transform.*` and the codebooks' training buffers are
dropped, as encode/decode never use them. Missing, unknown or wrongly shaped tensors are
refused with their names, and nothing is left behind on error.
"""

from __future__ import annotations

import argparse
import sys

from anygpt_jax.modalities.audio_layers import SEANetConfig
from anygpt_jax.modalities.codec import save_codec

from .common import (
    ConversionError,
    check_paths,
    load_torch_state_dict,
    output_dir,
    read_json,
    run_conversion,
)
from .encodec import TorchNames, TorchTensors, seanet_params_from_torch

KIND = "speechtokenizer"

SPEECHTOKENIZER_NAMES = TorchNames(
    encoder="encoder.model.", decoder="decoder.model.", conv="conv.conv", convtr="convtr.convtr",
    codebook="quantizer.vq.layers.{q}._codebook.embed",
    ignored=r"transform\.(weight|bias)"
            r"|quantizer\.vq\.layers\.\d+\._codebook\.(inited|cluster_size|embed_avg)",
)

# Fields of SpeechTokenizer's config.json that shape the model; the rest are training settings.
_REQUIRED = ("n_filters", "strides", "dimension", "bidirectional", "dilation_base",
             "residual_kernel_size", "n_residual_layers", "lstm_layers", "activation",
             "sample_rate", "codebook_size", "n_q")


def seanet_config_from_speechtokenizer(cfg: dict, where: str) -> SEANetConfig:
    """SpeechTokenizer's config.json -> SEANetConfig (its SEANet defaults filled in)."""
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ConversionError(f"{where}: missing config fields {missing}")
    if cfg["activation"] != "ELU":
        raise ConversionError(f"{where}: activation {cfg['activation']!r} unsupported (ELU only)")
    return SEANetConfig(
        sample_rate=int(cfg["sample_rate"]), dimension=int(cfg["dimension"]),
        n_filters=int(cfg["n_filters"]), ratios=tuple(int(s) for s in cfg["strides"]),
        n_q=int(cfg["n_q"]), codebook_size=int(cfg["codebook_size"]),
        n_residual_layers=int(cfg["n_residual_layers"]),
        residual_kernel_size=int(cfg["residual_kernel_size"]),
        dilation_base=int(cfg["dilation_base"]), lstm_layers=int(cfg["lstm_layers"]),
        encoder_bidirectional=bool(cfg["bidirectional"]),
        # SpeechTokenizer's SEANet defaults: non-causal, reflect, 1x1-conv shortcuts, k7.
        causal=False, pad_mode="reflect", true_skip=False, compress=2,
        kernel_size=7, last_kernel_size=7,
    )


def convert(config: str, ckpt: str, out: str) -> str:
    """Converts a SpeechTokenizer checkpoint (a torch state dict file) into `out`."""
    check_paths(inputs=(config, ckpt), outputs=(out,))

    st_config = read_json(config)
    seanet = seanet_config_from_speechtokenizer(st_config, config)
    state = load_torch_state_dict(ckpt)
    tensors = TorchTensors.from_state_dict(state, ckpt)
    params = seanet_params_from_torch(tensors, seanet, SPEECHTOKENIZER_NAMES)
    with output_dir(out) as tmp:
        save_codec(tmp, KIND, seanet, params, st_config)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.speechtokenizer",
        description="Convert SpeechTokenizer weights into an anygpt_jax codec directory.")
    parser.add_argument("--config", required=True, help="SpeechTokenizer config.json")
    parser.add_argument("--ckpt", required=True, help="SpeechTokenizer checkpoint (ckpt.dev)")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    args = parser.parse_args(argv)
    return run_conversion(lambda: convert(args.config, args.ckpt, args.out), args.out)


if __name__ == "__main__":
    sys.exit(main())
