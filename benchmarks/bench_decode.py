"""Greedy decode tokens/s of `anygpt_jax.inference.generate` vs transformers' `generate`.

Same random ~58M-parameter LLaMA (fp32, CPU) on both sides, imported into ours with the
converter, KV cache on both; batch 1 and 8, a 32-token prompt, 128 new tokens, no stop id.
Ours runs unrolled layers, the CPU inference layout (`AnyGPT.load(d, scan_layers=False)`;
`--scanned` for the layer scan, even at batch 1 and ~10% slower at batch 8).
Rounds alternate the sides and keep each side's best; transformers runs with 1 thread and
with all cores and the ratio takes its faster one; compile time is reported apart.
Prints ours/transformers new-tokens/s ratios (goal >= 2x). Also checks both produce the same
tokens.

    python -m benchmarks.bench_decode [--rounds 3] [--new 128] [--prompt 32] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from anygpt_jax import AnyGPT  # noqa: E402
from anygpt_jax.inference import GenerationSettings, generate  # noqa: E402
from anygpt_jax.model import ModelConfig  # noqa: E402
from converters.common import TensorReader  # noqa: E402
from converters.llama import convert_hf_state, model_to_hf_config  # noqa: E402

# ~58M parameters: 8 layers of width 512 plus untied 32k-row embedding and head.
CONFIG = dict(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1408,
    num_layers=8,
    num_heads=8,
    num_kv_heads=8,
)


def models(cfg: ModelConfig):
    """(transformers model, our AnyGPT) holding the same random weights."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig.from_dict(model_to_hf_config(cfg, "float32"))
    ).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        params = convert_hf_state(TensorReader(d), cfg, None)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return hf, AnyGPT(params, cfg, vocab=None)


def ours_runner(model: AnyGPT, prompts: list[list[int]], new: int):
    settings = GenerationSettings(do_sample=False, max_new_tokens=new)
    return lambda: generate(model, prompts, settings, stop_ids=[], constrain=False)


def torch_runner(hf, prompts: list[list[int]], new: int, threads: int):
    """transformers' generate with `threads` intra-op threads."""
    import torch

    ids = torch.as_tensor(np.asarray(prompts))
    mask = torch.ones_like(ids)

    def run():
        torch.set_num_threads(threads)
        with torch.no_grad():
            out = hf.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
                use_cache=True,
                eos_token_id=None,
                pad_token_id=0,
            )
        return out[:, ids.shape[1] :].tolist()

    return run


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per batch")
    parser.add_argument("--new", type=int, default=128, help="new tokens per prompt")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--scanned", action="store_true", help="scanned layers (default: unrolled, see above)"
    )
    args = parser.parse_args()
    cfg = ModelConfig(**CONFIG, scan_layers=args.scanned)
    hf, ours = models(cfg)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(ours.params))
    print(
        f"config: {n_params / 1e6:.1f}M params fp32, prompt {args.prompt}, {args.new} new tokens, "
        f"{'scanned' if args.scanned else 'unrolled'} layers, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}, torch {torch.__version__}, best of {args.rounds} rounds"
    )
    rng = np.random.default_rng(0)
    for batch in args.batches:
        prompts = rng.integers(3, cfg.vocab_size, (batch, args.prompt)).tolist()
        # The baseline at its best thread count: on a shared or small host, PyTorch's OpenMP
        # threads can run batch-1 decode several times slower than one thread does.
        threads = sorted({1, os.cpu_count() or 1})
        runs = {"anygpt-jax": ours_runner(ours, prompts, args.new)}
        for n in threads:
            runs[f"torch {n} thr"] = torch_runner(hf, prompts, args.new, n)
        compile_s, first = timed(runs["anygpt-jax"])
        best = dict.fromkeys(runs, float("inf"))
        outputs = {}
        for _ in range(args.rounds):
            for name, run in runs.items():
                sec, outputs[name] = timed(run)
                best[name] = min(best[name], sec)
        pairs = zip(outputs["anygpt-jax"], outputs[f"torch {threads[-1]} thr"], strict=True)
        same = sum(a == b for a, b in pairs)
        print(
            f"batch {batch}: first call (compile + run) {compile_s:.1f} s; "
            f"rows with identical tokens {same}/{batch}"
        )
        for name, sec in best.items():
            print(f"  {name:13s} {batch * args.new / sec:8.1f} new tokens/s  ({sec:.2f} s)")
        ratio = min(best[f"torch {n} thr"] for n in threads) / best["anygpt-jax"]
        print(
            f"  ratio anygpt-jax / transformers (best thread count) at batch {batch}: "
            f"{ratio:.2f}x (goal >= 2x)"
        )


if __name__ == "__main__":
    main()
