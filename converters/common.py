"""Shared pieces of every converter: atomic output directories and streaming tensor reads."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable

import numpy as np

from anygpt_jax.io_utils import atomic_output_dir, read_json

__all__ = [
    "USER_ERRORS",
    "ConversionError",
    "TensorReader",
    "atomic_output_dir",
    "fold_weight_norm",
    "numpy_to_torch",
    "read_json",
    "run_conversion",
    "strip_key_prefix",
    "torch_to_numpy",
]


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


class TensorReader:
    """Reads named tensors one at a time from safetensors or PyTorch .bin shards.

    Only the tensor asked for is materialized, so a 7B checkpoint converts in bounded memory.
    Sharded checkpoints are found through their `*.index.json`; a single file works too.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self._key_to_file: dict[str, str] = {}
        self._open: dict[str, object] = {}
        files = self._weight_files(directory)
        for path in files:
            for key in self._keys_of(path):
                self._key_to_file[key] = path

    @staticmethod
    def _weight_files(directory: str) -> list[str]:
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index_path = os.path.join(directory, index_name)
            if os.path.exists(index_path):
                weight_map = read_json(index_path).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ConversionError(f"{index_path}: no 'weight_map'")
                files = sorted({os.path.join(directory, f) for f in weight_map.values()})
                missing = [f for f in files if not os.path.exists(f)]
                if missing:
                    raise ConversionError(f"{index_path} names missing shard files: {missing}")
                return files
        files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
        if not files:
            files = sorted(glob.glob(os.path.join(directory, "*.bin")))
        if not files:
            raise ConversionError(
                f"no weights in {directory}: expected *.safetensors or pytorch_model*.bin files"
            )
        return files

    def _handle(self, path: str):
        if path not in self._open:
            if path.endswith(".safetensors"):
                from safetensors import safe_open

                self._open[path] = safe_open(path, framework="pt")
            else:
                import torch

                try:
                    self._open[path] = torch.load(
                        path, map_location="cpu", mmap=True, weights_only=True
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
        tensor = handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]
        return torch_to_numpy(tensor)

    def close(self) -> None:
        self._open.clear()


def load_torch_state_dict(path: str) -> dict:
    """A torch state dict from a .pt/.pth file; training checkpoints' wrappers ("model",
    "state_dict", "module") are unwrapped. Raises ConversionError naming the file."""
    import torch

    if not os.path.isfile(path):
        raise ConversionError(f"missing file: {path}")
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
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
