"""laion_clap checkpoints -> a transformers ClapModel directory (model, feature extractor,
RoBERTa tokenizer).

    python -m converters.laion_clap --ckpt music_audioset_epoch_15_esc_90.14.pt \\
        --roberta_dir roberta-base --out OUT

The CLAP score runs laion_clap checkpoints through transformers' CLAP (`evaluation.models.HFClap`
on OUT, or `LaionClap`, which converts in memory): laion_clap itself imports torchvision, and
the transformers port is the same network (laion/larger_clap_music is the music checkpoint
AnyGPT's evaluation uses, converted). Supported: the HTSAT audio tower without feature fusion
(the 'unfused' checkpoints: music_*, 630k-best, 630k-audioset-best) and the RoBERTa text tower.
Geometry is read from tensor shapes; the text tower's head count, which no tensor shows, is
RoBERTa's 64-wide heads. Tensors inference does not use (the AudioSet classifier head, the
training-time transform heads, the STFT / mel buffers the feature extractor replaces, attention
masks rebuilt at run time) are dropped; anything else unknown, missing or mis-shaped is refused
by name. laion_clap loads its tokenizer as 'roberta-base' from the Hugging Face cache; here it is
a local directory (`--roberta_dir`) so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Any

import gin

from anygpt_jax import storage
from anygpt_jax.evaluation.models import HFClap, require_path

from .common import (
    ConversionError,
    check_paths,
    load_torch_state_dict,
    local_dir,
    output_dir,
    run_conversion,
    strip_key_prefix,
)

AUDIO = "audio_model.audio_encoder."
# laion_clap's HTSAT front end (its audio_cfg for every released checkpoint): 10 s at 48 kHz,
# 1024-point Hann STFT, hop 480, 64 slaney mel bands from 50 Hz to 14 kHz, power in dB.
SAMPLE_RATE, CLIP_SAMPLES = 48000, 480000
FRONT_END = dict(feature_size=64, sampling_rate=SAMPLE_RATE, fft_window_size=1024, hop_length=480,
                 max_length_s=CLIP_SAMPLES // SAMPLE_RATE, frequency_min=50, frequency_max=14000,
                 top_db=None, truncation="rand_trunc", padding="repeatpad")  # fmt: skip
IGNORED = re.compile(
    r"audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\..*"
    r"|audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask"
    r"|(text|audio)_transform\..*|text_branch\.embeddings\.position_ids"
)
FUSION = re.compile(r"audio_branch\.(patch_embed\.)?(mel_conv2d|fusion_model)\..*")
BLOCK_RENAMES = (
    ("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
    ("attn.proj.", "attention.output.dense."), ("attn.", "attention.self."),
    ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."),
)  # fmt: skip


def _shape(state: dict, key: str, where: str) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(f"{where}: missing tensor {key!r} (not an HTSAT + RoBERTa CLAP?)")
    return tuple(state[key].shape)


def _blocks(state: dict, prefix: str) -> list[int]:
    """Blocks per stage under `prefix`layers.I.blocks.J."""
    pattern = re.compile(re.escape(prefix) + r"layers\.(\d+)\.blocks\.(\d+)\.")
    counts: dict[int, set[int]] = {}
    for key in state:
        if m := pattern.match(key):
            counts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return [len(counts[i]) for i in sorted(counts)]


def clap_config(state: dict, where: str):
    """transformers ClapConfig for the laion_clap HTSAT + RoBERTa CLAP whose tensors are `state`."""
    import transformers

    fused = sorted(k for k in state if FUSION.fullmatch(k))
    if fused:
        raise ConversionError(f"{where}: feature-fusion checkpoints are not supported ({fused[0]})")
    a = "audio_branch."
    patch_width, _, patch, _ = _shape(state, a + "patch_embed.proj.weight", where)
    depths = _blocks(state, a)
    if not depths:
        raise ConversionError(f"{where}: no HTSAT blocks ({a}layers.*.blocks.*)")
    heads = [_shape(state, f"{a}layers.{i}.blocks.0.attn.relative_position_bias_table", where)[1]
             for i in range(len(depths))]  # fmt: skip
    table = _shape(state, f"{a}layers.0.blocks.0.attn.relative_position_bias_table", where)[0]
    window = (math.isqrt(table) + 1) // 2
    mlp = _shape(state, f"{a}layers.0.blocks.0.mlp.fc1.weight", where)[0]
    vocab, width = _shape(state, "text_branch.embeddings.word_embeddings.weight", where)
    projection = _shape(state, "audio_projection.0.weight", where)[0]
    text = dict(
        vocab_size=vocab, hidden_size=width, num_attention_heads=width // 64,
        num_hidden_layers=len({k.split(".")[3] for k in state
                               if k.startswith("text_branch.encoder.layer.")}),
        intermediate_size=_shape(state, "text_branch.encoder.layer.0.intermediate.dense.weight",
                                 where)[0],
        max_position_embeddings=_shape(state, "text_branch.embeddings.position_embeddings.weight",
                                       where)[0],
        type_vocab_size=_shape(state, "text_branch.embeddings.token_type_embeddings.weight",
                               where)[0],
        projection_dim=projection, projection_hidden_act="relu",
    )  # fmt: skip
    audio = dict(
        patch_embeds_hidden_size=patch_width, patch_size=patch, patch_stride=[patch, patch],
        depths=depths, num_attention_heads=heads, window_size=window,
        hidden_size=_shape(state, a + "norm.weight", where)[0], mlp_ratio=mlp / patch_width,
        num_mel_bins=_shape(state, a + "bn0.weight", where)[0], spec_size=256,
        enable_fusion=False, projection_dim=projection, projection_hidden_act="relu",
    )  # fmt: skip
    return transformers.ClapConfig(text_config=text, audio_config=audio, projection_dim=projection)


def _target_names(key: str) -> list[tuple[str, int | None]]:
    """laion_clap tensor -> [(ClapModel tensor, chunk of a fused q/k/v or None)]."""
    for side in ("text", "audio"):
        for index, linear in (("0", "linear1"), ("2", "linear2")):
            prefix = f"{side}_projection.{index}."
            if key.startswith(prefix):
                return [(f"{side}_projection.{linear}.{key[len(prefix):]}", None)]
    if key in ("logit_scale_a", "logit_scale_t"):
        return [(key, None)]
    if key.startswith("text_branch."):
        return [("text_model." + key[len("text_branch.") :], None)]
    if not key.startswith("audio_branch."):
        return []
    name = key[len("audio_branch.") :].replace("bn0.", "batch_norm.", 1)
    if ".blocks." in name:
        if ".attn.qkv." in name:
            p = name.split(".")[-1]
            base = name.split(".attn.qkv.")[0]
            return [(f"{AUDIO}{base}.attention.self.{q}.{p}", i)
                    for i, q in enumerate(("query", "key", "value"))]  # fmt: skip
        for old, new in BLOCK_RENAMES:
            if f".{old}" in name:
                name = name.replace(f".{old}", f".{new}", 1)
                break
    return [(AUDIO + name, None)]


def clap_model(state: dict, where: str):
    """A ClapModel (fp32, eval mode) holding the laion_clap tensors `state`; every tensor of
    either side is accounted for, so nothing unknown or missing passes silently."""
    import torch
    import transformers

    config = clap_config(state, where)
    model = transformers.ClapModel(config).eval()
    target = model.state_dict()
    converted: dict[str, Any] = {}
    unknown, wrong = [], []
    for key, tensor in state.items():
        if IGNORED.fullmatch(key):
            continue
        names = _target_names(key)
        if not names or any(name not in target for name, _ in names):
            unknown.append(key)
            continue
        for name, chunk in names:
            value = tensor if chunk is None else tensor.chunk(3, dim=0)[chunk]
            if tuple(value.shape) != tuple(target[name].shape):
                wrong.append(f"{key} {tuple(tensor.shape)}")
                break
            converted[name] = value.to(target[name].dtype)
    # Buffers the model rebuilds itself (index tables, position ids) need not come from `state`.
    derived = [k for k in target if k not in converted and re.search(
        r"relative_position_index|position_ids|token_type_ids", k)]  # fmt: skip
    missing = sorted(k for k in target if k not in converted and k not in derived)
    if unknown or wrong or missing:
        raise ConversionError(f"{where}: unknown tensors {sorted(unknown)[:8]}, mis-shaped "
                              f"{wrong[:8]}, missing {missing[:8]}")  # fmt: skip
    for k in derived:
        source = "audio_branch." + k[len(AUDIO) :].replace("attention.self.", "attn.")
        if source in state and not torch.equal(state[source].to(target[k].dtype), target[k]):
            raise ConversionError(f"{where}: {source} is not HTSAT's window index table")
        converted[k] = target[k]
    model.load_state_dict(converted, strict=True)
    return model


def feature_extractor():
    """ClapFeatureExtractor set to laion_clap's non-fusion HTSAT front end."""
    import transformers

    return transformers.ClapFeatureExtractor(**FRONT_END)


