"""A hook tracing chosen training steps where TensorBoard's profile plugin finds them."""

from __future__ import annotations

from typing import Any

import gin
import jax

from anygpt_jax import storage
from anygpt_jax.training.hooks import TrainHook, TrainRun


def _window(profile_steps: tuple[int, int] | None) -> tuple[int, int] | None:
    """(first, last) as ints, or ValueError naming the binding when it is not two numbers."""
    if profile_steps is None:
        return None
    try:
        first, last = (int(s) for s in profile_steps)
    except (TypeError, ValueError):
        raise ValueError(
            f"StepProfiler.steps={profile_steps!r}: expected (first, last) step numbers"
        ) from None
    return first, last


def check_profile_steps(profile_steps: tuple[int, int] | None, train_steps: int) -> None:
    """Refuses a step window that is not 1 <= first <= last <= train_steps."""
    window = _window(profile_steps)
    if window is None:
        return
    first, last = window
    if not 1 <= first <= last <= train_steps:
        raise ValueError(
            f"StepProfiler.steps={profile_steps!r}: needs 1 <= first <= last <= "
            f"train_steps={train_steps}"
        )


@gin.configurable
class StepProfiler(TrainHook):
    """Traces steps `first..last` (1-based, as the progress line counts them) with
    jax.profiler into MODEL_DIR/tensorboard/plugins/profile/<run>/, one file per host (or
    into `log_dir`). It may be gs://: jax writes local files (a storage.MirroredDir),
    uploaded when the trace stops.

    A run resumed inside the window traces what is left of it; one resumed after it, nothing.
    The trace stops after a step's metrics are on the host, so the last step is whole.
    """

    def __init__(self, steps: tuple[int, int] | None = None,
                 log_dir: storage.PathLike | None = None):
        self.steps = steps
        self.window = _window(steps)
        self._log_dir = log_dir
        self.log_dir: storage.MirroredDir | None = None
        self.active = False

    def setup(self, run: TrainRun) -> None:
        check_profile_steps(self.steps, run.train_steps)
        if self._log_dir is None:
            self._log_dir = storage.join(run.model_dir, "tensorboard")

    def start(self, step: int) -> None:
        if self.window is not None and self.log_dir is None:
            self.log_dir = storage.MirroredDir(self._log_dir)

    def before_step(self, step: int) -> None:
        if self.window and not self.active and self.window[0] <= step <= self.window[1]:
            jax.profiler.start_trace(self.log_dir.local)
            self.active = True

    def after_step(self, step: int, state: Any = None, metrics: Any = None,
                   batch: Any = None) -> None:
        if self.active and step >= self.window[1]:
            self._stop()

    def end(self) -> None:
        """Ends a trace still running (a run stopped inside the window)."""
        self._stop()
        if self.log_dir is not None:
            self.log_dir.close()
            self.log_dir = None

    def _stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            self.log_dir.sync()
