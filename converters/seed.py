"""SEED tokenizer v2 (seed_quantizer.pt [+ eva_vit_g.pth]) -> an anygpt_jax SEED directory.

    python -m converters.seed --ckpt seed_quantizer.pt [--vit eva_vit_g.pth] --out OUT

The output (config.json + params.safetensors) loads with
`anygpt_jax.modalities.image.ImageTokenizer.load(OUT)`. Shapes (widths, depths, codebook,
embedding size) are read from the checkpoint; head counts, which no tensor shows, are flags
with SEED's values as defaults. The EVA ViT comes from `visual_encoder.*` in the checkpoint, or
from `--vit` (LAVIS's eva_vit_g.pth, keys without prefix), which takes precedence. BLIP-2 keeps
the first 39 of EVA-CLIP-g's 40 blocks: `--vit_depth` blocks are used and later ones dropped.
Tensors inference never uses (SEED's recon_s branch `blocks.*`/`pos_embed`, the Q-Former's text
FFN and embeddings) are dropped; anything else unknown, missing or mis-shaped is refused by
name, and nothing is left behind on error.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

import numpy as np

from anygpt_jax.modalities.image_model import SeedConfig, expected_param_shapes, save_seed

from .common import (
    ConversionError,
    check_paths,
    load_torch_state_dict,
    output_dir,
    run_conversion,
    torch_to_numpy,
)

# Tensors of seed_quantizer.pt that encode/embed never use.
IGNORED = re.compile(
    r"pos_embed|blocks\.\d+\..*"  # recon_s branch (reconstructs Q-Former features)
    r"|Qformer\.cls\..*|Qformer\.bert\.pooler\..*"
    r"|Qformer\.bert\.embeddings\.(position_ids|word_embeddings\..*|position_embeddings\..*)"
    r"|Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..*"  # text-only FFN
)
# Tensors of an EVA ViT file that BLIP-2's ViT lacks (classifier head, final norms).
VIT_IGNORED = re.compile(r"(norm|fc_norm|head)\.(weight|bias)|rope\..*")

QFORMER = "Qformer.bert.encoder.layer."
LINEAR = (("weight", "kernel", True), ("bias", "bias", False))
NORM = (("weight", "scale", False), ("bias", "bias", False))


class Tensors:
    """Named float32 tensors of one state dict; remembers which were used."""

    def __init__(self, state: dict, source: str, prefix: str = ""):
        self.state, self.source, self.prefix = state, source, prefix
        self.used: set[str] = set()

    def keys(self) -> list[str]:
        return [k[len(self.prefix) :] for k in self.state if k.startswith(self.prefix)]

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self.state

    def get(self, key: str) -> np.ndarray:
        full = self.prefix + key
        if full not in self.state:
            raise ConversionError(f"{self.source}: missing tensor {full!r}")
        self.used.add(full)
        return np.asarray(torch_to_numpy(self.state[full]), np.float32)

    def shape(self, key: str) -> tuple[int, ...]:
        full = self.prefix + key
        if full not in self.state:
            raise ConversionError(f"{self.source}: missing tensor {full!r}")
        return tuple(self.state[full].shape)


def _indices(keys: list[str], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def _ndim(t: Tensors, key: str, ndim: int) -> tuple[int, ...]:
    shape = t.shape(key)
    if len(shape) != ndim:
        raise ConversionError(
            f"{t.source}: {t.prefix}{key} has shape {shape}, expected {ndim} dimensions"
        )
    return shape


def infer_config(
    ckpt: Tensors,
    vit: Tensors,
    vit_depth: int,
    vit_heads: int,
    qformer_heads: int,
    decoder_heads: int,
) -> SeedConfig:
    """Reads widths, depths and sizes from tensor shapes; head counts come from the caller."""
    width, _, patch, _ = _ndim(vit, "patch_embed.proj.weight", 4)
    grid2 = _ndim(vit, "pos_embed", 3)[1] - 1
    grid = math.isqrt(grid2)
    if grid * grid != grid2:
        raise ConversionError(
            f"{vit.source}: {vit.prefix}pos_embed has {grid2} patch positions, not a square grid"
        )
    found = _indices(vit.keys(), r"blocks\.(\d+)\.")
    if found != list(range(len(found))) or len(found) < vit_depth:
        raise ConversionError(
            f"{vit.source}: need ViT blocks 0..{vit_depth - 1} under "
            f"'{vit.prefix}blocks.', found {len(found)} "
            f"(indices {found[:3]}...{found[-3:]})"
        )
    layers = _indices(ckpt.keys(), re.escape(QFORMER) + r"(\d+)\.")
    cross = _indices(ckpt.keys(), re.escape(QFORMER) + r"(\d+)\.crossattention\.")
    if not layers or layers != list(range(len(layers))):
        raise ConversionError(
            f"{ckpt.source}: no Q-Former layers under '{QFORMER}' (found indices {layers})"
        )
    freq = cross[1] - cross[0] if len(cross) > 1 else len(layers)
    if not cross or cross != list(range(0, len(layers), freq)):
        raise ConversionError(
            f"{ckpt.source}: cross-attention layers {cross} are not every "
            f"n-th layer from 0 of {len(layers)}"
        )
    decoder = _indices(ckpt.keys(), r"blocks_image\.(\d+)\.")
    downs = _indices(ckpt.keys(), r"image_down\.(\d+)\.weight")
    codebook_size, code_dim = _ndim(ckpt, "quantize.embedding.weight", 2)
    try:
        return SeedConfig(
            image_size=grid * patch,
            patch_size=patch,
            vit_width=width,
            vit_depth=vit_depth,
            vit_heads=vit_heads,
            vit_mlp=_ndim(vit, "blocks.0.mlp.fc1.weight", 2)[0],
            num_queries=_ndim(ckpt, "query_tokens", 3)[1],
            qformer_width=_ndim(ckpt, "query_tokens", 3)[2],
            qformer_depth=len(layers),
            qformer_heads=qformer_heads,
            qformer_mlp=_ndim(ckpt, QFORMER + "0.intermediate_query.dense.weight", 2)[0],
            cross_attention_freq=freq,
            codebook_size=codebook_size,
            code_dim=code_dim,
            decoder_depth=len(decoder),
            decoder_heads=decoder_heads,
            decoder_mlp=(_ndim(ckpt, "blocks_image.0.mlp.fc1.weight", 2)[0] if decoder else 1),
            down_dims=tuple(_ndim(ckpt, f"image_down.{i}.weight", 2)[0] for i in downs),
            embed_dim=_ndim(ckpt, "distill_image_proj.weight", 2)[0],
        )
    except ValueError as e:
        raise ConversionError(f"{ckpt.source}: {e}") from e


def _put(
    params: dict, sources: dict, t: Tensors, torch_module: str, ours: str, kinds=LINEAR
) -> None:
    for torch_name, our_name, transpose in kinds:
        key = f"{torch_module}.{torch_name}"
        value = t.get(key)
        params[f"{ours}/{our_name}"] = value.T if transpose else value
        sources[f"{ours}/{our_name}"] = f"{t.source}:{t.prefix}{key} {value.shape}"


def _vit_params(vit: Tensors, depth: int, params: dict, sources: dict) -> None:
    w = vit.get("patch_embed.proj.weight")  # torch conv (out, in, kh, kw) -> (kh, kw, in, out)
    params["vit/patch_kernel"] = w.transpose(2, 3, 1, 0)
    params["vit/patch_bias"] = vit.get("patch_embed.proj.bias")
    params["vit/cls_token"] = vit.get("cls_token")
    params["vit/pos_embed"] = vit.get("pos_embed")
    for name, key in (
        ("vit/patch_kernel", "patch_embed.proj.weight"),
        ("vit/patch_bias", "patch_embed.proj.bias"),
        ("vit/cls_token", "cls_token"),
        ("vit/pos_embed", "pos_embed"),
    ):
        sources[name] = f"{vit.source}:{vit.prefix}{key} {vit.shape(key)}"
    per_block: list[dict] = []
    for i in range(depth):
        block: dict = {}
        for mod, ours, kinds in (
            ("norm1", "norm1", NORM),
            ("norm2", "norm2", NORM),
            ("attn.qkv", "attn/qkv", LINEAR[:1]),
            ("attn.proj", "attn/proj", LINEAR),
            ("mlp.fc1", "mlp/fc1", LINEAR),
            ("mlp.fc2", "mlp/fc2", LINEAR),
        ):
            _put(block, sources, vit, f"blocks.{i}.{mod}", ours, kinds)
        block["attn/q_bias"] = vit.get(f"blocks.{i}.attn.q_bias")
        block["attn/v_bias"] = vit.get(f"blocks.{i}.attn.v_bias")
        per_block.append(block)
    for name in per_block[0]:
        shapes = {b[name].shape for b in per_block}
        if len(shapes) > 1:
            raise ConversionError(f"{vit.source}: ViT blocks disagree on {name}: {shapes}")
        params[f"vit/blocks/{name}"] = np.stack([b[name] for b in per_block])
        sources[f"vit/blocks/{name}"] = f"{vit.source}:{vit.prefix}blocks.*.{name}"


def _qformer_params(t: Tensors, config: SeedConfig, params: dict, sources: dict) -> None:
    params["qformer/query_tokens"] = t.get("query_tokens")
    sources["qformer/query_tokens"] = f"{t.source}:query_tokens {t.shape('query_tokens')}"
    _put(params, sources, t, "Qformer.bert.embeddings.LayerNorm", "qformer/embed_norm", NORM)
    for i in range(config.qformer_depth):
        base, ours = f"{QFORMER}{i}.", f"qformer/layer_{i}/"
        attns = ["attention"] + (["crossattention"] if i % config.cross_attention_freq == 0 else [])
        for att in attns:
            for proj in ("query", "key", "value"):
                _put(params, sources, t, f"{base}{att}.self.{proj}", f"{ours}{att}/{proj}")
            _put(params, sources, t, f"{base}{att}.output.dense", f"{ours}{att}/dense")
            _put(params, sources, t, f"{base}{att}.output.LayerNorm", f"{ours}{att}/norm", NORM)
        _put(params, sources, t, f"{base}intermediate_query.dense", f"{ours}intermediate")
        _put(params, sources, t, f"{base}output_query.dense", f"{ours}output")
        _put(params, sources, t, f"{base}output_query.LayerNorm", f"{ours}output_norm", NORM)


def _head_params(t: Tensors, config: SeedConfig, params: dict, sources: dict) -> None:
    _put(params, sources, t, "ln_vision", "ln_vision", NORM)
    _put(params, sources, t, "encode_task_layer.0", "encode_fc1")
    _put(params, sources, t, "encode_task_layer.2", "encode_fc2")
    params["codebook"] = t.get("quantize.embedding.weight")
    sources["codebook"] = f"{t.source}:quantize.embedding.weight {params['codebook'].shape}"
    _put(params, sources, t, "decode_task_layer.0", "decoder/decode_fc1")
    _put(params, sources, t, "decode_task_layer.2", "decoder/decode_fc2")
    params["decoder/pos_embed"] = t.get("pos_embed_image")
    sources["decoder/pos_embed"] = f"{t.source}:pos_embed_image {t.shape('pos_embed_image')}"
    for i in range(config.decoder_depth):
        for mod, ours, kinds in (
            ("norm1", "norm1", NORM),
            ("norm2", "norm2", NORM),
            ("attn.qkv", "attn/qkv", LINEAR),
            ("attn.proj", "attn/proj", LINEAR),
            ("mlp.fc1", "mlp/fc1", LINEAR),
            ("mlp.fc2", "mlp/fc2", LINEAR),
        ):
            _put(params, sources, t, f"blocks_image.{i}.{mod}", f"decoder/block_{i}/{ours}", kinds)
    downs = _indices(t.keys(), r"image_down\.(\d+)\.weight")
    for j, i in enumerate(downs):
        _put(params, sources, t, f"image_down.{i}", f"decoder/down_{j}", LINEAR[:1])
    _put(params, sources, t, "distill_image_proj", "decoder/proj")


def params_from_state_dicts(
    ckpt_state: dict,
    vit_state: dict | None = None,
    *,
    ckpt_name: str = "checkpoint",
    vit_name: str = "vit",
    vit_depth: int = 39,
    vit_heads: int = 16,
    qformer_heads: int = 12,
    decoder_heads: int = 12,
) -> tuple[SeedConfig, dict, dict]:
    """SEED state dicts -> (config, flat params, notes); raises ConversionError by key name."""
    for name, value in (
        ("vit_depth", vit_depth),
        ("vit_heads", vit_heads),
        ("qformer_heads", qformer_heads),
        ("decoder_heads", decoder_heads),
    ):
        if value < 1:
            raise ConversionError(f"{name} must be >= 1, got {value}")
    ckpt = Tensors(ckpt_state, ckpt_name)
    if vit_state is not None:
        vit = Tensors(vit_state, vit_name)
    elif any(k.startswith("visual_encoder.") for k in ckpt_state):
        vit = Tensors(ckpt_state, ckpt_name, prefix="visual_encoder.")
    else:
        raise ConversionError(
            f"{ckpt_name} has no visual_encoder.* weights: pass the EVA ViT "
            f"with --vit eva_vit_g.pth"
        )
    config = infer_config(ckpt, vit, vit_depth, vit_heads, qformer_heads, decoder_heads)
    params: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    _vit_params(vit, config.vit_depth, params, sources)
    _qformer_params(ckpt, config, params, sources)
    _head_params(ckpt, config, params, sources)
    _check_shapes(config, params, sources)

    dropped_blocks = [
        k
        for k in vit.keys()
        if re.match(r"blocks\.(\d+)\.", k) and int(k.split(".")[1]) >= config.vit_depth
    ]
    unknown = sorted(
        k
        for k in ckpt_state
        if k not in ckpt.used
        and k not in vit.used
        and not k.startswith("visual_encoder.")
        and not IGNORED.fullmatch(k)
    )
    unknown += sorted(
        vit.prefix + k
        for k in vit.keys()
        if vit.prefix + k not in vit.used
        and k not in dropped_blocks
        and not VIT_IGNORED.fullmatch(k)
    )
    if unknown:
        raise ConversionError(
            f"{ckpt_name}: unexpected tensors (not a SEED tokenizer v2 "
            f"checkpoint?): {unknown[:20]}{' ...' if len(unknown) > 20 else ''}"
        )
    notes = {
        "ckpt": os.path.basename(ckpt_name),
        "vit": os.path.basename(vit_name) if vit_state is not None else "visual_encoder.*",
        "dropped_vit_blocks": sorted({int(k.split(".")[1]) for k in dropped_blocks}),
    }
    return config, params, notes


def _check_shapes(config: SeedConfig, params: dict, sources: dict) -> None:
    expected = expected_param_shapes(config)
    problems = [
        f"{sources.get(k, k)}: becomes {k} {tuple(v.shape)}, but the other tensors "
        f"need {expected[k]}"
        for k, v in params.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    problems += [f"missing {k} {s}" for k, s in expected.items() if k not in params]
    if problems:
        raise ConversionError("wrong shapes (checkpoint parts disagree): " + "; ".join(problems))


def convert(ckpt: str, out: str, vit: str | None = None, **kwargs) -> str:
    """Converts seed_quantizer.pt (and optionally eva_vit_g.pth) into the directory `out`."""
    check_paths(inputs=(ckpt, vit), outputs=(out,))
    ckpt_state = load_torch_state_dict(ckpt)
    vit_state = load_torch_state_dict(vit) if vit is not None else None
    config, params, notes = params_from_state_dicts(
        ckpt_state, vit_state, ckpt_name=ckpt, vit_name=vit or ckpt, **kwargs
    )
    with output_dir(out) as tmp:
        save_seed(tmp, config, params, source=notes)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.seed",
        description="Convert SEED tokenizer v2 weights into an anygpt_jax image tokenizer dir.",
    )
    parser.add_argument("--ckpt", required=True, help="SEED's seed_quantizer.pt")
    parser.add_argument(
        "--vit",
        help="EVA ViT-g weights (eva_vit_g.pth) if the checkpoint lacks visual_encoder.* tensors",
    )
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    parser.add_argument("--vit_depth", type=int, default=39, help="ViT blocks to keep (39)")
    parser.add_argument("--vit_heads", type=int, default=16, help="ViT attention heads (16)")
    parser.add_argument("--qformer_heads", type=int, default=12, help="Q-Former heads (12)")
    parser.add_argument("--decoder_heads", type=int, default=12, help="decode-head heads (12)")
    args = parser.parse_args(argv)
    return run_conversion(
        lambda: convert(
            args.ckpt,
            args.out,
            vit=args.vit,
            vit_depth=args.vit_depth,
            vit_heads=args.vit_heads,
            qformer_heads=args.qformer_heads,
            decoder_heads=args.decoder_heads,
        ),
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
