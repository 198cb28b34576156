"""Turning the step's metric sums into logged scalars: per-modality loss/accuracy, MFU, ETA."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from anygpt_jax import runtime
from anygpt_jax.model import ModelConfig

# Peak dense bf16 FLOP/s per chip, for MFU on TPU (public spec sheets).
TPU_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def model_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of the matmuls, attention included."""
    d, hd = cfg.hidden_size, cfg.resolved_head_dim
    per_layer = d * hd * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * cfg.intermediate_size
    matmul_params = cfg.num_layers * per_layer + d * cfg.vocab_size
    attention = 12 * cfg.num_layers * cfg.num_heads * hd * seq_len
    return 6 * matmul_params + attention


def device_peak_flops(
    device: jax.Device | None = None, compute_dtype: str = "float32", n: int | None = None
) -> float:
    """Peak FLOP/s of one device: the spec for TPUs, elsewhere a measured n x n matmul with
    operands in `compute_dtype` and fp32 sums, compiled as the train step compiles it.

    `n` defaults to 1024 on CPU and 8192 on a GPU, where a smaller product measures its
    launch overhead instead of its arithmetic and so inflates every MFU computed from it.
    """
    device = device or jax.devices()[0]
    for kind, flops in TPU_PEAK_FLOPS.items():
        if device.device_kind.startswith(kind):
            return flops
    if n is None:
        n = 1024 if device.platform == "cpu" else 8192
    a = jax.device_put(jnp.ones((n, n), compute_dtype), device)
    f = jax.jit(
        lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32),
        compiler_options=runtime.training_compiler_options(device, compute_dtype),
    )
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def summarize(metrics: dict, modality_names: Sequence[str]) -> dict[str, float]:
    """Flat scalars from one step's metrics (host numpy): loss, per-modality loss and accuracy."""
    out = {
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
        "learning_rate": float(metrics["learning_rate"]),
    }
    tokens = np.asarray(metrics["tokens_per_modality"])
    for i, name in enumerate(modality_names):
        if i < len(tokens) and tokens[i] > 0:
            out[f"loss/{name}"] = float(metrics["loss_sum_per_modality"][i] / tokens[i])
            out[f"accuracy/{name}"] = float(metrics["correct_per_modality"][i] / tokens[i])
            out[f"tokens/{name}"] = float(tokens[i])
    return out


def format_eta(seconds: float) -> str:
    """h:mm:ss."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
