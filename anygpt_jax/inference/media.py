"""Media in and out of inference: files -> ModalitySpans, generated spans -> media files.

In: each modality's registered tokenizer reads and encodes files, batched per modality (images
through SEED, speech through the SpeechTokenizer's RVQ layer 1, music through one 5 s Encodec
segment). Out: each modality's registered Renderer (inference/renderers.py) turns generated
codes into a file (PNG, WAV, ...); what cannot be rendered is written as its codes
(`NAME.MODALITY.json`) with a note that says why.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import numpy as np

from anygpt_jax import storage
from anygpt_jax.inference.renderers import Rendered, tokenizer_flag
from anygpt_jax.inference.requests import MediaRef, RequestError
from anygpt_jax.modalities.registry import media_modalities, media_modality
from anygpt_jax.vocab import MergedVocabulary, ModalitySpan


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
            tok = self.optional_tokenizer("speech")
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
        """What this session lacks to render `modality` spans as media (naming the setting and
        its infer flag), or None; text needs nothing."""
        if modality == "text":
            return None
        return self._renderer(modality).missing(self, modality)

    def render(self, span: ModalitySpan, seed: int = 0,
               voice: str | None = None) -> Rendered | str:
        """A generated span as media (its modality's registered Renderer), or a note saying
        why it cannot be (the caller then keeps its codes). `voice`: a speech prompt to clone."""
        m = span.modality
        codes = np.asarray(span.codes)
        if (codes.shape[-1] if codes.ndim else 0) == 0:
            return f"the generated {m} span is empty"
        return self._renderer(m).render(codes, self, m, seed, voice)

    def write(self, span: ModalitySpan, out_dir: str, name: str, seed: int = 0,
              voice: str | None = None) -> dict:
        """Writes a generated span as NAME.png / NAME.wav, or its codes as NAME.MODALITY.json;
        returns {"modality", "path" (relative to out_dir), "format", "note"?}."""
        m = span.modality
        rendered = self.render(span, seed, voice)
        if isinstance(rendered, Rendered):
            path = f"{name}.{rendered.extension}"
            storage.write_bytes(os.path.join(out_dir, path), rendered.data)
            return {"modality": m, "path": path, "format": rendered.extension}
        path = f"{name}.{m}.json"
        record = {"modality": m, "codes": np.asarray(span.codes).tolist(), "note": rendered}
        storage.write_text(os.path.join(out_dir, path), json.dumps(record) + "\n")
        return {"modality": m, "path": path, "format": "codes", "note": rendered}

    def optional_tokenizer(self, modality: str) -> Any:
        """The tokenizer of `modality`, or None when the session was given none."""
        try:
            return self.tokenizer(modality)
        except RequestError:
            return None

    def _renderer(self, modality: str) -> Any:
        key = ("renderer", modality)
        if key not in self._loaded:
            self._loaded[key] = media_modality(modality).make_renderer()
        return self._loaded[key]


def _load(modality: str, spec: str) -> Any:
    try:
        # 'demo': the seeded codecs the demo corpus (python -m data.demo) was tokenized with.
        return media_modality(modality).load(spec)
    except (OSError, ValueError) as e:
        raise ValueError(f"{tokenizer_flag(modality)} {spec}: {e}") from e
