"""open_clip CLIP weights -> a transformers CLIPModel directory (model, tokenizer, processor).

    python -m converters.open_clip --weights open_clip_pytorch_model.bin --out OUT [--quick_gelu]
    python -m converters.open_clip --weights HUB_DIR --out OUT

The CLIP score runs open_clip checkpoints through transformers' CLIP (`evaluation.models.HFClip`
on OUT, or `OpenClip`, which converts in memory): open_clip itself imports torchvision, and the
transformers port is the same network. Supported are open_clip's ViT image tower with its
default text transformer (OpenAI's and LAION's ViT-B/L/H/g/bigG CLIPs); anything else (timm or
Hugging Face towers, attention pooling, layer scale, CoCa, SigLIP) is refused by name.

Weights are a file (.bin/.pt/.pth, a training checkpoint, OpenAI's TorchScript archives, or
.safetensors) or an open_clip hub directory (open_clip_config.json with its weights). Geometry
is read from tensor shapes; the MLP activation, which no tensor shows, comes from the hub
config's `quick_gelu` or from `--quick_gelu` (OpenAI-trained weights use it, LAION's ViT-H and
bigG do not). The tokenizer is CLIP's byte-level BPE, written as vocab.json / merges.txt from
`bpe_simple_vocab_16e6.txt.gz` (shipped with open_clip_torch and laion_clap; found in either when
installed, or given with --bpe_vocab).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import re
import sys
import zipfile
from typing import Any

import gin
import numpy as np

from anygpt_jax import storage
from anygpt_jax.evaluation.models import HFClip, require_path

from .common import (
    ConversionError,
    check_paths,
    load_torch_state_dict,
    local_dir,
    output_dir,
    read_json,
    run_conversion,
    strip_key_prefix,
)

HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP's BPE keeps the first 48,894 merges of the file; with 512 byte symbols and the two
# markers that makes the 49,408-token vocabulary.
NUM_MERGES = 49152 - 256 - 2
START, END = "<|startoftext|>", "<|endoftext|>"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Keys of OpenAI's TorchScript state dicts that are settings, not weights.
IGNORED = re.compile(r"input_resolution|context_length|vocab_size|attn_mask|.*\.attn_mask")
# open_clip model_cfg settings that change the network without changing any tensor name.
UNSUPPORTED_SETTINGS = {
    "vision_cfg": {
        "timm_model_name": None, "attentional_pool": False, "no_ln_pre": False,
        "final_ln_after_pool": False, "pool_type": "tok", "ls_init_value": None,
        "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
        "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
        "pos_embed_type": "learnable", "act_kwargs": None, "norm_kwargs": None,
        "block_type": None,
    },
    "text_cfg": {
        "hf_model_name": None, "embed_cls": False, "no_causal_mask": False,
        "final_ln_after_pool": False, "pool_type": "argmax", "proj_bias": False,
        "proj_type": "linear", "ls_init_value": None, "qk_norm": False,
        "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
        "scale_attn": False, "scale_fc": False, "act_kwargs": None, "norm_kwargs": None,
        "block_type": None,
    },
}  # fmt: skip


def read_weights(path: str) -> tuple[dict, dict]:
    """(state dict, open_clip config or {}) from a weights file or an open_clip hub directory
    (local or gs://; remote weights are downloaded)."""
    config: dict = {}
    if storage.isdir(path):
        config_path = storage.join(path, HUB_CONFIG)
        if not storage.isfile(config_path):
            raise ConversionError(f"{path}: not an open_clip directory (no {HUB_CONFIG})")
        config = read_json(config_path)
        files = [storage.join(path, n) for n in HUB_WEIGHTS]
        files = [f for f in files if storage.isfile(f)]
        if not files:
            raise ConversionError(f"{path}: no weights (expected one of {', '.join(HUB_WEIGHTS)})")
        path = files[0]
    if not storage.isfile(path):
        raise ConversionError(f"missing file: {path}")
    with storage.local_copy(path) as local:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(local)
        elif _is_torchscript(local):
            # OpenAI's released CLIPs are traced TorchScript archives, not torch.save files.
            import torch

            state = dict(torch.jit.load(local, map_location="cpu").state_dict())
        else:
            try:
                state = load_torch_state_dict(local)
            except ConversionError as e:  # named by the path given, not the download's
                raise ConversionError(str(e).replace(local, path)) from e
    return strip_key_prefix(strip_key_prefix(state, "module."), "_orig_mod."), config


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _count(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def _shape(state: dict, key: str, ndim: int, where: str) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(f"{where}: missing tensor {key!r} (not an open_clip ViT CLIP?)")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ConversionError(f"{where}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _check_settings(model_cfg: dict, where: str) -> None:
    for tower, defaults in UNSUPPORTED_SETTINGS.items():
        for key, value in (model_cfg.get(tower) or {}).items():
            if key in defaults and value not in (defaults[key], None, {}):
                raise ConversionError(
                    f"{where}: {tower}.{key}={value!r} is not supported (only open_clip's plain "
                    "ViT CLIP converts to transformers' CLIPModel)"
                )


def clip_config(state: dict, model_cfg: dict, quick_gelu: bool | None, where: str):
    """transformers CLIPConfig for the open_clip ViT CLIP whose tensors are `state`."""
    import transformers

    _check_settings(model_cfg, where)
    if quick_gelu is None:
        quick_gelu = model_cfg.get("quick_gelu")
    if quick_gelu is None:
        raise ConversionError(
            f"{where}: say which MLP activation the weights use (no tensor shows it): "
            "quick_gelu=True for OpenAI-trained CLIPs and their '-quickgelu' open_clip names, "
            "False for LAION's ViT-H-14 / ViT-g-14 / ViT-bigG-14"
        )
    v_width, _, patch, _ = _shape(state, "visual.conv1.weight", 4, where)
    positions = _shape(state, "visual.positional_embedding", 2, where)[0]
    grid = round((positions - 1) ** 0.5)
    if grid * grid + 1 != positions:
        raise ConversionError(f"{where}: visual.positional_embedding has {positions} rows, "
                              "not a square grid plus a class token")  # fmt: skip
    vocab, t_width = _shape(state, "token_embedding.weight", 2, where)
    context = _shape(state, "positional_embedding", 2, where)[0]
    embed_dim = _shape(state, "visual.proj", 2, where)[1]
    vision_cfg, text_cfg = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    # Head counts show in no tensor: open_clip's configs say them, else its 64-wide default.
    v_heads = v_width // vision_cfg.get("head_width", 64)
    t_heads = text_cfg.get("heads", t_width // 64)
    for tower, width, heads in (("vision", v_width, v_heads), ("text", t_width, t_heads)):
        if heads < 1 or width % heads:
            raise ConversionError(
                f"{where}: {tower} width {width} does not split into heads "
                "(give open_clip_config.json with head_width / heads)"
            )
    act = "quick_gelu" if quick_gelu else "gelu"
    return transformers.CLIPConfig(
        projection_dim=embed_dim,
        text_config=dict(
            vocab_size=vocab, hidden_size=t_width, max_position_embeddings=context,
            num_hidden_layers=_count(state, "transformer.resblocks."),
            num_attention_heads=t_heads,
            intermediate_size=_shape(state, "transformer.resblocks.0.mlp.c_fc.weight", 2,
                                     where)[0],
            hidden_act=act, projection_dim=embed_dim, layer_norm_eps=1e-5,
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        ),
        vision_config=dict(
            hidden_size=v_width, image_size=grid * patch, patch_size=patch, num_channels=3,
            num_hidden_layers=_count(state, "visual.transformer.resblocks."),
            num_attention_heads=v_heads,
            intermediate_size=_shape(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2,
                                     where)[0],
            hidden_act=act, projection_dim=embed_dim, layer_norm_eps=1e-5,
        ),
    )  # fmt: skip


def _block_names(ours: str, theirs: str) -> dict[str, tuple[str, str]]:
    """transformers name -> (open_clip name, how) for one residual block."""
    names = {}
    for p in ("weight", "bias"):
        for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            names[f"{ours}.self_attn.{proj}.{p}"] = (f"{theirs}.attn.in_proj_{p}", f"chunk{i}")
        names[f"{ours}.self_attn.out_proj.{p}"] = (f"{theirs}.attn.out_proj.{p}", "")
        names[f"{ours}.layer_norm1.{p}"] = (f"{theirs}.ln_1.{p}", "")
        names[f"{ours}.layer_norm2.{p}"] = (f"{theirs}.ln_2.{p}", "")
        names[f"{ours}.mlp.fc1.{p}"] = (f"{theirs}.mlp.c_fc.{p}", "")
        names[f"{ours}.mlp.fc2.{p}"] = (f"{theirs}.mlp.c_proj.{p}", "")
    return names


def name_table(config) -> dict[str, tuple[str, str]]:
    """Every CLIPModel weight -> (open_clip tensor name, transform)."""
    names = {
        "logit_scale": ("logit_scale", ""),
        "text_projection.weight": ("text_projection", "transpose"),
        "visual_projection.weight": ("visual.proj", "transpose"),
        "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", ""),
        "text_model.embeddings.position_embedding.weight": ("positional_embedding", ""),
        "vision_model.embeddings.class_embedding": ("visual.class_embedding", ""),
        "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", ""),
        "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", ""),
    }
    for p in ("weight", "bias"):
        names[f"text_model.final_layer_norm.{p}"] = (f"ln_final.{p}", "")
        names[f"vision_model.pre_layrnorm.{p}"] = (f"visual.ln_pre.{p}", "")
        names[f"vision_model.post_layernorm.{p}"] = (f"visual.ln_post.{p}", "")
    for i in range(config.text_config.num_hidden_layers):
        names |= _block_names(f"text_model.encoder.layers.{i}", f"transformer.resblocks.{i}")
    for i in range(config.vision_config.num_hidden_layers):
        names |= _block_names(f"vision_model.encoder.layers.{i}",
                              f"visual.transformer.resblocks.{i}")  # fmt: skip
    return names


def _transform(tensor, how: str):
    if how == "transpose":
        return tensor.T
    if how.startswith("chunk"):
        return tensor.chunk(3, dim=0)[int(how[-1])]
    return tensor


def clip_model(state: dict, config, where: str):
    """A CLIPModel (fp32, eval mode) holding the open_clip tensors `state`; every tensor of
    either side is used, so nothing unknown or missing passes silently."""
    import torch
    import transformers

    names = name_table(config)
    used = {theirs for theirs, _ in names.values()}
    unknown = sorted(k for k in state if k not in used and not IGNORED.fullmatch(k))
    missing = sorted({theirs for theirs, _ in names.values() if theirs not in state})
    if unknown or missing:
        raise ConversionError(f"{where}: unknown tensors {unknown[:8]}, missing {missing[:8]}")
    model = transformers.CLIPModel(config).eval()
    target = model.state_dict()
    converted, wrong = {}, []
    for ours, (theirs, how) in names.items():
        tensor = _transform(state[theirs], how).to(torch.float32).contiguous()
        if tuple(tensor.shape) != tuple(target[ours].shape):
            wrong.append(f"{theirs} {tuple(state[theirs].shape)}")
        converted[ours] = tensor
    if wrong:
        raise ConversionError(f"{where}: mis-shaped tensors {wrong[:8]}")
    model.load_state_dict(converted, strict=True)  # the table covers every CLIPModel weight
    return model


def find_bpe_vocab() -> str | None:
    """CLIP's BPE merges file from an installed open_clip_torch or laion_clap, if any."""
    for package, sub in (("open_clip", ""), ("laion_clap", "clap_module")):
        spec = importlib.util.find_spec(package)  # locates without importing (torchvision)
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(root, sub, BPE_FILE)
            if os.path.isfile(path):  # local: an installed package's data file
                return path
    return None


def write_tokenizer_files(bpe_vocab: str, out_dir: str) -> None:
    """vocab.json and merges.txt of CLIP's tokenizer from `bpe_simple_vocab_16e6.txt.gz`."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    try:
        text = gzip.decompress(storage.read_bytes(bpe_vocab)).decode("utf-8")
        lines = text.split("\n")[1 : NUM_MERGES + 1]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ConversionError(f"{bpe_vocab}: not CLIP's gzipped BPE merges file ({e})") from e
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ConversionError(f"{bpe_vocab}: expected {NUM_MERGES} merges of two symbols each")
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
    storage.write_text(
        storage.join(out_dir, "vocab.json"),
        json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False),
    )
    storage.write_text(
        storage.join(out_dir, "merges.txt"),
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
    )


def eval_pixels(images: list, size: int, mean: tuple, std: tuple) -> np.ndarray:
    """open_clip's eval image transform: shortest side to `size` (PIL bicubic), centre crop
    with torchvision's rounding, [0, 1], mean/std -> float32 [n, 3, size, size]."""
    from PIL import Image

    out = []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        long = int(size * long / short)
        image = image.resize((size, long) if w <= h else (long, size), Image.BICUBIC)
        x = np.asarray(image, np.float32) / 255.0
        top = int(round((x.shape[0] - size) / 2.0))
        left = int(round((x.shape[1] - size) / 2.0))
        x = (x[top : top + size, left : left + size] - np.asarray(mean)) / np.asarray(std)
        out.append(x.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def processor(tokenizer_dir: str, config, preprocess_cfg: dict | None = None):
    """CLIPProcessor: the BPE files in `tokenizer_dir`, open_clip's eval image preprocessing
    (shortest side to the image size, bicubic, centre crop, its mean and std). Its centre crop
    rounds an odd margin down where open_clip's rounds half to even, a one-pixel shift that
    `eval_pixels` (used by OpenClip) does not have."""
    import transformers

    cfg = preprocess_cfg or {}
    size = config.vision_config.image_size
    if (cfg.get("resize_mode", "shortest"), cfg.get("interpolation", "bicubic")) != (
        "shortest", "bicubic"
    ):
        raise ConversionError(f"preprocess_cfg {cfg}: only shortest-side bicubic resizing")
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(cfg.get("mean", OPENAI_MEAN)), image_std=list(cfg.get("std", OPENAI_STD)),
        resample=3, do_center_crop=True, do_convert_rgb=True,
    )  # fmt: skip
    tokenizer = transformers.CLIPTokenizer(
        os.path.join(tokenizer_dir, "vocab.json"), os.path.join(tokenizer_dir, "merges.txt"),
        model_max_length=config.text_config.max_position_embeddings,
    )  # fmt: skip
    return transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def convert(weights: str, out_dir: str | None = None, *, quick_gelu: bool | None = None,
            bpe_vocab: str | None = None) -> tuple[Any, Any]:  # fmt: skip
    """(CLIPModel, CLIPProcessor) from open_clip weights; saved as a transformers directory
    when `out_dir` is given (refused if it exists and is not empty)."""
    import tempfile

    check_paths(inputs=(weights, bpe_vocab), outputs=(out_dir,))
    state, hub = read_weights(weights)
    model_cfg = hub.get("model_cfg", {})
    config = clip_config(state, model_cfg, quick_gelu, weights)
    model = clip_model(state, config, weights)
    bpe_vocab = bpe_vocab or find_bpe_vocab()
    if bpe_vocab is None:
        raise ConversionError(
            f"CLIP's tokenizer needs {BPE_FILE}: pass bpe_vocab (it ships with open_clip_torch "
            "and laion_clap: pip install --no-deps open_clip_torch)"
        )
    with tempfile.TemporaryDirectory() as tokenizer_dir:  # local: transformers reads it
        write_tokenizer_files(bpe_vocab, tokenizer_dir)
        clip_processor = processor(tokenizer_dir, config, hub.get("preprocess_cfg"))
        if out_dir is not None:
            with output_dir(out_dir) as out, local_dir(out) as tmp:
                model.save_pretrained(tmp)
                clip_processor.save_pretrained(tmp)
    return model, clip_processor


@gin.configurable
class OpenClip(HFClip):
    """CLIP from open_clip weights (a checkpoint file, or a hub directory with
    open_clip_config.json), converted in memory to transformers' CLIP by `convert` (convert
    once with this module's CLI and use HFClip to skip that). `quick_gelu`: the activation,
    for files without a config (True for OpenAI-trained CLIPs, False for LAION ViT-H / g /
    bigG)."""

    def __init__(self, weights: str = gin.REQUIRED, quick_gelu: bool | None = None,
                 bpe_vocab: str | None = None, batch_size: int = 32):  # fmt: skip
        weights = require_path(weights, "OpenClip.weights (open_clip weights)")

        with storage.local_copy(weights) as local:
            self._use(*convert(local, quick_gelu=quick_gelu, bpe_vocab=bpe_vocab), batch_size)

    def _pixels(self, images: list) -> np.ndarray:
        p = self.processor.image_processor
        return eval_pixels(images, p.crop_size["height"], tuple(p.image_mean), tuple(p.image_std))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.open_clip",
        description="Convert open_clip ViT CLIP weights into a transformers CLIPModel directory.",
    )
    parser.add_argument(
        "--weights", required=True, help=f"open_clip weights file, or a directory with {HUB_CONFIG}"
    )
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    gelu = parser.add_mutually_exclusive_group()
    gelu.add_argument("--quick_gelu", dest="quick_gelu", action="store_true", default=None,
                      help="the weights use QuickGELU (OpenAI-trained CLIPs)")  # fmt: skip
    gelu.add_argument("--gelu", dest="quick_gelu", action="store_false",
                      help="the weights use exact GELU (LAION ViT-H / g / bigG)")  # fmt: skip
    parser.add_argument("--bpe_vocab", help=f"CLIP's {BPE_FILE} (default: the installed "
                        "open_clip_torch's or laion_clap's copy)")  # fmt: skip
    args = parser.parse_args(argv)
    return run_conversion(
        lambda: convert(args.weights, args.out, quick_gelu=args.quick_gelu,
                        bpe_vocab=args.bpe_vocab),  # fmt: skip
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
