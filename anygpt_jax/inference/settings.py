"""Generation settings: one frozen, gin-configurable dataclass and AnyGPT's per-output defaults.

    settings = GenerationSettings(do_sample=False, max_new_tokens=50)
    settings = GenerationSettings.for_output("music")   # the release's music row

`for_output` starts from RELEASE_DEFAULTS (the released AnyGPT inference settings) and lets gin
override any field, scoped by output name or for every output:

    music/GenerationSettings.top_k = 250        # only music
    GenerationSettings.max_new_tokens = 300     # every output (and plain GenerationSettings())
"""

from __future__ import annotations

import dataclasses
import numbers
import types
from collections.abc import Mapping
from typing import Any

import gin

EARLY_STOPPING = (True, False, "never")

# The released AnyGPT inference settings (all sampling, min_new_tokens 10) for text and for the
# instruction-tuned model's default, "chat" (beam sampling with 5 beams); each media
# modality's row is its registry record's `generation_defaults`.
_TEXT = dict(do_sample=True, temperature=1.0, top_p=1.0, min_new_tokens=10, max_new_tokens=100)
_CHAT = dict(do_sample=True, temperature=1.0, top_p=1.0, repetition_penalty=1.0,
             min_new_tokens=10, max_new_tokens=500, num_beams=5)


def release_defaults() -> Mapping[str, Mapping[str, Any]]:
    """Output -> the release's settings: text, every registered media modality, chat."""
    from anygpt_jax.modalities.registry import media_modalities, media_modality

    rows = {"text": _TEXT}
    rows |= {m: media_modality(m).generation_defaults for m in media_modalities()}
    rows["chat"] = _CHAT
    return types.MappingProxyType(rows)


# The rows of the modalities registered at import (the paper's); for_output looks them up live.
RELEASE_DEFAULTS: Mapping[str, Mapping[str, Any]] = release_defaults()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """How to pick new tokens; the fields and their meaning follow transformers' generate.

    top_k=0 and top_p=1.0 disable those filters; repetition_penalty=1.0 disables the penalty.
    Stop ids are suppressed until `min_new_tokens` new tokens exist. With num_beams > 1 the
    search is transformers' beam search (beam sampling if do_sample), scored with
    `length_penalty` and stopped per `early_stopping` (True, False or "never").
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    max_new_tokens: int = 100
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    def __post_init__(self):
        def bad(field: str, why: str):
            raise ValueError(f"GenerationSettings.{field}={getattr(self, field)!r}: {why}")

        if not isinstance(self.do_sample, bool):
            bad("do_sample", "must be True or False")
        if not self.temperature > 0:
            bad("temperature", "must be > 0")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "must be an int >= 0 (0 disables top-k)")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1] (1 disables top-p)")
        if not self.repetition_penalty > 0:
            bad("repetition_penalty", "must be > 0 (1 disables it)")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            bad("max_new_tokens", "must be an int >= 1")
        if not _is_int(self.min_new_tokens) or not (
            0 <= self.min_new_tokens <= self.max_new_tokens
        ):
            bad("min_new_tokens", f"must be an int in [0, max_new_tokens={self.max_new_tokens}]")
        if not _is_int(self.num_beams) or self.num_beams < 1:
            bad("num_beams", "must be an int >= 1")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            bad("early_stopping", f"must be one of {EARLY_STOPPING}")

    @classmethod
    def for_output(cls, output: str) -> GenerationSettings:
        """The settings for generating `output` ('text', 'image', 'speech', 'music', 'chat').

        RELEASE_DEFAULTS gives the values; a gin binding of a field, scoped to `output` or
        global, wins over them.
        """
        defaults = release_defaults()
        if output not in defaults:
            raise ValueError(
                f"no generation settings for output {output!r}; known: {sorted(defaults)}"
            )
        explicit = {k: v for k, v in defaults[output].items() if not _gin_bound(output, k)}
        with gin.config_scope(output):
            return cls(**explicit)

    def replace(self, **changes: Any) -> GenerationSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls,
        values: Mapping[str, Any],
        source: str = "settings",
        base: GenerationSettings | None = None,
    ) -> GenerationSettings:
        """`base` (default GenerationSettings()) with `values` applied; unknown keys refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown generation settings {unknown}; known: {sorted(known)}"
            )
        base = cls() if base is None else base
        try:
            return dataclasses.replace(base, **values)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _gin_bound(scope: str, field: str) -> bool:
    """Whether gin binds GenerationSettings.`field` in `scope` or globally."""
    for key in (f"{scope}/GenerationSettings.{field}", f"GenerationSettings.{field}"):
        try:
            gin.query_parameter(key)
            return True
        except ValueError:
            continue
    return False
