"""seqio metric functions of the evaluation tasks: `fn(targets, predictions) -> {name: value}`.

Targets come from the task's postprocessor (evaluation/tasks.py): a list of reference strings
for captioning and ASR; for generation tasks a dict with the input text and the example's
`source` (the real image/clip) and, for VCTK, `prompt_audio` (the speaker's other utterance).
Predictions are what the model produced: a caption/transcript string, a PIL image, or an
`Audio` clip; None where the model produced no media (scored as missing, see metrics.py).

The media metrics need scoring models (evaluation/models.py), bound through gin, e.g.

    ClipScore.model = @HFClip
    HFClip.path = 'weights/clip-vit-large-patch14'

With none bound, a metric raises MetricSkipped with the binding it needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gin
import numpy as np

from anygpt_jax import storage
from anygpt_jax.evaluation import metrics
from anygpt_jax.evaluation.metrics import MetricSkipped


@dataclasses.dataclass(frozen=True, eq=False)
class Audio:
    """A mono waveform and its sample rate."""

    waveform: np.ndarray
    sample_rate: int


def caption_metric(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict:
    """CIDEr and BLEU of captions against each image's references."""
    return metrics.caption_metrics(targets, predictions)


def asr_metric(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict:
    """WER (%) of transcripts against the reference transcript (the first reference)."""
    return metrics.wer([t if isinstance(t, str) else t[0] for t in targets], predictions)


class _ModelMetric:
    """A metric around a scoring model given as a class (built on first use) or an instance."""

    binding = ""  # the gin parameter that names the model, for the skip message

    def __init__(self, model: Any = None):
        self._factory = model
        self._model = None

    def model(self) -> Any:
        if self._factory is None:
            raise MetricSkipped(f"no scoring model configured: bind {self.binding}")
        if self._model is None:
            self._model = self._factory() if isinstance(self._factory, type) else self._factory
        return self._model


def _present(predictions: Sequence[Any]) -> list[int]:
    return [i for i, p in enumerate(predictions) if p is not None]


def _scatter(n: int, where: list[int], rows: np.ndarray) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = [None] * n
    for i, row in zip(where, rows, strict=True):
        out[i] = row
    return out


def _sources(targets: Sequence[dict], key: str) -> list[str] | None:
    paths = [t.get(key) for t in targets]
    if not all(paths) or not all(storage.isfile(p) for p in paths):
        return None
    return paths


@gin.configurable
class ClipScore(_ModelMetric):
    """Text-to-image: cosine of CLIP embeddings of the caption and the generated image.

    `clip_score` = mean weight x cos(text, image) (weight 2.5 with clip_negative=True gives
    Hessel et al.'s CLIPScore); `clip_image_similarity` = cos(generated, real image), when the
    real images (targets' `source`) are on disk. The paper's CLIP score (REFERENCE.md §7)
    does not say which of the two it reports: both are logged.
    """

    binding = "ClipScore.model (e.g. @HFClip or @OpenClip with their weights path)"

    def __init__(self, model: Any = None, weight: float = 1.0, clip_negative: bool = False):
        super().__init__(model)
        self.weight, self.clip_negative = weight, clip_negative

    def __call__(self, targets: Sequence[dict], predictions: Sequence[Any]) -> dict:
        m = self.model()
        where = _present(predictions)
        images = _scatter(len(predictions), where, m.embed_images([predictions[i] for i in where])
                          if where else np.zeros((0, 1)))  # fmt: skip
        texts = list(m.embed_texts([t["text"] for t in targets]))
        out = metrics.embedding_score("clip_score", texts, images, self.weight, self.clip_negative)
        sources = _sources(targets, "source")
        if sources is not None:
            from anygpt_jax.modalities.image import load_image

            real = list(m.embed_images([load_image(p, name=p) for p in sources]))
            out |= metrics.embedding_score("clip_image_similarity", images, real)
        return out


@gin.configurable
class ClapScore(_ModelMetric):
    """Text-to-music: mean cosine of CLAP embeddings of the caption and the generated audio."""

    binding = "ClapScore.model (e.g. @HFClap or @LaionClap with their weights path)"

    def __call__(self, targets: Sequence[dict], predictions: Sequence[Audio | None]) -> dict:
        m = self.model()
        where = _present(predictions)
        audio = [None] * len(predictions)
        for rate in {predictions[i].sample_rate for i in where}:
            group = [i for i in where if predictions[i].sample_rate == rate]
            rows = m.embed_audio([predictions[i].waveform for i in group], rate)
            for i, row in zip(group, rows, strict=True):
                audio[i] = row
        texts = list(m.embed_texts([t["text"] for t in targets]))
        return metrics.embedding_score("clap_score", texts, audio)


@gin.configurable
class TtsWer(_ModelMetric):
    """Text-to-speech intelligibility: WER (%) of an ASR model's transcripts of the generated
    speech against the input text (a clip the model failed to make counts as all deleted)."""

    binding = "TtsWer.model (e.g. @HFWhisperAsr with its path)"

    def __call__(self, targets: Sequence[dict], predictions: Sequence[Audio | None]) -> dict:
        m = self.model()
        hyps = [""] * len(predictions)
        for i in _present(predictions):
            hyps[i] = m.transcribe([predictions[i].waveform], predictions[i].sample_rate)[0]
        out = metrics.wer([t["text"] for t in targets], hyps)
        return {"tts_wer": out["wer"], "tts_reference_words": out["reference_words"]}


@gin.configurable
class SpeakerSimilarity(_ModelMetric):
    """Zero-shot TTS speaker similarity: cosine of speaker embeddings of the generated speech
    and of `reference` ('prompt': the speaker's other utterance, as VALL-E scores VCTK;
    'source': the real recording of the same sentence)."""

    binding = "SpeakerSimilarity.model (e.g. @HFSpeakerEmbedder with its path)"

    def __init__(self, model: Any = None, reference: str = "prompt"):
        super().__init__(model)
        if reference not in ("prompt", "source"):
            raise ValueError(f"SpeakerSimilarity.reference={reference!r}; 'prompt' or 'source'")
        self.key = "prompt_audio" if reference == "prompt" else "source"

    def __call__(self, targets: Sequence[dict], predictions: Sequence[Audio | None]) -> dict:
        paths = _sources(targets, self.key)
        if paths is None:
            raise MetricSkipped(
                f"speaker similarity needs every example's {self.key!r} audio file on disk "
                f"(made by `python -m data.eval_sets vctk`)"
            )
        m = self.model()
        from anygpt_jax.modalities.audio_io import load_audio

        rate = 16000
        refs = list(m.embed_speakers([load_audio(p, rate) for p in paths], rate))
        gen: list[np.ndarray | None] = [None] * len(predictions)
        for i in _present(predictions):
            gen[i] = m.embed_speakers([predictions[i].waveform], predictions[i].sample_rate)[0]
        return metrics.embedding_score("speaker_similarity", gen, refs)
