"""Media -> codes for the builder: the project's JAX tokenizers, demo stand-ins, precomputed codes.

Media files may be local or gs:// (downloaded for the libraries that read only local files).

A tokenizer spec per modality (`--tokenizer MODALITY=SPEC`):
- a directory (local or gs://): converted weights (`python -m converters.speechtokenizer` /
  `converters.encodec` / `converters.seed`), loaded by the JAX tokenizers of
  anygpt_jax.modalities;
- `demo`: speech/music: a small SEANet codec with random weights (seed 0) whose codebooks are
  filled from its own latents of calibration audio, so codes are diverse but meaningless;
  image: `digits_pixel_pairs`, a lossless code of 8x8 17-level images (two pixels per code);
- `precomputed:NAME`: the corpus carries the codes; NAME is recorded as their tokenizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
from collections.abc import Iterator, Sequence

import numpy as np

from anygpt_jax import storage
from anygpt_jax.data.shards import TokenizerInfo

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
MUSIC_SEGMENT_SECONDS = 5.0
CODE_CACHE_FILES = 20_000  # per audio encoder; a few tens of MB of codes at most
# Demo codecs pad batches to multiples of 5 s: the demo's speech clips (<= 5 s) and music
# segments (5 s) then make one shape each, so each codec compiles about once per batch size.
DEMO_BUCKET_SECONDS = 5.0


@dataclasses.dataclass
class Encoder:
    """Encodes a batch of media files of one modality; failures come back as exceptions."""

    modality: str
    info: TokenizerInfo
    encode_files: object = None  # Callable[[list[str]], list[np.ndarray | Exception]]

    def encode(self, paths: Sequence[str]) -> list[np.ndarray | Exception]:
        if self.encode_files is None:
            return [
                ValueError(
                    f"{p}: {self.modality} tokenizer {self.info.name!r} takes "
                    f"precomputed codes only"
                )
                for p in paths
            ]
        return self.encode_files(list(paths))


def _dir_identity(path: str) -> str:
    h = hashlib.sha256()
    for name in storage.listdir(path):
        full = storage.join(path, name)
        if storage.isfile(full):
            h.update(name.encode())
            with storage.open_file(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return "sha256:" + h.hexdigest()


def _file_key(path: str) -> tuple | None:
    try:
        if storage.is_remote(path):
            st = storage.path(path).stat()  # objects are replaced whole: size and time suffice
            return path, st.length, st.mtime
        st = os.stat(path)  # local: remote paths are keyed above
    except OSError:
        return None  # not cached; loading it reports the error
    return os.path.realpath(path), st.st_size, st.st_mtime_ns  # local: as above


@contextlib.contextmanager
def local_media(path: str) -> Iterator[str]:
    """A local path of media file `path` for libraries reading only local files (soundfile):
    `path` itself, or a download of a gs:// one whose errors name the URL."""
    if not storage.is_remote(path):
        yield path
        return
    try:
        with storage.local_copy(path) as local:
            yield local
    except (OSError, ValueError) as e:
        if path in str(e):
            raise
        raise OSError(f"{path}: {e}") from e


