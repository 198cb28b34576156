"""Media tokenizers in JAX: speech (SpeechTokenizer), music (Encodec 32 kHz), images (SEED),
and SoundStorm, which completes speech codes so the model can speak.

`SpeechTokenizer.load(dir)` / `MusicTokenizer.load(dir)` read directories written by
`python -m converters.speechtokenizer` / `python -m converters.encodec`; both give
`encode(waveform, sample_rate) -> int32 codes (n_q, frames)` and `decode(codes) -> waveform`.
"""

from anygpt_jax.modalities.audio_io import AudioError, load_audio
from anygpt_jax.modalities.music import MusicTokenizer, music_codes_from_ids, music_ids
from anygpt_jax.modalities.speech import SpeechTokenizer, speech_ids, speech_units_from_ids

__all__ = [
    "AudioError",
    "MusicTokenizer",
    "SpeechTokenizer",
    "load_audio",
    "music_codes_from_ids",
    "music_ids",
    "speech_ids",
    "speech_units_from_ids",
]

# SEED image tokenizer (images <-> 32 codes; unCLIP rendering with the `render` extra).
from anygpt_jax.modalities.image import (  # noqa: E402
    ImageError,
    ImageTokenizer,
    image_codes_from_ids,
    image_ids,
)

__all__ += ["ImageError", "ImageTokenizer", "image_codes_from_ids", "image_ids"]

# SoundStorm: speech RVQ layers 2-8 from layer-1 units, voice cloning; speak() renders speech.
from anygpt_jax.modalities.soundstorm import SoundStorm, speak  # noqa: E402

__all__ += ["SoundStorm", "speak"]