def _check_tokenizer_dir(roberta_dir: str | None) -> None:
    if not roberta_dir or not storage.isdir(roberta_dir):
        raise FileNotFoundError(f"--roberta_dir {roberta_dir}: not a directory (the text tower's "
                                "tokenizer, e.g. a local copy of roberta-base)")  # fmt: skip
    files = set(storage.listdir(roberta_dir))
    # transformers builds a tokenizer of special tokens alone from a directory without files.
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= files:
        raise ConversionError(f"{roberta_dir}: no RoBERTa tokenizer files (tokenizer.json, or "
                              "vocab.json and merges.txt)")  # fmt: skip


def processor(roberta_dir: str, vocab_size: int | None = None):
    """ClapProcessor: laion_clap's front end and the RoBERTa tokenizer in `roberta_dir`
    (checked against the text tower's `vocab_size` when given)."""
    import transformers

    _check_tokenizer_dir(roberta_dir)
    try:
        with storage.local_copy(roberta_dir) as local:  # transformers reads local files only
            tokenizer = transformers.RobertaTokenizer.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ConversionError(f"{roberta_dir}: unreadable RoBERTa tokenizer ({e})") from e
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ConversionError(f"{roberta_dir}: {len(tokenizer)} tokens, more than the text "
                              f"tower's {vocab_size} embeddings (not its tokenizer?)")  # fmt: skip
    return transformers.ClapProcessor(feature_extractor=feature_extractor(), tokenizer=tokenizer)


