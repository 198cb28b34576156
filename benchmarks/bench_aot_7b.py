"""AnyGPT-7B pre-training compiled ahead of time for v4-64, v5e-256 and v5p-128 (libtpu, no TPU).

For each run file under tpu_configs/runs/ it compiles the real train step (and the decode
step) for its slice with `anygpt_jax.aot` and prints, per chip: peak memory against HBM
(goal: >= 10% free) and compiled FLOPs per step against the model's FLOPs (goal: <= 1.35x
with full remat), then the full AOT report of each. Every 7B compile takes minutes and a few
GB of host memory; `--only v5p-128` runs one.

    python -m benchmarks.bench_aot_7b [--only TOPOLOGY ...] [--skip_decode] [--skip_flops]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compiling needs no local accelerator

import argparse  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402

from anygpt_jax import (
    aot,  # noqa: E402
    gin_utils,  # noqa: E402
)
from anygpt_jax import train as train_cli  # noqa: E402

# (topology, run file under tpu_configs/, extra gin bindings): the configurations the README
# reports, each at the paper's batch of 480.
CASES = (
    ("v4-64", "pretrain_7b/v4-64.gin", ()),
    ("v5e-256", "pretrain_7b/v5e-256.gin", ()),
    ("v5p-128", "pretrain_7b/v5p-128.gin", ()),
)
HEADROOM_GOAL, FLOPS_GOAL = 0.10, 1.35


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="topologies to compile")
    parser.add_argument("--skip_decode", action="store_true")
    parser.add_argument("--skip_flops", action="store_true")
    args = parser.parse_args()
    import anygpt_jax.aot_compile  # noqa: F401 - registers DecodeShape with gin

    rows, reports = [], []
    for topology, run_file, bindings in CASES:
        if args.only and topology not in args.only:
            continue
        start = time.perf_counter()
        path = os.path.join(gin_utils.CONFIG_DIR, run_file)
        train_cli.parse_gin([path], list(bindings))
        result = aot.run(topology, decode=not args.skip_decode, count_flops=not args.skip_flops)
        label = f"{topology} {run_file} {' '.join(bindings)}".strip()
        reports.append(
            f"== {label} ({time.perf_counter() - start:.0f} s)\n"
            + aot.format_report(result, HEADROOM_GOAL)
        )
        print(reports[-1], flush=True)
        for step in result.steps:
            rows.append((topology, result.batch_size, step))
        gc.collect()

    print("\nAnyGPT-7B AOT, per chip (goals: >= 10% HBM free; compiled/model FLOPs <= 1.35)")
    print(
        f"{'topology':<9} {'batch':>5} {'step':<6} {'peak':>10} {'HBM':>8} {'free':>6} "
        f"{'goal':<5} {'FLOPs ratio':>11} {'goal':<5}"
    )
    for topology, batch, step in rows:
        m = step.memory
        if m is None:
            print(f"{topology:<9} {batch:>5} {step.name:<6} {'out of HBM':>10}")
            continue
        ratio = step.flops_ratio
        ratio_text = "-" if ratio is None else f"{ratio:.3f}x"
        flops_goal = (
            "-"
            if ratio is None or step.name != "train"
            else ("met" if ratio <= FLOPS_GOAL else "NOT met")
        )
        print(
            f"{topology:<9} {batch:>5} {step.name:<6} {m.total / 2**30:>6.2f} GiB "
            f"{m.hbm / 2**30:>4.0f} GiB {m.headroom:>6.1%} "
            f"{'met' if m.headroom >= HEADROOM_GOAL else 'NOT met':<5} {ratio_text:>11} "
            f"{flops_goal:<5}"
        )


if __name__ == "__main__":
    main()
