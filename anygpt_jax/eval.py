"""`python -m anygpt_jax.eval --gin_file=F [--gin_file=...] [--gin.KEY=VALUE ...]`.

Evaluates a model directory (a converted checkpoint or a training MODEL_DIR's latest step) on
the eval tasks gin registers (anygpt_jax/evaluation/tasks.py): teacher-forced loss and
perplexity per modality, and generation scored by the paper's metrics. Gin files are parsed
in order, then `--gin.KEY=VALUE` bindings; the MODEL_DIR macro is required. Results go to
run_eval.output_dir (default MODEL_DIR/eval): metrics-STEP.json, predictions-STEP.jsonl,
media-STEP/ and tensorboard/. See tpu_configs/eval/ for the paper's set-up and a CPU demo.
Every path (MODEL_DIR, output_dir, eval sets, scoring models) may be local or gs://.
"""

from __future__ import annotations

import argparse
import sys

from anygpt_jax import gin_utils, storage

REQUIRED_MACROS = ("MODEL_DIR",)


def parse_args(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Splits argv into gin files, `KEY=VALUE` bindings and search paths; else a usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m anygpt_jax.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args, bindings = gin_utils.parse_flags(parser, argv, "tpu_configs/eval/paper.gin")
    return args.gin_file, bindings, args.gin_search_path


def parse_gin(gin_files: list[str], bindings: list[str], search_paths: list[str] = ()) -> None:
    """Parses files then bindings and checks the required macros; raises ConfigError."""
    # Registers every configurable the eval configs may name (they may include the training
    # config of the run they evaluate).
    import anygpt_jax.evaluation.loop  # noqa: F401
    import anygpt_jax.evaluation.models  # noqa: F401
    import anygpt_jax.evaluation.scoring  # noqa: F401
    import anygpt_jax.evaluation.tasks  # noqa: F401
    import anygpt_jax.inference  # noqa: F401
    import anygpt_jax.inference.media  # noqa: F401
    import anygpt_jax.modalities.soundstorm  # noqa: F401
    import anygpt_jax.partitioning  # noqa: F401
    import anygpt_jax.tasks  # noqa: F401
    import anygpt_jax.training.trainer  # noqa: F401
    import anygpt_jax.vocab  # noqa: F401

    gin_utils.parse_gin_files(gin_files, bindings, search_paths, REQUIRED_MACROS)


def main(argv: list[str] | None = None) -> int:
    """Runs the evaluation; returns the exit status (1 with a one-line message on bad input)."""

    def job() -> int:
        import json

        from anygpt_jax.evaluation.loop import run_eval

        print(json.dumps(run_eval(), indent=2, sort_keys=True))
        return 0

    return gin_utils.run_job(
        parse_args(sys.argv[1:] if argv is None else argv), parse_gin, job,
        lambda: (ValueError, FileNotFoundError, ImportError, storage.StorageError))


if __name__ == "__main__":
    sys.exit(main())
