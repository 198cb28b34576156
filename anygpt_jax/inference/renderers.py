"""Generated codes -> media files: one Renderer per modality, named by its registry record.

A Renderer says what a session lacks to render its modality (`missing`, naming the setting and
infer flag) and turns a generated span's codes into a `Rendered` file, or a note saying why it
cannot (the caller then keeps the codes). Built in: `ImageRenderer` (SEED codes through a
diffusers unCLIP pipeline), `SpeechRenderer` (SoundStorm completes RVQ layers 2-8, the
SpeechTokenizer decodes) and `WaveformRenderer` (any tokenizer with `decode` and
`sample_rate`: music's Encodec). A new modality names its own class in its record.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Protocol

import numpy as np

from anygpt_jax import storage


def tokenizer_flag(modality: str) -> str:
    """infer's flag naming `modality`'s tokenizer directory (MediaSettings.tokenizer_dirs)."""
    return f"--{modality}_tokenizer"


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A generated span as media: `value` (a PIL image, a waveform, ...) and its file (`data`,
    the bytes of a file with that `extension`)."""

    value: Any
    extension: str
    data: bytes
    sample_rate: int | None = None

    @classmethod
    def image(cls, image: Any) -> Rendered:
        """A PIL image, as a PNG file."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return cls(image, "png", buf.getvalue())

    @classmethod
    def waveform(cls, wav: np.ndarray, sample_rate: int) -> Rendered:
        """A waveform, as a 16-bit PCM WAV file."""
        return cls(wav, "wav", wav_bytes(wav, sample_rate), int(sample_rate))


class Renderer(Protocol):
    """Renders one modality's generated codes; `codecs` is the session's MediaCodecs."""

    def missing(self, codecs: Any, modality: str) -> str | None:
        """What the session lacks to render (naming the setting and flag), or None."""

    def render(self, codes: np.ndarray, codecs: Any, modality: str, seed: int,
               voice: str | None) -> Rendered | str:
        """The media of non-empty `codes`, or a note saying why not."""


def _needs_tokenizer(codecs: Any, modality: str) -> str | None:
    if modality in codecs.dirs:
        return None
    return (f"decoding {modality} needs its tokenizer: "
            f"MediaSettings.tokenizer_dirs[{modality!r}] ({tokenizer_flag(modality)} DIR)")


class WaveformRenderer:
    """Codes -> waveform through the tokenizer's `decode`, at its `sample_rate`."""

    def missing(self, codecs: Any, modality: str) -> str | None:
        return _needs_tokenizer(codecs, modality)

    def render(self, codes: np.ndarray, codecs: Any, modality: str, seed: int,
               voice: str | None) -> Rendered | str:
        tok = codecs.optional_tokenizer(modality)
        if tok is None:
            return f"wrote the codes: decoding needs {tokenizer_flag(modality)} DIR"
        return Rendered.waveform(tok.decode(codes), tok.sample_rate)


class ImageRenderer:
    """SEED codes -> PNG through `ImageTokenizer.render` and a diffusers unCLIP pipeline."""

    def missing(self, codecs: Any, modality: str) -> str | None:
        if codecs.unclip_pipeline is None and modality in codecs.dirs:
            return ("rendering SEED codes needs a diffusers unCLIP directory: "
                    "MediaSettings.unclip_pipeline (--unclip_pipeline DIR)")
        return _needs_tokenizer(codecs, modality)

    def render(self, codes: np.ndarray, codecs: Any, modality: str, seed: int,
               voice: str | None) -> Rendered | str:
        tok = codecs.optional_tokenizer(modality)
        if tok is None:
            return f"wrote the SEED codes: rendering needs {tokenizer_flag(modality)} DIR"
        if codes.shape != (tok.num_codes,):
            return f"wrote the codes: SEED renders {tok.num_codes} codes, the span has {codes.size}"
        if codecs.unclip_pipeline is None:
            return ("wrote the SEED codes: rendering needs a Stable Diffusion unCLIP pipeline "
                    "directory (--unclip_pipeline DIR)")
        try:
            [image] = tok.render(codes[None], seed=seed, pipeline=codecs.unclip_pipeline,
                                 num_inference_steps=codecs.render_steps)
        except ImportError as e:
            return f"wrote the SEED codes: {e}"
        return Rendered.image(image)


SPEECH_WAV_UNAVAILABLE = (
    "wrote the speech units (RVQ layer 1) only: a WAV needs acoustic completion of RVQ layers "
    "2-8 by SoundStorm (--soundstorm DIR) and the SpeechTokenizer (--speech_tokenizer DIR)"
)


class SpeechRenderer:
    """Speech units (RVQ layer 1) -> WAV: SoundStorm, then the SpeechTokenizer (speech_to_wav)."""

    def missing(self, codecs: Any, modality: str) -> str | None:
        lacks = _needs_tokenizer(codecs, modality)
        if lacks is None and codecs.soundstorm() is None:
            return ("speech waveforms need acoustic completion of RVQ layers 2-8: "
                    "MediaSettings.soundstorm (--soundstorm DIR)")
        return lacks

    def render(self, codes: np.ndarray, codecs: Any, modality: str, seed: int,
               voice: str | None) -> Rendered | str:
        tok = codecs.optional_tokenizer(modality)
        wav = speech_to_wav(codes, voice, tok, codecs.soundstorm(), seed=seed)
        return SPEECH_WAV_UNAVAILABLE if wav is None else Rendered.waveform(wav, tok.sample_rate)


def speech_to_wav(units: np.ndarray, voice_prompt: str | None = None,
                  speech_tokenizer: Any = None, soundstorm: Any = None,
                  seed: int = 0) -> np.ndarray | None:
    """Speech units (RVQ layer 1, [T]) -> waveform at the SpeechTokenizer's rate, or None
    when SoundStorm or the SpeechTokenizer is missing (callers then write the units).

    The one place acoustic completion happens: SoundStorm predicts RVQ layers 2-8 from the
    units, prefixed by the layers of `voice_prompt` to take its voice (gin: `speak`,
    `SoundStorm` settings), then the SpeechTokenizer decodes all layers.
    """
    if speech_tokenizer is None or soundstorm is None:
        return None
    from anygpt_jax.modalities.soundstorm import speak

    if isinstance(voice_prompt, str) and storage.is_remote(voice_prompt):
        from anygpt_jax.modalities.audio_io import load_audio

        rate = int(speech_tokenizer.sample_rate)
        voice_prompt = (load_audio(voice_prompt, rate), rate)
    return speak(np.asarray(units), speech_tokenizer, soundstorm, voice_prompt, seed=seed)


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """A waveform (clipped to [-1, 1]) as the bytes of a 16-bit PCM WAV file."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wav, np.float32), -1.0, 1.0), int(sample_rate),
             format="WAV", subtype="PCM_16")
    return buf.getvalue()
