"""Encodec 32 kHz (MusicGen's) in JAX: music <-> 4 RVQ codebooks x 2048 codes at 50 frames/s.

    tok = MusicTokenizer.load(DIR)            # DIR from `python -m converters.encodec`
    codes = tok.encode(wav, sample_rate)      # int32 (4, frames); any rate, mono or stereo
    wav32k = tok.decode(codes)                # float32 (frames * 640,)
    seg = tok.encode_segment(wav, sample_rate, start_seconds=0.0)  # 5 s by default

AnyGPT's LLM sees one segment (`segment_seconds`, default 5 s = 250 frames = 1000 tokens) with
the codebooks flattened frame-major; `music_ids` / `music_codes_from_ids` map codes to and from
the merged vocabulary (anygpt_jax.vocab holds the offsets).
"""

from __future__ import annotations

import numpy as np

from anygpt_jax.modalities import audio_io
from anygpt_jax.modalities.codec import AudioCodec

MODALITY = "music"
DEFAULT_SEGMENT_SECONDS = 5.0


class MusicTokenizer(AudioCodec):
    """Encodec (SEANet encoder with LSTM, RVQ, SEANet decoder) on numpy audio."""

    kind = "encodec"

    def __init__(self, *args, segment_seconds: float = DEFAULT_SEGMENT_SECONDS, **kwargs):
        super().__init__(*args, **kwargs)
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
        self.segment_seconds = segment_seconds

    def read(self, path: str) -> np.ndarray:
        """The first segment of an audio file: AnyGPT tokenizes music as one 5 s window."""
        return self.segment(super().read(path))

    def segment(self, waveform: np.ndarray, start_seconds: float = 0.0) -> np.ndarray:
        """The `segment_seconds` window from `start_seconds` of mono audio at the model rate."""
        start = int(round(start_seconds * self.sample_rate))
        if not 0 <= start < len(waveform):
            raise ValueError(f"start_seconds {start_seconds} outside the audio's "
                             f"{len(waveform) / self.sample_rate:.3f} s")
        return waveform[start : start + int(round(self.segment_seconds * self.sample_rate))]

    def encode_segment(self, waveform: np.ndarray, sample_rate: int,
                       start_seconds: float = 0.0) -> np.ndarray:
        """Codes (n_q, <= segment frames) of one segment, as AnyGPT tokenizes music."""
        mono = audio_io.prepare(waveform, sample_rate, self.sample_rate)
        return self.encode_arrays([self.segment(mono, start_seconds)])[0]

    def encode_file_segment(self, path: str, start_seconds: float = 0.0) -> np.ndarray:
        """`encode_segment` of an audio file."""
        mono = audio_io.load_audio(path, self.sample_rate)
        return self.encode_arrays([self.segment(mono, start_seconds)])[0]


def music_ids(codes: np.ndarray, vocab) -> np.ndarray:
    """Codes (4, frames) -> merged-vocabulary ids (frames * 4,), frame-major."""
    return vocab.modality(MODALITY).codes_to_ids(codes)


def music_codes_from_ids(ids: np.ndarray, vocab, strict: bool = True) -> np.ndarray:
    """Merged-vocabulary music ids -> codes (4, frames); see Modality.ids_to_codes for strict."""
    return vocab.modality(MODALITY).ids_to_codes(ids, strict=strict)
