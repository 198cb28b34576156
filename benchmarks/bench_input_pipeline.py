"""Input pipeline throughput (examples/s, tokens/s) and packing efficiency on this CPU.

    python -m data.demo --vocab TOKENIZER_DIR --out /tmp/demo
    python benchmarks/bench_input_pipeline.py --vocab TOKENIZER_DIR --demo /tmp/demo \\
        [--length 4500] [--batch 8] [--steps 20] [--train-tokens-per-s N]

Prints the pipeline's rate for the pre-training mixture and the SFT task and, given the token
rate the CPU default trains at, the ratio (how many times faster input is than training).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from anygpt_jax import tasks
from anygpt_jax.data import pipeline
from anygpt_jax.vocab import MergedVocabulary


def measure(name: str, length: int, batch: int, steps: int) -> dict:
    """Rates after one warm-up batch (graph building and first reads excluded)."""
    it = iter(pipeline.get_dataset(name, sequence_length=length, batch_size=batch, seed=0))
    next(it)
    t = time.perf_counter()
    real = examples = 0
    for _ in range(steps):
        b = next(it)
        seg = b["decoder_segment_ids"].numpy()
        real += int((seg > 0).sum())
        examples += sum(len(np.unique(r[r > 0])) for r in seg)
    dt = time.perf_counter() - t
    return {
        "examples_per_s": examples / dt,
        "tokens_per_s": real / dt,
        "non_pad": real / (steps * batch * length),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--vocab", required=True)
    p.add_argument("--demo", required=True, help="output directory of python -m data.demo")
    p.add_argument("--length", type=int, default=4500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--train-tokens-per-s", type=float, default=None)
    a = p.parse_args()
    vocab = MergedVocabulary.load(a.vocab)
    d = {
        k: [os.path.join(a.demo, k)]
        for k in ("image_text", "speech_text", "music_text", "dialogue")
    }
    tasks.register(
        vocab,
        image_caption_dirs=d["image_text"],
        speech_dirs=d["speech_text"],
        music_dirs=d["music_text"],
        dialogue_dirs=d["dialogue"],
        tokenizers={"image": "digits_pixel_pairs"},
    )
    print(f"cpus={os.cpu_count()} length={a.length} batch={a.batch} steps={a.steps}")
    for name in (tasks.PRETRAIN, tasks.SFT):
        r = measure(name, a.length, a.batch, a.steps)
        line = (
            f"{name}: {r['examples_per_s']:.1f} examples/s, {r['tokens_per_s']:.0f} tokens/s,"
            f" packing non-pad {r['non_pad']:.3f}"
        )
        if a.train_tokens_per_s:
            line += f", {r['tokens_per_s'] / a.train_tokens_per_s:.1f}x the training rate"
        print(line)


if __name__ == "__main__":
    main()
