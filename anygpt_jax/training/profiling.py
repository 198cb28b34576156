"""A profiler trace of chosen training steps, where TensorBoard's profile plugin finds it."""

from __future__ import annotations

import jax

from anygpt_jax import storage


def check_profile_steps(profile_steps: tuple[int, int] | None, train_steps: int) -> None:
    """Refuses a step window that is not 1 <= first <= last <= train_steps."""
    if profile_steps is None:
        return
    try:
        first, last = (int(s) for s in profile_steps)
    except (TypeError, ValueError):
        raise ValueError(
            f"train.profile_steps={profile_steps!r}: expected (first, last) step numbers"
        ) from None
    if not 1 <= first <= last <= train_steps:
        raise ValueError(
            f"train.profile_steps={profile_steps!r}: needs 1 <= first <= last <= "
            f"train_steps={train_steps}"
        )


class StepProfiler:
    """Traces steps `first..last` (1-based, as the progress line counts them) with
    jax.profiler into `log_dir`/plugins/profile/<run>/, one file per host. `log_dir` may be
    gs://: jax writes local files (a storage.MirroredDir), uploaded when the trace stops.

    A run resumed inside the window traces what is left of it; one resumed after it, nothing.
    The trace stops after a step's metrics are on the host, so the last step is whole.
    """

    def __init__(self, log_dir: storage.PathLike | storage.MirroredDir,
                 profile_steps: tuple[int, int] | None):
        if not isinstance(log_dir, storage.MirroredDir):
            log_dir = storage.MirroredDir(log_dir)
        self.log_dir = log_dir
        self.window = None if profile_steps is None else tuple(int(s) for s in profile_steps)
        self.active = False

    def before_step(self, step: int) -> None:
        """Called before step `step` (1-based) is dispatched."""
        if self.window and not self.active and self.window[0] <= step <= self.window[1]:
            jax.profiler.start_trace(self.log_dir.local)
            self.active = True

    def after_step(self, step: int) -> None:
        """Called once step `step`'s results are on the host."""
        if self.active and step >= self.window[1]:
            self.stop()

    def stop(self) -> None:
        """Ends a trace still running (a run stopped inside the window)."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            self.log_dir.sync()
