"""File helpers shared by converters, checkpoints and the data builder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any


@contextlib.contextmanager
def atomic_output_dir(out_dir: str) -> Iterator[str]:
    """Yields a temporary sibling of `out_dir` that is renamed to it only on success.

    An existing non-empty `out_dir` is refused so nothing is overwritten; on any error the
    temporary directory is removed, so no partial output is left behind.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(
            f"output {out_dir} already exists and is not empty; refusing to overwrite"
        )
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str) -> dict:
    """Reads a JSON object from `path`, naming the file in any error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing file: {path}")
    with open(path) as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_json(path: str, value: dict) -> None:
    """Writes `value` as indented JSON."""
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def check_param_shapes(expected: Mapping[str, tuple[int, ...]], params: Mapping[str, Any],
                       where: str) -> None:
    """Raises ValueError naming every missing, unexpected or wrongly shaped flat parameter."""
    problems = [f"missing {k} {s}" for k, s in expected.items() if k not in params]
    problems += [f"unexpected {k}" for k in params if k not in expected]
    problems += [f"{k}: shape {tuple(params[k].shape)}, expected {s}"
                 for k, s in expected.items() if k in params and tuple(params[k].shape) != s]
    if problems:
        raise ValueError(f"{where}: parameters do not match the config: " + "; ".join(problems))
