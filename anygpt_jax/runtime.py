"""Per-jit XLA compile options, and joining a multi-host job before JAX starts its backends."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

# Which of XLA:CPU's dots and fusions go to YNNPACK. Every program here runs with XLA's
# default; only bf16 train steps ask for something else (training_compiler_options). The `dot`
# fusion type, once set process-wide from this module, fused broadcasts into YNNPACK subgraphs
# wrongly: a batched dot with a broadcast operand came out off by up to 1e16
# (tests/test_runtime.py keeps that pattern), and it was no faster than the default.
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def training_compiler_options(device, compute_dtype: str) -> dict[str, str] | None:
    """Per-jit `compiler_options` for a train step computing in `compute_dtype` on `device`.

    On CPU, bf16 x bf16 -> fp32 matmuls (see model/mixed_dot.py) reach the avx512_bf16 rate
    only as individual YNNPACK dots: fused into YNNPACK subgraphs they ran at half that, and a
    bf16 train step of the ~100M benchmark model took 4.5 s instead of 3.0 s. Asked for here so
    that no process-wide flag can turn that fusion back on for them. fp32 steps keep the
    process's settings. None where there is nothing to change.
    """
    import jax.numpy as jnp  # importing this module stays free of JAX

    if (
        device.platform != "cpu"
        or os.environ.get("ANYGPT_JAX_DEFAULT_XLA") == "1"
        or jnp.dtype(compute_dtype).itemsize >= 4
    ):
        return None
    # Naming any fusion type replaces XLA's default set, which also sends reductions to
    # YNNPACK; without it they lower to XLA's reduce-window loops, ~4x slower (the norm-scale
    # gradients), and the ~100M bf16 step took ~2-4% longer.
    return {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def initialize_distributed() -> None:
    """Joins the other processes of a multi-host job (TPU pods, or JAX_COORDINATOR_ADDRESS).

    On a TPU VM slice jax finds its peers itself; elsewhere the coordinator address, process
    count and id come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    A single process needs nothing, nor does a process that JAX_PLATFORMS keeps off the TPU.
    """
    import jax

    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif _on_tpu_vm():
        jax.distributed.initialize()


def exit_status(code: int) -> int:
    """`code` to return from a CLI's main; a process of a multi-host job exits at once instead.

    A normal exit waits at jax.distributed's shutdown barrier for peers that may wait forever
    in a collective for this process; exiting here ends the coordination service's heartbeats,
    so the peers fail (seconds when process 0 quits, the heartbeat timeout otherwise) instead
    of holding the slice.
    """
    import jax

    # Not jax.process_count(): on an error before the backend started, that would start it
    # (threads and all) just to exit, and its teardown can abort the process.
    if code and jax.distributed.is_initialized():
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def skip_absent_tpu() -> None:
    """Keeps JAX off the TPU backend on a host without TPU chips (unless JAX_PLATFORMS says).

    libtpu is installed for ahead-of-time TPU compiles; on a CPU host JAX would still try to
    start it and print its failure (host bounds, worker hostnames) before falling back to the
    CPU. Hosts with TPU chips, or with a JAX GPU plugin, are left to JAX's own choice.
    """
    import glob
    import importlib.util

    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return
    chips = glob.glob("/dev/accel*") + [  # local: the host's device files
        p for p in glob.glob("/dev/vfio/*") if os.path.basename(p).isdigit()]  # local: same
    gpu_plugins = any(importlib.util.find_spec(m) is not None
                      for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm_plugin"))
    if not chips and not gpu_plugins:
        os.environ["JAX_PLATFORMS"] = "cpu"
        if "jax" in sys.modules:  # jax read its flags when imported: tell it directly
            sys.modules["jax"].config.update("jax_platforms", "cpu")


# What TensorFlow prints on every start-up of a CPU or TPU host, for no action of the user's:
# its import's absl notices (oneDNN, no CUDA driver, CPU instructions) and its CUDA probe.
_TF_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"Could not find cuda drivers|cpu_feature_guard|To enable the following instructions|"
    r"failed call to cuInit"
)


# What libtpu prints when it describes a TPU topology for compiling on a host without chips:
# it looks for the chips' host bounds and worker hostnames, which such a host has none of.
LIBTPU_COMPILE_ONLY_NOISE = re.compile(
    r"Failed to find host bounds|Logging before InitGoogle|unexpected worker hostname|"
    r"=== Source Location Trace|libtpu_init_utils\.cc|All log messages before absl"
)


@contextlib.contextmanager
def dropping_stderr_lines(noise: re.Pattern) -> Iterator[None]:
    """Captures stderr (fd 2: C++ writes there too) for the block and replays every line that
    `noise` does not match, a real error included, when it ends (raised or not)."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:  # local: this process's own stderr
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(x for x in lines if not noise.search(x)))
            sys.stderr.flush()


def start_tensorflow_quietly() -> None:
    """Imports TensorFlow and starts its runtime with no GPU of its own (JAX owns the
    accelerators, as in t5x), dropping only its start-up notices from stderr.

    They come from C++ before any log level applies, so they are filtered from the captured
    stderr (dropping_stderr_lines).
    """
    import sys

    if "tensorflow" in sys.modules:
        return
    with dropping_stderr_lines(_TF_STARTUP_NOISE):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")


def _on_tpu_vm() -> bool:
    """A TPU VM's environment, unless JAX_PLATFORMS rules the TPU out.

    libtpu writes TPU_WORKER_HOSTNAMES (a warning text, off Cloud TPU) when a process only
    compiles for a TPU topology; its CPU-only child processes must not try to join a pod.
    """
    if not (os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID")):
        return False
    platforms = os.environ.get("JAX_PLATFORMS", "")
    return not platforms or "tpu" in platforms.split(",")
