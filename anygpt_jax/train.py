"""`python -m anygpt_jax.train --gin_file=F [--gin_file=...] [--gin.KEY=VALUE ...]`.

t5x's convention: gin files are parsed in order, then `--gin.KEY=VALUE` bindings (macros
such as MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, SEQ_LEN, MIXTURE_OR_TASK_NAME, CHECKPOINT_EVERY
included). Every configuration error is reported before any work starts. The operative
config is written to MODEL_DIR. Exit status: 0 finished, 1 error (one line), 143 checkpointed
on SIGTERM but unfinished (run the same command again to continue).
"""

from __future__ import annotations

import argparse
import sys

from anygpt_jax import gin_utils

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


def parse_args(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Splits argv into gin files, `KEY=VALUE` bindings and search paths; else a usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m anygpt_jax.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args, bindings = gin_utils.parse_flags(parser, argv, "tpu_configs/cpu_default.gin")
    return args.gin_file, bindings, args.gin_search_path


def parse_gin(gin_files: list[str], bindings: list[str], search_paths: list[str] = ()) -> None:
    """Parses files then bindings, and checks the required macros; raises ConfigError."""
    # Registers every configurable the configs may name, the hooks included.
    import anygpt_jax.evaluation.hook  # noqa: F401
    import anygpt_jax.tasks  # noqa: F401
    import anygpt_jax.training.digests  # noqa: F401
    import anygpt_jax.training.profiling  # noqa: F401
    import anygpt_jax.training.trainer  # noqa: F401
    import anygpt_jax.vocab  # noqa: F401

    gin_utils.parse_gin_files(gin_files, bindings, search_paths, REQUIRED_MACROS)


def main(argv: list[str] | None = None) -> int:
    """Runs training; returns the exit status (1 with a one-line message on bad config)."""

    def job() -> int:
        from anygpt_jax.training.trainer import Preempted, train

        try:
            train()
        except Preempted as e:
            print(str(e), file=sys.stderr)
            return EXIT_PREEMPTED  # every host stops at the same step: no peer is left waiting
        return 0

    def expected_errors():
        from anygpt_jax.training.trainer import TrainingError

        # Bad values, missing files, unreachable buckets, divergence, corrupt shards.
        return ValueError, OSError, TrainingError

    return gin_utils.run_job(parse_args(sys.argv[1:] if argv is None else argv), parse_gin,
                             job, expected_errors)


if __name__ == "__main__":
    sys.exit(main())
