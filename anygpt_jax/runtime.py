"""Process-level runtime settings that must be in place before JAX starts its backends."""

from __future__ import annotations

import os

# XLA:CPU lowers dots through YNNPACK with this flag: the same fp32 results, faster training
# steps and codec convolutions on AVX2 hosts (not every shape: see default_dot_emitter_options).
# TPU and GPU compiles ignore it.
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_XLA_FLAGS = (f"--{YNN_FUSION_OPTION}=dot",)


def configure_xla_flags() -> None:
    """Adds the CPU-tuned XLA flags to XLA_FLAGS, keeping any the user set for the same option.

    Call before the first JAX computation (CLIs do it first thing); a later call has no effect.
    Set ANYGPT_JAX_DEFAULT_XLA=1 to leave XLA_FLAGS untouched.
    """
    if os.environ.get("ANYGPT_JAX_DEFAULT_XLA") == "1":
        return
    flags = os.environ.get("XLA_FLAGS", "").split()
    for flag in CPU_XLA_FLAGS:
        option = flag.split("=", 1)[0]
        if not any(f.split("=", 1)[0] == option for f in flags):
            flags.append(flag)
    os.environ["XLA_FLAGS"] = " ".join(flags)


def default_dot_emitter_options(device) -> dict[str, str] | None:
    """Per-jit `compiler_options` that turn YNNPACK dot fusion off on a CPU `device`; None on
    other platforms, which know no such option.

    For computations whose matmuls XLA:CPU's default emitter runs faster: SEED's ViT (257
    tokens, per-head attention dots) encodes 1.3-1.6x faster without YNNPACK, LLaMA decode at
    batch 8 ~1.25x; the codecs' convolutions (2x at batch 8) and training steps gain from it.
    """
    if device.platform != "cpu" or os.environ.get("ANYGPT_JAX_DEFAULT_XLA") == "1":
        return None
    return {YNN_FUSION_OPTION: ""}


def training_compiler_options(device, compute_dtype: str) -> dict[str, str] | None:
    """Per-jit `compiler_options` for a train step computing in `compute_dtype` on `device`.

    On CPU, bf16 x bf16 -> fp32 matmuls (see model/mixed_dot.py) reach the avx512_bf16 rate
    only as individual YNNPACK dots: fused into YNNPACK subgraphs (CPU_XLA_FLAGS) they ran at
    half that, and a bf16 train step of the ~100M benchmark model took 4.5 s instead of 3.5 s.
    fp32 steps keep the process flags. None where there is nothing to change.
    """
    import jax.numpy as jnp  # not at module import: configure_xla_flags runs before JAX

    if (
        device.platform != "cpu"
        or os.environ.get("ANYGPT_JAX_DEFAULT_XLA") == "1"
        or jnp.dtype(compute_dtype).itemsize >= 4
    ):
        return None
    return {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


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


def _on_tpu_vm() -> bool:
    """A TPU VM's environment, unless JAX_PLATFORMS rules the TPU out.

    libtpu writes TPU_WORKER_HOSTNAMES (a warning text, off Cloud TPU) when a process only
    compiles for a TPU topology; its CPU-only child processes must not try to join a pod.
    """
    if not (os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID")):
        return False
    platforms = os.environ.get("JAX_PLATFORMS", "")
    return not platforms or "tpu" in platforms.split(",")
