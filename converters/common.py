"""Shared pieces of every converter: committed output directories, streaming tensor reads
(local or gs://) and local staging for libraries that write only local files."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from anygpt_jax import storage
from anygpt_jax.io_utils import read_json

__all__ = [
    "USER_ERRORS",
    "ConversionError",
    "SafetensorsFile",
    "TensorReader",
    "check_paths",
    "fold_weight_norm",
    "load_torch_state_dict",
    "local_dir",
    "numpy_to_torch",
    "output_dir",
    "read_json",
    "run_conversion",
    "save_local_file",
    "strip_key_prefix",
    "torch_to_numpy",
]

output_dir = storage.output_dir


class ConversionError(ValueError):
    """A checkpoint or its files cannot be converted; the message names the file or key."""


# What a converter CLI reports as a one-line error and exit status 1 (no traceback).
USER_ERRORS = (ConversionError, FileNotFoundError, FileExistsError, ValueError, KeyError)


def run_conversion(convert: Callable[[], object], out: str) -> int:
    """A converter CLI's ending: runs `convert`, then prints 'wrote OUT' and returns 0, or prints
    one 'error: ...' line (bad input, unreadable files) to stderr and returns 1."""
    try:
        convert()
    except USER_ERRORS + (OSError,) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def check_paths(inputs: tuple[str | None, ...] = (), outputs: tuple[str | None, ...] = ()) -> None:
    """Stops a CLI before any work when a gs:// bucket it names is missing or unreachable
    (StorageError, an OSError, naming the path and the fix); local paths pass."""
    for p in inputs:
        if p:
            storage.check_access(p)
    for p in outputs:
        if p:
            storage.check_access(p, write=True)


@contextlib.contextmanager
def local_dir(directory: storage.PathLike) -> Iterator[str]:
    """A local directory whose files end up in `directory`: itself when local, else a temp
    directory copied up when the block succeeds (for save_pretrained and the like)."""
    if not storage.is_remote(directory):
        storage.makedirs(directory)
        yield os.fspath(storage.path(directory))
        return
    with tempfile.TemporaryDirectory(prefix="anygpt-stage-") as tmp:  # local: staging area
        yield tmp
        storage.copy_tree(tmp, directory)


def save_local_file(dst: storage.PathLike, write: Callable[[str], object]) -> None:
    """Runs `write(local_path)` of a library that writes only local files so the file ends
    up at `dst`: in place when local, else through one temp file uploaded and removed."""
    if not storage.is_remote(dst):
        storage.makedirs(storage.path(dst).parent)
        write(os.fspath(storage.path(dst)))
        return
    with tempfile.TemporaryDirectory(prefix="anygpt-stage-") as tmp:  # local: staging area
        local = os.path.join(tmp, storage.path(dst).name)
        write(local)
        storage.copy_file(local, dst)


# safetensors dtype names -> numpy dtypes (bfloat16 and float8 through ml_dtypes).
def _safetensors_dtype(name: str) -> np.dtype:
    import ml_dtypes

    table = {
        "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
        "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
        "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
        "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
    }  # fmt: skip
    return np.dtype(table[name])


class SafetensorsFile:
    """One safetensors file (local or gs://), read tensor by tensor: the header once, then one
    ranged read per tensor, so a remote checkpoint is never downloaded whole."""

    MAX_HEADER = 100 * 1024 * 1024

    def __init__(self, path: str):
        self.path = path
        try:
            (n,) = struct.unpack("<Q", storage.read_range(path, 0, 8))
            if not 0 < n <= self.MAX_HEADER:
                raise ValueError(f"header length {n}")
            header = json.loads(storage.read_range(path, 8, 8 + n))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except FileNotFoundError:
            raise
        except (ValueError, struct.error, UnicodeDecodeError) as e:
            raise ConversionError(f"{path}: cannot read safetensors ({e})") from e
        self._base = 8 + n
        self._entries = {k: v for k, v in header.items() if k != "__metadata__"}

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, key: str) -> np.ndarray:
        """Tensor `key` as numpy in its stored dtype."""
        try:
            entry = self._entries[key]
            dtype = _safetensors_dtype(entry["dtype"])
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"{self.path}: bad header entry for {key!r} ({e})") from e
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ConversionError(f"{self.path}: {key!r} has {end - begin} bytes for {shape}")
        data = storage.read_range(self.path, self._base + begin, self._base + end)
        if len(data) != end - begin:
            raise ConversionError(f"{self.path}: truncated file ({key!r} ends past its end)")
        # Writable, as the torch tensors it replaces were (costs one tensor's copy).
        return np.frombuffer(bytearray(data), dtype).reshape(shape)


class TensorReader:
    """Reads named tensors one at a time from safetensors or PyTorch .bin shards.

    Only the tensor asked for is materialized, so a 7B checkpoint converts in bounded memory.
    Sharded checkpoints are found through their `*.index.json`; a single file works too. The
    directory may be gs://: safetensors are read by ranges, .bin shards downloaded.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self._key_to_file: dict[str, str] = {}
        self._open: dict[str, object] = {}
        self._downloads = contextlib.ExitStack()
        files = self._weight_files(directory)
        for path in files:
            for key in self._keys_of(path):
                self._key_to_file[key] = path

    @staticmethod
    def _weight_files(directory: str) -> list[str]:
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index_path = storage.join(directory, index_name)
            if storage.exists(index_path):
                weight_map = read_json(index_path).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ConversionError(f"{index_path}: no 'weight_map'")
                files = sorted({storage.join(directory, f) for f in weight_map.values()})
                missing = [f for f in files if not storage.exists(f)]
                if missing:
                    raise ConversionError(f"{index_path} names missing shard files: {missing}")
                return files
        files = storage.glob(storage.join(directory, "*.safetensors"))
        if not files:
            files = storage.glob(storage.join(directory, "*.bin"))
        if not files:
            raise ConversionError(
                f"no weights in {directory}: expected *.safetensors or pytorch_model*.bin files"
            )
        return files

    def _handle(self, path: str):
        if path not in self._open:
            if path.endswith(".safetensors"):
                self._open[path] = SafetensorsFile(path)
            else:
                import torch

                local = self._downloads.enter_context(storage.local_copy(path))
                try:
                    self._open[path] = torch.load(
                        local, map_location="cpu", mmap=True, weights_only=True
                    )
                except Exception as e:  # noqa: BLE001 - re-raised with the file named
                    raise ConversionError(f"{path}: cannot read PyTorch weights ({e})") from e
        return self._open[path]

    def _keys_of(self, path: str) -> list[str]:
        handle = self._handle(path)
        return list(handle.keys())

    def keys(self) -> list[str]:
        return sorted(self._key_to_file)

    def __contains__(self, key: str) -> bool:
        return key in self._key_to_file

    def get(self, key: str) -> np.ndarray:
        """Returns one tensor as numpy in its stored dtype (bfloat16 through ml_dtypes)."""
        if key not in self._key_to_file:
            raise ConversionError(f"{self.directory}: missing tensor {key!r}")
        handle = self._handle(self._key_to_file[key])
        if isinstance(handle, SafetensorsFile):
            return handle.get(key)
        return torch_to_numpy(handle[key])

    def close(self) -> None:
        self._open.clear()
        self._downloads.close()


def load_torch_state_dict(path: str) -> dict:
    """A torch state dict from a .pt/.pth file (local or gs://); training checkpoints' wrappers
    ("model", "state_dict", "module") are unwrapped. Raises ConversionError naming the file."""
    import torch

    if not storage.isfile(path):
        raise ConversionError(f"missing file: {path}")
    # A remote file is downloaded; torch's mmap keeps its pages valid once the copy is deleted.
    with storage.local_copy(path) as local:
        try:
            state = torch.load(local, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types; re-raised named
            raise ConversionError(f"{path}: cannot read PyTorch weights ({e})") from e
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and hasattr(v, "shape") for k, v in state.items()
    ):
        kind = type(state).__name__
        raise ConversionError(f"{path}: expected a state dict of tensors, got a {kind}")
    return state


def strip_key_prefix(state: dict, prefix: str) -> dict:
    """`state` without `prefix` when every key has it (DDP's "module.", torch.compile's
    "_orig_mod."), else `state` as it is."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def torch_to_numpy(tensor) -> np.ndarray:
    """Converts a CPU torch tensor to numpy without changing its dtype (bf16 kept as ml_dtypes)."""
    import ml_dtypes
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def numpy_to_torch(array: np.ndarray):
    """Converts numpy to a torch tensor bit for bit (ml_dtypes bfloat16 included)."""
    import ml_dtypes
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Weight norm's weight g * v / ||v|| (norm over all axes but the first, as torch's dim=0).

    Serves both key styles: `weight_g`/`weight_v` and `parametrizations.weight.original0/1`.
    For ConvTranspose1d (in, out, k) the first axis is the input channel, as in torch.
    """
    if g.shape[0] != v.shape[0] or g.size != g.shape[0]:
        raise ConversionError(f"weight norm: g of shape {g.shape} does not fit v {v.shape}")
    v64 = v.astype(np.float64)  # fold in float64, round once
    norm = np.sqrt(np.sum(v64**2, axis=tuple(range(1, v.ndim)), keepdims=True))
    return (g.astype(np.float64).reshape(norm.shape) * v64 / norm).astype(v.dtype)
