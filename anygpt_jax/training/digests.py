"""A hook logging each step's loss and a hash of each local batch row (data-order checks)."""

from __future__ import annotations

import hashlib
from typing import Any

import gin
import jax
import numpy as np

from anygpt_jax import storage
from anygpt_jax.data.features import MODEL_FEATURES
from anygpt_jax.training.hooks import TrainHook, TrainRun

DIGESTS_DIR = "batch_digests"


@gin.configurable
class BatchDigests(TrainHook):
    """MODEL_DIR/batch_digests/process_<i>.tsv: per step, the loss (exact repr) and a hash of
    each local batch row, so runs can be checked for identical data order (resume, multi-host).

    Appended locally, line-buffered, so a SIGKILLed run on a local MODEL_DIR keeps every step
    it logged; on an object store the file is uploaded whole at each checkpoint and a resumed
    run starts from the uploaded one.
    """

    def __init__(self):
        self._mirror = None
        self._file = None
        self._model_dir = None

    def setup(self, run: TrainRun) -> None:
        self._model_dir = run.model_dir

    def start(self, step: int) -> None:
        self._mirror = storage.MirroredDir(storage.join(self._model_dir, DIGESTS_DIR))
        name = f"process_{jax.process_index()}.tsv"
        remote = storage.join(self._model_dir, DIGESTS_DIR, name)
        local = f"{self._mirror.local}/{name}"
        if storage.is_remote(remote) and storage.exists(remote):
            storage.copy_file(remote, local)
        self._file = open(local, "a", buffering=1)  # local: the mirror's local side

    def after_step(self, step: int, state: Any, metrics: dict[str, Any],
                   batch: dict[str, np.ndarray]) -> None:
        rows = []
        for i in range(len(batch[MODEL_FEATURES[0]])):
            h = hashlib.sha256()
            for k in MODEL_FEATURES:
                h.update(np.ascontiguousarray(batch[k][i]).tobytes())
            rows.append(h.hexdigest()[:16])
        self._file.write(f"{step}\t{float(metrics['loss'])!r}\t{','.join(rows)}\n")

    def after_save(self, step: int) -> None:
        self._file.flush()
        self._mirror.sync()

    def end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._mirror.close()
            self._file = self._mirror = None
