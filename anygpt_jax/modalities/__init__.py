"""Media tokenizers in JAX: speech (SpeechTokenizer), music (Encodec 32 kHz), images (SEED),
and SoundStorm, which completes speech codes so the model can speak; registry.py holds one
record per media modality.

`SpeechTokenizer.load(dir)` / `MusicTokenizer.load(dir)` read directories written by
`python -m converters.speechtokenizer` / `python -m converters.encodec`; both give
`encode(waveform, sample_rate) -> int32 codes (n_q, frames)` and `decode(codes) -> waveform`.

The names below import on first use, so importing a submodule (the registry, audio_io) does
not load JAX and every model.
"""

import importlib

_EXPORTS = {
    "AudioError": "audio_io",
    "load_audio": "audio_io",
    "MusicTokenizer": "music",
    "music_codes_from_ids": "music",
    "music_ids": "music",
    "SpeechTokenizer": "speech",
    "speech_ids": "speech",
    "speech_units_from_ids": "speech",
    # SEED image tokenizer (images <-> 32 codes; unCLIP rendering with the `render` extra).
    "ImageError": "image",
    "ImageTokenizer": "image",
    "image_codes_from_ids": "image",
    "image_ids": "image",
    # SoundStorm: speech RVQ layers 2-8 from layer-1 units, voice cloning; speak() renders.
    "SoundStorm": "soundstorm",
    "speak": "soundstorm",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
