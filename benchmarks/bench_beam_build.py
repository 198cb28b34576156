"""Pre-tokenization throughput: the Beam build's items/s per worker against the local builder.

    python -m benchmarks.bench_beam_build [--copies 4] [--kind speech_text]

Builds the same corpus three ways in one run and prints items/s (wall clock, start-up and the
tokenizer's compile included, as a job pays them) and items/s per worker:
- the local builder (data.build, in-process), the baseline;
- Beam's DirectRunner with 1 worker, then 2 worker processes (multi_processing).
The corpus is the demo's raw speech (or music) clips, copied `--copies` times under new names
so no clip is encoded twice (the encoder caches codes per file), tokenized by the demo codec
(a small SEANet with random weights). It also prints 1 -> 2 worker scaling; on a 2-core host
two workers share the cores one worker's XLA already uses, so scaling measures overhead more
than parallelism. Both builds' shard directories are checked to be byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=sorted(RAW_FILE), default="speech_text")
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--examples-per-shard", type=int, default=16)
    args = p.parse_args()

    from data import beam_build, build

    demo_dir = os.path.join(REPO, DEMO_DIR)
    vocab = ensure_demo(demo_dir, None)
    modality = args.kind.split("_")[0]
    tokenizers = {modality: "demo"}
    with tempfile.TemporaryDirectory() as tmp:
        items = make_corpus(os.path.join(demo_dir, "raw"), args.kind, args.copies,
                            os.path.join(tmp, "corpus"))
        n = sum(1 for _ in open(items))
        print(f"{n} {args.kind} items (the demo's clips x {args.copies}), demo codec, "
              f"{args.examples_per_shard} per shard, {os.cpu_count()} CPU cores", flush=True)
        rates = {}

        def timed(name, workers, fn):
            t = time.perf_counter()
            summary = fn(os.path.join(tmp, name))
            dt = time.perf_counter() - t
            assert summary["examples"] == n, summary
            rates[name] = (n / dt, workers)
            print(f"{name:<22} {dt:7.1f} s  {n / dt:6.2f} items/s  "
                  f"{n / dt / workers:6.2f} items/s per worker", flush=True)

        timed("local builder", 1, lambda out: build.build(
            args.kind, [items], out, vocab, tokenizers, args.examples_per_shard, workers=1,
            progress=False))
        for workers in (1, 2):
            options = beam_build.runner_options("DirectRunner", [], workers)
            timed(f"beam, {workers} worker(s)", workers, lambda out, o=options: beam_build.run(
                args.kind, [items], out, vocab, tokenizers, o, args.examples_per_shard))
        for name in ("beam, 1 worker(s)", "beam, 2 worker(s)"):
            a, b = os.path.join(tmp, name), os.path.join(tmp, "local builder")
            same = all(storage.read_bytes(os.path.join(a, f)) == storage.read_bytes(
                os.path.join(b, f)) for f in os.listdir(b))
            assert same and sorted(os.listdir(a)) == sorted(os.listdir(b)), name
        local = rates["local builder"][0]
        one, two = rates["beam, 1 worker(s)"][0], rates["beam, 2 worker(s)"][0]
        print(f"ratio beam 1 worker / local builder items/s: {one / local:.2f}x")
        print(f"scaling 1 -> 2 workers: {two / one:.2f}x (ideal 2x on 2 free cores)")
        print("shard directories of all three builds: byte-identical")


if __name__ == "__main__":
    main()
