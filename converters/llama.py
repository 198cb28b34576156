"""transformers LlamaForCausalLM <-> anygpt-jax model directories.

    python -m converters.llama import HF_DIR OUT_DIR   # safetensors or .bin shards, any dtype
    python -m converters.llama export CKPT_DIR OUT_DIR

Any directory may be local or gs://.

The mapping is one table (`LAYER_KEYS`, `GLOBAL_KEYS`) plus four transforms. Tensors stream
one at a time, are kept in their stored dtype unless --dtype says otherwise, and land in one
preallocated tree, so a 7B checkpoint converts with a single copy of the weights in memory.
Both directions are exact: HF -> ours -> HF gives back every tensor bit for bit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from anygpt_jax import checkpointing, integrity, storage
from anygpt_jax.io_utils import write_json
from anygpt_jax.model import ModelConfig, param_shapes

from .common import (
    USER_ERRORS,
    ConversionError,
    TensorReader,
    check_paths,
    numpy_to_torch,
    read_json,
    save_local_file,
)

# HF key inside `model.layers.{i}.` -> (our path inside a layer, transform name).
LAYER_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "self_attn.q_proj.weight": (("self_attn", "q_proj", "kernel"), "heads_in:q"),
    "self_attn.k_proj.weight": (("self_attn", "k_proj", "kernel"), "heads_in:kv"),
    "self_attn.v_proj.weight": (("self_attn", "v_proj", "kernel"), "heads_in:kv"),
    "self_attn.o_proj.weight": (("self_attn", "o_proj", "kernel"), "heads_out"),
    "mlp.gate_proj.weight": (("mlp", "gate_proj", "kernel"), "transpose"),
    "mlp.up_proj.weight": (("mlp", "up_proj", "kernel"), "transpose"),
    "mlp.down_proj.weight": (("mlp", "down_proj", "kernel"), "transpose"),
    "input_layernorm.weight": (("input_layernorm", "scale"), "copy"),
    "post_attention_layernorm.weight": (("post_attention_layernorm", "scale"), "copy"),
}
# HF key -> (our path, transform name). lm_head is absent when embeddings are tied.
GLOBAL_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "model.embed_tokens.weight": (("embed_tokens", "embedding"), "vocab_rows"),
    "model.norm.weight": (("norm", "scale"), "copy"),
    "lm_head.weight": (("lm_head", "kernel"), "vocab_columns"),
}
# Buffers some checkpoints carry that hold no weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
DTYPES = ("float32", "bfloat16", "float16")


# ----------------------------------------------------------------------------- configs


def _rope_theta(hf: dict, source: str) -> float:
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    rope_type = (
        rope.get("rope_type") or (scaling or {}).get("rope_type") or (scaling or {}).get("type")
    )
    if rope_type not in (None, "default"):
        raise ConversionError(
            f"{source}: rope scaling {rope_type!r} is not supported (only default RoPE)"
        )
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def hf_to_model_config(hf: dict, source: str, **layout) -> ModelConfig:
    """A ModelConfig from a transformers LlamaConfig dict; unsupported variants are refused."""
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or not set(archs) & set(SUPPORTED_ARCHITECTURES):
        raise ConversionError(
            f"{source}: unknown architecture (model_type={hf.get('model_type')!r}, "
            f"architectures={archs}); expected a llama LlamaForCausalLM"
        )
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(key, want) != want:
            raise ConversionError(f"{source}: {key}={hf[key]!r} is not supported (need {want!r})")
    if hf.get("pretraining_tp", 1) != 1:
        raise ConversionError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported")
    try:
        heads = int(hf["num_attention_heads"])
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=hf.get("head_dim"),
            rope_theta=_rope_theta(hf, source),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            **layout,
        )
    except KeyError as e:
        raise ConversionError(f"{source}: missing config key {e.args[0]!r}") from e


def model_to_hf_config(config: ModelConfig, dtype: str, vocab=None) -> dict:
    """The config.json of the transformers checkpoint `export` writes."""
    from transformers import LlamaConfig

    special = {}
    if vocab is not None:
        special = {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id}
    hf = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.resolved_head_dim,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range,
        architectures=list(SUPPORTED_ARCHITECTURES),
        dtype=dtype,
        **special,
    )
    return hf.to_dict()


# ------------------------------------------------------------------------- transforms


def _fill(target: np.ndarray, name: str, w: np.ndarray, cfg: ModelConfig) -> None:
    """Writes HF tensor `w` into our preallocated `target`, zeroing vocabulary padding."""
    if name == "vocab_rows":
        target[: cfg.vocab_size] = w
        target[cfg.vocab_size :] = 0
    elif name == "vocab_columns":
        target[:, : cfg.vocab_size] = w.T
        target[:, cfg.vocab_size :] = 0
    else:
        target[...] = _to_ours(name, w, cfg)


def _to_ours(name: str, w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    d = cfg.resolved_head_dim
    if name == "heads_in:q":
        return w.T.reshape(cfg.hidden_size, cfg.num_heads, d)
    if name == "heads_in:kv":
        return w.T.reshape(cfg.hidden_size, cfg.num_kv_heads, d)
    if name == "heads_out":
        return w.T.reshape(cfg.num_heads, d, cfg.hidden_size)
    if name == "transpose":
        return w.T
    return w


def _to_hf(name: str, w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    if name in ("heads_in:q", "heads_in:kv"):
        return w.reshape(cfg.hidden_size, -1).T
    if name == "heads_out":
        return w.reshape(-1, cfg.hidden_size).T
    if name == "transpose":
        return w.T
    if name == "vocab_rows":
        return w[: cfg.vocab_size]
    if name == "vocab_columns":
        return w[:, : cfg.vocab_size].T
    return w


def _expected_hf_keys(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], str, int | None]]:
    """Every HF key the config implies -> (our leaf path, transform, layer index or None)."""
    keys = {}
    for hf_key, (path, transform) in GLOBAL_KEYS.items():
        if hf_key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        keys[hf_key] = (path, transform, None)
    for i in range(cfg.num_layers):
        for suffix, (path, transform) in LAYER_KEYS.items():
            keys[f"model.layers.{i}.{suffix}"] = (path, transform, i)
    return keys


def _get_path(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _layer_prefix(cfg: ModelConfig, layer: int | None) -> tuple[str, ...]:
    if layer is None:
        return ()
    return ("layers",) if cfg.scan_layers else (f"layers_{layer}",)


# ----------------------------------------------------------------------------- import


def _load_vocab(hf_dir: str, vocab_size: int):
    from anygpt_jax.vocab import MergedVocabulary

    vocab = MergedVocabulary.from_tokenizer_dir(hf_dir)
    if vocab.vocab_size != vocab_size:
        raise ConversionError(
            f"{hf_dir}: the tokenizer has {vocab.vocab_size} tokens but config.json says "
            f"vocab_size={vocab_size}; the checkpoint and its tokenizer disagree"
        )
    return vocab


Allocator = Callable[[tuple[str, ...], tuple[int, ...], np.dtype], np.ndarray]


def memmap_allocator(directory: str) -> Allocator:
    """Allocates parameter leaves as memory-mapped files in `directory`.

    Their pages are file-backed, so the kernel can write them out under pressure: with
    orbax's own host copy during save, a 7B import still holds one copy in anonymous memory.
    """

    def allocate(path: tuple[str, ...], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        filename = os.path.join(directory, ".".join(path) + ".bin")
        return np.lib.format.open_memmap(filename, mode="w+", dtype=dtype, shape=shape)

    return allocate


def _allocate_in_memory(path, shape, dtype) -> np.ndarray:
    return np.empty(shape, dtype)


def convert_hf_state(
    reader: TensorReader,
    cfg: ModelConfig,
    dtype: str | None,
    allocate: Allocator = _allocate_in_memory,
) -> dict:
    """Reads every tensor of an HF LLaMA into our parameter tree, one tensor at a time.

    Each leaf is allocated once, in its final (stacked, vocab-padded) shape, and filled in
    place; only the tensor being read exists besides it.
    """
    expected = _expected_hf_keys(cfg)
    present = [k for k in reader.keys() if not k.endswith(IGNORED_SUFFIXES)]
    if cfg.tie_word_embeddings:
        present = [k for k in present if k != "lm_head.weight"]  # saved by some exporters
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            f"{reader.directory}: checkpoint keys do not match a LLaMA with "
            f"{cfg.num_layers} layers: missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    shapes = param_shapes(cfg)
    params: dict = {}
    for hf_key, (path, transform, layer) in expected.items():
        w = reader.get(hf_key)
        ours_shape = _get_path(shapes, _layer_prefix(cfg, layer) + path).shape
        if layer is not None and cfg.scan_layers:
            ours_shape = ours_shape[1:]
        # The HF shape is what the inverse transform makes of ours (a stride-0 stand-in).
        want = _to_hf(transform, np.broadcast_to(np.float32(0), ours_shape), cfg).shape
        if tuple(w.shape) != tuple(want):
            raise ConversionError(
                f"{reader.directory}: {hf_key} has shape {tuple(w.shape)}, expected {want}"
            )
        if dtype is not None:
            w = w.astype(np.dtype(jax.numpy.dtype(dtype)))
        full_path = _layer_prefix(cfg, layer) + path
        node = params
        for key in full_path[:-1]:
            node = node.setdefault(key, {})
        if full_path[-1] not in node:
            leaf_shape = _get_path(shapes, full_path).shape
            node[full_path[-1]] = allocate(full_path, leaf_shape, w.dtype)
        leaf = node[full_path[-1]]
        if leaf.dtype != w.dtype:
            raise ConversionError(
                f"{reader.directory}: mixed tensor dtypes ({hf_key} is {w.dtype}, other layers "
                f"{leaf.dtype}); pass --dtype"
            )
        target = leaf[layer] if (layer is not None and cfg.scan_layers) else leaf
        _fill(target, transform, w, cfg)
    dtypes = {str(x.dtype) for x in jax.tree_util.tree_leaves(params)}
    if len(dtypes) != 1:
        raise ConversionError(
            f"{reader.directory}: mixed tensor dtypes {sorted(dtypes)}; pass --dtype"
        )
    return params


def import_checkpoint(
    hf_dir: str,
    out_dir: str,
    dtype: str | None = None,
    scan_layers: bool = True,
    vocab_pad_multiple: int = 128,
) -> ModelConfig:
    """Converts a transformers LLaMA directory (with its tokenizer) to a model directory; either
    may be gs:// (safetensors are then read by ranges, not downloaded whole)."""
    check_paths(inputs=(hf_dir,), outputs=(out_dir,))
    if not storage.isdir(hf_dir):
        raise ConversionError(f"input directory not found: {hf_dir}")
    config_path = storage.join(hf_dir, "config.json")
    hf_config = read_json(config_path)
    cfg = hf_to_model_config(
        hf_config, config_path, scan_layers=scan_layers, vocab_pad_multiple=vocab_pad_multiple
    )
    vocab = _load_vocab(hf_dir, cfg.vocab_size)
    reader = TensorReader(hf_dir)
    # The memmapped leaves go beside a local output (same disk), else to local temp space.
    parent = None
    if not storage.is_remote(out_dir):
        parent = os.fspath(storage.path(out_dir).parent)
        storage.makedirs(parent)
    try:
        with tempfile.TemporaryDirectory(  # local: memmap scratch space
            prefix=".import-scratch-", dir=parent
        ) as scratch:
            params = convert_hf_state(reader, cfg, dtype, memmap_allocator(scratch))
            stored = str(jax.tree_util.tree_leaves(params)[0].dtype)
            cfg = cfg.replace(param_dtype=stored)
            checkpointing.save_model(out_dir, params, cfg, vocab)
            del params
    finally:
        reader.close()
    return cfg


