"""Images per second encoded by the JAX SEED tokenizer vs the PyTorch assembly of its parts.

    python -m benchmarks.bench_image_tokenizer [--batches 1 8] [--repeats 2] [--vit_depth 39]

Full-size SEED tokenizer v2 widths (EVA ViT-g 1408 wide, Q-Former 768, 8192 x 32 codes) with
random weights (speed does not depend on the values); `--vit_depth` below 39 shortens the ViT
for slow machines and is printed with the results. fp32 on this machine's default JAX backend;
the reference (timm EVA + transformers Blip2QFormer + torch VQ,
anygpt_jax/testing/seed_reference.py) runs
on PyTorch CPU. Each figure is the best of `--repeats` runs after a warm-up (JAX compilation
reported separately); ours and the reference alternate within each repeat, so load from other
processes hits both alike. Encode = preprocessed 224 px pixels -> 32 codes per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from collections.abc import Iterator

import flax
import numpy as np
import torch

from anygpt_jax.modalities.image import ImageTokenizer
from anygpt_jax.modalities.image_model import SeedConfig
from anygpt_jax.testing.seed_reference import ReferenceSeed, seed_state_dict
from benchmarks import allocator_description
from converters.seed import params_from_state_dicts


def build(config: SeedConfig) -> tuple[ReferenceSeed, ImageTokenizer]:
    """The random reference model and our tokenizer holding the same weights."""
    torch.manual_seed(0)
    ref = ReferenceSeed(config)
    with torch.no_grad():
        ref.quantize.embedding.weight.normal_()
    state = seed_state_dict(ref, extras=False)
    _, flat, _ = params_from_state_dicts(state, ckpt_name="benchmark", vit_depth=config.vit_depth)
    ours = ImageTokenizer(config, flax.traverse_util.unflatten_dict(flat, sep="/"))
    del state, flat
    gc.collect()
    return ref, ours


def _timed(fn, *args) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def bench(config: SeedConfig, batches: list[int], repeats: int) -> Iterator[tuple]:
    """Yields rows (batch, ours s, reference s, compile s, agreement of codes) as each batch
    size finishes; times are the best of `repeats`."""
    ref, ours = build(config)
    rng = np.random.default_rng(0)
    size = config.image_size
    for batch in batches:
        pixels = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        with torch.inference_mode():
            ref_codes = ref.encode(x).numpy()  # warm-up: threads, allocator
        _, first = _timed(ours.encode_pixels, pixels)  # the first call compiles
        times: dict[str, list[float]] = {"ours": [], "ref": []}
        for _ in range(repeats):
            codes, t = _timed(ours.encode_pixels, pixels)
            times["ours"].append(t)
            with torch.inference_mode():
                times["ref"].append(_timed(ref.encode, x)[1])
        best = {k: min(v) for k, v in times.items()}
        agree = float(np.mean(np.asarray(codes) == ref_codes))
        yield batch, best["ours"], best["ref"], first - best["ours"], agree


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; the best counts")
    parser.add_argument("--vit_depth", type=int, default=39, help="ViT blocks (SEED: 39)")
    args = parser.parse_args(argv)
    import jax

    config = dataclasses.replace(SeedConfig(), vit_depth=args.vit_depth)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; SEED v2 widths, ViT depth {config.vit_depth}"
        f"{'' if config.vit_depth == 39 else ' (real: 39)'}, fp32; {allocator_description()}"
    )
    print(
        f"{'batch':>5} {'ours img/s':>11} {'torch img/s':>12} {'ratio':>6} {'compile s':>10} "
        f"{'same codes':>10}"
    )
    for batch, ours, ref, compile_s, agree in bench(config, args.batches, args.repeats):
        print(
            f"{batch:5d} {batch / ours:11.3f} {batch / ref:12.3f} {ref / ours:5.2f}x "
            f"{compile_s:10.1f} {agree:10.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
