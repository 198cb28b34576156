"""Training checkpoints: orbax async saves of the train state plus each host's input position.

MODEL_DIR/
  model_config.json, vocab/      what AnyGPT.load needs (written once, at start)
  checkpoints/<step>/state/      the TrainState (orbax CheckpointManager, async)
  checkpoints/<step>/integrity/  fingerprints of every array of the state, taken on the
                                 devices before the save and checked on every restore
  input/<step>/process_<i>.*     each process's tf.data iterator position at that step

A step counts as saved once orbax has committed its state; its input positions are
written before the state save starts, so a committed step always has them. Restoring
targets the current mesh's shardings, so a run may resume on another device count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp

from anygpt_jax import integrity, orbax_errors, storage
from anygpt_jax.checkpointing import (
    CHECKPOINTS_DIR,
    INTEGRITY_ITEM,
    STATE_ITEM,
    fingerprint_record,
    newest_committed_step,
)
from anygpt_jax.training.hooks import TrainHook

INPUT_DIR = "input"


class CheckpointSaveError(OSError):
    """An asynchronous save failed (e.g. a full disk); names the step. Older steps are intact:
    orbax commits a step only once all of it is written."""


@gin.configurable
class TrainCheckpointer:
    """Keeps the last `keep_last` checkpoints plus every `keep_every`-th step (if set)."""

    def __init__(
        self,
        model_dir: str,
        keep_last: int = 3,
        keep_every: int | None = None,
        async_save: bool = True,
    ):
        self.model_dir = storage.path(model_dir)
        self._saving: int | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last,
            keep_period=keep_every,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.model_dir / CHECKPOINTS_DIR,
            item_names=(STATE_ITEM, INTEGRITY_ITEM),
            options=options,
        )
        orbax_errors.install()  # its errors reach us raised; we report them in one line

    def input_prefix(self, step: int) -> str:
        """Where this process's input position for `step` lives."""
        return storage.join(self.model_dir, INPUT_DIR, str(step), f"process_{jax.process_index()}")

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, input_iterator=None) -> None:
        """Starts an async save of `state` at `step` (input position written synchronously).
        A failure of the previous save is raised here at the latest (CheckpointSaveError)."""
        # Orbax waits for the previous save before starting one; waiting here first names the
        # step whose save failed, instead of this one.
        self._wait_for_saves()
        self._saving = step
        if input_iterator is not None:
            input_iterator.save(self.input_prefix(step))
        record = fingerprint_record(state)  # one pass over device memory, before the copy
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(**{
                    STATE_ITEM: ocp.args.StandardSave(state),
                    INTEGRITY_ITEM: ocp.args.JsonSave(record),
                }),
            )
        except Exception as e:  # noqa: BLE001 - as in check()
            raise self._save_error(e) from None
        self._prune_inputs()

    def restore(self, step: int, abstract_state: Any, input_iterator=None) -> Any:
        """Restores `step` into the shardings of `abstract_state` (ShapeDtypeStructs)."""
        items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
        recorded = storage.exists(self.model_dir / CHECKPOINTS_DIR / str(step) / INTEGRITY_ITEM)
        if recorded:  # checkpoints written before fingerprints were recorded have none
            items[INTEGRITY_ITEM] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if recorded:
            where = storage.join(self.model_dir, CHECKPOINTS_DIR, str(step))
            integrity.verify(restored[STATE_ITEM], restored[INTEGRITY_ITEM]["arrays"], where)
        if input_iterator is not None:
            input_iterator.restore(self.input_prefix(step))
        return restored[STATE_ITEM]

    def all_steps(self) -> list[int]:
        """Committed steps, oldest first."""
        return sorted(self._manager.all_steps())

    def saving(self) -> bool:
        """Whether an async save is still being written (not yet committed)."""
        return self._manager.is_saving_in_progress()

    def check(self) -> None:
        """Raises CheckpointSaveError when an async save has failed since the last check."""
        try:
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - orbax re-raises whatever the writer raised
            raise self._save_error(e) from None

    def wait(self) -> None:
        """Blocks until pending async saves are committed (CheckpointSaveError if one failed)."""
        self._wait_for_saves()
        self._prune_inputs()

    def _wait_for_saves(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - as in check()
            raise self._save_error(e) from None

    def _save_error(self, e: BaseException) -> CheckpointSaveError:
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        return CheckpointSaveError(
            f"saving checkpoint step {self._saving} to {self.model_dir / CHECKPOINTS_DIR} "
            f"failed: {reason}; the last committed step is "
            f"{newest_committed_step(self.model_dir / CHECKPOINTS_DIR)}"
        )

    def close(self) -> None:
        self._manager.close()

    def _prune_inputs(self) -> None:
        """Drops input positions of steps orbax no longer keeps (never the ones in flight)."""
        if jax.process_index() != 0:
            return
        root = self.model_dir / INPUT_DIR
        kept = set(self._manager.all_steps())
        newest = max(kept, default=-1)
        for name in storage.listdir(root):
            if name.isdigit() and int(name) not in kept and int(name) < newest:
                storage.rmtree(root / name)


class CheckpointHook(TrainHook):
    """The loop's saving, as a hook: saves the state and input positions after every
    `every`-th step, the last step, and a step after which the invocation stops (the loop sets
    `stop_after_this_step`: preemption, time slice), then calls `after_save` of `listeners`.

    It runs after the other hooks, so what they log of a step is on disk before its save
    starts; a failed async save is reported at the next step (CheckpointSaveError)."""

    def __init__(self, checkpointer: TrainCheckpointer, input_iterator: Any, every: int,
                 train_steps: int, listeners: Sequence[TrainHook] = ()):
        self.checkpointer = checkpointer
        self.input_iterator = input_iterator
        self.every = every
        self.train_steps = train_steps
        self.listeners = tuple(listeners)
        self.stop_after_this_step = False
        self._pending: tuple[int, float] | None = None  # (step, when its save started)

    def after_step(self, step: int, state: Any, metrics: Any = None, batch: Any = None) -> None:
        self.checkpointer.check()  # an async save that failed is reported now, not at the next
        self._report_commit()
        if step % self.every == 0 or step == self.train_steps or self.stop_after_this_step:
            self.checkpointer.save(step, state, self.input_iterator)
            self._pending = (step, time.perf_counter())
            for hook in self.listeners:
                hook.after_save(step)

    def end(self) -> None:
        if self._pending is not None and self.checkpointer.saving():
            print(f"waiting for checkpoint step {self._pending[0]} to be written and committed",
                  flush=True)
        self.checkpointer.wait()
        self._report_commit()

    def _report_commit(self) -> None:
        """Says once that the pending save is committed (orbax writes it in the background)."""
        if self._pending is None or self.checkpointer.saving():
            return
        step, started = self._pending
        self._pending = None
        print(f"checkpoint step {step} committed ({time.perf_counter() - started:.1f}s after "
              "its save began)", flush=True)
