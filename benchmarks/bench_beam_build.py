"""Pre-tokenization throughput: the Beam build's items/s per worker against the local builder.

    python -m benchmarks.bench_beam_build [--copies 12] [--kind speech_text]

Runs the real command three ways, each in a fresh process as a user runs it:
- `python -m data.build` on this machine (in-process: --workers 1), the baseline;
- the same with `--runner DirectRunner --workers 1`, then `--workers 2` (two processes).
The corpus is the demo's raw speech (or music) clips, copied under new names so no clip is
encoded twice (the encoder caches codes per file), tokenized by the demo codec (a small SEANet
with random weights). Each way builds N items and 2N items: the wall clock of N includes the
start-up a job pays once (imports, worker processes, the codec's compile), and N / (t(2N) -
t(N)) is the steady rate a cluster sizes by. Prints both, per worker, the ratio of the Beam
build's steady rate per worker to the local builder's, and 1 -> 2 worker scaling (on a 2-core
host two workers share the cores one worker's XLA already uses: scaling there measures
overhead, not parallelism). Every build's directory is checked to be the local builder's,
byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from anygpt_jax import storage
from benchmarks.bench_input_pipeline import DEMO_DIR, REPO, ensure_demo

RAW_FILE = {"speech_text": "speech.jsonl", "music_text": "music.jsonl"}


def make_corpus(raw: str, kind: str, copies: int, out: str) -> str:
    """`copies` copies of the demo's `kind` items, each clip under its own file; returns the
    JSONL input."""
    rows = [json.loads(x) for x in open(os.path.join(raw, RAW_FILE[kind]))]
    os.makedirs(os.path.join(out, "media"))
    lines = []
    for c in range(copies):
        for r in rows:
            name = f"media/c{c}-{os.path.basename(r['audio'])}"
            shutil.copyfile(os.path.join(raw, r["audio"]), os.path.join(out, name))
            lines.append(json.dumps(r | {"id": f"c{c}-{r['id']}", "audio": name}))
    path = os.path.join(out, "items.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def build_seconds(items: str, out: str, vocab: str, tokenizers: dict[str, str],
                  per_shard: int, kind: str, extra: list[str]) -> float:
    """Wall-clock seconds of one `python -m data.build` command, run from the repository."""
    cmd = [sys.executable, "-m", "data.build", "--kind", kind, "--input", items, "--vocab",
           vocab, "--out", out, "--examples-per-shard", str(per_shard), "--no-progress",
           *[f"--tokenizer={m}={s}" for m, s in tokenizers.items()], *extra]
    t = time.perf_counter()
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    return seconds


def same_directory(a: str, b: str) -> bool:
    names = sorted(os.listdir(b))
    return sorted(os.listdir(a)) == names and all(
        storage.read_bytes(os.path.join(a, f)) == storage.read_bytes(os.path.join(b, f))
        for f in names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=sorted(RAW_FILE), default="speech_text")
    p.add_argument("--copies", type=int, default=12, help="N = the demo's clips x copies")
    p.add_argument("--examples-per-shard", type=int, default=16)
    args = p.parse_args()

    demo_dir = os.path.join(REPO, DEMO_DIR)
    vocab = ensure_demo(demo_dir, None)
    tokenizers = {args.kind.split("_")[0]: "demo"}
    ways = {"local builder": (1, []),
            "beam, 1 worker": (1, ["--runner", "DirectRunner", "--workers", "1"]),
            "beam, 2 workers": (2, ["--runner", "DirectRunner", "--workers", "2"])}
    with tempfile.TemporaryDirectory() as tmp:
        full = make_corpus(os.path.join(demo_dir, "raw"), args.kind, 2 * args.copies,
                           os.path.join(tmp, "corpus"))
        lines = open(full).read().splitlines(keepends=True)
        half = os.path.join(tmp, "corpus", "half.jsonl")
        with open(half, "w") as f:
            f.writelines(lines[: len(lines) // 2])
        n = len(lines) // 2
        print(f"N = {n} {args.kind} items (the demo's clips x {args.copies}), demo codec, "
              f"{args.examples_per_shard} per shard, {os.cpu_count()} CPU cores", flush=True)
        print(f"{'':<16} {'t(N) s':>7} {'t(2N) s':>8} {'N/t(N)':>7} {'steady':>7} "
              f"{'steady per worker':>18}  (items/s)")
        steady = {}
        for name, (workers, extra) in ways.items():
            t1, t2 = (build_seconds(items, os.path.join(tmp, f"{name}-{size}"), vocab,
                                    tokenizers, args.examples_per_shard, args.kind, extra)
                      for size, items in (("n", half), ("2n", full)))
            steady[name] = n / (t2 - t1) / workers
            print(f"{name:<16} {t1:7.1f} {t2:8.1f} {n / t1:7.2f} {n / (t2 - t1):7.2f} "
                  f"{steady[name]:18.2f}", flush=True)
            for size in ("n", "2n"):
                assert same_directory(os.path.join(tmp, f"{name}-{size}"),
                                      os.path.join(tmp, f"local builder-{size}")), (name, size)
        local = steady["local builder"]
        print(f"ratio beam (1 worker) / local builder, steady items/s per worker: "
              f"{steady['beam, 1 worker'] / local:.2f}x")
        print(f"scaling 1 -> 2 workers, steady items/s: "
              f"{2 * steady['beam, 2 workers'] / steady['beam, 1 worker']:.2f}x "
              f"(ideal 2x on 2 free cores)")
        print("every build's directory: byte-identical to the local builder's")


if __name__ == "__main__":
    main()
