"""Throughput of the JAX codecs vs their PyTorch references: seconds of audio per wall second.

    python -m benchmarks.bench_codecs [--seconds 10] [--batches 1 8] [--codecs speech music]

Full-size SpeechTokenizer (16 kHz, 8 x 1024 RVQ) and Encodec 32 kHz (4 x 2048) with random
weights (default init; codebooks at the latents' scale), fp32, on this machine's default JAX
backend and PyTorch on CPU. Each figure is the best of `--repeats` timed runs after a warm-up (JAX:
compilation, reported separately); encode times waveform -> codes, decode codes -> waveform.
"""

from __future__ import annotations

import argparse
import time

import flax
import numpy as np
import torch

from anygpt_jax.modalities import MusicTokenizer, SpeechTokenizer
from anygpt_jax.testing.references import import_speechtokenizer
from benchmarks import allocator_description
from converters.encodec import (
    ENCODEC_NAMES,
    TorchTensors,
    seanet_config_from_encodec,
    seanet_params_from_torch,
)
from converters.speechtokenizer import (
    SPEECHTOKENIZER_NAMES,
    seanet_config_from_speechtokenizer,
)

SPEECHTOKENIZER_CONFIG = dict(
    n_filters=64, strides=[8, 5, 4, 2], dimension=1024, semantic_dimension=768,
    bidirectional=True, dilation_base=2, residual_kernel_size=3, n_residual_layers=1,
    lstm_layers=2, activation="ELU", sample_rate=16000, codebook_size=1024, n_q=8)
ENCODEC_32KHZ_CONFIG = dict(
    sampling_rate=32000, num_filters=64, upsampling_ratios=[8, 5, 4, 4], hidden_size=128,
    codebook_size=2048, target_bandwidths=[2.2], use_causal_conv=False,
    use_conv_shortcut=False, num_lstm_layers=2, normalize=False)


def _random_codebooks(buffers, encoder, rate: int) -> None:
    """Random codebooks at the scale of the encoder's latents: unit-normal ones would drive
    the decoder's LSTM into saturation, where PyTorch slows down on denormal numbers."""
    with torch.no_grad():
        scale = encoder(0.1 * torch.randn(1, 1, rate)).std()
        buffers = list(buffers)
        for embed in buffers:
            embed.normal_().mul_(scale / len(buffers) ** 0.5)


def build(codec: str):
    """(reference torch model, our tokenizer, torch encode fn, torch decode fn)."""
    torch.manual_seed(0)
    if codec == "speech":
        model = import_speechtokenizer().SpeechTokenizer(SPEECHTOKENIZER_CONFIG).eval()
        _random_codebooks((layer._codebook.embed for layer in model.quantizer.vq.layers),
                          model.encoder, 16000)
        config = seanet_config_from_speechtokenizer(SPEECHTOKENIZER_CONFIG, "benchmark")
        names, cls = SPEECHTOKENIZER_NAMES, SpeechTokenizer
        encode, decode = model.encode, model.decode  # codes (n_q, batch, frames)
    else:
        from transformers import EncodecConfig, EncodecModel

        model = EncodecModel(EncodecConfig(**ENCODEC_32KHZ_CONFIG)).eval()
        _random_codebooks((layer.codebook.embed for layer in model.quantizer.layers),
                          model.encoder, 32000)
        config = seanet_config_from_encodec(ENCODEC_32KHZ_CONFIG, "benchmark")
        names, cls = ENCODEC_NAMES, MusicTokenizer

        def encode(x):
            return model.encode(x).audio_codes[0].transpose(0, 1)

        def decode(codes):
            return model.decode(codes.transpose(0, 1)[None], [None]).audio_values

    flat = seanet_params_from_torch(TorchTensors.from_state_dict(model.state_dict()), config,
                                    names)
    ours = cls(config, flax.traverse_util.unflatten_dict(flat, sep="/"))
    return model, ours, encode, decode


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def bench(codec: str, seconds: float, batches: list[int], repeats: int) -> list[tuple]:
    """Rows (codec, batch, op, ours s, reference s, compile s); times are best of `repeats`.

    Ours and the reference alternate within each repeat, so load from other processes on a
    shared machine hits both alike; the best run is the least disturbed one.
    """
    model, ours, ref_encode, ref_decode = build(codec)
    rate = ours.sample_rate
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        wavs = [0.1 * rng.standard_normal(int(seconds * rate)).astype(np.float32)
                for _ in range(batch)]
        x = torch.from_numpy(np.stack(wavs))[:, None]
        with torch.inference_mode():
            ref_encode(x[:1, :, :rate])  # warm-up: threads, allocator
            codes_ref = ref_encode(x)
        _, first_enc = _timed(ours.encode_arrays, wavs)  # the first call compiles
        codes, _ = _timed(ours.encode_arrays, wavs)
        _, first_dec = _timed(ours.decode_arrays, codes)
        times = {k: [] for k in ("enc", "ref_enc", "dec", "ref_dec")}
        for _ in range(repeats):
            times["enc"].append(_timed(ours.encode_arrays, wavs)[1])
            with torch.inference_mode():
                times["ref_enc"].append(_timed(ref_encode, x)[1])
                times["ref_dec"].append(_timed(ref_decode, codes_ref)[1])
            times["dec"].append(_timed(ours.decode_arrays, codes)[1])
        best = {k: min(v) for k, v in times.items()}
        rows.append((codec, batch, "encode", best["enc"], best["ref_enc"], first_enc - best["enc"]))
        rows.append((codec, batch, "decode", best["dec"], best["ref_dec"], first_dec - best["dec"]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--codecs", nargs="+", default=["speech", "music"],
                        choices=["speech", "music"])
    args = parser.parse_args(argv)
    import jax

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads; {args.seconds:g} s clips; "
          f"{allocator_description()}")
    print(f"{'codec':7} {'batch':>5} {'op':7} {'ours audio-s/s':>15} {'torch audio-s/s':>16} "
          f"{'ratio':>6} {'compile s':>10}")
    for codec in args.codecs:
        rows = bench(codec, args.seconds, args.batches, args.repeats)
        for name, batch, op, ours, ref, compile_s in rows:
            audio = batch * args.seconds
            print(f"{name:7} {batch:5d} {op:7} {audio / ours:15.1f} {audio / ref:16.1f} "
                  f"{ref / ours:5.2f}x {compile_s:10.1f}", flush=True)


if __name__ == "__main__":
    main()
