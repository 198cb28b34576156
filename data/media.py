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
from anygpt_jax.modalities.demo_codec import demo_codec

MUSIC_SEGMENT_SECONDS = 5.0
CODE_CACHE_FILES = 20_000  # per audio encoder; a few tens of MB of codes at most


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
