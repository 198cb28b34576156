"""The media modalities: one record each holds what is specific to it, in one registry.

Every media tokenizer has one interface (`ModalityTokenizer`): files are `read` into items,
items become int32 codes [Q, T] by `encode_arrays`, and `load` reads a converted directory.
A record names its tokenizer class, how many of its codebooks the LLM sees, the name shard
manifests record, the file a generated span becomes, and the demo corpus's tokenizer.
`register_modality` adds one (a test adds a toy modality without editing the library);
`media_modalities()` lists the names in registration order.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np


class ModalityTokenizer(Protocol):
    """What every media tokenizer offers (ImageTokenizer, SpeechTokenizer, MusicTokenizer)."""

    codebook_size: int
    n_q: int

    @classmethod
    def load(cls, directory: str) -> ModalityTokenizer: ...

    def read(self, path: str) -> Any:
        """A local or gs:// media file as the item `encode_arrays` takes; errors name it."""

    def encode_arrays(self, items: Sequence[Any], n_q: int | None = None) -> list[np.ndarray]:
        """Items -> int32 codes [n_q, frames] each, in one batch."""


@dataclasses.dataclass(frozen=True)
class MediaModality:
    """What is specific to one media modality."""

    name: str
    # "module:Class" of its ModalityTokenizer, imported on first use.
    tokenizer: str
    # Codebooks of the tokenizer the LLM sees: 1 keeps the first (speech: RVQ layer 1) and
    # gives codes [T]; None keeps all, [Q, T].
    llm_codebooks: int | None
    # The tokenizer name shard manifests record for codes made by a converted directory.
    shard_tokenizer: str
    # The extension of the file a generated span is rendered to.
    extension: str
    # The demo corpus's tokenizer (no converted weights needed), if it has one.
    demo: Callable[[], ModalityTokenizer] | None = None

    def tokenizer_class(self) -> type:
        module, name = self.tokenizer.split(":")
        return getattr(importlib.import_module(module), name)

    def load(self, directory: str) -> ModalityTokenizer:
        """The tokenizer of a converted directory, or the demo one for 'demo'."""
        if directory == "demo":
            if self.demo is None:
                raise ValueError(f"{self.name} has no demo tokenizer (the demo corpus codes "
                                 f"its {self.name} otherwise); give a converted directory")
            return self.demo()
        return self.tokenizer_class().load(directory)

    def llm_codes(self, tokenizer: ModalityTokenizer, items: Sequence[Any],
                  num_codebooks: int | None = None) -> list[np.ndarray]:
        """The codes a span of this modality holds, per item: [T] when one codebook is kept,
        else [Q, T]. `num_codebooks`: the vocabulary block's (default `llm_codebooks`)."""
        n = self.llm_codebooks if num_codebooks is None else num_codebooks
        codes = tokenizer.encode_arrays(list(items), n_q=n)
        return [c[0] for c in codes] if n == 1 else list(codes)


_REGISTRY: dict[str, MediaModality] = {}


def register_modality(modality: MediaModality) -> MediaModality:
    """Adds (or replaces) the record of `modality.name`; returns it."""
    _REGISTRY[modality.name] = modality
    return modality


def media_modality(name: str) -> MediaModality:
    """The record of `name`; ValueError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown media modality {name!r}; known: {sorted(_REGISTRY)}") from None


def media_modalities() -> tuple[str, ...]:
    """The registered media modalities' names, in registration order."""
    return tuple(_REGISTRY)


def _demo_codec(name: str) -> Callable[[], ModalityTokenizer]:
    def make():
        from anygpt_jax.modalities.demo_codec import demo_codec

        return demo_codec(name)

    return make


register_modality(MediaModality("image", "anygpt_jax.modalities.image:ImageTokenizer", 1,
                                "seed_tokenizer_v2", "png"))
register_modality(MediaModality("speech", "anygpt_jax.modalities.speech:SpeechTokenizer", 1,
                                "speechtokenizer_rvq1", "wav", _demo_codec("speech")))
register_modality(MediaModality("music", "anygpt_jax.modalities.music:MusicTokenizer", None,
                                "encodec_32khz", "wav", _demo_codec("music")))