def convert(ckpt: str, out_dir: str | None = None, roberta_dir: str | None = None) -> Any:
    """ClapModel from a laion_clap checkpoint; with `out_dir`, also saved there with its
    ClapProcessor (needs `roberta_dir`; an existing non-empty `out_dir` is refused)."""
    check_paths(inputs=(ckpt, roberta_dir), outputs=(out_dir,))
    if out_dir is not None:
        _check_tokenizer_dir(roberta_dir)  # fail before the conversion, not after
    state = strip_key_prefix(load_torch_state_dict(ckpt), "module.")
    model = clap_model(state, ckpt)
    if out_dir is not None:
        clap_processor = processor(roberta_dir, model.config.text_config.vocab_size)
        with output_dir(out_dir) as out, local_dir(out) as tmp:
            model.save_pretrained(tmp)
            clap_processor.save_pretrained(tmp)
    return model


@gin.configurable
class LaionClap(HFClap):
    """CLAP from a laion_clap checkpoint (e.g. music_audioset_epoch_15_esc_90.14.pt), converted
    in memory to transformers' CLAP by `convert` (convert once with this module's CLI and use
    HFClap to skip that); `roberta_dir` is the text tower's tokenizer (a local roberta-base)."""

    def __init__(self, weights: str = gin.REQUIRED, roberta_dir: str | None = None,
                 batch_size: int = 16):  # fmt: skip
        weights = require_path(weights, "LaionClap.weights (a laion_clap checkpoint)")
        roberta_dir = require_path(roberta_dir, "LaionClap.roberta_dir (a roberta-base tokenizer)")

        with storage.local_copy(weights) as local:
            model = convert(local)
        vocab_size = model.config.text_config.vocab_size
        with storage.local_copy(roberta_dir) as local:
            self._use(model, processor(local, vocab_size), batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.laion_clap",
        description="Convert a laion_clap checkpoint into a transformers ClapModel directory.",
    )
    parser.add_argument("--ckpt", required=True, help="laion_clap checkpoint (.pt)")
    parser.add_argument(
        "--roberta_dir", required=True, help="the text tower's tokenizer: a local roberta-base"
    )
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    args = parser.parse_args(argv)
    return run_conversion(lambda: convert(args.ckpt, args.out, args.roberta_dir), args.out)


if __name__ == "__main__":
    sys.exit(main())
