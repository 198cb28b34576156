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
from anygpt_jax.modalities.registry import media_modality

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


def _media_encoder(modality: str, tokenizer, info: TokenizerInfo) -> Encoder:
    """Encodes files through `tokenizer` as the registry's record of `modality` says (speech:
    RVQ layer 1; music: the first 5 s segment, every codebook; image: SEED's 32 codes)."""
    record = media_modality(modality)
    # Codes of files already encoded, so a corpus that reuses clips (dialogues quoting the
    # speech and music sets) encodes each once. An item's codes do not depend on its batch.
    cache: dict[tuple, np.ndarray] = {}

    def encode_files(paths):
        out, items, slots, keys = [None] * len(paths), [], [], []
        for i, p in enumerate(paths):
            try:
                key = _file_key(p)
                if key is not None and key in cache:
                    out[i] = cache[key]
                    continue
                with local_media(p) as local:
                    items.append(tokenizer.read(local))
                slots.append(i)
                keys.append(key)
            except (OSError, ValueError) as e:  # AudioError / ImageError are ValueErrors
                out[i] = e if p in str(e) else OSError(f"{p}: {e}")
        if items:
            # Batches padded to a power of two: fewer shapes, fewer compilations.
            pad = [items[0]] * ((1 << (len(items) - 1).bit_length()) - len(items))
            codes = record.llm_codes(tokenizer, items + pad)
            for i, key, c in zip(slots, keys, codes, strict=False):
                out[i] = c
                if len(cache) >= CODE_CACHE_FILES:  # bounded: drop the oldest entry
                    del cache[next(iter(cache))]
                if key is not None:
                    cache[key] = c
        return out

    return Encoder(modality, info, encode_files)


def digits_pixel_pairs(paths: list[str]) -> list[np.ndarray | Exception]:
    """8x8 grayscale images (levels 0..16) -> 32 codes `a * 17 + b` of pixel pairs (lossless)."""
    from PIL import Image, UnidentifiedImageError

    from anygpt_jax.modalities.image import UNIDENTIFIED

    out = []
    for p in paths:
        try:
            with Image.open(io.BytesIO(storage.read_bytes(p))) as im:
                px = np.asarray(im.convert("L").resize((8, 8)), np.int64)
            levels = np.rint(px / 255 * 16).astype(np.int64).reshape(32, 2)
            out.append(levels[:, 0] * 17 + levels[:, 1])
        except UnidentifiedImageError:
            out.append(OSError(f"{p}: cannot read image ({UNIDENTIFIED})"))
        except (OSError, ValueError) as e:
            out.append(OSError(f"{p}: cannot read image ({e})"))
    return out


# Modalities the demo corpus codes without a tokenizer: modality -> (info, encode_files).
DEMO_PIXEL_CODES = {
    "image": (TokenizerInfo("digits_pixel_pairs", "digits_pixel_pairs/1"), digits_pixel_pairs),
}


def make_encoder(modality: str, spec: str) -> Encoder:
    """An Encoder from a tokenizer spec (see module docstring)."""
    if spec.startswith("precomputed:"):
        name = spec.split(":", 1)[1]
        if not name:
            raise ValueError(f"--tokenizer {modality}={spec}: name the tokenizer after ':'")
        return Encoder(modality, TokenizerInfo(name, f"precomputed:{name}"))
    record = media_modality(modality)
    if spec == "demo":
        if modality in DEMO_PIXEL_CODES:  # the demo's images: a lossless pixel code, not SEED
            return Encoder(modality, *DEMO_PIXEL_CODES[modality])
        info = TokenizerInfo(record.spec.tokenizer, f"demo-random-seed0/{modality}",
                             random_init=True)
        return _media_encoder(modality, record.load("demo"), info)
    if not storage.isdir(spec):
        raise ValueError(
            f"--tokenizer {modality}={spec}: not a directory, 'demo' or 'precomputed:NAME'"
        )
    info = TokenizerInfo(record.spec.tokenizer, _dir_identity(spec))
    return _media_encoder(modality, record.load(spec), info)
