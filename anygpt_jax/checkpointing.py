"""Model checkpoints on disk: the one format converters write and training/inference read.

A model directory holds:
  model_config.json   the ModelConfig (architecture + the layout it was saved in)
  vocab/              the merged vocabulary's files (MergedVocabulary.save)
  params/             the parameters, an orbax checkpoint, in the dtype they were saved in

A training MODEL_DIR holds model_config.json and vocab/ too, with its parameters in the
newest committed step of checkpoints/. Every directory may be local or gs://; a converted
directory is read only once committed (storage.output_dir's marker), a training MODEL_DIR
only through its committed files.

Parameters restore straight into the shardings of a mesh. A config asking for another vocab
padding or scan layout than the one saved is honoured on load.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from anygpt_jax import integrity, orbax_errors, storage
from anygpt_jax.model import ModelConfig, match_layout, param_shapes, param_shardings

CONFIG_FILE = "model_config.json"
INTEGRITY_FILE = "integrity.json"  # fingerprints of params/ (anygpt_jax/integrity.py)
INTEGRITY_ITEM = "integrity"  # the same, as an item of each training checkpoint step
VOCAB_DIR = "vocab"
PARAMS_DIR = "params"
# A training MODEL_DIR's steps: checkpoints/<step>/state/ (training/checkpoints.py).
CHECKPOINTS_DIR = "checkpoints"
STATE_ITEM = "state"

# Parameters whose axis holds one row per vocabulary id: (path, vocab axis).
VOCAB_PARAMS = ((("embed_tokens", "embedding"), 0), (("lm_head", "kernel"), 1))


def save_model(directory: str, params: Any, config: ModelConfig, vocab=None) -> None:
    """Writes a new model directory (local or gs://), committed only when whole; an existing
    non-empty one is refused."""
    with storage.output_dir(directory) as out:
        config.save(out / CONFIG_FILE)
        if vocab is not None:
            vocab.save(os.fspath(out / VOCAB_DIR))
        # Uncompressed: weights barely compress, and zstd buffers would cost another copy of
        # them in memory, which a 7B import on a 24 GiB host cannot afford.
        handler = ocp.PyTreeCheckpointHandler(use_compression=False)
        with ocp.Checkpointer(handler) as checkpointer:
            checkpointer.save(out / PARAMS_DIR, args=ocp.args.PyTreeSave(params))
        storage.write_json(out / INTEGRITY_FILE, fingerprint_record(params, "params/"))


def fingerprint_record(tree: Any, prefix: str = "") -> dict:
    """What a checkpoint stores to be verified on restore: the fingerprints of its arrays."""
    return {"format": integrity.FORMAT, "arrays": integrity.fingerprints(tree, prefix)}


def saved_fingerprints(path: str, prefix: tuple[str, ...]) -> dict[str, int] | None:
    """The fingerprints saved with the parameters at `path` (as params_location returns it),
    or None for a checkpoint written before they were recorded."""
    q = storage.path(path)
    record_path = (q.parent / INTEGRITY_FILE) if not prefix else (q.parent / INTEGRITY_ITEM)
    if not storage.exists(record_path):
        return None
    if prefix:  # an orbax item of a training step
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
            record = checkpointer.restore(record_path)
    else:
        record = storage.read_json(record_path)
    if not isinstance(record, dict) or record.get("format") != integrity.FORMAT:
        raise integrity.IntegrityError(f"{record_path}: not a fingerprint record")
    return record["arrays"]


def _model_dir(directory: str) -> storage.Path:
    """`directory` as a Path once it is readable: a committed converted model directory, or a
    training MODEL_DIR (no marker at its top) holding model_config.json."""
    q = storage.path(directory)
    state = storage.dir_state(q)
    if state == "missing":
        raise FileNotFoundError(f"model directory not found: {q}")
    if state == "incomplete" or (q / PARAMS_DIR).is_dir():
        storage.require_committed(q, "model directory")
    if not (q / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{q} is not a model directory ({CONFIG_FILE} is missing)")
    return q


def load_config(directory: str) -> ModelConfig:
    """The ModelConfig a model directory (local or gs://) was saved with."""
    return ModelConfig.load(os.fspath(_model_dir(directory) / CONFIG_FILE))


def load_vocab(directory: str):
    """The MergedVocabulary saved in a model directory (local or gs://)."""
    from anygpt_jax.vocab import MergedVocabulary

    q = _model_dir(directory)
    vocab_dir = q / VOCAB_DIR
    if not vocab_dir.is_dir():
        raise FileNotFoundError(f"{q} has no vocabulary ({VOCAB_DIR}/ is missing)")
    if storage.dir_state(q) != "committed":  # a training MODEL_DIR: vocab/ is its own commit
        storage.require_committed(vocab_dir, "vocabulary directory")
    return MergedVocabulary.load(os.fspath(vocab_dir))


def newest_committed_step(checkpoints_dir: storage.PathLike) -> int | None:
    """The newest step of a checkpoints/ directory whose save was committed, read from the
    directory itself (a running CheckpointManager also lists a step whose save has begun)."""
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(storage.path(checkpoints_dir), options=options) as manager:
        return manager.latest_step()


def params_location(directory: str) -> tuple[str, tuple[str, ...]]:
    """(orbax checkpoint path, key path of the params inside it) of a model directory.

    A converted model keeps them in params/; a training MODEL_DIR in the train state of its
    newest committed checkpoint.
    """
    q = _model_dir(directory)
    if (q / PARAMS_DIR).is_dir():
        return os.fspath(q / PARAMS_DIR), ()

    checkpoints = q / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        step = newest_committed_step(checkpoints)
        if step is not None:
            return os.fspath(checkpoints / str(step) / STATE_ITEM), ("params",)
    raise FileNotFoundError(
        f"{q} has no parameters ({PARAMS_DIR}/ or a committed {CHECKPOINTS_DIR}/ step)"
    )


def restore_subtree(path: str, prefix: tuple[str, ...], target: Any) -> Any:
    """Restores only the subtree at `prefix` of an orbax checkpoint.

    `target` is a tree of ShapeDtypeStructs (with shardings to restore onto devices, else
    host numpy), or None for everything under `prefix` as saved, as host numpy.
    """
    if target is None:
        with ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(path).item_metadata
        if metadata is None:
            # The checkpointer logs and drops why it could not read the tree's metadata (seen
            # once in CI under load, not reproduced): its handler raises the reason itself.
            metadata = ocp.StandardCheckpointHandler().metadata(storage.path(path))
        tree = metadata.tree
        for key in prefix:
            tree = tree[key]
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
            tree,
            is_leaf=lambda x: hasattr(x, "shape"),
        )
    item = target
    for key in reversed(prefix):
        item = {key: item}

    def restore_arg(s):
        if getattr(s, "sharding", None) is not None:
            return ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype)
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=s.dtype)

    restore_args = jax.tree_util.tree_map(restore_arg, item)
    orbax_errors.install()  # a failed read is raised here, once, without orbax's tracebacks
    restored = ocp.PyTreeCheckpointer().restore(
        path,
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
    )
    for key in prefix:
        restored = restored[key]
    return restored


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def resize_vocab_rows(params: Any, padded_vocab_size: int, vocab_size: int) -> Any:
    """Strips or zero-pads the vocabulary axis of embedding and LM head to `padded_vocab_size`.

    Rows past `vocab_size` are padding (their logits are masked), so their values are free.
    """
    params = jax.tree_util.tree_map(lambda x: x, params)  # a new tree; leaves are shared
    for path, axis in VOCAB_PARAMS:
        array = _get(params, path)
        if array is None:
            continue
        array = np.asarray(array)
        rows = array.shape[axis]
        if rows < vocab_size:
            raise ValueError(
                f"{'/'.join(path)} has {rows} rows, fewer than vocab_size={vocab_size}"
            )
        kept = np.take(array, np.arange(min(rows, padded_vocab_size)), axis=axis)
        if kept.shape[axis] < padded_vocab_size:
            pad = [(0, 0)] * array.ndim
            pad[axis] = (0, padded_vocab_size - kept.shape[axis])
            kept = np.pad(kept, pad)
        _set(params, path, kept)
    return params


