"""Media in and out of inference: files -> ModalitySpans, generated spans -> PNG / WAV files.

In: images through ImageTokenizer (SEED), speech through SpeechTokenizer (RVQ layer 1),
music through MusicTokenizer (one 5 s Encodec segment), each batched per modality.
Out: image codes -> PNG through `ImageTokenizer.render` (diffusers unCLIP) when a pipeline
directory is given, music codes -> WAV through `MusicTokenizer.decode`, speech units -> WAV
through `speech_to_wav` (SoundStorm completes RVQ layers 2-8, SpeechTokenizer decodes). What
cannot be rendered is written as its codes (`NAME.MODALITY.json`) with a note that says why.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import numpy as np

from anygpt_jax import storage
from anygpt_jax.inference.requests import MediaRef, RequestError
from anygpt_jax.modalities.registry import media_modalities, media_modality
from anygpt_jax.vocab import MergedVocabulary, ModalitySpan


def tokenizer_flag(modality: str) -> str:
    """infer's flag naming `modality`'s tokenizer directory (MediaSettings.tokenizer_dirs)."""
    return f"--{modality}_tokenizer"

SPEECH_WAV_UNAVAILABLE = (
    "wrote the speech units (RVQ layer 1) only: a WAV needs acoustic completion of RVQ layers "
    "2-8 by SoundStorm (--soundstorm DIR) and the SpeechTokenizer (--speech_tokenizer DIR)"
)


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


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MediaSettings:
    """Where the media tokenizers and renderers are: the one setting infer and eval share.

    `tokenizer_dirs` maps modality -> a converted tokenizer directory ('demo' for the demo
    corpus's random speech/music codecs); `unclip_pipeline` is a diffusers
    StableUnCLIPImg2Img directory that renders SEED codes to images (`render_steps` denoising
    steps; SEED uses 20); `soundstorm` a converted SoundStorm directory for speech WAVs.
    infer's --image/speech/music_tokenizer, --unclip_pipeline, --soundstorm and --render_steps
    override these fields.
    """

    tokenizer_dirs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    unclip_pipeline: str | None = None
    soundstorm: str | None = None
    render_steps: int = 20

    def overridden(self, tokenizer_dirs: Mapping[str, str | None] | None = None,
                   **fields: Any) -> MediaSettings:
        """A copy with the given non-None values in place (tokenizer_dirs merged per key)."""
        dirs = {**self.tokenizer_dirs, **{m: d for m, d in (tokenizer_dirs or {}).items() if d}}
        return dataclasses.replace(self, tokenizer_dirs=dirs,
                                   **{k: v for k, v in fields.items() if v is not None})


class MediaCodecs:
    """The modality tokenizers of a session, loaded on first use from `settings` (default:
    gin's MediaSettings()). A request needing a tokenizer that was not given gets an error
    naming its flag (tokenizer_flag)."""

    def __init__(self, vocab: MergedVocabulary, settings: MediaSettings | None = None):
        settings = MediaSettings() if settings is None else settings
        dirs, unclip_pipeline = settings.tokenizer_dirs, settings.unclip_pipeline
        render_steps, soundstorm = settings.render_steps, settings.soundstorm
        if not isinstance(render_steps, int) or render_steps < 1:
            raise ValueError(f"MediaSettings.render_steps={render_steps!r}: must be >= 1")
        self.vocab = vocab
        self.dirs = {m: d for m, d in (dirs or {}).items() if d}
        unknown = sorted(set(self.dirs) - set(media_modalities()))
        if unknown:
            raise ValueError(f"no tokenizer for modalities {unknown}; "
                             f"known: {sorted(media_modalities())}")
        for m, d in self.dirs.items():
            if d != "demo" and not storage.isdir(d):
                raise ValueError(f"{tokenizer_flag(m)} {d}: not a directory")
        if unclip_pipeline is not None and not storage.isdir(unclip_pipeline):
            raise ValueError(f"--unclip_pipeline {unclip_pipeline}: not a directory")
        if soundstorm is not None and not storage.isdir(soundstorm):
            raise ValueError(f"--soundstorm {soundstorm}: not a directory")
        self.unclip_pipeline = unclip_pipeline
        self.render_steps = render_steps
        self.soundstorm_dir = soundstorm
        self._loaded: dict[str, Any] = {}

    def tokenizer(self, modality: str) -> Any:
        """The tokenizer of `modality`; RequestError naming the flag when none was given."""
        if modality in self._loaded:
            return self._loaded[modality]
        if modality not in self.dirs:
            raise RequestError(f"this request needs the {modality} tokenizer: give "
                               f"{tokenizer_flag(modality)} DIR")
        tok = _load(modality, self.dirs[modality])
        self._check_fits(modality, tok)
        self._loaded[modality] = tok
        return tok

    def soundstorm(self) -> Any:
        """The SoundStorm model (loaded on first use), or None when --soundstorm was not given."""
        if self.soundstorm_dir is None:
            return None
        if "soundstorm" not in self._loaded:
            from anygpt_jax.modalities.soundstorm import SoundStorm

            try:
                model = SoundStorm.load(self.soundstorm_dir)
            except (OSError, ValueError) as e:
                raise ValueError(f"--soundstorm {self.soundstorm_dir}: {e}") from e
            tok = self._optional("speech")
            if tok is not None and tok.n_q != 1 + model.num_quantizers:
                raise ValueError(
                    f"--soundstorm {self.soundstorm_dir} completes {model.num_quantizers} RVQ "
                    f"layers, but {tokenizer_flag('speech')} {self.dirs['speech']} has {tok.n_q} "
                    f"(needs {1 + model.num_quantizers})")
            self._loaded["soundstorm"] = model
        return self._loaded["soundstorm"]

    def _check_fits(self, modality: str, tok: Any) -> None:
        # A tokenizer whose codebooks differ from the vocabulary's would make ids that mean
        # nothing to the model, or codes the tokenizer cannot decode.
        spec = self.vocab.modality(modality)
        size, books = tok.codebook_size, tok.n_q
        if size != spec.codebook_size or books < spec.num_codebooks:
            raise ValueError(
                f"{tokenizer_flag(modality)} {self.dirs[modality]}: {books} codebook(s) of "
                f"{size} codes, but the model's vocabulary needs {spec.num_codebooks} of "
                f"{spec.codebook_size}")

    # ----- in ---------------------------------------------------------------------------------

    def encode(self, refs: Sequence[MediaRef]) -> list[ModalitySpan | Exception]:
        """Media files -> spans, one batched call per modality; a file that fails gets its
        exception (naming it) in its slot and does not stop the others."""
        out: list[ModalitySpan | Exception | None] = [None] * len(refs)
        for modality in {r.modality for r in refs}:
            slots = [i for i, r in enumerate(refs) if r.modality == modality]
            try:
                tok = self.tokenizer(modality)
            except (RequestError, ValueError, OSError) as e:
                for i in slots:
                    out[i] = e
                continue
            loaded, good = [], []
            for i in slots:
                try:
                    loaded.append(tok.read(refs[i].path))
                    good.append(i)
                except (ValueError, OSError) as e:  # AudioError / ImageError are ValueErrors
                    out[i] = e
            if good:
                books = self.vocab.modality(modality).num_codebooks
                codes = media_modality(modality).llm_codes(tok, loaded, books)
                for i, c in zip(good, codes, strict=True):
                    out[i] = ModalitySpan(modality, c)
        return out  # type: ignore[return-value]

    def check_voice(self, path: str) -> None:
        """Reads a voice prompt, so a bad file fails its request before generation."""
        from anygpt_jax.modalities.audio_io import load_audio

        load_audio(path, 16000)

    # ----- out --------------------------------------------------------------------------------

    def missing(self, modality: str) -> str | None:
        """What this session lacks to render `modality` spans as media (naming the setting
        and its infer flag), or None; text needs nothing."""
        if modality == "text":
            return None
        if modality not in self.dirs:
            return (f"decoding {modality} needs its tokenizer: "
                    f"MediaSettings.tokenizer_dirs[{modality!r}] ({tokenizer_flag(modality)} DIR)")
        if modality == "image" and self.unclip_pipeline is None:
            return ("rendering SEED codes needs a diffusers unCLIP directory: "
                    "MediaSettings.unclip_pipeline (--unclip_pipeline DIR)")
        if modality == "speech" and self.soundstorm() is None:
            return ("speech waveforms need acoustic completion of RVQ layers 2-8: "
                    "MediaSettings.soundstorm (--soundstorm DIR)")
        return None

    def render(self, span: ModalitySpan, seed: int = 0,
               voice: str | None = None) -> Rendered | str:
        """A generated span as media (an image, or a waveform), or a note saying why it cannot
        be (the caller then keeps its codes). `voice`: a speech prompt to clone."""
        m = span.modality
        codes = np.asarray(span.codes)
        if (codes.shape[-1] if codes.ndim else 0) == 0:
            return f"the generated {m} span is empty"
        if m == "image":
            return self._render_image(codes, seed)
        if m == "music":
            tok = self._optional("music")
            if tok is None:
                return f"wrote the Encodec codes: decoding needs {tokenizer_flag('music')} DIR"
            return Rendered(tok.decode(codes), tok.sample_rate)
        if m == "speech":
            tok = self._optional("speech")
            wav = speech_to_wav(codes, voice, tok, self.soundstorm(), seed=seed)
            return SPEECH_WAV_UNAVAILABLE if wav is None else Rendered(wav, tok.sample_rate)
        return f"no renderer for {m}"

    def write(self, span: ModalitySpan, out_dir: str, name: str, seed: int = 0,
              voice: str | None = None) -> dict:
        """Writes a generated span as NAME.png / NAME.wav, or its codes as NAME.MODALITY.json;
        returns {"modality", "path" (relative to out_dir), "format", "note"?}."""
        m = span.modality
        rendered = self.render(span, seed, voice)
        if isinstance(rendered, Rendered):
            path = f"{name}.{rendered.extension}"
            storage.write_bytes(os.path.join(out_dir, path), rendered.to_bytes())
            return {"modality": m, "path": path, "format": rendered.extension}
        path = f"{name}.{m}.json"
        record = {"modality": m, "codes": np.asarray(span.codes).tolist(), "note": rendered}
        storage.write_text(os.path.join(out_dir, path), json.dumps(record) + "\n")
        return {"modality": m, "path": path, "format": "codes", "note": rendered}

    def _optional(self, modality: str) -> Any:
        try:
            return self.tokenizer(modality)
        except RequestError:
            return None

    def _render_image(self, codes: np.ndarray, seed: int) -> Rendered | str:
        tok = self._optional("image")
        if tok is None:
            return f"wrote the SEED codes: rendering needs {tokenizer_flag('image')} DIR"
        if codes.shape != (tok.num_codes,):
            return f"wrote the codes: SEED renders {tok.num_codes} codes, the span has {codes.size}"
        if self.unclip_pipeline is None:
            return ("wrote the SEED codes: rendering needs a Stable Diffusion unCLIP pipeline "
                    "directory (--unclip_pipeline DIR)")
        try:
            [image] = tok.render(codes[None], seed=seed, pipeline=self.unclip_pipeline,
                                 num_inference_steps=self.render_steps)
        except ImportError as e:
            return f"wrote the SEED codes: {e}"
        return Rendered(image)


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A generated span as media: a PIL image, or a waveform with its sample rate."""

    value: Any
    sample_rate: int | None = None

    @property
    def extension(self) -> str:
        return "png" if self.sample_rate is None else "wav"

    def to_bytes(self) -> bytes:
        """The PNG or 16-bit WAV file's bytes."""
        if self.sample_rate is not None:
            return wav_bytes(self.value, self.sample_rate)
        buf = io.BytesIO()
        self.value.save(buf, format="PNG")
        return buf.getvalue()


def _load(modality: str, spec: str) -> Any:
    try:
        # 'demo': the seeded codecs the demo corpus (python -m data.demo) was tokenized with.
        return media_modality(modality).load(spec)
    except (OSError, ValueError) as e:
        raise ValueError(f"{tokenizer_flag(modality)} {spec}: {e}") from e


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """A waveform (clipped to [-1, 1]) as the bytes of a 16-bit PCM WAV file."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wav, np.float32), -1.0, 1.0), int(sample_rate),
             format="WAV", subtype="PCM_16")
    return buf.getvalue()
