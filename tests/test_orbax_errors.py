"""orbax_errors: orbax's duplicate error logs and orphaned async errors go, nothing else."""

import asyncio
import logging
import sys
import types

from anygpt_jax import orbax_errors


def record(level: int, pathname: str, traceback: bool = True) -> logging.LogRecord:
    try:
        raise OSError("No space left on device")
    except OSError:
        exc_info = sys.exc_info() if traceback else None
    return logging.LogRecord("absl", level, pathname, 1, "failed", (), exc_info)


def test_only_orbax_error_tracebacks_are_dropped(monkeypatch):
    absl = logging.getLogger("absl")
    monkeypatch.setattr(absl, "filters", [])
    orbax_file = "/site-packages/orbax/checkpoint/_src/futures/future.py"
    assert absl.filter(record(logging.ERROR, orbax_file))
    orbax_errors.install()
    orbax_errors.install()
    assert len(absl.filters) == 1
    assert not absl.filter(record(logging.ERROR, orbax_file))
    assert absl.filter(record(logging.WARNING, orbax_file))
    assert absl.filter(record(logging.ERROR, orbax_file, traceback=False))
    assert absl.filter(record(logging.ERROR, "/site-packages/seqio/dataset_providers.py"))


def unraisable(exc: BaseException, obj=None):
    return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                 err_msg=None, object=obj)


def test_orphaned_async_errors_are_dropped_and_others_passed_on(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    orbax_errors.drop_orphaned_errors()
    orbax_errors.drop_orphaned_errors()  # installed once

    async def reader():
        return None

    coroutine = reader()
    closing = Exception("error while reading array index")
    closing.__cause__ = GeneratorExit()
    sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
    sys.unraisablehook(unraisable(closing, coroutine))
    kept = [unraisable(RuntimeError("something else")), unraisable(closing, object()),
            unraisable(ValueError("x"), coroutine)]
    for u in kept:
        sys.unraisablehook(u)
    coroutine.close()
    assert seen == kept
    assert asyncio.iscoroutine(coroutine)
