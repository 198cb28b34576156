"""Train hooks: what runs around the loop's steps without being the loop (t5x, Levanter).

`train(hooks=[...])` calls every hook, in order, at these points:
  setup(run)       the run's objects exist, MODEL_DIR is not written yet: refuse bad config
  start(step)      the state is restored or initialized; `step` is the last one done
  before_step(s)   step s (1-based, as the progress line counts) is about to be dispatched
  after_step(...)  step s is done and its metrics are on the host, before any save of it
  after_save(s)    a checkpoint of step s has been started (orbax saves asynchronously)
  end()            always, last, also after an error
Eval (evaluation/hook.py), profiling (profiling.py), batch digests (digests.py) and saving
checkpoints (checkpoints.CheckpointHook, which the loop runs after the others) are hooks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from jax.sharding import Mesh

from anygpt_jax.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """What a hook may know of the run it serves."""

    model_dir: str
    train_steps: int
    model_config: ModelConfig
    vocab: Any  # MergedVocabulary
    mesh: Mesh


class TrainHook:
    """A hook doing nothing at every point; subclasses override what they need."""

    def setup(self, run: TrainRun) -> None:
        """Checks the configuration against the run (raise ValueError); writes nothing."""

    def start(self, step: int) -> None:
        """The loop starts after step `step` (0 for a fresh run)."""

    def before_step(self, step: int) -> None:
        """Step `step` is about to be dispatched."""

    def after_step(self, step: int, state: Any, metrics: dict[str, Any],
                   batch: dict[str, np.ndarray]) -> None:
        """Step `step` is done: its new state, host metrics and this process's batch rows."""

    def after_save(self, step: int) -> None:
        """A checkpoint of step `step` has been started."""

    def end(self) -> None:
        """The loop is over (finished, stopped or failed)."""
