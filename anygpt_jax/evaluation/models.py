"""The scoring models behind the media metrics, loaded from given paths only (no hub downloads);
a gs:// path is copied to a local temp directory for the libraries that read only local files.

Protocols (anything with these methods plugs in, e.g. through gin):

    TextImageEmbedder   embed_texts(texts) -> [n, d];  embed_images(PIL images) -> [n, d]
    TextAudioEmbedder   embed_texts(texts) -> [n, d];  embed_audio(waveforms, rate) -> [n, d]
    AsrModel            transcribe(waveforms, rate) -> list of transcripts
    SpeakerEmbedder     embed_speakers(waveforms, rate) -> [n, d]

Implementations: `HFClip` / `HFClap` (transformers CLIPModel / ClapModel directories, e.g.
openai/clip-vit-large-patch14, laion/larger_clap_music); `HFWhisperAsr` and
`HFSpeakerEmbedder` (WavLMForXVector, e.g. microsoft/wavlm-base-plus-sv). open_clip and
laion_clap weights are converted to HFClip / HFClap models by the converters, once (their
CLIs) or in memory (`OpenClip`, `LaionClap` there: in gin, `import anygpt_jax.converters.
open_clip` then `ClipScore.model = @OpenClip`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import gin
import numpy as np

from anygpt_jax import storage
from anygpt_jax.modalities import audio_io


@runtime_checkable
class TextImageEmbedder(Protocol):
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...
    def embed_images(self, images: Sequence[Any]) -> np.ndarray: ...


@runtime_checkable
class TextAudioEmbedder(Protocol):
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...
    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray: ...


@runtime_checkable
class AsrModel(Protocol):
    def transcribe(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[str]: ...


@runtime_checkable
class SpeakerEmbedder(Protocol):
    def embed_speakers(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray: ...


def require_path(path: str | None, what: str) -> str:
    """`path`, or FileNotFoundError naming the setting when it is unset or absent."""
    if not path:
        raise FileNotFoundError(f"{what}: no path given")
    if not storage.exists(path):
        raise FileNotFoundError(f"{what}: {path} does not exist")
    return path


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("the scoring models run in PyTorch: pip install torch") from e
    return torch


def _features(out: Any) -> Any:
    # transformers 5 returns a model output (projected features in pooler_output) where
    # older versions returned the tensor itself.
    return out if hasattr(out, "detach") else out.pooler_output


def _batched(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _resampled(waveforms: Sequence[np.ndarray], rate: int, target: int) -> list[np.ndarray]:
    return [audio_io.prepare(np.asarray(w, np.float32), rate, target) for w in waveforms]


def clip_clean_text(text: str) -> str:
    """CLIP's text clean-up before BPE (ftfy, HTML entities, whitespace), as open_clip does."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass  # transformers' own normalization still applies; ftfy only repairs mojibake
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


@gin.configurable
class HFClip:
    """CLIP from a transformers CLIPModel directory (model and processor files)."""

    def __init__(self, path: str = gin.REQUIRED, batch_size: int = 32):
        path = require_path(path, "HFClip.path (a transformers CLIP directory)")
        import transformers

        with storage.local_copy(path) as local:
            self._use(
                transformers.CLIPModel.from_pretrained(local, local_files_only=True).eval(),
                transformers.CLIPProcessor.from_pretrained(local, local_files_only=True),
                batch_size,
            )

    def _use(self, model: Any, processor: Any, batch_size: int) -> None:
        self._torch = _torch()
        self.model, self.processor, self.batch_size = model, processor, batch_size

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            for chunk in _batched([clip_clean_text(t) for t in texts], self.batch_size):
                x = self.processor(text=chunk, return_tensors="pt", padding=True, truncation=True)
                out.append(_features(self.model.get_text_features(**x)).numpy())
        return np.concatenate(out)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            for chunk in _batched(list(images), self.batch_size):
                pixels = self._torch.from_numpy(self._pixels([im.convert("RGB") for im in chunk]))
                out.append(_features(self.model.get_image_features(pixel_values=pixels)).numpy())
        return np.concatenate(out)

    def _pixels(self, images: list) -> np.ndarray:
        return self.processor(images=images, return_tensors="np").pixel_values


