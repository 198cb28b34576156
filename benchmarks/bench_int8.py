"""int8 and bfloat16 weights against fp32: quality on held-out data, bytes, and decode speed.

    python -m benchmarks.bench_int8 [--ckpt runs/cpu_default] [--corpus runs/demo_corpus]
                                    [--examples 64] [--tokens 64]

Quality: the CPU default checkpoint (README command 1) teacher-forced over the demo corpus's
dialogues, which its pre-training mixture never reads (held out), in fp32, bf16 weights and
int8 weights (model/quantize.py: layers and LM head): perplexity of each, and how often the
argmax of each agrees with fp32's, over the tokens that carry loss (goals: int8 top-1
agreement >= 99%, perplexity within 1%).

Speed: greedy decode tok/s of --tokens new tokens at batch 1 and 8 for each weight format,
interleaved in this process, and batch 8's fraction of the memory-bandwidth roofline: the
weight bytes a decode step reads over the bandwidth of a large copy measured in the same run
(goals: int8 >= 1.7x fp32 at batch 1, >= 1.3x at batch 8, >= 70% of the roofline).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from anygpt_jax import tasks
from anygpt_jax.api import AnyGPT
from anygpt_jax.data.pipeline import host_shard_info
from anygpt_jax.evaluation.teacher_forced import _batches
from anygpt_jax.inference import GenerationSettings
from anygpt_jax.model import Transformer
from anygpt_jax.training.loss import per_token_loss
from benchmarks import best_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ("float32", "bfloat16", "int8")


def held_out_batches(model: AnyGPT, corpus: str, examples: int, seq_len: int = 1280):
    """Packed batches of the demo dialogues (the instruct task: loss on assistant turns)."""
    tasks.register(model.vocab, shard_dirs={"dialogue": [os.path.join(corpus, "dialogue")]},
                   tokenizers={"image": "digits_pixel_pairs"})
    return list(_batches("anygpt_instruct", seq_len, 4, examples, host_shard_info(None, 4)))


def token_scores(model: AnyGPT, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loss, argmax, weight) of every target token of `batches`, flattened."""
    transformer = Transformer(model.config)
    step = jax.jit(lambda p, b: per_token_loss(transformer, model.config, p, b))
    losses, best, weights = [], [], []
    for batch in batches:
        loss, top = step(model.params, {k: jnp.asarray(v) for k, v in batch.items()})
        losses.append(np.asarray(loss).ravel())
        best.append(np.asarray(top).ravel())
        weights.append(batch["decoder_loss_weights"].ravel())
    return np.concatenate(losses), np.concatenate(best), np.concatenate(weights)


def weight_bytes(params) -> int:
    """Bytes of the parameters a decode step reads (all but the embedding table: one row)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(x.size * x.dtype.itemsize for path, x in leaves
               if "embed_tokens" not in jax.tree_util.keystr(path))


def copy_bandwidth() -> float:
    """Bytes/s of a 256 MiB fp32 copy (read + write), best of 5."""
    x = jnp.ones((64 << 20,), jnp.float32)
    copy = jax.jit(lambda a: a + 1.0)
    return 2 * x.nbytes / best_of(lambda: copy(x).block_until_ready(), 5)


def decode_rate(model: AnyGPT, prompts, tokens: int, repeats: int = 3) -> float:
    """New tokens/s of greedy decoding (exactly `tokens` per prompt), best of `repeats`."""
    settings = GenerationSettings(do_sample=False, num_beams=1, max_new_tokens=tokens,
                                  min_new_tokens=tokens)
    return len(prompts) * tokens / best_of(lambda: model.generate(prompts, settings), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=os.path.join(REPO, "runs", "cpu_default"))
    p.add_argument("--corpus", default=os.path.join(REPO, "runs", "demo_corpus"))
    p.add_argument("--examples", type=int, default=64, help="held-out dialogues scored")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per decode")
    args = p.parse_args()
    if not os.path.isdir(args.ckpt):
        raise SystemExit(f"{args.ckpt}: no model directory; run README command 1 first")
    models = {w: AnyGPT.load(args.ckpt, weights=w) for w in FORMATS}
    batches = held_out_batches(models["float32"], args.corpus, args.examples)
    scores = {w: token_scores(m, batches) for w, m in models.items()}
    loss32, best32, weights = scores["float32"]
    mask = weights > 0
    print(f"{args.ckpt}: {int(mask.sum())} held-out target tokens ({args.examples} dialogues)")
    print(f"{'weights':>9} {'MB':>8} {'perplexity':>11} {'vs fp32':>8} {'top-1 agree':>12}")
    ppl32 = float(np.exp(loss32[mask].mean()))
    for w, (loss, best, _) in scores.items():
        ppl = float(np.exp(loss[mask].mean()))
        agree = float((best[mask] == best32[mask]).mean())
        print(f"{w:>9} {weight_bytes(models[w].params) / 1e6:8.2f} {ppl:11.4f} "
              f"{(ppl / ppl32 - 1) * 100:+7.2f}% {agree * 100:11.2f}%")

    vocab = models["float32"].vocab
    prompt = vocab.encode("[Human]: Tell me something about the number 7.<eoh> [MMGPT]:")
    bandwidth = copy_bandwidth()
    print(f"decode, {args.tokens} new tokens; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    rates = {}
    for batch in (1, 8):
        for w in FORMATS:
            rates[w, batch] = decode_rate(models[w], [prompt] * batch, args.tokens)
    for w in FORMATS:
        step_s = 8 / rates[w, 8]  # seconds per decode step at batch 8
        roofline = weight_bytes(models[w].params) / bandwidth / step_s
        print(f"{w:>9}: batch 1 {rates[w, 1]:8.1f} tok/s ({rates[w, 1] / rates['float32', 1]:.2f}x"
              f" fp32), batch 8 {rates[w, 8]:8.1f} tok/s ({rates[w, 8] / rates['float32', 8]:.2f}x"
              f"), batch 8 at {roofline * 100:.0f}% of the weight-bytes roofline")


if __name__ == "__main__":
    main()
