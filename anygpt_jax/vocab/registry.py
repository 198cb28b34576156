"""The modality registry: resolved id ranges and the codes <-> ids maps of each modality."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from anygpt_jax.vocab.layout import ModalitySpec


@dataclasses.dataclass(frozen=True)
class Modality:
    """A modality placed in the merged vocabulary: codes are ids first_id .. first_id+count-1."""

    name: str
    index: int  # row in MergedVocabulary.modality_names (0 is text)
    glyph: str
    first_id: int
    count: int
    start_token: str
    start_id: int
    end_token: str
    end_id: int
    codebook_size: int
    num_codebooks: int
    tokenizer: str

    @classmethod
    def place(
        cls, spec: ModalitySpec, index: int, first_id: int, start_id: int, end_id: int
    ) -> Modality:
        """Puts `spec` at the given ids."""
        return cls(
            spec.name,
            index,
            spec.glyph,
            first_id,
            spec.count,
            spec.start,
            start_id,
            spec.end,
            end_id,
            spec.codebook_size,
            spec.num_codebooks,
            spec.tokenizer,
        )

    @property
    def spec(self) -> ModalitySpec:
        """The declarative block this modality was placed from."""
        return ModalitySpec(
            self.name,
            self.glyph,
            self.start_token,
            self.end_token,
            self.codebook_size,
            self.num_codebooks,
            self.tokenizer,
        )

    @property
    def stop_id(self) -> int:
        """One past the last code id."""
        return self.first_id + self.count

    def code_token(self, value: int) -> str:
        """Token string of flattened code `value`, e.g. '<🎶2049>'."""
        return self.spec.code_token(value)

    def contains(self, ids: Any) -> Any:
        """Mask of code ids; works on numpy and jax arrays alike."""
        return (ids >= self.first_id) & (ids < self.stop_id)

    def allowed_range(self, position: int | None = None) -> tuple[int, int]:
        """[lo, hi) of code ids allowed at span position `position` (its codebook), or all codes."""
        if position is None or self.num_codebooks == 1:
            return self.first_id, self.stop_id
        lo = self.first_id + (position % self.num_codebooks) * self.codebook_size
        return lo, lo + self.codebook_size

    def codes_to_ids(self, codes: Any) -> np.ndarray:
        """Codes ([T], or [num_codebooks, T]) -> ids [T * num_codebooks], frame-major."""
        arr = np.asarray(codes)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{self.name} codes must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if self.num_codebooks == 1:
            if arr.ndim != 1:
                raise ValueError(f"{self.name} codes must have shape [T], got {arr.shape}")
            flat = arr
        else:
            if arr.ndim != 2 or arr.shape[0] != self.num_codebooks:
                raise ValueError(
                    f"{self.name} codes must have shape [{self.num_codebooks}, T], got {arr.shape}"
                )
            flat = arr.T.reshape(-1)  # frame t, codebook q -> position t * Q + q
        bad = np.flatnonzero((flat < 0) | (flat >= self.codebook_size))
        if bad.size:
            p = int(bad[0])
            where = (
                f"position {p}"
                if self.num_codebooks == 1
                else f"codebook {p % self.num_codebooks}, frame {p // self.num_codebooks}"
            )
            raise ValueError(
                f"{self.name} code {int(flat[p])} at {where} is out of range "
                f"[0, {self.codebook_size})"
            )
        offsets = (np.arange(flat.size) % self.num_codebooks) * self.codebook_size
        return (flat + offsets + self.first_id).astype(np.int32)

    def ids_to_codes(self, ids: Any, strict: bool = True) -> np.ndarray:
        """Ids -> codes [T] or [num_codebooks, T] (music: id % 2048, (T, 4) -> (4, T)).

        strict: each id must belong to the codebook of its position, and the length must be a
        whole number of frames; otherwise, as the released code does, codebooks are taken
        modulo and a trailing partial frame is dropped.
        """
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = np.flatnonzero(~self.contains(arr))
        if bad.size:
            p = int(bad[0])
            raise ValueError(
                f"id {int(arr[p])} at position {p} is not a {self.name} code id "
                f"[{self.first_id}, {self.stop_id})"
            )
        rel = arr - self.first_id
        if self.num_codebooks == 1:
            return rel.astype(np.int32)
        q = self.num_codebooks
        if strict:
            if rel.size % q:
                raise ValueError(f"{self.name} span of {rel.size} ids is not a multiple of {q}")
            book = rel // self.codebook_size
            wrong = np.flatnonzero(book != np.arange(rel.size) % q)
            if wrong.size:
                p = int(wrong[0])
                raise ValueError(
                    f"{self.name} id {int(arr[p])} at position {p} is in codebook "
                    f"{int(book[p])}, expected {p % q} (frame-major order)"
                )
        rel = rel[: rel.size - rel.size % q]
        return (rel % self.codebook_size).reshape(-1, q).T.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class ModalitySpan:
    """Codes of one modality in an interleaved sequence: [T] or [num_codebooks, T] ints."""

    modality: str
    codes: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "codes", np.asarray(self.codes))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModalitySpan):
            return NotImplemented
        return self.modality == other.modality and np.array_equal(self.codes, other.codes)

    def __repr__(self) -> str:
        return f"ModalitySpan({self.modality!r}, shape={self.codes.shape})"


Segment = str | ModalitySpan
