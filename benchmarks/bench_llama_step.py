"""Forward+backward tokens/s of our Flax LLaMA vs transformers' LlamaForCausalLM (PyTorch).

Same ~100M config, same batch, same CPU, one run. Also reports each side's model-FLOPs
utilization against this machine's measured fp32 matmul peak. Prints the ratio ours/torch.

    python -m benchmarks.bench_llama_step [--steps 5] [--batch 4] [--seq 256]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from anygpt_jax.model import ModelConfig, Transformer, init_params  # noqa: E402
from anygpt_jax.training.metrics import device_peak_flops, model_flops_per_token  # noqa: E402
from converters.llama import model_to_hf_config  # noqa: E402

# ~100M parameters: 10 layers of width 768 plus untied 16k-row embedding and head.
CONFIG = dict(
    vocab_size=16000,
    hidden_size=768,
    intermediate_size=2048,
    num_layers=10,
    num_heads=12,
    num_kv_heads=12,
)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def jax_step(cfg: ModelConfig, ids: np.ndarray):
    """A compiled, warmed-up forward+backward step of our model, as a no-argument callable."""
    params = init_params(cfg, jax.random.PRNGKey(0))
    model = Transformer(cfg)

    def loss_fn(p, x):
        logits = model.apply({"params": p}, x[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    x = jnp.asarray(ids)

    def run():
        jax.block_until_ready(step(params, x))

    run()
    return run


def hf_model(cfg: ModelConfig):
    """transformers' LlamaForCausalLM with the same config (the converter's export mapping)."""
    import transformers

    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig.from_dict(model_to_hf_config(cfg, "float32"))
    )


def torch_step(cfg: ModelConfig, ids: np.ndarray):
    """A warmed-up forward+backward step of transformers' LlamaForCausalLM, as a callable."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = hf_model(cfg).train()
    x = torch.as_tensor(ids)

    def run():
        model.zero_grad(set_to_none=True)
        logits = model(x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()

    run()
    return run


def interleaved_best(steps: dict, repeats: int) -> dict[str, float]:
    """Best seconds of each callable over `repeats` rounds that run them in turn.

    Alternating, rather than timing one side then the other, keeps a host whose speed
    drifts (shared or throttled cores) from favouring whichever side ran in a fast spell.
    """
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, run in steps.items():
            best[name] = min(best[name], _timed(run))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    cfg = ModelConfig(**CONFIG, vocab_pad_multiple=128, scan_layers=True)
    n_params = sum(
        x.size
        for x in jax.tree_util.tree_leaves(
            jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
        )
    )
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
    tokens = args.batch * args.seq
    flops = model_flops_per_token(cfg, args.seq) * tokens
    # Scanned layers are the pod layout; unrolled layers are faster on a CPU host.
    steps = {
        "anygpt-jax, scanned": jax_step(cfg, ids),
        "anygpt-jax, unrolled": jax_step(cfg.replace(scan_layers=False), ids),
        "transformers (torch)": torch_step(cfg, ids),
    }
    best = interleaved_best(steps, args.steps)
    peak = device_peak_flops(n=2048)
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(
        f"config: {n_params / 1e6:.1f}M params, batch {args.batch} x {args.seq} tokens, "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__}, best of {args.steps} rounds"
    )
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    for name, sec in best.items():
        print(
            f"{name:22s} {tokens / sec:8.0f} tokens/s  step {sec * 1e3:7.1f} ms  "
            f"MFU {flops / sec / peak:6.1%}"
        )
    ref = best.pop("transformers (torch)")
    for name, sec in best.items():
        print(f"ratio {name} / torch tokens/s: {ref / sec:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