# ----------------------------------------------------------------------------- export


def _stream_params(ckpt_dir: str, cfg: ModelConfig) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yields (leaf path, array) one parameter at a time via orbax partial restore."""
    path, prefix = checkpointing.params_location(ckpt_dir)
    expected = checkpointing.saved_fingerprints(path, prefix)
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
    if metadata is None or getattr(metadata, "tree", None) is None:
        raise ConversionError(
            f"{path}: the checkpoint's metadata cannot be read (a missing or damaged "
            "manifest.ocdbt or _METADATA); it cannot be exported"
        )
    tree = metadata.tree
    for key in prefix:
        tree = tree[key]
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    for key_path, meta in leaves:
        names = tuple(k.key for k in key_path)
        target = jax.ShapeDtypeStruct(meta.shape, meta.dtype)
        for n in reversed(names):
            target = {n: target}
        array = checkpointing.restore_subtree(path, prefix, target)
        for n in names:
            array = array[n]
        array = np.asarray(array)
        integrity.verify_array("params/" + "/".join(names), array, expected, path)
        yield names, array


def _hf_entries(cfg: ModelConfig) -> dict[tuple[str, ...], list[tuple[str, str, int | None]]]:
    """Our leaf path -> the HF keys (with transform and layer) it produces."""
    table: dict[tuple[str, ...], list] = {}
    for hf_key, (path, transform, layer) in _expected_hf_keys(cfg).items():
        table.setdefault(_layer_prefix(cfg, layer) + path, []).append((hf_key, transform, layer))
    return table


def export_checkpoint(
    ckpt_dir: str, out_dir: str, max_shard_bytes: int = 2 * 1024**3, dtype: str | None = None
) -> None:
    """Writes a model directory as a transformers LLaMA directory (config, weights, tokenizer);
    either may be gs://. Shards are written one at a time through local temp space."""
    from safetensors.torch import save_file

    check_paths(inputs=(ckpt_dir,), outputs=(out_dir,))
    cfg = checkpointing.load_config(ckpt_dir)
    vocab = checkpointing.load_vocab(ckpt_dir)
    entries = _hf_entries(cfg)
    out_dtype = dtype or cfg.param_dtype
    with storage.output_dir(out_dir) as tmp:
        shard: dict = {}
        shard_bytes = 0
        shards: list[dict[str, int]] = []  # per shard: key -> bytes

        def flush():
            nonlocal shard, shard_bytes
            if shard:
                # Only sizes are kept: the tensors go once their shard is written.
                shards.append({k: t.numel() * t.element_size() for k, t in shard.items()})
                name = f"model-{len(shards):05d}.safetensors.tmp"
                meta = {"format": "pt"}
                save_local_file(tmp / name, lambda p: save_file(shard, p, metadata=meta))
                shard, shard_bytes = {}, 0

        seen = set()
        for path, array in _stream_params(ckpt_dir, cfg):
            if path not in entries:
                raise ConversionError(f"{ckpt_dir}: unexpected parameter {'/'.join(path)}")
            seen.add(path)
            for hf_key, transform, layer in entries[path]:
                w = array[layer] if (layer is not None and cfg.scan_layers) else array
                w = _to_hf(transform, w, cfg)
                if dtype is not None:
                    w = w.astype(np.dtype(jax.numpy.dtype(dtype)))
                tensor = numpy_to_torch(np.ascontiguousarray(w))
                if shard_bytes + w.nbytes > max_shard_bytes:
                    flush()
                shard[hf_key] = tensor
                shard_bytes += w.nbytes
            del array
        flush()
        missing = sorted("/".join(p) for p in set(entries) - seen)
        if missing:
            raise ConversionError(f"{ckpt_dir}: parameters missing from the checkpoint: {missing}")
        _name_shards(tmp, shards)
        write_json(tmp / "config.json", model_to_hf_config(cfg, out_dtype, vocab))
        vocab.save_hf_tokenizer(os.fspath(tmp))


