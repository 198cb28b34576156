"""Orbax and tensorstore failures surface once, as the exception our caller turns into a line.

A failed async save (a full disk) is logged by orbax from each thread it passes through,
three tracebacks, before it is re-raised in the main thread; the writes and reads still in
flight then fail in callbacks and coroutines that nobody awaits any more, dozens of
'Event loop is closed' and 'Exception ignored in: <coroutine ...>' tracebacks. The
exception itself still reaches the caller: TrainCheckpointer names the failed step in one
CheckpointSaveError line; a failed restore is raised to whoever restored.
"""

from __future__ import annotations

import logging
import sys


class _OrbaxErrorTracebacks(logging.Filter):
    """Drops orbax's ERROR records that carry a traceback: those of a failed save or restore,
    logged by each thread the exception passes through on its way to the caller. (Its one
    such record of a failure it does not raise, a failed delete of an old step, goes too.)
    Its error lines without a traceback stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        orbax_traceback = record.exc_info and "/orbax/checkpoint/" in record.pathname
        return record.levelno < logging.ERROR or not orbax_traceback


_FILTER = _OrbaxErrorTracebacks()


def _orphaned(unraisable) -> bool:
    """An error nobody can receive: a callback into a closed event loop, or a coroutine that
    failed while being closed after the gather awaiting it had already failed."""
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
        return True
    closing = e is not None and isinstance(e.__cause__ or e.__context__, GeneratorExit)
    return closing and type(unraisable.object).__name__ == "coroutine"


def drop_orphaned_errors() -> None:
    """Chains a sys.unraisablehook that drops orphaned async errors (installed once)."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_orphaned_async_errors", False):
        return

    def hook(unraisable) -> None:
        if not _orphaned(unraisable):
            previous(unraisable)

    hook.drops_orphaned_async_errors = True
    sys.unraisablehook = hook


def install() -> None:
    """Drops orbax's error tracebacks and orphaned async errors from here on (idempotent).

    Process-wide on purpose: the failures behind them are raised to orbax's caller, which is
    where this project reports them, in one line.
    """
    absl_logger = logging.getLogger("absl")
    if _FILTER not in absl_logger.filters:
        absl_logger.addFilter(_FILTER)
    drop_orphaned_errors()
