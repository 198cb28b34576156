"""`python -m anygpt_jax.train --gin_file=F [--gin_file=...] [--gin.KEY=VALUE ...]`.

t5x's convention: gin files are parsed in order, then `--gin.KEY=VALUE` bindings (macros
such as MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, SEQ_LEN, MIXTURE_OR_TASK_NAME, CHECKPOINT_EVERY
included). Every configuration error is reported before any work starts. The operative
config is written to MODEL_DIR. Exit status: 0 finished, 1 error (one line), 143 checkpointed
on SIGTERM but unfinished (run the same command again to continue).
"""

from __future__ import annotations

import argparse
import os
import sys

from anygpt_jax import runtime, storage

REQUIRED_MACROS = (
    "MODEL_DIR",
    "TRAIN_STEPS",
    "BATCH_SIZE",
    "SEQ_LEN",
    "MIXTURE_OR_TASK_NAME",
    "CHECKPOINT_EVERY",
)
# Exit status: 0 the run finished (or a time slice, train.stop_after_steps, ended as asked);
# 1 an error, reported in one line; EXIT_PREEMPTED: SIGTERM arrived, the run checkpointed and
# is unfinished (128 + SIGTERM, what a shell reports for a process ended by SIGTERM).
EXIT_PREEMPTED = 143
GIN_CONTEXT = "\n  In call to configurable"
CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tpu_configs"  # local: ours
)


class ConfigError(ValueError):
    """The gin files or bindings are unusable; the message names the file, key or value."""


def gin_bindings(parser: argparse.ArgumentParser, rest: list[str]) -> list[str]:
    """The KEY=VALUE of each --gin.KEY=VALUE in `rest`; any other argument is a usage error."""
    bindings = []
    for arg in rest:
        if arg.startswith("--gin.") and "=" in arg:
            bindings.append(arg[len("--gin.") :])
        else:
            parser.error(f"unrecognized argument {arg!r} (bindings are --gin.KEY=VALUE)")
    return bindings


def parse_args(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Splits argv into gin files, `KEY=VALUE` bindings and search paths; else an error."""
    parser = argparse.ArgumentParser(
        prog="python -m anygpt_jax.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="a gin file; repeat to layer several (later files win)",
    )
    parser.add_argument(
        "--gin_search_path",
        action="append",
        default=[],
        help="extra directories to resolve gin files and includes in",
    )
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest)
    if not args.gin_file:
        parser.error("at least one --gin_file is required (e.g. tpu_configs/cpu_default.gin)")
    for path in args.gin_search_path:
        if not storage.isdir(path):
            parser.error(f"--gin_search_path {path!r} is not a directory")
    return args.gin_file, bindings, args.gin_search_path


def parse_gin(gin_files: list[str], bindings: list[str], search_paths: list[str] = ()) -> None:
    """Parses files then bindings, and checks the required macros; raises ConfigError."""
    # Registers every configurable the configs may name.
    import anygpt_jax.tasks  # noqa: F401
    import anygpt_jax.training.trainer  # noqa: F401
    import anygpt_jax.vocab  # noqa: F401

    parse_gin_files(gin_files, bindings, search_paths, REQUIRED_MACROS)


def parse_gin_files(
    gin_files: list[str],
    bindings: list[str],
    search_paths: list[str] = (),
    required_macros: tuple[str, ...] = (),
) -> None:
    """The gin parse every CLI shares: files (found here or under tpu_configs/) then bindings;
    a required macro that is unset or None is an error. Raises ConfigError naming the fault."""
    import gin

    _register_gin_reader()
    gin.clear_config()
    for path in (os.getcwd(), CONFIG_DIR, *search_paths):
        gin.add_config_file_search_path(path)
    for path in gin_files:
        found = path if storage.isfile(path) else os.path.join(CONFIG_DIR, path)
        if not storage.isfile(found):
            raise ConfigError(f"gin file not found: {path}")
    try:
        gin.parse_config_files_and_bindings(gin_files, bindings, finalize_config=False)
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


def _register_gin_reader() -> None:
    """Lets gin files and their includes live on gs:// (gin reads local files itself)."""
    import io

    import gin

    if not getattr(_register_gin_reader, "done", False):
        gin.config.register_file_reader(
            lambda p: io.StringIO(storage.read_text(p)),
            lambda p: storage.is_remote(p) and storage.isfile(p),
        )
        _register_gin_reader.done = True


def main(argv: list[str] | None = None) -> int:
    """Runs training; returns the exit status (1 with a one-line message on bad config)."""
    gin_files, bindings, search_paths = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        parse_gin(gin_files, bindings, search_paths)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from anygpt_jax.training.trainer import Preempted, TrainingError, train

    runtime.initialize_distributed()
    try:
        train()
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return EXIT_PREEMPTED
    # Bad values, missing files, unreachable buckets, divergence, corrupt shards.
    except (ValueError, OSError, TrainingError) as e:
        # Gin appends "In call to configurable ..." lines: the message is the first line.
        print(f"error: {str(e).split(GIN_CONTEXT)[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