def _audio_encoder(modality: str, codec, info: TokenizerInfo) -> Encoder:
    from anygpt_jax.modalities import audio_io

    # Codes of files already encoded, so a corpus that reuses clips (dialogues quoting the
    # speech and music sets) encodes each once. An item's codes do not depend on its batch.
    cache: dict[tuple, np.ndarray] = {}

    def encode_files(paths):
        out, waves, slots, keys = [None] * len(paths), [], [], []
        for i, p in enumerate(paths):
            try:
                key = _file_key(p)
                if key is not None and key in cache:
                    out[i] = cache[key]
                    continue
                with local_media(p) as local:
                    w = audio_io.load_audio(local, codec.sample_rate)
                if modality == "music":  # AnyGPT tokenizes one 5 s segment of a music clip
                    w = w[: int(MUSIC_SEGMENT_SECONDS * codec.sample_rate)]
                waves.append(w)
                slots.append(i)
                keys.append(key)
            except (audio_io.AudioError, OSError, ValueError) as e:
                out[i] = e
        if waves:
            # Batches padded to a power of two: fewer shapes, fewer compilations.
            pad = [waves[0]] * ((1 << (len(waves) - 1).bit_length()) - len(waves))
            codes = codec.encode_arrays(waves + pad, n_q=1 if modality == "speech" else None)
            for i, key, c in zip(slots, keys, codes, strict=False):
                out[i] = c[0] if modality == "speech" else c
                if len(cache) >= CODE_CACHE_FILES:  # bounded: drop the oldest entry
                    del cache[next(iter(cache))]
                if key is not None:
                    cache[key] = out[i]
        return out

    return Encoder(modality, info, encode_files)


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


def digits_pixel_pairs(paths: list[str]) -> list[np.ndarray | Exception]:
    """8x8 grayscale images (levels 0..16) -> 32 codes `a * 17 + b` of pixel pairs (lossless)."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(io.BytesIO(storage.read_bytes(p))) as im:
                px = np.asarray(im.convert("L").resize((8, 8)), np.int64)
            levels = np.rint(px / 255 * 16).astype(np.int64).reshape(32, 2)
            out.append(levels[:, 0] * 17 + levels[:, 1])
        except (OSError, ValueError) as e:
            out.append(OSError(f"{p}: cannot read image ({e})"))
    return out


def make_encoder(modality: str, spec: str) -> Encoder:
    """An Encoder from a tokenizer spec (see module docstring)."""
    if spec.startswith("precomputed:"):
        name = spec.split(":", 1)[1]
        if not name:
            raise ValueError(f"--tokenizer {modality}={spec}: name the tokenizer after ':'")
        return Encoder(modality, TokenizerInfo(name, f"precomputed:{name}"))
    if spec == "demo":
        if modality == "image":
            info = TokenizerInfo("digits_pixel_pairs", "digits_pixel_pairs/1")
            return Encoder(modality, info, digits_pixel_pairs)
        codec = demo_codec(modality)
        name = {"speech": "speechtokenizer_rvq1", "music": "encodec_32khz"}[modality]
        info = TokenizerInfo(name, f"demo-random-seed0/{modality}", random_init=True)
        return _audio_encoder(modality, codec, info)
    if not storage.isdir(spec):
        raise ValueError(
            f"--tokenizer {modality}={spec}: not a directory, 'demo' or 'precomputed:NAME'"
        )
    if modality == "image":
        from anygpt_jax.modalities.image import ImageTokenizer

        tok = ImageTokenizer.load(spec)
        info = TokenizerInfo("seed_tokenizer_v2", _dir_identity(spec))
        return Encoder(modality, info, lambda paths: _image_codes(tok, paths))
    from anygpt_jax.modalities.music import MusicTokenizer
    from anygpt_jax.modalities.speech import SpeechTokenizer

    cls = SpeechTokenizer if modality == "speech" else MusicTokenizer
    name = {"speech": "speechtokenizer_rvq1", "music": "encodec_32khz"}[modality]
    return _audio_encoder(modality, cls.load(spec), TokenizerInfo(name, _dir_identity(spec)))


def _image_codes(tok, paths: list[str]) -> list[np.ndarray | Exception]:
    """SEED codes [32] per path in one batched call; unreadable files fail alone."""
    from anygpt_jax.modalities.image import ImageError, load_image

    out: list = []
    images = []
    for p in paths:
        try:
            with local_media(p) as local:
                images.append(load_image(local, name=p))
            out.append(None)
        except (ImageError, OSError) as e:
            out.append(e)
    codes = iter(tok.encode(images)) if images else iter(())
    return [next(codes) if o is None else o for o in out]
