"""The media modalities: one record each holds what is specific to it, in one registry.

Every media tokenizer has one interface (`ModalityTokenizer`): files are `read` into items,
items become int32 codes [Q, T] by `encode_arrays`, and `load` reads a converted directory.
A record holds its vocabulary block (vocab.ModalitySpec: markers, codebooks the LLM sees, the
tokenizer name shard manifests record), its tokenizer class, the demo corpus's tokenizer, its
instruction pools, generation defaults, seqio pair tasks, span length and renderer.
`register_modality` adds one (a module imported by a gin file's `import` line, or a test,
adds a modality without editing the library); `media_modalities()` lists the names in order.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from anygpt_jax.modalities import instructions
from anygpt_jax.vocab.layout import IMAGE, MUSIC, SPEECH, ModalitySpec


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
class PairTasks:
    """The seqio tasks over a modality's '<name>_text' shards, one per direction, with their
    rates in the stage-1 mixture (0: in no mixture unless gin's pretrain_rates names it)."""

    to_text: str
    from_text: str
    to_text_rate: float = 0.0
    from_text_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class MediaModality:
    """What is specific to one media modality."""

    # Its vocabulary block; its num_codebooks are the codebooks the LLM sees (speech: RVQ
    # layer 1 of 8), its tokenizer the name shard manifests record.
    spec: ModalitySpec
    # "module:Class" of its ModalityTokenizer, imported on first use.
    tokenizer: str
    # The demo corpus's tokenizer (no converted weights needed), if it has one.
    demo: Callable[[], ModalityTokenizer] | None = None
    # Instruction pools of its directions: '<name>_to_text' and 'text_to_<name>' prompts.
    to_text_instructions: tuple[str, ...] = ()
    from_text_instructions: tuple[str, ...] = ()
    # GenerationSettings fields for generating it (the released AnyGPT's row).
    generation_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Its pair tasks (default: 'anygpt_<name>_to_text', 'anygpt_text_to_<name>', rates 0).
    tasks: PairTasks | None = None
    # The exact number of code ids a generated span holds (0: free length, whole frames).
    fixed_length: int = 0
    # "module:Class" of its Renderer (inference/renderers.py): generated codes -> media file.
    renderer: str = "anygpt_jax.inference.renderers:WaveformRenderer"
    # Its base requests' content, as the usage text shows it: (text -> it, it -> text).
    request_inputs: tuple[str, str] = ("{caption}", "{file}")
    # Whether a text -> it request may end in '|{voice.wav}' (a prompt to clone).
    takes_voice: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pair_tasks(self) -> PairTasks:
        """Its pair tasks: the record's, or the default names with rate 0."""
        return self.tasks or PairTasks(f"anygpt_{self.name}_to_text", f"anygpt_text_to_{self.name}")

    @property
    def request_forms(self) -> tuple[str, str]:
        """Its base request forms: 'text|<name>|...' and '<name>|text|...'."""
        voice = "[|{voice.wav}]" if self.takes_voice else ""
        return (f"text|{self.name}|{self.request_inputs[0]}{voice}",
                f"{self.name}|text|{self.request_inputs[1]}")

    def tokenizer_class(self) -> type:
        return _import(self.tokenizer)

    def make_renderer(self) -> Any:
        """A new instance of its Renderer class."""
        return _import(self.renderer)()

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
        else [Q, T]. `num_codebooks`: a vocabulary's block (default this record's spec)."""
        n = self.spec.num_codebooks if num_codebooks is None else num_codebooks
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


def _import(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _demo_codec(name: str) -> Callable[[], ModalityTokenizer]:
    def make():
        from anygpt_jax.modalities.demo_codec import demo_codec

        return demo_codec(name)

    return make


def _lines(block: str) -> tuple[str, ...]:
    return tuple(block.splitlines())


# The released inference settings share these: all sampling, at least 10 new tokens.
_SAMPLED = dict(do_sample=True, temperature=1.0, top_p=1.0, min_new_tokens=10)

# Stage-1 rates (REFERENCE.md section 5): caption 0.2, text-to-image 0.22, speech 0.3 and
# music 0.28, the last two split evenly between their directions.
register_modality(MediaModality(
    IMAGE, "anygpt_jax.modalities.image:ImageTokenizer",
    to_text_instructions=_lines(instructions.IMAGE_TO_TEXT),
    from_text_instructions=_lines(instructions.TEXT_TO_IMAGE),
    generation_defaults=dict(_SAMPLED, max_new_tokens=200),
    tasks=PairTasks("anygpt_image_caption", "anygpt_text_to_image", 0.2, 0.22),
    fixed_length=32,  # SEED turns every image into 32 codes
    renderer="anygpt_jax.inference.renderers:ImageRenderer",
    request_inputs=("{caption}", "{image path}")))
register_modality(MediaModality(
    SPEECH, "anygpt_jax.modalities.speech:SpeechTokenizer", _demo_codec("speech"),
    to_text_instructions=_lines(instructions.SPEECH_TO_TEXT),
    from_text_instructions=_lines(instructions.TEXT_TO_SPEECH),
    generation_defaults=dict(_SAMPLED, repetition_penalty=1.05, max_new_tokens=1500),
    tasks=PairTasks("anygpt_asr", "anygpt_tts", 0.15, 0.15),
    renderer="anygpt_jax.inference.renderers:SpeechRenderer",
    request_inputs=("{text}", "{wav}"), takes_voice=True))
register_modality(MediaModality(
    MUSIC, "anygpt_jax.modalities.music:MusicTokenizer", _demo_codec("music"),
    to_text_instructions=_lines(instructions.MUSIC_TO_TEXT),
    from_text_instructions=_lines(instructions.TEXT_TO_MUSIC),
    generation_defaults=dict(_SAMPLED, top_k=200, repetition_penalty=1.15,
                             max_new_tokens=2000),
    tasks=PairTasks("anygpt_music_caption", "anygpt_text_to_music", 0.14, 0.14),
    request_inputs=("{caption}", "{wav}")))
