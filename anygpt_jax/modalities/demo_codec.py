"""The demo corpus's audio codecs: small SEANet codecs, seeded, with random weights.

`python -m data.demo` tokenizes its audio with them, and `infer --speech_tokenizer demo`
decodes with the same ones: a fixed seed gives the same codec in both. Their codebooks are
drawn from the codec's own latents of noise and tones, so codes vary from frame to frame.
"""

from __future__ import annotations

import numpy as np

DEMO_CONFIGS = {
    # hop 320 at 16 kHz and hop 640 at 32 kHz: the real tokenizers' frame rates (50 Hz).
    "speech": dict(
        sample_rate=16000,
        dimension=32,
        n_filters=4,
        ratios=(8, 5, 4, 2),
        n_q=1,
        codebook_size=1024,
        lstm_layers=1,
        encoder_bidirectional=True,
    ),
    "music": dict(
        sample_rate=32000,
        dimension=32,
        n_filters=4,
        ratios=(8, 5, 4, 4),
        n_q=4,
        codebook_size=2048,
        lstm_layers=1,
        true_skip=True,
    ),
}
# Demo codecs pad batches to multiples of 5 s: the demo's speech clips (<= 5 s) and music
# segments (5 s) then make one shape each, so each codec compiles about once per batch size.
DEMO_BUCKET_SECONDS = 5.0


def demo_codec(modality: str, seed: int = 0):
    """A randomly initialized small codec with codebooks filled from its latents of noise+tones."""
    import jax

    from anygpt_jax.modalities.audio_layers import SEANetCodec, SEANetConfig
    from anygpt_jax.modalities.music import MusicTokenizer
    from anygpt_jax.modalities.speech import SpeechTokenizer

    cfg = SEANetConfig(**DEMO_CONFIGS[modality])
    module = SEANetCodec(cfg)
    rng = np.random.default_rng(seed)
    t = np.arange(cfg.sample_rate * 2) / cfg.sample_rate
    calib = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(80, 2000, 6)) / 6
    calib = (
        calib * (0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t)) + 0.05 * rng.standard_normal(t.size)
    ).astype(np.float32)
    # Shapes from eval_shape, values drawn here: flax's own init compiles for ~40 s on CPU.
    shapes = jax.eval_shape(
        module.init, jax.random.PRNGKey(seed), calib[None, : cfg.hop_length * 2, None]
    )["params"]
    params = jax.tree_util.tree_map(
        lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]) or 1)).astype(
            np.float32
        ),
        shapes,
    )
    encode = jax.jit(
        lambda p, w: module.apply({"params": p}, w, method=lambda m, x: m.encoder(x)[0])
    )
    latents = np.asarray(encode(params, calib[None, :, None]))[0]
    books, residual = [], latents
    for _ in range(cfg.n_q):
        # A random codebook maps nearly all frames to one code; frames + noise do not.
        pick = residual[rng.integers(0, len(residual), cfg.codebook_size)]
        book = pick + 0.05 * residual.std() * rng.standard_normal(pick.shape)
        books.append(book.astype(np.float32))
        d = ((residual[:, None] - book[None]) ** 2).sum(-1)
        residual = residual - book[d.argmin(1)]
    params = dict(params, codebooks=np.stack(books))
    cls = SpeechTokenizer if modality == "speech" else MusicTokenizer
    return cls(cfg, params, bucket_seconds=DEMO_BUCKET_SECONDS)
