"""The gin surface every CLI shares (t5x's gin_utils): flags, the parse, one-line errors.

`--gin_file=F` (repeatable; a path, or one under tpu_configs/), `--gin_search_path=DIR` and
`--gin.KEY=VALUE` bindings, parsed in that order. Gin files and their includes may be on gs://.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable

from anygpt_jax import storage

CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tpu_configs"  # local: ours
)
# Gin appends "In call to configurable ..." context to errors raised inside configurables.
GIN_CONTEXT = "\n  In call to configurable"


class ConfigError(ValueError):
    """The gin files or bindings are unusable; the message names the file, key or value."""


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --gin_file and --gin_search_path to `parser`."""
    parser.add_argument("--gin_file", action="append", default=[],
                        help="a gin file; repeat to layer several (later files win)")
    parser.add_argument("--gin_search_path", action="append", default=[],
                        help="extra directories to resolve gin files and includes in")


def parse_flags(
    parser: argparse.ArgumentParser, argv: list[str], example_gin_file: str | None = None
) -> tuple[argparse.Namespace, list[str]]:
    """Parses `argv` with the gin flags added; returns (args, `KEY=VALUE` bindings).

    With `example_gin_file`, at least one --gin_file is required. Usage errors exit through
    argparse (status 2)."""
    add_gin_flags(parser)
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest)
    if example_gin_file and not args.gin_file:
        parser.error(f"at least one --gin_file is required (e.g. {example_gin_file})")
    for path in args.gin_search_path:
        if not storage.isdir(path):
            parser.error(f"--gin_search_path {path!r} is not a directory")
    return args, bindings


def gin_bindings(parser: argparse.ArgumentParser, rest: list[str]) -> list[str]:
    """The KEY=VALUE of each --gin.KEY=VALUE in `rest`; any other argument is a usage error."""
    bindings = []
    for arg in rest:
        if arg.startswith("--gin.") and "=" in arg:
            bindings.append(arg[len("--gin.") :])
        else:
            parser.error(f"unrecognized argument {arg!r} (bindings are --gin.KEY=VALUE)")
    return bindings


def resolve_gin_file(path: str) -> str:
    """`path` as gin should open it: absolute, or the file of that name under tpu_configs/.

    Absolute because gin reads a relative `runs/x.gin` as a resource of a package named
    `runs` when the working directory has a runs/ folder. Raises ConfigError if neither exists.
    """
    if storage.isfile(path):
        return os.fspath(storage.path(path))  # absolute; a gs:// URL stays one
    under_configs = os.path.join(CONFIG_DIR, path)
    if storage.isfile(under_configs):
        return under_configs
    raise ConfigError(f"gin file not found: {path}")


def parse_gin_files(
    gin_files: list[str],
    bindings: list[str],
    search_paths: list[str] = (),
    required_macros: tuple[str, ...] = (),
) -> None:
    """Parses files (found here or under tpu_configs/) then bindings; a required macro that is
    unset or None is an error. Raises ConfigError naming the fault."""
    import gin

    _register_gin_reader()
    gin.clear_config()
    for path in (os.getcwd(), CONFIG_DIR, *search_paths):
        gin.add_config_file_search_path(path)
    resolved = [resolve_gin_file(path) for path in gin_files]
    try:
        gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=False)
    except (ValueError, KeyError, NameError, SyntaxError, OSError) as e:
        raise ConfigError(f"gin: {e}") from e
    missing = []
    for macro in required_macros:
        try:
            if gin.query_parameter(f"%{macro}") is None:
                missing.append(macro)
        except ValueError:
            missing.append(macro)
    if missing:
        raise ConfigError(
            f"required gin macros not set: {missing} (e.g. --gin.MODEL_DIR=\"'dir'\")"
        )


def error_line(e: BaseException) -> str:
    """The message of `e` without gin's "In call to configurable" context lines."""
    return str(e).split(GIN_CONTEXT)[0]


class _GinPackageProbe(logging.Filter):
    """Drops gin's 'Path not found' error: it probes every include (`models/tiny.gin`) as a
    resource of a Python package (`models`) before trying the search paths, where it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Path not found: %s"
                    and record.pathname.endswith(os.path.join("gin", "resource_reader.py")))


def _register_gin_reader() -> None:
    """Lets gin files and their includes live on gs:// (gin reads local files itself)."""
    import io

    import gin

    if not getattr(_register_gin_reader, "done", False):
        gin.config.register_file_reader(
            lambda p: io.StringIO(storage.read_text(p)),
            lambda p: storage.is_remote(p) and storage.isfile(p),
        )
        logging.getLogger().addFilter(_GinPackageProbe())
        _register_gin_reader.done = True


def run_job(
    gin_args: tuple[list[str], list[str], list[str]],
    parse_gin: Callable[[list[str], list[str], list[str]], None],
    job: Callable[[], int],
    expected_errors: Callable[[], tuple[type[BaseException], ...]],
) -> int:
    """The main of a gin CLI (train, eval) after its flags: TF started quietly, gin parsed,
    the multi-host job joined, then `job()`'s exit status.

    A ConfigError or one of `expected_errors()` (bad values, missing files, unreachable
    buckets) is one line and status 1; any other exception a traceback and status 1. A host
    of a multi-host job that fails exits at once (runtime.exit_status), ending its peers.
    """
    from anygpt_jax import runtime

    runtime.start_tensorflow_quietly()  # seqio's data path; before it prints its notices
    try:
        parse_gin(*gin_args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    expected = expected_errors()
    runtime.initialize_distributed()
    try:
        return job()
    except expected as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return runtime.exit_status(1)
    except Exception:  # noqa: BLE001 - a bug: its traceback, and no peer left waiting
        traceback.print_exc()
        return runtime.exit_status(1)
