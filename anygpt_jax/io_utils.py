"""JSON and parameter-shape helpers shared by converters, checkpoints and the data builder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anygpt_jax import storage
from anygpt_jax.storage import PathLike


def read_json(path: PathLike) -> dict:
    """Reads a JSON object from `path` (local or gs://), naming the file in any error."""
    value = storage.read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_json(path: PathLike, value: dict) -> None:
    """Writes `value` as indented JSON, whole (see storage.write_bytes)."""
    storage.write_json(path, value)


def check_param_shapes(expected: Mapping[str, tuple[int, ...]], params: Mapping[str, Any],
                       where: str) -> None:
    """Raises ValueError naming every missing, unexpected or wrongly shaped flat parameter."""
    problems = [f"missing {k} {s}" for k, s in expected.items() if k not in params]
    problems += [f"unexpected {k}" for k in params if k not in expected]
    problems += [f"{k}: shape {tuple(params[k].shape)}, expected {s}"
                 for k, s in expected.items() if k in params and tuple(params[k].shape) != s]
    if problems:
        raise ValueError(f"{where}: parameters do not match the config: " + "; ".join(problems))
