"""Shared by test_infer*.py: a tiny random AnyGPT model directory, tokenizer and SoundStorm
directories in their converted formats (real codebook sizes, random weights), media files,
an Engine over them, and gin bindings that keep decoding to one small compiled program."""

from __future__ import annotations

import json
import os
import pathlib

import flax
import gin
import jax
import numpy as np
import soundfile as sf
from PIL import Image

from anygpt_jax import AnyGPT, checkpointing
from anygpt_jax.inference.media import MediaCodecs, MediaSettings
from anygpt_jax.inference.session import Engine
from anygpt_jax.modalities import codec, image_model
from anygpt_jax.modalities.audio_layers import SEANetConfig
from anygpt_jax.modalities.soundstorm import expected_param_shapes, save_soundstorm
from anygpt_jax.modalities.soundstorm_model import SoundStormConfig
from anygpt_jax.model import ModelConfig, param_shapes

# Tiny tokenizers with the real codebook sizes (the vocabulary's), random weights. Audio at
# 1 kHz with hop 20 keeps the real 50 frames/s in few samples.
SPEECH = SEANetConfig(sample_rate=1000, dimension=8, n_filters=2, ratios=(5, 4), n_q=4,
                      codebook_size=1024, lstm_layers=1, encoder_bidirectional=True)
# Completes RVQ layers 2-4 of SPEECH (the real one: 2-8).
STORM = SoundStormConfig(dim=16, depth=1, heads=2, dim_head=8, ff_mult=2, conv_kernel=3,
                         codebook_size=1024, num_quantizers=3, num_semantic=1024)
MUSIC = SEANetConfig(sample_rate=1000, dimension=8, n_filters=2, ratios=(5, 4), n_q=4,
                     codebook_size=2048, lstm_layers=1, true_skip=True)
SEED = image_model.SeedConfig(
    image_size=28, patch_size=14, vit_width=16, vit_depth=1, vit_heads=2, vit_mlp=16,
    num_queries=32, qformer_width=16, qformer_depth=2, qformer_heads=2, qformer_mlp=16,
    codebook_size=8192, code_dim=4, decoder_depth=1, decoder_heads=2, decoder_mlp=16,
    down_dims=(8, 8, 4), embed_dim=20)
# One decoding program for every output (greedy, no penalty/top-k), short outputs: few
# compilations. An image span needs 32 codes + its end marker.
FAST = ["GenerationSettings.do_sample = False", "GenerationSettings.repetition_penalty = 1.0",
        "GenerationSettings.top_k = 0", "GenerationSettings.num_beams = 1",
        "GenerationSettings.max_new_tokens = 40"]


def random_params(shapes, seed: int, scale: float | None = None) -> dict:
    """Gaussian float32 values for a tree of shapes (std `scale`, or 1/sqrt(fan-in))."""
    rng = np.random.default_rng(seed)

    def draw(s):
        std = scale if scale is not None else 1 / np.sqrt(np.prod(s.shape[:-1]) or 1)
        return (rng.standard_normal(s.shape) * std).astype(np.float32)

    return jax.tree_util.tree_map(draw, shapes)


def build_assets(root: pathlib.Path, vocab) -> pathlib.Path:
    """Writes under `root`: model/ (tiny LLaMA over `vocab`), image/, speech/, music/ and
    soundstorm/ (converted-format directories) and media/ (good and bad input files)."""
    cfg = ModelConfig(vocab_size=vocab.vocab_size, hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=1024,
                      scan_layers=False)
    # Values drawn in numpy from the shapes: flax's init would compile for a while.
    checkpointing.save_model(str(root / "model"), random_params(param_shapes(cfg), 0, 0.5), cfg,
                             vocab)
    for name, kind, c in (("speech", "speechtokenizer", SPEECH), ("music", "encodec", MUSIC)):
        os.makedirs(root / name)
        shapes = {k: jax.ShapeDtypeStruct(s, np.float32)
                  for k, s in codec.expected_param_shapes(c).items()}
        codec.save_codec(str(root / name), kind, c, random_params(shapes, 1), {})
    os.makedirs(root / "image")
    shapes = flax.traverse_util.flatten_dict(
        jax.eval_shape(lambda: image_model.init_params(SEED)), sep="/")
    image_model.save_seed(str(root / "image"), SEED, random_params(shapes, 2, 0.2))
    os.makedirs(root / "soundstorm")
    shapes = {k: jax.ShapeDtypeStruct(s, np.float32)
              for k, s in expected_param_shapes(STORM).items()}
    save_soundstorm(str(root / "soundstorm"), STORM, random_params(shapes, 3), {})
    rng = np.random.default_rng(0)
    media = root / "media"
    os.makedirs(media)
    sf.write(media / "hello.wav", 0.1 * rng.standard_normal(3000).astype(np.float32), 8000)
    sf.write(media / "song.wav", 0.1 * rng.standard_normal((2400, 2)).astype(np.float32), 8000)
    sf.write(media / "voice.wav", 0.1 * rng.standard_normal(1600).astype(np.float32), 16000)
    sf.write(media / "silent.wav", np.zeros(1600, np.float32), 16000)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 50 + k, 3), dtype=np.uint8)).save(
            media / f"pic{k}.png")
    (media / "notaudio.wav").write_text("this is not audio\n")
    (media / "notimage.png").write_text("this is not an image\n")
    return root


def make_engine(root: pathlib.Path) -> Engine:
    """The tiny model with every tokenizer and SoundStorm (no unCLIP: images stay codes)."""
    model = AnyGPT.load(str(root / "model"))
    dirs = {m: str(root / m) for m in ("image", "speech", "music")}
    media = MediaSettings(dirs, soundstorm=str(root / "soundstorm"))
    return Engine(model, MediaCodecs(model.vocab, media))


def fast_gin_bindings():
    """Binds FAST for the duration of a test (a generator for a pytest fixture)."""
    gin.clear_config()
    with gin.unlock_config():
        gin.parse_config(FAST)
    yield
    gin.clear_config()


def read_lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(x) for x in f]


def read_codes(out_dir, rec) -> list:
    with open(os.path.join(out_dir, rec["path"])) as f:
        return json.load(f)["codes"]