def check_params(params: Any, config: ModelConfig, source: str) -> None:
    """Refuses params whose tree or shapes differ from what `config` builds, naming them."""
    expected = param_shapes(config)
    want = dict(jax.tree_util.tree_leaves_with_path(expected))
    have = dict(jax.tree_util.tree_leaves_with_path(params))
    fmt = jax.tree_util.keystr
    missing = sorted(fmt(k) for k in want.keys() - have.keys())
    unexpected = sorted(fmt(k) for k in have.keys() - want.keys())
    if missing or unexpected:
        raise ValueError(
            f"{source}: parameters do not match the config: "
            f"missing {missing}, unexpected {unexpected}"
        )
    wrong = [
        f"{fmt(k)} {tuple(have[k].shape)} != {tuple(want[k].shape)}"
        for k in want
        if tuple(have[k].shape) != tuple(want[k].shape)
    ]
    if wrong:
        raise ValueError(f"{source}: parameter shapes do not match the config: {wrong}")


def load_params(
    directory: str,
    config: ModelConfig | None = None,
    mesh: Mesh | None = None,
    rules=None,
) -> tuple[Any, ModelConfig]:
    """Restores parameters, in `config`'s dtype, layout and vocab padding, sharded on `mesh`.

    `config` defaults to the saved one; its architecture fields must match the saved ones.
    Returns (params, config). Without a mesh, params come back as host numpy arrays.
    """
    saved = load_config(directory)
    config = saved if config is None else config
    arch = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "resolved_head_dim",
        "tie_word_embeddings",
    )
    differ = [
        f"{a}: saved {getattr(saved, a)} vs asked {getattr(config, a)}"
        for a in arch
        if getattr(saved, a) != getattr(config, a)
    ]
    if differ:
        raise ValueError(
            f"{directory}: the checkpoint's architecture differs from the config: {differ}"
        )
    path, prefix = params_location(directory)
    expected = saved_fingerprints(path, prefix)
    same_layout = (
        saved.padded_vocab_size == config.padded_vocab_size
        and saved.scan_layers == config.scan_layers
        and saved.param_dtype == config.param_dtype  # fingerprints are of the saved bits
    )
    target_shapes = param_shapes(config)
    if same_layout:
        target = target_shapes
        if mesh is not None:
            target = jax.tree_util.tree_map(
                lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                target_shapes,
                param_shardings(config, mesh, rules),
            )
        params = restore_subtree(path, prefix, target)
        integrity.verify(params, expected, path, "params/")
        return params, config
    params = restore_subtree(path, prefix, None)
    integrity.verify(params, expected, path, "params/")
    params = match_layout(params, config)
    params = resize_vocab_rows(params, config.padded_vocab_size, config.vocab_size)
    check_params(params, config, directory)
    params = jax.tree_util.tree_map(
        lambda x, s: np.asarray(x, dtype=s.dtype), params, target_shapes
    )
    if mesh is not None:
        params = jax.device_put(params, param_shardings(config, mesh, rules))
    return params, config
