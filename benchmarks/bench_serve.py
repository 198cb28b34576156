"""Serving throughput and latency on loopback: 1, 4 and 16 concurrent clients.

    python -m benchmarks.bench_serve [--ckpt runs/cpu_default] [--requests 4] [--tokens 32]

Starts `python -m anygpt_jax.serve` on the CPU default checkpoint (README command 1) and runs,
for each client count C, C clients each sending --requests chat requests one after another
(text replies by greedy search, not the chat default's 5 beams; exactly --tokens new tokens),
after unmeasured warm-up waves of 1, 2, 4, 8 and 16 clients (every batch bucket's programs
compile then). Prints requests/s, new tokens/s, p50/p99 latency, and the throughput at 16
clients over 1 client (goal >= 4x).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat(url: str, text: str, tokens: int) -> tuple[float, int]:
    """(seconds, new tokens) of one chat request."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": tokens,
            "do_sample": False, "num_beams": 1}
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        reply = json.loads(r.read())
    return time.perf_counter() - t, reply["usage"]["completion_tokens"]


def wave(url: str, clients: int, per_client: int, tokens: int) -> dict:
    """`clients` clients, each sending `per_client` requests in turn."""
    def client(c):
        return [chat(url, f"Tell me something about the number {c * 100 + k}.", tokens)
                for k in range(per_client)]

    t = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        done = [x for xs in pool.map(client, range(clients)) for x in xs]
    wall = time.perf_counter() - t
    latencies = np.array([s for s, _ in done])
    return {"requests_per_s": len(done) / wall, "tokens_per_s": sum(n for _, n in done) / wall,
            "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=os.path.join(REPO, "runs", "cpu_default"))
    p.add_argument("--requests", type=int, default=4, help="per client")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per reply")
    args = p.parse_args()
    if not os.path.isdir(args.ckpt):
        raise SystemExit(f"{args.ckpt}: no model directory; run README command 1 first")
    port = _port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "anygpt_jax.serve", "--ckpt", args.ckpt, "--port", str(port),
         "--max_batch", "16", f"--gin.GenerationSettings.min_new_tokens={args.tokens}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            try:
                urllib.request.urlopen(url + "/health", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(server.communicate()[1][-3000:]) from None
                time.sleep(0.5)
        print(f"{args.ckpt}, {args.tokens} new tokens per reply, {args.requests} requests per "
              f"client, {os.cpu_count()} CPU cores", flush=True)
        print(f"{'clients':>7} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7}")
        for clients in (1, 2, 4, 8, 16):  # warm-up: every batch bucket's programs compile
            wave(url, clients, 1, args.tokens)
        results = {}
        for clients in (1, 4, 16):
            r = results[clients] = wave(url, clients, args.requests, args.tokens)
            print(f"{clients:>7} {r['requests_per_s']:7.2f} {r['tokens_per_s']:8.1f} "
                  f"{r['p50']:7.2f} {r['p99']:7.2f}", flush=True)
        ratio = results[16]["tokens_per_s"] / results[1]["tokens_per_s"]
        print(f"throughput at 16 clients / 1 client: {ratio:.2f}x (goal >= 4x)")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
