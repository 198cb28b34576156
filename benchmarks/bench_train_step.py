"""Train-step tokens/s and MFU on CPU: our jitted make_train_step (AdamW) vs transformers+torch.

Same ~100M config and batch as bench_llama_step.py, one run each. Ours is the trainer's real
step (loss, grads, clipping, AdamW update, metrics), built by sharded_train_step; the
reference is LlamaForCausalLM with torch.optim.AdamW. Prints the ratio ours/torch.
`--dtype bfloat16` compares mixed precision on both sides: our bf16 compute config (fp32
params, bf16 matmuls accumulating in fp32) against torch.autocast(bfloat16) on the same model.

    python -m benchmarks.bench_train_step [--steps 5] [--batch 4] [--seq 256] [--dtype bfloat16]
        [--layers scan_unrolled|unrolled]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import statistics  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llama_step import CONFIG, _timed, hf_model  # noqa: E402

from anygpt_jax import partitioning  # noqa: E402
from anygpt_jax.model import ModelConfig, init_params  # noqa: E402
from anygpt_jax.training.metrics import device_peak_flops, model_flops_per_token  # noqa: E402
from anygpt_jax.training.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from anygpt_jax.training.step import (  # noqa: E402
    LossConfig,
    init_train_state,
    sharded_train_step,
)

LR, STEPS_IN_SCHEDULE = 3e-4, 1000


def make_batch(ids: np.ndarray) -> dict[str, np.ndarray]:
    """One unpacked row per sequence, every target weighted (the trainer's batch contract)."""
    b, n = ids.shape[0], ids.shape[1] - 1
    return {
        "decoder_input_tokens": ids[:, :-1].astype(np.int32),
        "decoder_target_tokens": ids[:, 1:].astype(np.int32),
        "decoder_loss_weights": np.ones((b, n), np.float32),
        "decoder_segment_ids": np.ones((b, n), np.int32),
        "decoder_positions": np.broadcast_to(np.arange(n, dtype=np.int32), (b, n)).copy(),
    }


def bench_ours(cfg: ModelConfig, ids: np.ndarray, steps: int) -> float:
    """Median seconds per train step as the trainer builds it (sharded_train_step: jitted,
    state donated, compile options for the compute dtype) on a 1-device mesh."""
    schedule = learning_rate_schedule(STEPS_IN_SCHEDULE, peak_learning_rate=LR, warmup_steps=0)
    tx = make_optimizer(schedule, weight_decay=0.0)
    rules = partitioning.logical_axis_rules()
    mesh = partitioning.make_mesh(num_devices=1)
    step = sharded_train_step(
        cfg, tx, schedule, np.zeros(cfg.vocab_size, np.int32), LossConfig(), mesh, rules
    ).fn
    batch = {k: jnp.asarray(v) for k, v in make_batch(ids).items()}
    with jax.set_mesh(mesh):
        state = init_train_state(init_params(cfg, jax.random.PRNGKey(0)), tx)
        holder = [state]

        def one_step():
            # The donated state is consumed: keep the new one for the next step.
            holder[0], _ = jax.block_until_ready(step(holder[0], batch))

        one_step()  # compile
        return statistics.median(_timed(one_step) for _ in range(steps))


def bench_torch(cfg: ModelConfig, ids: np.ndarray, steps: int, device: str = "cpu") -> float:
    """Median seconds per train step of LlamaForCausalLM + torch.optim.AdamW (clip 1.0) on a
    torch `device`; under torch.autocast(bfloat16) when the config computes in bf16."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = hf_model(cfg).train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
    x = torch.as_tensor(ids).to(device)
    autocast = cfg.dtype != "float32"
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            logits = model(x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()

    train_step()
    return statistics.median(_timed(train_step) for _ in range(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of both sides (parameters stay fp32)")
    parser.add_argument("--layers", choices=("scan", "scan_unrolled", "unrolled"),
                        default="scan",
                        help="our layers: stacked under nn.scan (the default, the pod layout), "
                        "stacked with the scan fully unrolled (scan_unroll=num_layers), or "
                        "separate modules")
    parser.add_argument("--torch_device", default=None,
                        help="torch device of the reference (default: cuda when JAX runs on a "
                        "GPU, else cpu)")
    args = parser.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    torch_device = args.torch_device or ("cuda" if on_gpu else "cpu")
    cfg = ModelConfig(
        **CONFIG,
        vocab_pad_multiple=128,
        scan_layers=args.layers != "unrolled",
        scan_unroll=CONFIG["num_layers"] if args.layers == "scan_unrolled" else 1,
        dtype=args.dtype,
    )
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
    tokens = args.batch * args.seq
    peak = device_peak_flops(n=None if on_gpu else 2048, compute_dtype=args.dtype)
    flops = model_flops_per_token(cfg, args.seq) * tokens
    ours = bench_ours(cfg, ids, args.steps)
    ref = bench_torch(cfg, ids, args.steps, torch_device)
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(
        f"batch {args.batch} x {args.seq} tokens on {jax.devices()[0].device_kind} "
        f"({os.cpu_count()} CPU cores), torch on {torch_device}, jax {jax.__version__}; "
        f"compute {args.dtype}, {args.layers} layers; "
        f"{args.dtype} matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    torch_name = "transformers + AdamW" + (" (autocast)" if args.dtype != "float32" else "")
    for name, sec in (("anygpt-jax train step", ours), (torch_name, ref)):
        print(
            f"{name:22s} {tokens / sec:8.0f} tokens/s  step {sec * 1e3:7.1f} ms  "
            f"MFU {flops / sec / peak:6.1%}"
        )
    print(f"ratio ours/torch tokens/s: {ref / ours:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
