"""Input pipeline throughput (examples/s, tokens/s) and packing efficiency on this CPU.

    python -m benchmarks.bench_input_pipeline [--demo runs/demo_corpus] [--vocab DIR] \\
        [--length 4500] [--batch 8] [--steps 20] [--train-tokens-per-s 1350]

With no arguments it reads the demo corpus the CPU default trains on (tpu_configs/
cpu_default.gin: runs/demo_corpus, its own vocabulary), building it first with data.demo if
it is missing. Prints, for the pre-training mixture and the SFT task, the rate of packed
batches, the share of non-padding tokens per row (packing efficiency; goal >= 0.95 at 4500)
and the ratio of the pipeline's token rate to the trainer's (`tok/s` in its progress line).

`--gcs` also copies the corpus into a GCS API emulator on 127.0.0.1 and measures the same
pipeline reading gs:// (blocks of records by ranged reads, in parallel), in the same run. The
emulator is a single Python process, not GCS: the figure is a smoke test of the path, not of
the service. It also prints the shard bytes per token and, from them, the read rate one host
needs to feed AnyGPT-7B's pre-training batch (480 x 4500) on a v5e-256 slice.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from anygpt_jax import storage, tasks
from anygpt_jax.data import pipeline
from anygpt_jax.data import shards as shards_lib
from anygpt_jax.vocab import MergedVocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join("runs", "demo_corpus")  # relative to the repo root, as in the gin file
# tok/s of `python -m anygpt_jax.train --gin_file=tpu_configs/cpu_default.gin` on the 2-core
# development machine under its usual load (1,200-1,500 measured); pass your own figure.
CPU_DEFAULT_TRAIN_TOKENS_PER_S = 1350.0


def ensure_demo(demo_dir: str, vocab_dir: str | None) -> str:
    """Builds the demo corpus into demo_dir unless all four kinds are finished; returns vocab."""
    if any(not os.path.isfile(os.path.join(demo_dir, k, shards_lib.MANIFEST))
           for k in shards_lib.kinds()):
        from data import demo

        print(f"building the demo corpus in {demo_dir} (python -m data.demo) ...", flush=True)
        t = time.perf_counter()
        demo.build_demo(demo_dir, vocab_dir, progress=False)
        print(f"built in {time.perf_counter() - t:.0f} s", flush=True)
    return vocab_dir or os.path.join(demo_dir, "vocab")


def measure(name: str, length: int, batch: int, steps: int) -> dict:
    """Rates after one warm-up batch (graph building and first reads excluded)."""
    it = iter(pipeline.get_dataset(name, sequence_length=length, batch_size=batch, seed=0))
    next(it)
    t = time.perf_counter()
    real = examples = 0
    for _ in range(steps):
        b = next(it)
        seg = np.asarray(b["decoder_segment_ids"])
        real += int((seg > 0).sum())
        examples += sum(len(np.unique(r[r > 0])) for r in seg)
    dt = time.perf_counter() - t
    return {
        "examples_per_s": examples / dt,
        "tokens_per_s": real / dt,
        "non_pad": real / (steps * batch * length),
    }


def bytes_per_token(demo_dir: str) -> float:
    """Shard bytes over tokens (codes + text) across the corpus's manifests."""
    size = tokens = 0
    for k in shards_lib.kinds():
        m = shards_lib.read_manifest(storage.join(demo_dir, k))
        size += sum(e["bytes"] for e in m["shards"])
        tokens += sum(m["tokens"].values())
    return size / tokens


def pod_read_rate(per_token: float, mfu: float = 0.5) -> str:
    """The bytes/s one v5e-256 host reads for the 7B pre-training batch at `mfu`."""
    from anygpt_jax.model import ModelConfig
    from anygpt_jax.training import metrics

    cfg = ModelConfig(vocab_size=53516, hidden_size=4096, intermediate_size=11008,
                      num_layers=32, num_heads=32, num_kv_heads=32)
    batch, seq, chips, peak = 480, 4500, 256, 197e12  # v5e: 197 TFLOP/s bf16 per chip
    step_s = metrics.model_flops_per_token(cfg, seq) * batch * seq / (chips * peak * mfu)
    # 64 hosts of 4 chips; 8-way tensor parallelism spans host pairs, which read the same
    # rows, so 32 row blocks of 15 rows each.
    rows_per_host = batch / 32
    need = rows_per_host * seq * per_token / step_s
    return (f"v5e-256, 7B, batch {batch} x {seq}: a step every {step_s:.1f} s at "
            f"{mfu:.0%} MFU; each host reads {rows_per_host:.0f} rows = "
            f"{need / 1e3:.0f} KB/s of shards ({per_token:.2f} bytes/token)")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--demo",
        default=os.path.join(REPO, DEMO_DIR),
        help=f"output directory of python -m data.demo (default: <repo>/{DEMO_DIR}; "
        "built if missing)",
    )
    p.add_argument("--vocab", default=None, help="tokenizer directory (default: DEMO/vocab)")
    p.add_argument("--length", type=int, default=4500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument(
        "--train-tokens-per-s",
        type=float,
        default=CPU_DEFAULT_TRAIN_TOKENS_PER_S,
        help="the trainer's tok/s to compare with (default: the CPU default's, measured here)",
    )
    p.add_argument("--gcs", action="store_true",
                   help="also read the corpus from a GCS API emulator on 127.0.0.1")
    a = p.parse_args()
    vocab = MergedVocabulary.load(ensure_demo(a.demo, a.vocab))
    print(
        f"cpus={os.cpu_count()} length={a.length} batch={a.batch} steps={a.steps} "
        f"train_tokens_per_s={a.train_tokens_per_s:g}"
    )
    print(pod_read_rate(bytes_per_token(a.demo)))
    local = run_all(vocab, a, a.demo, "local")
    if a.gcs:
        from anygpt_jax.storage_emulator import GcsEmulator

        emulator = GcsEmulator()
        os.environ.update(emulator.env)
        try:
            root = emulator.uri("demo_corpus")
            for k in shards_lib.kinds():
                storage.copy_tree(os.path.join(a.demo, k), storage.join(root, k))
            remote = run_all(vocab, a, root, "gs://")
        finally:
            emulator.stop()
        for name in local:
            print(f"{name}: gs:// (emulator) / local = "
                  f"{remote[name] / local[name]:.2f}x tokens/s", flush=True)


def run_all(vocab, a, corpus: str, where: str) -> dict[str, float]:
    """Registers the tasks over `corpus` and measures both; returns name -> tokens/s."""
    d = {k: [storage.join(corpus, k)] for k in shards_lib.kinds()}
    tasks.register(
        vocab,
        shard_dirs={k: d[k] for k in ("image_text", "speech_text", "music_text", "dialogue")},
        tokenizers={"image": "digits_pixel_pairs"},
    )
    rates = {}
    for name in (tasks.PRETRAIN, tasks.SFT):
        r = measure(name, a.length, a.batch, a.steps)
        rates[name] = r["tokens_per_s"]
        print(
            f"{name} ({where}): {r['examples_per_s']:.1f} examples/s, "
            f"{r['tokens_per_s']:.0f} tokens/s, packing non-pad {r['non_pad']:.3f},"
            f" {r['tokens_per_s'] / a.train_tokens_per_s:.1f}x the training rate",
            flush=True,
        )
    return rates


if __name__ == "__main__":
    main()
