"""SoundStorm decoding speed vs PyTorch: seconds of speech produced per wall second.

    python -m benchmarks.bench_soundstorm [--depth 2] [--seconds 5] [--prompt_seconds 3]
                                          [--steps 3] [--batch 1] [--repeats 3]

Both sides run AnyGPT's network at its real width (dim 1024, 8 heads x 128, conv kernel 31,
7 x 1024 codes) with the same random weights in fp32, and the same decoding algorithm with the
same number of steps (Gumbel sampling included): ours is the jitted JAX port; PyTorch's is
soundstorm-pytorch's modules assembled as the fork's network, driven by the fork's decoding
loop restated in torch (anygpt_jax/testing/soundstorm_reference.py). The full model has 12
layers; a smaller
`--depth` keeps a 2-core CPU run short, and both sides then run that depth. Each figure is the
best of `--repeats` interleaved runs after a warm-up (JAX compilation is reported apart).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402

from anygpt_jax.modalities.soundstorm import SoundStorm  # noqa: E402
from anygpt_jax.modalities.soundstorm_model import SoundStormConfig  # noqa: E402
from anygpt_jax.testing.soundstorm_reference import (  # noqa: E402
    anygpt_state_dict,
    build_reference,
    fork_generate,
)
from converters.soundstorm import convert  # noqa: E402

FRAME_RATE = 50  # SpeechTokenizer frames per second


def build(depth: int, scan_layers: bool) -> tuple[torch.nn.Module, SoundStorm]:
    """The torch reference and our model with the same weights (through the converter)."""
    config = SoundStormConfig(depth=depth)
    ref = build_reference(config, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(anygpt_state_dict(ref), os.path.join(tmp, "soundstorm.pt"))
        out = convert(os.path.join(tmp, "soundstorm.pt"), os.path.join(tmp, "out"))
        ours = SoundStorm.load(out, scan_layers=scan_layers, bucket_frames=1)
    return ref, ours


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=2, help="conformer layers (full model: 12)")
    parser.add_argument("--seconds", type=float, default=5.0, help="speech per item")
    parser.add_argument("--prompt_seconds", type=float, default=3.0, help="voice prompt (0: none)")
    parser.add_argument("--steps", type=int, default=3, help="decoding steps (AnyGPT: 3-4)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scan_layers", action="store_true",
                        help="scanned conformer layers (default: unrolled, faster on CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    ref, ours = build(args.depth, args.scan_layers)
    rng = np.random.default_rng(0)
    frames = round(args.seconds * FRAME_RATE)
    prompt_frames = round(args.prompt_seconds * FRAME_RATE)
    units = rng.integers(0, 1024, (args.batch, frames))
    prompt = rng.integers(0, 1024, (8, prompt_frames)) if prompt_frames else None
    units_t = torch.from_numpy(units)
    prompt_t = None if prompt is None else torch.from_numpy(prompt.T[None]).expand(
        args.batch, -1, -1)

    def run_ours() -> None:
        ours.generate(units, prompt, steps=args.steps, seed=0)

    def run_torch() -> None:
        fork_generate(ref, units_t, prompt_t, steps=args.steps)

    start = time.perf_counter()
    run_ours()
    compile_s = time.perf_counter() - start
    run_torch()
    best = {"jax": float("inf"), "torch": float("inf")}
    for _ in range(args.repeats):
        for name, fn in (("jax", run_ours), ("torch", run_torch)):
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    speech = args.batch * frames / FRAME_RATE
    print(f"SoundStorm dim 1024 depth {args.depth}, batch {args.batch} x {args.seconds:g} s "
          f"speech + {args.prompt_seconds:g} s prompt, {args.steps} steps "
          f"({args.steps + 7} network passes); first JAX call incl. compile {compile_s:.1f} s")
    for name in ("jax", "torch"):
        print(f"  {name:5s} {best[name]:7.2f} s  -> {speech / best[name]:6.2f} s of speech / s")
    print(f"ratio (ours / PyTorch): {best['torch'] / best['jax']:.2f}x")


if __name__ == "__main__":
    main()
