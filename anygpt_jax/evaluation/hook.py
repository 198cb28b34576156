"""A train hook evaluating the current parameters every `every` steps and at the end."""

from __future__ import annotations

from typing import Any

import gin
import jax
import numpy as np

from anygpt_jax import storage
from anygpt_jax.training.hooks import TrainHook, TrainRun


@gin.configurable
class EvalHook(TrainHook):
    """Runs anygpt_jax.evaluation (tasks and options from gin: register_eval, EvalOptions) on
    the parameters after every `every`-th step and the last, writing to MODEL_DIR/eval.
    Its tasks are registered at setup, so a bad eval config fails before training starts."""

    def __init__(self, every: int = gin.REQUIRED):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"EvalHook.every={every!r}: must be an integer >= 1")
        self.every = every
        self._run: TrainRun | None = None

    def setup(self, run: TrainRun) -> None:
        from anygpt_jax.evaluation import tasks as eval_tasks

        if not eval_tasks.register_eval(run.vocab):
            raise ValueError(
                "EvalHook is set but no eval task has data: bind register_eval's *_dirs "
                "(see tpu_configs/eval/)"
            )
        self._run = run

    def after_step(self, step: int, state: Any, metrics: dict[str, Any],
                   batch: dict[str, np.ndarray]) -> None:
        if step % self.every and step != self._run.train_steps:
            return
        from anygpt_jax.api import AnyGPT
        from anygpt_jax.evaluation import loop

        run = self._run
        model = AnyGPT(state.params, AnyGPT.inference_config(run.model_config), run.vocab,
                       run.mesh)
        summary = loop.evaluate(model, storage.join(run.model_dir, "eval"), step)
        if jax.process_index() == 0:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(summary["metrics"].items()))
            print(f"eval at step {step}: {scores}", flush=True)
