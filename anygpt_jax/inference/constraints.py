"""Modality-span constraints for decoding: which ids may come next, as masks from the vocabulary.

Each sequence carries a state (span, pos): span 0 is text, span k > 0 is inside a span of the
vocabulary's modality k (`MergedVocabulary.modality_names[k]`) after `pos` code ids. In text
every id may come except modality codes and end markers; a start marker opens its span. In a
span only the ids of the codebook due at `pos` (music: frame-major, codebook pos % 4) and, on a
whole frame of an allowed length, the end marker may come. So every finished span parses with
`decode_segments(strict=True)`. A token budget keeps spans closable: a span is opened, or a
code added, only if enough new tokens remain to reach a valid end marker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np

from anygpt_jax.modalities.registry import media_modalities, media_modality
from anygpt_jax.vocab import MergedVocabulary


def registered_fixed_lengths(vocab: MergedVocabulary) -> dict[str, int]:
    """The exact span lengths the registry's records give the modalities of `vocab` (image:
    SEED's 32 codes); modalities of free length are left out."""
    known = set(media_modalities())
    lengths = {m: media_modality(m).fixed_length for m in vocab.modalities if m in known}
    return {m: n for m, n in lengths.items() if n}


@flax.struct.dataclass
class SpanTable:
    """Per-span-index vectors (row 0 = text, unused) and per-id vectors over the padded vocab."""

    code_lo: jax.Array  # [M+1] first code id
    codebook_size: jax.Array  # [M+1]
    num_codebooks: jax.Array  # [M+1]
    end_id: jax.Array  # [M+1]
    fixed_len: jax.Array  # [M+1] exact number of codes, 0 = free length
    min_len: jax.Array  # [M+1] fewest codes before the end marker (a multiple of num_codebooks)
    opens: jax.Array  # [V] span index a start marker opens, 0 for other ids
    text_allowed: jax.Array  # [V] ids text may emit (no codes, no end markers, no padding)

    @property
    def open_need(self) -> jax.Array:
        """[V] tokens still needed after emitting each id in text (0 unless a start marker)."""
        k = self.opens
        return jnp.where(k > 0, _need(self, k, jnp.zeros_like(k)), 0)


@gin.configurable
def span_table(
    vocab: MergedVocabulary,
    padded_vocab_size: int | None = None,
    fixed_lengths: Mapping[str, int] | None = None,
    min_frames: int = 1,
) -> SpanTable:
    """The constraint tables of `vocab`; `fixed_lengths` gives exact code counts per modality
    (default: the registry's, registered_fixed_lengths).

    `min_frames` is the fewest frames (code ids / num_codebooks) a free-length span may have,
    so that a de-tokenizer never gets an empty span.
    """
    v = vocab.vocab_size
    padded = v if padded_vocab_size is None else padded_vocab_size
    if padded < v:
        raise ValueError(f"padded_vocab_size={padded} is smaller than the vocabulary ({v})")
    if fixed_lengths is None:
        fixed_lengths = registered_fixed_lengths(vocab)
    unknown = sorted(set(fixed_lengths) - set(vocab.modalities))
    if unknown:
        raise ValueError(
            f"span_table.fixed_lengths names modalities {unknown} that the vocabulary lacks; "
            f"it has {list(vocab.modalities)}"
        )
    if min_frames < 1:
        raise ValueError(f"span_table.min_frames={min_frames} must be >= 1")
    mods = list(vocab.modalities.values())
    rows = len(mods) + 1
    code_lo, cb, nq, end, fixed, min_len = (np.zeros(rows, np.int32) for _ in range(6))
    nq[0] = 1
    opens = np.zeros(padded, np.int32)
    for m in mods:
        k = m.index
        code_lo[k], cb[k], nq[k], end[k] = m.first_id, m.codebook_size, m.num_codebooks, m.end_id
        n = int(fixed_lengths.get(m.name, 0))
        if n < 0 or n % m.num_codebooks:
            raise ValueError(
                f"span_table.fixed_lengths[{m.name!r}]={n} must be a positive multiple of "
                f"{m.num_codebooks} (codebooks)"
            )
        fixed[k] = n
        min_len[k] = n if n else min_frames * m.num_codebooks
        opens[m.start_id] = k
    text = np.zeros(padded, bool)
    text[:v] = vocab.allowed_ids_mask("text")
    return SpanTable(
        *(jnp.asarray(a) for a in (code_lo, cb, nq, end, fixed, min_len, opens)),
        text_allowed=jnp.asarray(text),
    )


