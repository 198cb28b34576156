"""Pre-tokenized modality shards: TFRecord files of tf.train.Example plus a manifest.

A shard directory holds `shard-SSSSS-of-NNNNN.tfrecord` files and `manifest.json`. Each record
is one example with these features (codes are integers, never token strings, so a shard does
not depend on the ids the vocabulary gives them, only on the tokenizer that made them):

    id                  bytes   unique example id (corpus-relative)
    kind                bytes   image_text | speech_text | music_text | dialogue
    text                bytes   UTF-8: the caption/transcript of a pair; for a dialogue the
                                JSON list of turns `{"role": "human"|"assistant", "content":
                                [str | {"span": k}, ...]}`, where k indexes the spans below
    span_modality       bytes[S]  modality name of each span (image, speech, music, ...)
    span_num_codebooks  int64[S]  Q of each span
    span_num_frames     int64[S]  T of each span
    span_codes          int64[sum Q*T]  each span's codes [Q, T] in C order, concatenated
    meta                bytes   JSON of source metadata (file, corpus, duration, ...)

`manifest.json` (written last; a directory without it is an unfinished build) records the
format, the vocabulary fingerprint and modality layout, each modality's tokenizer identity, and
per shard: file name, examples, bytes, sha256, tokens per modality and its record blocks
(`[offset, records]`, for ranged reads; data/records.py). Readers check all of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from anygpt_jax import storage
from anygpt_jax.data import records as records_lib
from anygpt_jax.io_utils import read_json
from anygpt_jax.modalities.registry import media_modalities
from anygpt_jax.vocab import MergedVocabulary, ModalitySpan

FORMAT = "anygpt_jax.shards/1"
MANIFEST = "manifest.json"
DIALOGUE = "dialogue"
PAIR_SUFFIX = "_text"
ROLES = ("human", "assistant")


def kinds() -> tuple[str, ...]:
    """The shard kinds: '<modality>_text' pairs of every registered media modality (in the
    registry's order), then 'dialogue'."""
    return (*(m + PAIR_SUFFIX for m in media_modalities()), DIALOGUE)


def pair_modality(kind: str) -> str | None:
    """The media modality of a pair kind ('speech_text' -> 'speech'); None for any other."""
    modality = kind.removesuffix(PAIR_SUFFIX)
    return modality if kind.endswith(PAIR_SUFFIX) and modality in media_modalities() else None


class ShardError(ValueError):
    """A shard or manifest that cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """Which tokenizer made a modality's codes: `name` is the family the vocabulary expects
    (Modality.tokenizer, e.g. 'speechtokenizer_rvq1'); `identity` pins the exact weights."""

    name: str
    identity: str
    random_init: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class ShardExample:
    """One example: a text/span pair, or a dialogue whose turns reference `spans` by index."""

    id: str
    kind: str
    text: str = ""
    spans: tuple[ModalitySpan, ...] = ()
    turns: tuple[dict, ...] = ()
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "spans", tuple(self.spans))
        object.__setattr__(self, "turns", tuple(self.turns))
        if self.kind not in kinds():
            raise ValueError(f"example {self.id!r}: kind {self.kind!r}, expected one of "
                             f"{kinds()}")
        want = pair_modality(self.kind)
        if want is not None:
            if len(self.spans) != 1 or self.spans[0].modality != want:
                got = [s.modality for s in self.spans]
                raise ValueError(
                    f"example {self.id!r}: {self.kind} needs one {want} span, got {got}"
                )
        else:
            _check_turns(self.id, self.turns, len(self.spans))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardExample):
            return NotImplemented
        return (self.id, self.kind, self.text, self.spans, self.turns, dict(self.meta)) == (
            other.id,
            other.kind,
            other.text,
            other.spans,
            other.turns,
            dict(other.meta),
        )


def _check_turns(ex_id: str, turns: Sequence[dict], num_spans: int) -> None:
    if not turns:
        raise ValueError(f"dialogue {ex_id!r} has no turns")
    used = []
    for t, turn in enumerate(turns):
        if turn.get("role") not in ROLES:
            raise ValueError(
                f"dialogue {ex_id!r} turn {t}: role {turn.get('role')!r}, expected one of {ROLES}"
            )
        for item in turn.get("content", ()):
            if isinstance(item, dict):
                k = item.get("span")
                if not isinstance(k, int) or not 0 <= k < num_spans:
                    raise ValueError(f"dialogue {ex_id!r} turn {t}: bad span reference {item!r}")
                used.append(k)
            elif not isinstance(item, str):
                raise ValueError(f"dialogue {ex_id!r} turn {t}: content item {item!r}")
    if sorted(used) != list(range(num_spans)):
        raise ValueError(f"dialogue {ex_id!r}: spans referenced {used}, have {num_spans}")


def _bytes(values: Iterable[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values: Iterable[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def serialize(ex: ShardExample) -> bytes:
    """ShardExample -> serialized tf.train.Example."""
    codes = [np.asarray(s.codes) for s in ex.spans]
    shapes = [(1, c.shape[0]) if c.ndim == 1 else c.shape for c in codes]
    text = ex.text if ex.kind != DIALOGUE else json.dumps(list(ex.turns), ensure_ascii=False)
    feats = {
        "id": _bytes([ex.id.encode()]),
        "kind": _bytes([ex.kind.encode()]),
        "text": _bytes([text.encode()]),
        "span_modality": _bytes(s.modality.encode() for s in ex.spans),
        "span_num_codebooks": _ints(q for q, _ in shapes),
        "span_num_frames": _ints(t for _, t in shapes),
        "span_codes": _ints(
            np.concatenate([c.reshape(-1) for c in codes]).tolist() if codes else []
        ),
        "meta": _bytes([json.dumps(dict(ex.meta), sort_keys=True).encode()]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(
        deterministic=True  # map order fixed, so a rebuild gives byte-identical shards
    )


def deserialize(record: bytes, where: str = "record") -> ShardExample:
    """Serialized tf.train.Example -> ShardExample (single-codebook spans come back as [T])."""
    try:
        f = tf.train.Example.FromString(record).features.feature
        kind = f["kind"].bytes_list.value[0].decode()
        text = f["text"].bytes_list.value[0].decode()
        mods = [m.decode() for m in f["span_modality"].bytes_list.value]
        qs, ts = f["span_num_codebooks"].int64_list.value, f["span_num_frames"].int64_list.value
        flat = np.asarray(f["span_codes"].int64_list.value, np.int64)
        ex_id = f["id"].bytes_list.value[0].decode()
        meta = json.loads(f["meta"].bytes_list.value[0].decode())
    except (KeyError, IndexError, ValueError, UnicodeDecodeError, DecodeError) as e:
        raise ShardError(f"{where}: not an anygpt shard example ({type(e).__name__}: {e})") from e
    if not len(mods) == len(qs) == len(ts) or int(np.dot(qs, ts)) != flat.size:
        raise ShardError(
            f"{where}: span shapes {list(zip(qs, ts, strict=False))} do not match {flat.size} codes"
        )
    spans, at = [], 0
    for m, q, t in zip(mods, qs, ts, strict=True):
        c = flat[at : at + q * t].reshape(q, t).astype(np.int32)
        spans.append(ModalitySpan(m, c[0] if q == 1 else c))
        at += q * t
    turns = json.loads(text) if kind == DIALOGUE else ()
    return ShardExample(ex_id, kind, "" if kind == DIALOGUE else text, spans, turns, meta)


def example_tokens(ex: ShardExample, vocab: MergedVocabulary) -> dict[str, int]:
    """Code tokens per modality and text tokens (templates excluded) of one example."""
    out: dict[str, int] = {"text": 0}
    for s in ex.spans:
        out[s.modality] = out.get(s.modality, 0) + int(np.asarray(s.codes).size)
    texts = (
        [ex.text]
        if ex.kind != DIALOGUE
        else [i for t in ex.turns for i in t.get("content", ()) if isinstance(i, str)]
    )
    out["text"] = sum(len(vocab.encode(s)) for s in texts if s)
    return out


def shard_name(index: int, num_shards: int) -> str:
    """File name of shard `index` of `num_shards`."""
    return f"shard-{index:05d}-of-{num_shards:05d}.tfrecord"


def file_sha256(path: str) -> str:
    """sha256 of a file (local or gs://), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with storage.open_file(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(path: str, examples: Iterable[ShardExample], vocab: MergedVocabulary) -> dict:
    """Writes one shard whole (a local temp file, then a rename or an upload to a gs:// path);
    returns its manifest entry."""
    remote = storage.is_remote(path)
    local_dir = None if remote else os.fspath(storage.path(path).parent)
    if local_dir is not None:
        storage.makedirs(local_dir)
    # TFRecordWriter writes local files only: the shard is made in a temp file either way.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=local_dir)
    os.close(fd)
    tokens: dict[str, int] = {}
    n = 0
    try:
        with tf.io.TFRecordWriter(tmp) as w:
            for ex in examples:
                for k, v in example_tokens(ex, vocab).items():
                    tokens[k] = tokens.get(k, 0) + v
                w.write(serialize(ex))
                n += 1
        entry = {
            "file": os.path.basename(path),
            "examples": n,
            "bytes": storage.size(tmp),
            "sha256": file_sha256(tmp),
            "tokens": tokens,
            # Where whole records start: readers fetch a block per ranged read (records.py).
            "blocks": records_lib.block_index(tmp),
        }
        if remote:
            storage.copy_file(tmp, path)  # the object appears whole, once uploaded
        else:
            os.replace(tmp, os.fspath(storage.path(path)))  # local: rename of our temp file
    finally:
        storage.remove(tmp)
    return entry


def vocabulary_identity(vocab: MergedVocabulary) -> dict:
    """What a shard depends on in the vocabulary: its fingerprint and the modality layout."""
    return {
        "fingerprint": vocab.fingerprint,
        "vocab_size": vocab.vocab_size,
        "modalities": {
            m.name: {
                "first_id": m.first_id,
                "codebook_size": m.codebook_size,
                "num_codebooks": m.num_codebooks,
                "tokenizer": m.tokenizer,
            }
            for m in vocab.modalities.values()
        },
    }


def make_manifest(
    kind: str,
    entries: Sequence[dict],
    vocab: MergedVocabulary,
    tokenizers: Mapping[str, TokenizerInfo],
    extra: Mapping | None = None,
) -> dict:
    """The manifest of a finished shard directory."""
    totals: dict[str, int] = {}
    for e in entries:
        for k, v in e["tokens"].items():
            totals[k] = totals.get(k, 0) + v
    return {
        "format": FORMAT,
        "kind": kind,
        "examples": sum(e["examples"] for e in entries),
        "tokens": totals,
        "vocabulary": vocabulary_identity(vocab),
        "tokenizers": {m: dataclasses.asdict(t) for m, t in sorted(tokenizers.items())},
        "shards": list(entries),
        **dict(extra or {}),
    }


def write_manifest(shard_dir: str, manifest: dict) -> str:
    """Writes manifest.json whole; its presence marks the directory as finished."""
    path = os.path.join(shard_dir, MANIFEST)
    storage.write_json(path, manifest)
    return path


def read_manifest(shard_dir: str) -> dict:
    """Reads and validates a manifest's structure (not the files)."""
    path = os.path.join(shard_dir, MANIFEST)
    if not storage.isfile(path):
        raise ShardError(
            f"{path}: missing; {shard_dir} is not a finished shard directory "
            f"(build it with `python -m data.build`)"
        )
    try:
        m = read_json(path)
    except ValueError as e:
        raise ShardError(str(e)) from e
    if m.get("format") != FORMAT:
        raise ShardError(f"{path}: format {m.get('format')!r}, expected {FORMAT!r}")
    for key in ("kind", "shards", "vocabulary", "tokenizers"):
        if key not in m:
            raise ShardError(f"{path}: missing key {key!r}")
    return m


def check_manifest(
    shard_dir: str,
    vocab: MergedVocabulary,
    tokenizers: Mapping[str, str] | None = None,
    kind: str | None = None,
    verify: str = "size",
) -> list[str]:
    """Checks a shard directory against `vocab` and tokenizers; returns its shard paths.

    tokenizers: modality -> accepted tokenizer name or identity (default: the vocabulary's
    Modality.tokenizer). verify: 'none', 'size' (truncation) or 'sha256' (any corruption).
    """
    path = os.path.join(shard_dir, MANIFEST)
    m = read_manifest(shard_dir)
    if kind is not None and m["kind"] != kind:
        raise ShardError(f"{path}: holds {m['kind']!r} examples, this task reads {kind!r}")
    want, got = vocabulary_identity(vocab), m["vocabulary"]
    if got.get("fingerprint") != want["fingerprint"]:
        diff = [k for k in ("vocab_size", "modalities") if got.get(k) != want[k]]
        raise ShardError(
            f"{path}: made with vocabulary {got.get('fingerprint')}, this task uses "
            f"{want['fingerprint']} (differs in: {', '.join(diff) or 'text tokenizer/added tokens'}"
            f"); rebuild the shards with this vocabulary"
        )
    accept = {n: mod.tokenizer for n, mod in vocab.modalities.items()} | dict(tokenizers or {})
    for modality, info in m["tokenizers"].items():
        ok = accept.get(modality)
        if ok not in (info.get("name"), info.get("identity")):
            raise ShardError(
                f"{path}: {modality} codes were made by tokenizer {info.get('name')!r} "
                f"({info.get('identity')}), this task expects {ok!r}"
            )
    if verify not in ("none", "size", "sha256"):
        raise ValueError(f"verify={verify!r}; expected 'none', 'size' or 'sha256'")
    files = []
    for e in m["shards"]:
        f = os.path.join(shard_dir, e["file"])
        if not storage.isfile(f):
            raise ShardError(f"{f}: listed in {path} but missing")
        if verify != "none" and (size := storage.size(f)) != e["bytes"]:
            raise ShardError(
                f"{f}: {size} bytes, the manifest says {e['bytes']} (truncated or replaced)"
            )
        if verify == "sha256" and file_sha256(f) != e["sha256"]:
            raise ShardError(f"{f}: sha256 differs from the manifest's (corrupted)")
        files.append(f)
    return files


def read_shard(path: str) -> list[ShardExample]:
    """All examples of one shard file, local or gs:// (tests and tools; training reads through
    tf.data)."""
    out = []
    try:
        # tf.data cannot reach every gs:// endpoint (emulators): a remote shard is downloaded.
        with storage.local_copy(path) as local:
            for i, rec in enumerate(tf.data.TFRecordDataset(local).as_numpy_iterator()):
                out.append(deserialize(rec, f"{path} record {i}"))
    except tf.errors.DataLossError as e:
        raise ShardError(f"{path}: corrupted or truncated ({e.message})") from e
    return out