def _move(src: storage.Path, dst: storage.Path) -> None:
    """Renames a file: a rename on a local disk, a copy within the bucket then a delete on gs://."""
    if storage.is_remote(src):
        storage.copy_file(src, dst)
        storage.remove(src)
    else:
        os.replace(src, dst)  # local: a rename inside the local output's temp directory


def _name_shards(directory: storage.Path, shards: list[dict[str, int]]) -> None:
    """Renames shard files to transformers' names and writes the index for several shards."""
    n = len(shards)
    if n == 1:
        _move(directory / "model-00001.safetensors.tmp", directory / "model.safetensors")
        return
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        final = f"model-{i:05d}-of-{n:05d}.safetensors"
        _move(directory / f"model-{i:05d}.safetensors.tmp", directory / final)
        for key, nbytes in shard.items():
            weight_map[key] = final
            total += nbytes
    write_json(
        directory / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )


# -------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """`python -m converters.llama {import,export} SRC OUT`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m converters.llama",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser(
        "import", help="transformers LLaMA directory -> anygpt-jax model directory"
    )
    imp.add_argument("hf_dir")
    imp.add_argument("out_dir")
    imp.add_argument(
        "--dtype", choices=DTYPES, help="cast weights (default: keep the stored dtype)"
    )
    imp.add_argument("--no_scan_layers", action="store_true", help="store per-layer params")
    imp.add_argument(
        "--vocab_pad_multiple",
        type=int,
        default=128,
        help="pad the vocabulary axis to a multiple of this (128 x tensor degree)",
    )
    exp = sub.add_parser(
        "export", help="anygpt-jax model directory -> transformers LLaMA directory"
    )
    exp.add_argument("ckpt_dir")
    exp.add_argument("out_dir")
    exp.add_argument("--dtype", choices=DTYPES, help="cast weights (default: the stored dtype)")
    exp.add_argument("--max_shard_gb", type=float, default=2.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "import":
            cfg = import_checkpoint(
                args.hf_dir,
                args.out_dir,
                dtype=args.dtype,
                scan_layers=not args.no_scan_layers,
                vocab_pad_multiple=args.vocab_pad_multiple,
            )
            print(
                f"imported {args.hf_dir} -> {args.out_dir} ({cfg.num_layers} layers, "
                f"vocab {cfg.vocab_size} padded to {cfg.padded_vocab_size}, {cfg.param_dtype})"
            )
        else:
            export_checkpoint(
                args.ckpt_dir, args.out_dir, int(args.max_shard_gb * 1024**3), args.dtype
            )
            print(f"exported {args.ckpt_dir} -> {args.out_dir}")
    except USER_ERRORS + (OSError,) as e:  # OSError: storage (no bucket, no access) included
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