def _need(table: SpanTable, span: jax.Array, pos: jax.Array, xp=jnp) -> jax.Array:
    """Fewest tokens (codes + end marker) that close a span of index `span` at `pos` codes;
    `xp` is jnp, or np for a table of host arrays."""
    q = table.num_codebooks[span]
    to_frame = (-pos) % q
    to_min = xp.maximum(table.min_len[span] - pos, 0)
    free = xp.maximum(to_min, to_frame) + 1
    fixed = table.fixed_len[span]
    need = xp.where(fixed > 0, xp.maximum(fixed - pos, 0) + 1, free)
    return xp.where(span > 0, need, 0)


def allowed_mask(
    table: SpanTable, span: jax.Array, pos: jax.Array, remaining: jax.Array
) -> jax.Array:
    """bool [rows, V]: ids each row may emit now, with `remaining` new tokens left (>= 1).

    span, pos, remaining: int [rows]. Rows in text may open a span only if it can close
    within the budget; rows in a span get their due codebook and, where valid, the end marker.
    """
    ids = jnp.arange(table.opens.shape[0], dtype=jnp.int32)[None, :]
    after = (remaining - 1)[:, None]
    text_ok = table.text_allowed[None, :] & (table.open_need[None, :] <= after)

    q = table.num_codebooks[span]
    size = table.codebook_size[span]
    lo = table.code_lo[span] + (pos % q) * size
    fixed = table.fixed_len[span]
    code_ok = ((fixed == 0) | (pos < fixed)) & (_need(table, span, pos + 1) <= remaining - 1)
    end_ok = jnp.where(fixed > 0, pos == fixed, (pos >= table.min_len[span]) & (pos % q == 0))
    in_codebook = (ids >= lo[:, None]) & (ids < (lo + size)[:, None])
    span_ok = (in_codebook & code_ok[:, None]) | (
        (ids == table.end_id[span][:, None]) & end_ok[:, None]
    )
    return jnp.where((span == 0)[:, None], text_ok, span_ok)


def advance(
    table: SpanTable, span: jax.Array, pos: jax.Array, token: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The state after each row emits `token`: a start marker opens, the end marker closes."""
    in_text = span == 0
    closes = token == table.end_id[span]
    new_span = jnp.where(in_text, table.opens[token], jnp.where(closes, 0, span))
    new_pos = jnp.where(in_text | closes, 0, pos + 1)
    return new_span, new_pos


def prompt_state(
    vocab: MergedVocabulary, table: SpanTable, prompt: Sequence[int], where: str = "prompt"
) -> tuple[int, int]:
    """(span, pos) after `prompt`: inside a span if its last start marker is still open.

    The codes already in an open span must be the ones generation could have produced (right
    codebook at each position, no more than a fixed length); otherwise a ValueError names
    `where` and the position.
    """
    ids = np.asarray(prompt, np.int64)
    starts = {m.start_id: m for m in vocab.modalities.values()}
    ends = {m.end_id for m in vocab.modalities.values()}
    markers = np.flatnonzero(np.isin(ids, list(starts) + list(ends)))
    if not markers.size or int(ids[markers[-1]]) in ends:
        return 0, 0
    at = int(markers[-1])
    m = starts[int(ids[at])]
    for p, tid in enumerate(ids[at + 1 :].tolist()):
        lo, hi = m.allowed_range(p)
        if not lo <= tid < hi:
            raise ValueError(
                f"{where}: the open {m.name} span ({m.start_token} at position {at}) has id "
                f"{tid} at position {at + 1 + p}, which is not a {m.name} code of codebook "
                f"{p % m.num_codebooks} [{lo}, {hi})"
            )
    pos = len(ids) - at - 1
    fixed = int(np.asarray(table.fixed_len)[m.index])
    if fixed and pos > fixed:
        raise ValueError(
            f"{where}: the open {m.name} span ({m.start_token} at position {at}) already has "
            f"{pos} codes; {m.name} spans have exactly {fixed}"
        )
    return m.index, pos


def state_need(table: SpanTable, span: int, pos: int) -> int:
    """Host-side: fewest new tokens that close a span in state (span, pos); 0 in text."""
    if span == 0:
        return 0
    # numpy, not jax: a request checks this per prompt, and eager jax ops cost ~0.1 ms each.
    host = SpanTable(*(np.asarray(getattr(table, f.name)) for f in dataclasses.fields(table)))
    return int(_need(host, np.int32(span), np.int32(pos), xp=np))
