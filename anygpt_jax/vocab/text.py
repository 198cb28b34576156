"""String <-> ids for a SentencePiece model extended with added tokens, as transformers 5 does it.

transformers 5 runs LLaMA tokenizers on the `tokenizers` library: added tokens are cut out of
the raw text first (leftmost-longest; `lstrip`/`rstrip` tokens swallow adjacent whitespace),
each remaining chunk gets spaces replaced by '▁' and a '▁' prepended (every chunk for
prepend_scheme "always"; only a chunk starting the text for "first"), then BPE. SentencePiece
reproduces that BPE once its own dummy prefix is turned off, so we prepend ourselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from anygpt_jax.vocab.files import AddedToken, TokenizerFiles, spm_proto

SPIECE_UNDERLINE = "\u2581"
# Unicode White_Space: what Rust's char::is_whitespace (and so `tokenizers`) strips.
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def runtime_spm_proto(spm_bytes: bytes, source: str = "<memory>") -> bytes:
    """The model as we run it: no dummy prefix and no whitespace squeezing (we do Metaspace)."""
    proto = spm_proto(spm_bytes, source)
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    return proto.SerializeToString()


def piece_bytes(proto: sentencepiece_model_pb2.ModelProto) -> list[bytes]:
    """What each SentencePiece id decodes to: '▁' -> ' ', byte-fallback pieces -> the raw byte."""
    out = []
    for p in proto.pieces:
        m = _BYTE_PIECE.fullmatch(p.piece)
        if p.type == sentencepiece_model_pb2.ModelProto.SentencePiece.BYTE and m:
            out.append(bytes([int(m.group(1), 16)]))
        else:
            out.append(p.piece.replace(SPIECE_UNDERLINE, " ").encode("utf-8"))
    return out


def control_tokens(proto: sentencepiece_model_pb2.ModelProto) -> list[AddedToken]:
    """<unk>, <s>, </s>: special tokens transformers matches in text like added ones."""
    kinds = (
        sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL,
        sentencepiece_model_pb2.ModelProto.SentencePiece.UNKNOWN,
    )
    return [
        AddedToken(p.piece, i, special=True, normalized=False)
        for i, p in enumerate(proto.pieces)
        if p.type in kinds
    ]


# sentencepiece encodes a list on a thread pool it starts per call (~0.13 ms): a chat prompt's
# few chunks encode ~20x faster one by one, a document's hundreds faster on the pool.
BATCH_ENCODE_FROM = 128


class TextCodec:
    """Encodes and decodes strings; knows nothing of modalities."""

    def __init__(self, files: TokenizerFiles):
        proto = spm_proto(files.spm_bytes, files.source)
        self.spm_size = len(proto.pieces)
        self.prepend_scheme = files.prepend_scheme
        listed = {t.id for t in files.added}
        tokens = list(files.added) + [t for t in control_tokens(proto) if t.id not in listed]
        self.added = {t.content: t for t in tokens}
        self.vocab_size = max(self.spm_size, max((t.id + 1 for t in tokens), default=0))
        self._sp = spm.SentencePieceProcessor(
            model_proto=runtime_spm_proto(files.spm_bytes, files.source)
        )
        table = piece_bytes(proto) + [b""] * (self.vocab_size - self.spm_size)
        for t in tokens:
            table[t.id] = t.content.replace(SPIECE_UNDERLINE, " ").encode("utf-8")
        self.id_bytes: list[bytes] = table
        self.special_ids = frozenset(t.id for t in tokens if t.special)
        self._lengths = sorted({len(c) for c in self.added}, reverse=True)
        first_chars = sorted({c[0] for c in self.added if c})
        self._starts = re.compile("[" + "".join(re.escape(c) for c in first_chars) + "]")

    def split(self, text: str, absorb: bool = True) -> list[tuple[int | None, str, int]]:
        """Cuts `text` into (added-token id, matched text, start) and (None, chunk, start) items.

        absorb=False leaves whitespace next to lstrip/rstrip tokens in the text chunks.
        """
        matches: list[list[int]] = []  # [start, end, id, lstrip, rstrip]
        pos = 0
        while self.added:
            m = self._starts.search(text, pos)
            if m is None:
                break
            i = m.start()
            for n in self._lengths:
                tok = self.added.get(text[i : i + n])
                if tok is not None:
                    matches.append([i, i + n, tok.id, tok.lstrip, tok.rstrip])
                    pos = i + n
                    break
            else:
                pos = i + 1
        # Whitespace swallowing, bounded by the neighbouring matches.
        for k, mt in enumerate(matches if absorb else ()):
            if mt[3]:
                lo = matches[k - 1][1] if k else 0
                while mt[0] > lo and text[mt[0] - 1] in WHITESPACE:
                    mt[0] -= 1
            if mt[4]:
                hi = matches[k + 1][0] if k + 1 < len(matches) else len(text)
                while mt[1] < hi and text[mt[1]] in WHITESPACE:
                    mt[1] += 1
        out: list[tuple[int | None, str, int]] = []
        prev = 0
        for start, end, tid, _, _ in matches:
            if start > prev:
                out.append((None, text[prev:start], prev))
            out.append((tid, text[start:end], start))
            prev = end
        if prev < len(text):
            out.append((None, text[prev:], prev))
        return out

    def metaspace(self, chunk: str, first: bool) -> str:
        """Spaces -> '▁', plus the prepended '▁' of the configured scheme."""
        chunk = chunk.replace(" ", SPIECE_UNDERLINE)
        if (self.prepend_scheme == "always" or (self.prepend_scheme == "first" and first)) and (
            not chunk.startswith(SPIECE_UNDERLINE)
        ):
            chunk = SPIECE_UNDERLINE + chunk
        return chunk

    def encode_chunks(self, chunks: Sequence[str]) -> list[list[int]]:
        """BPE of already-Metaspaced chunks."""
        if len(chunks) < BATCH_ENCODE_FROM:
            return [self._sp.encode(c) for c in chunks]
        return self._sp.encode(list(chunks))

    def encode(self, text: str, at_start: bool = True) -> list[int]:
        """Ids of `text`, no BOS/EOS added; at_start=False: `text` continues an earlier one."""
        items = self.split(text)
        texts = [self.metaspace(s, at_start and start == 0) for t, s, start in items if t is None]
        encoded = iter(self.encode_chunks(texts))
        ids: list[int] = []
        for tid, _, _ in items:
            if tid is None:
                ids.extend(next(encoded))
            else:
                ids.append(tid)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True, at_start: bool = True) -> str:
        """The string of `ids` (byte fallback reassembled; one leading space dropped at start)."""
        data = b"".join(
            self.id_bytes[i] for i in ids if not (skip_special and i in self.special_ids)
        )
        s = data.decode("utf-8", errors="replace")
        if at_start and self.prepend_scheme != "never" and s.startswith(" "):
            s = s[1:]
        return s