@gin.configurable
class HFClap:
    """CLAP from a transformers ClapModel directory (e.g. laion/larger_clap_music)."""

    def __init__(self, path: str = gin.REQUIRED, batch_size: int = 16):
        path = require_path(path, "HFClap.path (a transformers CLAP directory)")
        import transformers

        with storage.local_copy(path) as local:
            self._use(
                transformers.ClapModel.from_pretrained(local, local_files_only=True).eval(),
                transformers.ClapProcessor.from_pretrained(local, local_files_only=True),
                batch_size,
            )

    def _use(self, model: Any, processor: Any, batch_size: int) -> None:
        self._torch = _torch()
        self.model, self.processor, self.batch_size = model, processor, batch_size
        self.sample_rate = int(processor.feature_extractor.sampling_rate)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            for chunk in _batched(list(texts), self.batch_size):
                x = self.processor(text=chunk, return_tensors="pt", padding=True, truncation=True)
                out.append(_features(self.model.get_text_features(**x)).numpy())
        return np.concatenate(out)

    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        out = []
        waves = _resampled(waveforms, sample_rate, self.sample_rate)
        with self._torch.no_grad():
            for chunk in _batched(waves, self.batch_size):
                x = self.processor(audio=chunk, sampling_rate=self.sample_rate, return_tensors="pt")
                out.append(_features(self.model.get_audio_features(**x)).numpy())
        return np.concatenate(out)


@gin.configurable
class HFWhisperAsr:
    """English ASR with a transformers Whisper directory (e.g. openai/whisper-large-v3)."""

    def __init__(self, path: str = gin.REQUIRED, batch_size: int = 8, max_new_tokens: int = 200):
        path = require_path(path, "HFWhisperAsr.path (a transformers Whisper directory)")
        import transformers

        torch = _torch()
        self._torch = torch
        with storage.local_copy(path) as local:
            self.model = transformers.WhisperForConditionalGeneration.from_pretrained(
                local, local_files_only=True
            ).eval()
            self.processor = transformers.WhisperProcessor.from_pretrained(
                local, local_files_only=True
            )
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def transcribe(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        out: list[str] = []
        waves = _resampled(waveforms, sample_rate, self.sample_rate)
        with self._torch.no_grad():
            for chunk in _batched(waves, self.batch_size):
                x = self.processor(chunk, sampling_rate=self.sample_rate, return_tensors="pt")
                ids = self.model.generate(x.input_features, max_new_tokens=self.max_new_tokens,
                                          language="en", task="transcribe")  # fmt: skip
                out += self.processor.batch_decode(ids, skip_special_tokens=True)
        return [s.strip() for s in out]


@gin.configurable
class HFSpeakerEmbedder:
    """Speaker embeddings (x-vectors) from a transformers WavLMForXVector directory."""

    def __init__(self, path: str = gin.REQUIRED):
        path = require_path(path,
                            "HFSpeakerEmbedder.path (a transformers WavLMForXVector directory)")
        import transformers

        torch = _torch()
        self._torch = torch
        with storage.local_copy(path) as local:
            self.model = transformers.WavLMForXVector.from_pretrained(local, local_files_only=True)
            self.extractor = transformers.AutoFeatureExtractor.from_pretrained(
                local, local_files_only=True
            )
        self.model.eval()
        self.sample_rate = int(self.extractor.sampling_rate)

    def embed_speakers(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            # One utterance at a time: padding would change the statistics pooling.
            for w in _resampled(waveforms, sample_rate, self.sample_rate):
                x = self.extractor([w], sampling_rate=self.sample_rate, return_tensors="pt")
                out.append(self.model(**x).embeddings.numpy())
        return np.concatenate(out)
