"""Audio input for the codecs: reading files, checking arrays, mono downmix, resampling.

Everything returns mono float32 numpy at the model's rate. Mono and stereo are accepted
(stereo is averaged, as AnyGPT's music loader does); other channel counts, empty or non-finite
audio and unreadable files raise `AudioError` naming the file or the offending value.
"""

from __future__ import annotations

import io
import os

import numpy as np

from anygpt_jax import storage

MAX_CHANNELS = 2


class AudioError(ValueError):
    """Audio that cannot be used: unreadable file, empty, wrong shape or channel count."""


def to_mono(waveform: np.ndarray, name: str = "waveform") -> np.ndarray:
    """(samples,) or (channels, samples) with 1-2 channels -> mono float32 (samples,)."""
    wav = np.asarray(waveform)
    if not (np.issubdtype(wav.dtype, np.floating) or np.issubdtype(wav.dtype, np.integer)):
        raise AudioError(f"{name}: expected a numeric array, got dtype {wav.dtype}")
    if wav.ndim == 2:
        if not 1 <= wav.shape[0] <= MAX_CHANNELS:
            hint = " (samples first? pass waveform.T)" if wav.shape[1] <= MAX_CHANNELS else ""
            raise AudioError(f"{name}: expected (channels, samples) with 1 to {MAX_CHANNELS} "
                             f"channels, got shape {wav.shape}{hint}")
        wav = wav.astype(np.float32).mean(axis=0)
    elif wav.ndim != 1:
        raise AudioError(
            f"{name}: expected (samples,) or (channels, samples), got shape {wav.shape}")
    if wav.shape[0] == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    wav = wav.astype(np.float32)
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{name}: contains NaN or infinite samples")
    return wav


def resample(waveform: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resamples mono audio to `target_rate` (librosa's default soxr high quality)."""
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if sample_rate == target_rate:
        return waveform
    import librosa

    out = librosa.resample(waveform, orig_sr=int(sample_rate), target_sr=int(target_rate))
    if out.shape[0] == 0:
        raise AudioError(f"audio too short to resample from {sample_rate} to {target_rate} Hz")
    return out.astype(np.float32)


def prepare(waveform: np.ndarray, sample_rate: int, target_rate: int,
            name: str = "waveform") -> np.ndarray:
    """Checks, downmixes and resamples an array to mono float32 at `target_rate`."""
    return resample(to_mono(waveform, name), sample_rate, target_rate)


def load_audio(path: str | os.PathLike, target_rate: int) -> np.ndarray:
    """Reads an audio file (anything libsndfile reads: wav, flac, ogg, mp3, ...) as mono float32
    at `target_rate`."""
    import soundfile as sf

    path = os.fspath(path)
    if not storage.isfile(path):
        raise AudioError(f"{path}: no such audio file")
    try:
        data, rate = sf.read(io.BytesIO(storage.read_bytes(path)), dtype="float32",
                             always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types; re-raised named
        raise AudioError(f"{path}: cannot read audio ({e})") from e
    return prepare(data.T, rate, target_rate, name=path)
