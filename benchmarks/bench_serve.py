"""Serving throughput and latency on loopback: 1, 4 and 16 concurrent clients.

    python -m benchmarks.bench_serve [--ckpt runs/cpu_default] [--requests 256] [--tokens 32]
                                     [--batching continuous rounds]

Starts `python -m anygpt_jax.serve` on the CPU default checkpoint (README command 1) and runs,
for each client count C, C clients sending --requests chat requests in all, each client one
after another on its own kept-alive connection (asyncio + aiohttp, as vLLM's serving benchmark
drives a server; text replies by greedy search, not the chat default's 5 beams; exactly
--tokens new tokens), after unmeasured warm-up waves of 1, 2, 4, 8 and 16 clients, 4 requests
each (the programs of every batch bucket and of most joins compile then). Prints requests/s,
new tokens/s, p50/p99 latency, and the throughput at 16 clients over 1 client (goal >= 4x),
for the server's continuous batching (its default) and its rounds, each server on its own.
A last wave (16m) has 16 clients ask for mixed lengths, --tokens/4 to 2 x --tokens new tokens
(max_tokens = min_tokens, drawn with a fixed seed): what continuous batching is for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request

import aiohttp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _client(session: aiohttp.ClientSession, url: str, c: int, lengths: list[int],
                  done: list[tuple[float, int]]) -> None:
    """One client: a chat request per entry of `lengths` (its exact number of new tokens),
    in turn; (seconds, new tokens) of each into `done`."""
    for k, n in enumerate(lengths):
        body = {"messages": [{"role": "user",
                              "content": f"Tell me something about the number {c * 1000 + k}."}],
                "max_tokens": n, "min_tokens": n, "do_sample": False, "num_beams": 1}
        t = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", json=body) as r:
            if r.status != 200:
                raise SystemExit(f"HTTP {r.status}: {await r.text()}")
            reply = await r.json()
        done.append((time.perf_counter() - t, reply["usage"]["completion_tokens"]))


async def _wave(url: str, clients: int, total: int, tokens: int, mixed: bool) -> dict:
    done: list[tuple[float, int]] = []
    rng = np.random.default_rng(0)
    per_client = total // clients
    lengths = [rng.integers(tokens // 4, 2 * tokens + 1, per_client).tolist() if mixed
               else [tokens] * per_client for _ in range(clients)]
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        t = time.perf_counter()
        await asyncio.gather(*(_client(session, url, c, lengths[c], done)
                               for c in range(clients)))
        wall = time.perf_counter() - t
    latencies = np.array([s for s, _ in done])
    return {"requests_per_s": len(done) / wall, "tokens_per_s": sum(n for _, n in done) / wall,
            "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99))}


def wave(url: str, clients: int, total: int, tokens: int, mixed: bool = False) -> dict:
    """`clients` concurrent clients sending `total` requests in all, each of exactly `tokens`
    new tokens, or (mixed) of tokens/4 to 2 x tokens; throughput and latency."""
    return asyncio.run(_wave(url, clients, total, tokens, mixed))


def serve_and_measure(ckpt: str, batching: str, requests: int, tokens: int) -> dict:
    """Starts the server with `--batching batching`, warms it up, measures 1, 4 and 16
    clients (printing a row each); their results by client count."""
    port = _port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "anygpt_jax.serve", "--ckpt", ckpt, "--port", str(port),
         "--max_batch", "16", "--batching", batching],
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
        for clients in (1, 2, 4, 8, 16):  # warm-up: every batch bucket's programs compile
            wave(url, clients, 4 * clients, tokens)
        wave(url, 16, 64, tokens, mixed=True)
        results = {}
        for clients, mixed in ((1, False), (4, False), (16, False), (16, True)):
            r = results[clients, mixed] = wave(url, clients, requests, tokens, mixed)
            print(f"{batching:>10} {clients:>7}{'m' if mixed else ' '} "
                  f"{r['requests_per_s']:7.2f} {r['tokens_per_s']:8.1f} {r['p50'] * 1e3:7.1f} "
                  f"{r['p99'] * 1e3:7.1f}", flush=True)
        return results
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=os.path.join(REPO, "runs", "cpu_default"))
    p.add_argument("--requests", type=int, default=256, help="per wave, over its clients")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per reply")
    p.add_argument("--batching", nargs="+", default=["continuous", "rounds"],
                   choices=("continuous", "rounds"), help="the server's modes to measure")
    args = p.parse_args()
    if not os.path.isdir(args.ckpt):
        raise SystemExit(f"{args.ckpt}: no model directory; run README command 1 first")
    print(f"{args.ckpt}, {args.tokens} new tokens per reply, {args.requests} requests per "
          f"wave, {os.cpu_count()} CPU cores", flush=True)
    print(f"{'batching':>10} {'clients':>8} {'req/s':>7} {'tok/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    ratios = {}
    for batching in args.batching:
        results = serve_and_measure(args.ckpt, batching, args.requests, args.tokens)
        ratios[batching] = (results[16, False]["tokens_per_s"]
                            / results[1, False]["tokens_per_s"])
    for batching, ratio in ratios.items():
        print(f"{batching}: throughput at 16 clients / 1 client: {ratio:.2f}x (goal >= 4x)")


if __name__ == "__main__":
    main()
