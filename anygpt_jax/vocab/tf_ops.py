"""TF-native encode/decode of a MergedVocabulary, for tf.data and seqio pipelines.

Same algorithm as text.TextCodec, in graph ops: one RE2 pattern cuts added tokens out
(modality code families as exact integer-range patterns, so `<👀99999>` stays text), a hash
table maps them to ids, tf_text's SentencePiece op encodes the text chunks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from anygpt_jax.vocab.text import SPIECE_UNDERLINE, WHITESPACE, runtime_spm_proto

if TYPE_CHECKING:
    from anygpt_jax.vocab.merged import MergedVocabulary


def _re2_escape(s: str) -> str:
    # Every ASCII non-alphanumeric as \x{..}: RE2 rejects some escapes Python's re.escape makes.
    return "".join(c if c.isalnum() or ord(c) > 127 else f"\\x{{{ord(c):x}}}" for c in s)


def _same_length_range(lo: str, hi: str) -> str:
    if lo == hi:
        return lo
    if len(lo) == 1:
        return f"[{lo}-{hi}]"
    if lo[0] == hi[0]:
        return lo[0] + _same_length_range(lo[1:], hi[1:])
    rest = len(lo) - 1
    parts = [lo[0] + _same_length_range(lo[1:], "9" * rest)]
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + "[0-9]" * rest)
    parts.append(hi[0] + _same_length_range("0" * rest, hi[1:]))
    return "(?:" + "|".join(parts) + ")"


def int_range_regex(n: int) -> str:
    """Pattern matching exactly the decimals 0 .. n-1 as Python formats them (no leading 0)."""
    if n < 1:
        raise ValueError(f"empty range 0..{n - 1}")
    parts = []
    for digits in range(1, len(str(n - 1)) + 1):
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        hi = min(10**digits - 1, n - 1)
        parts.append(_same_length_range(str(lo), str(hi)))
    return "(?:" + "|".join(parts) + ")"


def _prefix_free(tokens: Iterable[str]) -> bool:
    ordered = sorted(tokens)
    return not any(b.startswith(a) for a, b in zip(ordered, ordered[1:], strict=False))


class TfCodec:
    """Graph-mode twin of the vocabulary's python encode/decode."""

    def __init__(self, vocab: MergedVocabulary):
        self.vocab = vocab
        added = vocab._codec.added
        ws = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]"
        groups: dict[tuple[bool, bool], list[str]] = {}
        in_family = set()
        for m in vocab.modalities.values():
            flags = {
                (added[m.code_token(i)].lstrip, added[m.code_token(i)].rstrip)
                for i in range(m.count)
            }
            if len(flags) == 1:  # one pattern for the whole family
                in_family.update(m.code_token(i) for i in range(m.count))
                pattern = "<" + _re2_escape(m.glyph) + int_range_regex(m.count) + ">"
                groups.setdefault(flags.pop(), []).append(pattern)
        for tok in sorted(added.values(), key=lambda t: -len(t.content)):
            if tok.content not in in_family:
                groups.setdefault((tok.lstrip, tok.rstrip), []).append(_re2_escape(tok.content))
        # RE2 alternation is leftmost-first, tokenizers' is leftmost-longest: equal when no
        # added token is a prefix of another (true of AnyGPT's); otherwise run python.
        self.native = _prefix_free(added)
        self.delim = "|".join(
            (ws + "*" if ls else "") + "(?:" + "|".join(alts) + ")" + (ws + "*" if rs else "")
            for (ls, rs), alts in groups.items()
        )
        self.ws = ws
        with tf.init_scope():  # tables live outside whichever graph first asked for them
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(list(added)), tf.constant([t.id for t in added.values()], tf.int32)
                ),
                default_value=-1,
            )
            self.sp = tf_text.SentencepieceTokenizer(
                model=runtime_spm_proto(vocab._files.spm_bytes), out_type=tf.int32
            )
            self.pieces = tf.constant(vocab._codec.id_bytes, tf.string)
            special = np.zeros(vocab.vocab_size, bool)
            special[list(vocab._codec.special_ids)] = True
            self.special = tf.constant(special)

    def encode(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """Scalar string -> int32 [N]; a [B] string batch -> ragged int32 [B, None]."""
        s = tf.convert_to_tensor(s, tf.string)
        if not self.native:
            return self._encode_py(s)
        batch = tf.reshape(s, [-1])
        pieces, begins, _ = tf_text.regex_split_with_offsets(batch, self.delim, self.delim)
        flat = pieces.flat_values
        is_tok = tf.strings.regex_full_match(flat, self.delim)
        stripped = tf.strings.regex_replace(flat, f"^{self.ws}+|{self.ws}+$", "")
        tok_ids = self.table.lookup(stripped)
        text = tf.strings.regex_replace(tf.where(is_tok, "", flat), " ", SPIECE_UNDERLINE)
        scheme = self.vocab.prepend_scheme
        prefix = tf.fill(tf.shape(flat), scheme == "always")
        if scheme == "first":
            prefix = tf.equal(begins.flat_values, 0)
        starts_ws = tf.strings.regex_full_match(text, f"(?s){SPIECE_UNDERLINE}.*")
        text = tf.where(prefix & ~is_tok & ~starts_ws, SPIECE_UNDERLINE + text, text)
        spm_ids = self.sp.tokenize(text)
        tok_rows = tf.RaggedTensor.from_row_lengths(
            tf.boolean_mask(tok_ids, is_tok), tf.cast(is_tok, tf.int64)
        )
        rows = tf.concat([tok_rows, tf.cast(spm_ids, tf.int32)], axis=1)
        out = tf.RaggedTensor.from_nested_row_splits(
            rows.flat_values, [pieces.row_splits, rows.row_splits]
        ).merge_dims(1, 2)
        return out[0] if s.shape.rank == 0 else out

    def _encode_py(self, s: tf.Tensor) -> tf.Tensor:
        if s.shape.rank != 0:
            raise ValueError("the python fallback of encode_tf takes one scalar string")
        out = tf.py_function(
            lambda x: np.asarray(self.vocab.encode(x.numpy().decode()), np.int32), [s], tf.int32
        )
        out.set_shape([None])
        return out

    def decode_clean(self, ids: tf.Tensor) -> tf.Tensor:
        """`decode` after seqio's clean-up: ids past the vocabulary read as <unk>, and
        everything after the first </s> as padding."""
        if ids.shape == (0,):
            return tf.constant(b"", dtype=tf.string)
        vocab = self.vocab
        ids = tf.cast(ids, tf.int32)
        ids = tf.where(tf.less(ids, vocab.vocab_size), ids, vocab.unk_id)
        after_eos = tf.cumsum(tf.cast(tf.equal(ids, vocab.eos_id), tf.int32), exclusive=True,
                              axis=-1)
        return self.decode(tf.where(tf.cast(after_eos, tf.bool), vocab.pad_id, ids))

    def decode(self, ids: tf.Tensor) -> tf.Tensor:
        """int ids [..., N] -> strings [...]; special ids (<s>, </s>, <unk>/pad) dropped."""
        ids = tf.cast(ids, tf.int32)
        keep = ~tf.gather(self.special, ids)
        pieces = tf.where(keep, tf.gather(self.pieces, ids), "")
        s = tf.strings.reduce_join(pieces, axis=-1)
        # Byte-fallback pieces may leave invalid UTF-8: replace it before any regex runs.
        s = tf.strings.unicode_transcode(
            s, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
        )
        if self.vocab.prepend_scheme != "never":
            s = tf.strings.regex_replace(s, "^ ", "", replace_global=False)
        return s
