"""Converted weight directories (config.json + params.safetensors), local or gs://.

Codec, SEED and SoundStorm directories share this layout. Converters write them inside
`storage.output_dir`, so a reader refuses a half-written gs:// directory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from anygpt_jax import storage

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"


def save_weights_dir(directory: storage.PathLike, meta: dict[str, Any],
                     params: dict[str, np.ndarray]) -> None:
    """Writes `meta` as config.json and float32 `params` (flat names) as params.safetensors."""
    from safetensors.numpy import save_file

    storage.write_json(storage.join(directory, CONFIG_FILE), meta)
    flat = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
    dst = storage.join(directory, PARAMS_FILE)
    if not storage.is_remote(dst):
        save_file(flat, dst)
        return
    with tempfile.TemporaryDirectory(prefix="anygpt-stage-") as tmp:  # local: staging area
        local = os.path.join(tmp, PARAMS_FILE)
        save_file(flat, local)
        storage.copy_file(local, dst)


def read_weights_config(directory: storage.PathLike, what: str,
                        hint: str) -> tuple[dict[str, Any], str, str]:
    """(config.json's object, config path, params path) of a converted directory; a missing
    file is named with `hint` (how to make it), a half-written gs:// directory refused."""
    config_path = storage.join(directory, CONFIG_FILE)
    params_path = storage.join(directory, PARAMS_FILE)
    if storage.isdir(directory):
        storage.require_committed(directory, what)
    for path in (config_path, params_path):
        if not storage.isfile(path):
            raise FileNotFoundError(f"{path}: missing; {hint}")
    meta = storage.read_json(config_path)
    if not isinstance(meta, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {meta!r:.80}")
    return meta, config_path, params_path


def load_params_file(params_path: str) -> dict[str, np.ndarray]:
    """The flat arrays of a params.safetensors (a gs:// one is downloaded first)."""
    from safetensors.numpy import load_file

    with storage.local_copy(params_path) as local:
        return load_file(local)
