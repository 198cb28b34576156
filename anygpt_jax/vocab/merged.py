"""MergedVocabulary: LLaMA SentencePiece + AnyGPT's added tokens, with seqio's interface.

It implements seqio.Vocabulary's interface without importing seqio or TensorFlow: inference
loads vocabularies and never pays for them. The data and eval paths, which import seqio
anyway, register it as a virtual seqio.Vocabulary (anygpt_jax/tasks.py); the TF encode and
decode are built on first use (vocab/tf_ops.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import gin
import numpy as np

from anygpt_jax import storage
from anygpt_jax.vocab import files as files_lib
from anygpt_jax.vocab.files import AddedToken, TokenizerFiles
from anygpt_jax.vocab.layout import (
    KNOWN_MODALITIES,
    SFT_MARKERS,
    TEXT_MARKERS,
    Layout,
    MarkerBlock,
    ModalitySpec,
)
from anygpt_jax.vocab.registry import Modality, ModalitySpan, Segment
from anygpt_jax.vocab.segments import group_segments
from anygpt_jax.vocab.text import WHITESPACE, TextCodec, control_tokens

VOCAB_JSON = "anygpt_vocab.json"
FORMAT_VERSION = 1


class MergedVocabulary:
    """Text + modality tokens in one id space; the single owner of every id offset."""

    def __init__(
        self,
        files: TokenizerFiles,
        specs: Sequence[ModalitySpec] = KNOWN_MODALITIES,
        required_modalities: Sequence[str] = ("image", "speech", "music"),
        required_markers: Sequence[str] = TEXT_MARKERS,
    ):
        """Resolves the registry from the added tokens of `files`; see from_tokenizer_dir."""
        self._init_args = (files, tuple(specs), tuple(required_modalities), tuple(required_markers))
        proto = files_lib.spm_proto(files.spm_bytes, files.source)
        listed = {t.id for t in files.added}
        added = sorted(
            list(files.added) + [t for t in control_tokens(proto) if t.id not in listed],
            key=lambda t: t.id,
        )
        self._files = dataclasses.replace(files, added=tuple(added))
        self._codec = TextCodec(self._files)
        self._spm = proto
        self._token_to_id = {t.content: t.id for t in added}
        self._id_to_token = {t.id: t.content for t in added}
        self._check_ids(proto)
        self._modalities = self._resolve(specs, required_modalities)
        src = files.source
        for m in required_markers:
            if m not in self._token_to_id:
                raise ValueError(f"{src}: marker token {m!r} is missing from the added tokens")
        self._layout = self._derive_layout()
        self._tf = None  # built on first TF use

    # ----- construction -------------------------------------------------------------------

    @classmethod
    def from_tokenizer_dir(
        cls,
        path: str,
        specs: Sequence[ModalitySpec] = KNOWN_MODALITIES,
        required_modalities: Sequence[str] = ("image", "speech", "music"),
        required_markers: Sequence[str] = TEXT_MARKERS,
    ) -> MergedVocabulary:
        """Loads a real AnyGPT tokenizer directory (tokenizer.model + added-token files)."""
        return cls(files_lib.read_tokenizer_dir(path), specs, required_modalities, required_markers)

    @classmethod
    def from_layout(
        cls, spm_model: str | bytes, layout: Layout, prepend_scheme: str = "first"
    ) -> MergedVocabulary:
        """Declares a new vocabulary: `layout`'s tokens appended after the SentencePiece pieces."""
        if isinstance(spm_model, bytes):
            spm_bytes, source = spm_model, f"layout {layout.name}"
        else:
            spm_bytes, source = files_lib.read_spm(spm_model), spm_model
        if prepend_scheme not in files_lib.PREPEND_SCHEMES:
            raise ValueError(
                f"prepend_scheme={prepend_scheme!r}; expected one of {files_lib.PREPEND_SCHEMES}"
            )
        base = len(files_lib.spm_proto(spm_bytes, source).pieces)
        added = tuple(AddedToken(tok, base + i) for i, tok in enumerate(layout.added_tokens()))
        files = TokenizerFiles(spm_bytes, added, prepend_scheme, source)
        markers = [t for b in layout.blocks if isinstance(b, MarkerBlock) for t in b.tokens]
        return cls(files, layout.modalities, [m.name for m in layout.modalities], markers)

    @classmethod
    def load(cls, path: str) -> MergedVocabulary:
        """Loads what save() wrote (or any tokenizer directory), checking the fingerprint."""
        meta_path = storage.join(path, VOCAB_JSON)
        if not storage.isfile(meta_path):
            return cls.from_tokenizer_dir(path)
        meta = files_lib.load_json(meta_path)
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}"
            )
        fields = {f.name for f in dataclasses.fields(ModalitySpec)}
        specs = [
            ModalitySpec(**{k: v for k, v in m.items() if k in fields}) for m in meta["modalities"]
        ]
        vocab = cls.from_tokenizer_dir(
            path, specs, [s.name for s in specs], meta.get("markers", [])
        )
        if vocab.fingerprint != meta.get("fingerprint"):
            raise ValueError(
                f"{meta_path}: fingerprint {meta.get('fingerprint')} does not match the files "
                f"beside it ({vocab.fingerprint}); were they changed after save()?"
            )
        return vocab

    def save(self, path: str) -> None:
        """Writes tokenizer files (transformers can load them too) and anygpt_vocab.json."""
        self.save_hf_tokenizer(path)
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
            "markers": list(self.marker_ids),
            "modalities": [
                dataclasses.asdict(m.spec) | {"first_id": m.first_id}
                for m in self.modalities.values()
            ],
        }
        storage.write_text(storage.join(path, VOCAB_JSON), files_lib.dump_json(meta))

    def save_hf_tokenizer(self, path: str) -> None:
        """Writes only the transformers tokenizer files (e.g. beside an exported checkpoint)."""
        files_lib.write_tokenizer_dir(self._files, path)

    def _check_ids(self, proto) -> None:
        src = self._files.source
        base = len(proto.pieces)
        for t in self._files.added:
            if t.id < base and proto.pieces[t.id].piece != t.content:
                raise ValueError(
                    f"{src}: id {t.id} is {t.content!r} in the added tokens but "
                    f"{proto.pieces[t.id].piece!r} in tokenizer.model"
                )
        ids = [t.id for t in self._files.added if t.id >= base]
        for k, tid in enumerate(ids):
            want = base + k
            if tid != want:
                after = f"after {self._id_to_token[want - 1]!r}" if want > base else "at the start"
                raise ValueError(
                    f"{src}: added tokens are not consecutive: no token has id {want} ({after}); "
                    f"the next one is {self._id_to_token[tid]!r} with id {tid}"
                )

    def _resolve(
        self, specs: Sequence[ModalitySpec], required: Sequence[str]
    ) -> dict[str, Modality]:
        src = self._files.source
        known = {s.name: s for s in specs}
        for name in required:
            if name not in known:
                raise ValueError(f"unknown modality {name!r}; known: {sorted(known)}")
        placed = []
        for spec in specs:
            first = self._token_to_id.get(spec.code_token(0))
            start, end = self._token_to_id.get(spec.start), self._token_to_id.get(spec.end)
            if first is None and start is None and end is None:
                if spec.name in required:
                    raise ValueError(
                        f"{src}: the {spec.name} block is missing: no {spec.code_token(0)} ... "
                        f"{spec.code_token(spec.count - 1)}, {spec.start}, {spec.end}"
                    )
                continue
            for name, tid in ((spec.code_token(0), first), (spec.start, start), (spec.end, end)):
                if tid is None:
                    raise ValueError(f"{src}: the {spec.name} block lacks token {name!r}")
            for i in range(spec.count):
                tid = self._token_to_id.get(spec.code_token(i))
                if tid != first + i:
                    got = "is missing" if tid is None else f"has id {tid}"
                    raise ValueError(
                        f"{src}: {spec.name} code tokens are not consecutive: "
                        f"{spec.code_token(i)!r} {got}, expected id {first + i}"
                    )
            extra = spec.code_token(spec.count)
            if extra in self._token_to_id:
                raise ValueError(
                    f"{src}: {extra!r} exists, but the {spec.name} block declares "
                    f"{spec.count} codes"
                )
            placed.append((first, spec, start, end))
        placed.sort(key=lambda p: p[0])
        return {
            s.name: Modality.place(s, k + 1, f, st, en) for k, (f, s, st, en) in enumerate(placed)
        }

    def _derive_layout(self) -> Layout:
        """The layout these ids follow, read back from the id order."""
        by_first = {m.first_id: m for m in self._modalities.values()}
        owned = {m.start_id for m in self._modalities.values()} | {
            m.end_id for m in self._modalities.values()
        }
        blocks: list[Any] = []
        run: list[str] = []

        def flush():
            if run:
                toks = tuple(run)
                name = {TEXT_MARKERS: "chat", SFT_MARKERS: "sft"}.get(toks, f"markers{len(blocks)}")
                blocks.append(MarkerBlock(name, toks))
                run.clear()

        i = self.text_vocab_size
        while i < self.vocab_size:
            if i in by_first:
                flush()
                m = by_first[i]
                blocks.append(m.spec)
                i = m.stop_id
            else:
                if i not in owned:
                    run.append(self._id_to_token[i])
                i += 1
        flush()
        return Layout(tuple(blocks), name=f"from {self._files.source}")

    # ----- identity -----------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """sha256 of the SentencePiece model, every added token (id, flags) and the registry."""
        ident = {
            "spm_sha256": hashlib.sha256(self._files.spm_bytes).hexdigest(),
            "prepend_scheme": self._files.prepend_scheme,
            "added": [[t.content, t.id, t.special, t.lstrip, t.rstrip] for t in self._files.added],
            "modalities": [dataclasses.asdict(m) for m in self._modalities.values()],
        }
        blob = json.dumps(ident, sort_keys=True, ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MergedVocabulary):
            return NotImplemented
        return self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self):
        # Rebuilt from its inputs: SentencePiece and TF objects do not pickle.
        return (type(self), self._init_args)

    def __repr__(self) -> str:
        mods = ", ".join(f"{m.name}@{m.first_id}+{m.count}" for m in self._modalities.values())
        return f"MergedVocabulary(vocab_size={self.vocab_size}, {mods})"

    # ----- ids ----------------------------------------------------------------------------

    @property
    def _base_vocab_size(self) -> int:
        return self._codec.vocab_size

    @property
    def vocab_size(self) -> int:
        """Every id: pieces and added tokens (seqio's vocab_size; no extra ids)."""
        return self._base_vocab_size

    @property
    def extra_ids(self) -> int:
        return 0

    @property
    def pad_id(self) -> int:
        """0, seqio's padding id (<unk> for LLaMA, as AnyGPT pads with 0)."""
        return 0

    @property
    def text_vocab_size(self) -> int:
        """Number of SentencePiece pieces (32,000 for LLaMA-2)."""
        return self._codec.spm_size

    @property
    def bos_id(self) -> int:
        """<s> (1 for LLaMA), read from tokenizer.model."""
        return int(self._spm.trainer_spec.bos_id)

    @property
    def eos_id(self) -> int:
        """</s> (2 for LLaMA): ends every sample; `<eos>` is a separate chat marker."""
        return int(self._spm.trainer_spec.eos_id)

    @property
    def unk_id(self) -> int:
        """<unk> (0 for LLaMA); also seqio's pad id 0, as AnyGPT pads with 0."""
        return int(self._spm.trainer_spec.unk_id)

    @property
    def layout(self) -> Layout:
        """The block order these ids follow (read back from the ids for tokenizer dirs)."""
        return self._layout

    @property
    def added_tokens(self) -> tuple[AddedToken, ...]:
        """Every added token with its id and matching flags, sorted by id."""
        return self._files.added

    @property
    def prepend_scheme(self) -> str:
        """Where '▁' is prepended to text chunks: 'first', 'always' (legacy) or 'never'."""
        return self._files.prepend_scheme

    @property
    def modalities(self) -> dict[str, Modality]:
        """The registry, in id order."""
        return dict(self._modalities)

    @property
    def modality_names(self) -> tuple[str, ...]:
        """Row names of id_modality_index(): 'text' then each modality in id order."""
        return ("text",) + tuple(self._modalities)

    def modality(self, name: str) -> Modality:
        """The registry entry of `name`, with an error listing the known names."""
        try:
            return self._modalities[name]
        except KeyError:
            raise ValueError(
                f"unknown modality {name!r}; this vocabulary has {list(self._modalities)}"
            ) from None

    @property
    def marker_ids(self) -> dict[str, int]:
        """Added tokens that are neither codes nor span markers ([Human], <eoh>, <-Res->...)."""
        owned = {m.start_id for m in self._modalities.values()} | {
            m.end_id for m in self._modalities.values()
        }
        return {
            t.content: t.id
            for t in self._files.added
            if t.id >= self.text_vocab_size
            and t.id not in owned
            and self._modality_of_code(t.id) is None
        }

    def token_to_id(self, token: str) -> int:
        """Id of a SentencePiece piece or added token."""
        if token in self._token_to_id:
            return self._token_to_id[token]
        pid = self._codec._sp.piece_to_id(token)
        if pid == self.unk_id and token != self._spm.pieces[self.unk_id].piece:
            raise ValueError(f"{token!r} is not a token of this vocabulary")
        return pid

    def id_to_token(self, tid: int) -> str:
        """Piece or added-token string of an id."""
        self._check_range([tid])
        return self._id_to_token.get(tid) or self._spm.pieces[tid].piece

    def _modality_of_code(self, tid: int) -> Modality | None:
        for m in self._modalities.values():
            if m.first_id <= tid < m.stop_id:
                return m
        return None

    def _check_range(self, ids: Sequence[int]) -> None:
        for p, i in enumerate(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} at position {p} is outside [0, {self.vocab_size})")

    # ----- per-id tables for losses and constrained decoding --------------------------------

    def id_modality_index(self, include_markers: bool = True) -> np.ndarray:
        """int32 [vocab_size]: row of modality_names each id belongs to (0 = text)."""
        out = np.zeros(self.vocab_size, np.int32)
        for m in self._modalities.values():
            out[m.first_id : m.stop_id] = m.index
            if include_markers:
                out[[m.start_id, m.end_id]] = m.index
        return out

    def is_modality_id(self, ids: Any, name: str | None = None) -> Any:
        """Mask of modality code ids (of `name`, or of any modality); numpy or jax arrays."""
        mods = [self.modality(name)] if name is not None else list(self._modalities.values())
        mask = ids < 0
        for m in mods:
            mask = mask | m.contains(ids)
        return mask

    def allowed_ids_mask(self, name: str, include_end: bool = True) -> np.ndarray:
        """bool [vocab_size] for constrained decoding inside a span of `name` (codes [+ end]).

        name='text' allows everything except modality codes and end markers (a start marker
        opens a span).
        """
        mask = np.zeros(self.vocab_size, bool)
        if name == "text":
            mask[:] = True
            for m in self._modalities.values():
                mask[m.first_id : m.stop_id] = False
                mask[m.end_id] = False
            return mask
        m = self.modality(name)
        mask[m.first_id : m.stop_id] = True
        if include_end:
            mask[m.end_id] = True
        return mask

    # ----- strings ------------------------------------------------------------------------

    def encode(self, s: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of a string holding text, markers and modality token strings."""
        ids = self._codec.encode(s)
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def _encode(self, s: str) -> list[int]:
        return self._codec.encode(s)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` through the first </s>, special tokens skipped; ids past the vocabulary
        read as <unk> (seqio.Vocabulary.decode's contract)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        ids = [self.unk_id if i >= self._base_vocab_size else i for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id) + 1]
        return self._decode(ids)

    def _decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        self._check_range(ids)
        return self._codec.decode(ids, skip_special=True)

    def decode_with_special(self, ids: Iterable[int]) -> str:
        """Like decode, keeping <s>, </s>, <unk> and nothing cut at EOS."""
        ids = [int(i) for i in ids]
        self._check_range(ids)
        return self._codec.decode(ids, skip_special=False)

    def encode_tf(self, s):
        """A string tensor -> int32 ids (ragged for a batch), as seqio encodes."""
        return self._tf_codec().encode(s)

    def decode_tf(self, ids):
        """Int32 ids -> strings through the first </s> (seqio.Vocabulary.decode_tf's contract)."""
        return self._tf_codec().decode_clean(ids)

    def _tf_codec(self):
        if self._tf is None:
            from anygpt_jax.vocab.tf_ops import TfCodec  # TF only where a pipeline needs it

            self._tf = TfCodec(self)
        return self._tf

    # ----- structured form ----------------------------------------------------------------

    def span_to_ids(self, span: ModalitySpan) -> list[int]:
        """[start marker, codes..., end marker] ids of a span."""
        m = self.modality(span.modality)
        return [m.start_id, *m.codes_to_ids(span.codes).tolist(), m.end_id]

    def format_span(self, span: ModalitySpan) -> str:
        """A span as AnyGPT writes it: '<soim><👀12>...<eoim>'."""
        m = self.modality(span.modality)
        flat = np.asarray(m.codes_to_ids(span.codes)) - m.first_id
        return m.start_token + "".join(m.code_token(int(v)) for v in flat) + m.end_token

    def format_segments(self, segments: Sequence[Segment]) -> str:
        """Structured form -> the equivalent string."""
        return "".join(s if isinstance(s, str) else self.format_span(s) for s in segments)

    def encode_segments(
        self, segments: Sequence[Segment], add_bos: bool = False, add_eos: bool = False
    ) -> list[int]:
        """Ids of text pieces and ModalitySpans; equals encode(format_segments(segments))."""
        parts: list[Segment] = []
        for s in segments:
            if isinstance(s, str) and parts and isinstance(parts[-1], str):
                parts[-1] += s
            elif isinstance(s, (str, ModalitySpan)):
                parts.append(s)
            else:
                raise TypeError(f"segment {s!r} is neither str nor ModalitySpan")
        ids = [self.bos_id] if add_bos else []
        for k, part in enumerate(parts):
            if isinstance(part, ModalitySpan):
                ids.extend(self.span_to_ids(part))
                continue
            text, at_start = part, k == 0
            # Markers that swallow whitespace do so across segment boundaries too.
            if k > 0 and self._added_flag(self.modality(parts[k - 1].modality).end_token, "rstrip"):
                text = text.lstrip(WHITESPACE)
            if k + 1 < len(parts) and self._added_flag(
                self.modality(parts[k + 1].modality).start_token, "lstrip"
            ):
                text = text.rstrip(WHITESPACE)
            ids.extend(self._codec.encode(text, at_start=at_start))
        return ids + ([self.eos_id] if add_eos else [])

    def _added_flag(self, token: str, flag: str) -> bool:
        return bool(getattr(self._codec.added[token], flag))

    def decode_segments(self, ids: Iterable[int], strict: bool = True) -> list[Segment]:
        """Ids -> text pieces and ModalitySpans (special ids dropped).

        strict=False accepts what generation may produce: an unterminated span is closed at
        the end, stray code ids become text, frames are taken as the released code does.
        """
        ids = [int(i) for i in ids]
        self._check_range(ids)
        return group_segments(
            [(i, None) for i in ids],
            self._modalities.values(),
            strict,
            lambda run, first: self._codec.decode([u[0] for u in run], at_start=first),
        )

    def parse_segments(self, text: str, strict: bool = True) -> list[Segment]:
        """A string with token strings -> text pieces and ModalitySpans (text kept verbatim)."""
        units = [(tid, s) for tid, s, _ in self._codec.split(text, absorb=False)]
        return group_segments(
            units, self._modalities.values(), strict, lambda run, first: "".join(u[1] for u in run)
        )


@gin.configurable
def merged_vocabulary(
    tokenizer_dir: str | None = None,
    spm_model: str | None = None,
    layout: Layout | None = None,
) -> MergedVocabulary:
    """Gin entry: a real tokenizer directory, or a SentencePiece model plus a declared layout."""
    if (tokenizer_dir is None) == (spm_model is None):
        raise ValueError("give exactly one of tokenizer_dir or spm_model (with layout)")
    if tokenizer_dir is not None:
        return MergedVocabulary.load(tokenizer_dir)
    if layout is None:
        raise ValueError("spm_model needs a layout, e.g. anygpt_layout()")
    return MergedVocabulary.from_layout(spm_model, layout)
