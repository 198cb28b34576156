"""`python -m anygpt_jax.aot --gin_file=F [...] --topology=v5p-128 [--num_slices=N]`.

Compiles, on any host, the real train step and one KV-cache decode step of the run that
the gin files describe (`--skip_train` / `--skip_decode`: one of them), for the devices of a
TPU slice (libtpu's compile-only topology, as MaxText's train_compile does), and prints per
chip: memory (arguments, temporaries, total against HBM), compiled FLOPs per step against
model FLOPs, the custom kernels lowered, and the sharding of each parameter group. The gin
files are the training run's own (a recipe plus a topology layer); `--gin.KEY=VALUE`
overrides as in `anygpt_jax.train`, and `DecodeShape.batch_size` / `.max_length` /
`.int8_weights` set the serving shape.

Exit status: 0 when every step fits (with --min_headroom of HBM free), 1 when one does not,
2 on bad flags or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import Any

from anygpt_jax import gin_utils, runtime
from anygpt_jax import train as train_cli

GIB = 1024**3


@dataclasses.dataclass
class AotResult:
    """Everything the report prints: the run, the mesh and the compiled steps."""

    topology: Any  # tpu_topology.TpuTopology
    num_slices: int
    mesh_shape: dict[str, int]
    model_config: Any  # ModelConfig
    batch_size: int
    seq_len: int
    num_microbatches: int
    steps: list[Any]  # aot_compile.StepReport
    parameters: list[dict[str, Any]]

    def fits(self, min_headroom: float = 0.0) -> bool:
        return all(s.fits(min_headroom) for s in self.steps)


def _parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str], list[str], list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m anygpt_jax.aot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--topology", required=True, help="TPU slice, e.g. v4-8, v5e-256, v5p-128")
    parser.add_argument(
        "--num_slices", type=int, default=None, help="slices over DCN (default: gin's)"
    )
    parser.add_argument(
        "--min_headroom",
        type=float,
        default=0.0,
        help="fraction of HBM that must stay free for a step to count as fitting",
    )
    parser.add_argument("--skip_decode", action="store_true", help="compile the train step only")
    parser.add_argument("--skip_train", action="store_true",
                        help="compile the decode step only (a serving slice)")
    parser.add_argument(
        "--skip_flops",
        action="store_true",
        help="skip the loop-free probe compiles that count compiled FLOPs",
    )
    args, bindings = gin_utils.parse_flags(parser, argv, "tpu_configs/pretrain_7b/v5p-128.gin")
    if not 0.0 <= args.min_headroom < 1.0:
        parser.error(f"--min_headroom={args.min_headroom} must be in [0, 1)")
    return args, args.gin_file, bindings, args.gin_search_path


def run(
    topology_name: str,
    num_slices: int | None = None,
    decode: bool = True,
    count_flops: bool = True,
    train: bool = True,
) -> AotResult:
    """Compiles the gin-configured run (gin already parsed) for `topology_name`: its train
    step and one decode step (each unless skipped)."""
    import gin

    from anygpt_jax import aot_compile, tpu_topology
    from anygpt_jax.training.trainer import build_components

    topology = tpu_topology.parse_topology(topology_name)
    # What gin passes to `train`, references built: the same components the trainer builds.
    bound = gin.get_bindings("train")
    missing = [k for k in ("train_steps", "batch_size", "seq_len") if k not in bound]
    if missing:
        raise ValueError(f"gin binds no {', '.join('train.' + k for k in missing)}")
    components = build_components(bound["train_steps"], bound.get("model_config"),
                                  bound.get("partitioner"), bound.get("optimizer"),
                                  bound.get("loss_config"))
    if num_slices is None:
        num_slices = int(gin.get_bindings("make_mesh").get("num_slices", 1))
    devices = tpu_topology.topology_devices(topology, num_slices)
    mesh = components.partitioner.mesh(devices=devices, num_slices=num_slices)
    cfg, loss_cfg = components.model_config, components.loss_config
    rules = components.partitioner.rules
    batch_size, seq_len = int(bound["batch_size"]), int(bound["seq_len"])
    tx, schedule = components.tx, components.schedule
    where = f"{topology_name} x {num_slices}" if num_slices > 1 else topology_name
    steps = []
    if train:
        with _narrated(f"compiling the train step for {where} ({len(devices)} chips, mesh "
                       f"{dict(mesh.shape)}); minutes for a large model"):
            steps.append(aot_compile.compile_train(
                cfg, mesh, batch_size, seq_len, topology.hbm_bytes, tx, schedule, loss_cfg,
                rules, count_flops=count_flops))
    if decode:
        with _narrated(f"compiling one decode step for {where}"):
            steps.append(
                aot_compile.compile_decode(
                    cfg, mesh, topology.hbm_bytes, rules=rules, count_flops=count_flops
                )
            )
    return AotResult(
        topology=topology,
        num_slices=num_slices,
        mesh_shape=dict(mesh.shape),
        model_config=cfg,
        batch_size=batch_size,
        seq_len=seq_len,
        num_microbatches=loss_cfg.num_microbatches,
        steps=steps,
        parameters=aot_compile.parameter_shardings(cfg, mesh, rules),
    )


@contextlib.contextmanager
def _narrated(what: str):
    """Says on stderr what is being waited for, then how long it took."""
    print(f"{what}...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"  done in {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 1024**2:.1f} MiB"


def _axes(spec: tuple) -> str:
    return "(" + ", ".join("-" if a is None else str(a) for a in spec) + ")"


def format_report(result: AotResult, min_headroom: float = 0.0) -> str:
    """The human-readable report `python -m anygpt_jax.aot` prints."""
    t, cfg = result.topology, result.model_config
    lines = [
        f"topology {t.name}: {t.libtpu_name}, {t.chips} chips x {result.num_slices} slice(s), "
        f"{t.hosts * result.num_slices} hosts, {_gib(t.hbm_bytes)} HBM per chip",
        f"mesh {result.mesh_shape}",
        f"model: {cfg.num_layers} layers x {cfg.hidden_size}, vocab {cfg.padded_vocab_size} "
        f"(padded), params {cfg.param_dtype}, compute {cfg.dtype}, remat {cfg.remat_policy}, "
        f"attention {cfg.attention_kernel}, scan_layers {cfg.scan_layers}",
        f"train batch {result.batch_size} x {result.seq_len} tokens, "
        f"{result.num_microbatches} micro-batch(es)",
    ]
    for step in result.steps:
        m = step.memory
        if m is None:
            lines += [
                f"{step.name} step: DOES NOT FIT; XLA refused it after "
                f"{step.compile_seconds:.1f} s:",
                f"  {step.out_of_memory}",
            ]
            continue
        verdict = "fits" if step.fits(min_headroom) else "DOES NOT FIT"
        if min_headroom and m.headroom >= 0 and not step.fits(min_headroom):
            verdict += f" (needs {min_headroom:.0%} free)"
        lines += [
            f"{step.name} step (compiled in {step.compile_seconds:.1f} s), per chip:",
            f"  memory: arguments {_gib(m.arguments)}, outputs {_gib(m.outputs)} "
            f"({_gib(m.aliased)} aliased to donated arguments), temporaries "
            f"{_gib(m.temporaries)}, code {_gib(m.code)}",
            f"  total {_gib(m.total)} of {_gib(m.hbm)} HBM, {m.headroom:.1%} free: {verdict}",
        ]
        if step.compiled_flops is not None:
            lines.append(
                f"  FLOPs: compiled {step.compiled_flops:.4g} vs model {step.model_flops:.4g} "
                f"= {step.flops_ratio:.3f}x; at peak ({t.peak_flops:.3g} FLOP/s) the step "
                f"takes >= {step.compiled_flops / t.peak_flops * 1e3:.1f} ms"
            )
        lines.append(
            f"  cost_analysis() of the step itself: {step.raw_flops:.4g} FLOPs "
            "(loop bodies counted once, Pallas kernels not at all)"
        )
        if step.kernels:
            lines.append(f"  custom kernels: {', '.join(step.kernels)}")
        lines += [f"  note: {note}" for note in step.notes]
    lines.append("parameter sharding (logical axes -> mesh axes; per-chip shard):")
    width = max(len(p["name"]) for p in result.parameters)
    for p in result.parameters:
        lines.append(
            f"  {p['name']:<{width}}  {list(p['shape'])}  {_axes(p['logical'])} -> "
            f"{_axes(p['mesh'])}  {list(p['shard'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the AOT compile and prints the report; see the module docstring for exit codes."""
    # Compiling needs no local accelerator: never take one a training job may hold.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    args, gin_files, bindings, search_paths = _parse_args(sys.argv[1:] if argv is None else argv)
    runtime.start_tensorflow_quietly()  # the run's gin imports the data path
    import anygpt_jax.aot_compile  # noqa: F401 - registers DecodeShape with gin

    try:
        train_cli.parse_gin(gin_files, bindings, search_paths)
        result = run(args.topology, args.num_slices, not args.skip_decode, not args.skip_flops,
                     train=not args.skip_train)
    except (ValueError, RuntimeError) as e:  # ConfigError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result, args.min_headroom), flush=True)
    if not result.fits(args.min_headroom):
        print(f"error: does not fit on {args.topology}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
