"""Readers of raw corpora -> RawItems (text plus media references: file paths or codes).

Corpus files, directories and media may be local paths or gs:// URLs. Formats (paths inside a
file are relative to that file's directory, unless absolute or gs://):
- image_text: .jsonl {"image": path | "image_codes": [32 ints], "caption": str[, "id"]} or
  .csv with columns image, caption[, id]. A .jsonl pair may carry "meta": {...}, kept in the
  shard example's metadata (evaluation sets put their references there: data/eval_sets.py).
- speech_text: a LibriSpeech-style directory (`*.trans.txt` lines "UTT-ID transcript", audio
  `UTT-ID.flac` beside it) or .jsonl {"audio": path | "speech_codes": [ints], "text": str}.
- music_text: .jsonl {"audio": path | "music_codes": [[ints] x 4], "caption": str}.
- dialogue: .json (a list) or .jsonl of {"id", "turns": [{"role": "human"|"user"|"assistant"|
  "gpt"|"anygpt", "content": str | [str | {"image"|"speech"|"music": path | {"codes": ...}}]}]}.
- any other registered modality M: M_text from .jsonl {"M": path | "M_codes": codes,
  "caption" | "text": str} (read_pairs); the file is read by M's tokenizer.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

from anygpt_jax import storage
from anygpt_jax.data.shards import DIALOGUE, PAIR_SUFFIX, kinds, pair_modality
from anygpt_jax.modalities.registry import media_modalities

ROLES = {"human": "human", "user": "human", "assistant": "assistant", "gpt": "assistant",
         "anygpt": "assistant", "mmgpt": "assistant"}  # fmt: skip


class InputError(ValueError):
    """A malformed corpus file; the message names the file and line or key."""


@dataclasses.dataclass(frozen=True)
class Media:
    """A media reference: a file path or precomputed codes."""

    modality: str
    path: str | None = None
    codes: Any = None


@dataclasses.dataclass(frozen=True)
class RawItem:
    """One example before tokenization; turns use {"media": k} to reference `media[k]`."""

    id: str
    kind: str
    text: str = ""
    media: tuple[Media, ...] = ()
    turns: tuple[dict, ...] = ()
    meta: dict = dataclasses.field(default_factory=dict)


def _jsonl(path: str) -> Iterator[tuple[int, dict]]:
    with storage.open_file(path, "rb") as f:  # streamed: corpora can be large
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{n}: not UTF-8 ({e})") from e
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not valid JSON ({e})") from e
                if not isinstance(obj, dict):
                    raise InputError(f"{path}:{n}: expected a JSON object")
                yield n, obj


def _media_path(base: str, value: str) -> str:
    """A media path of a corpus file in directory `base` (relative, absolute or a URL)."""
    return value if storage.is_remote(value) else os.path.join(base, value)


def _media(base: str, modality: str, value: Any, where: str) -> Media:
    if isinstance(value, str):
        return Media(modality, path=_media_path(base, value))
    if isinstance(value, dict) and "codes" in value:
        return Media(modality, codes=value["codes"])
    if isinstance(value, list):
        return Media(modality, codes=value)
    raise InputError(f"{where}: {modality} must be a path, a list of codes or {{'codes': ...}}")


def _pair(
    path: str,
    n: int,
    obj: dict,
    kind: str,
    modality: str,
    text_keys: tuple[str, ...],
    media_keys: tuple[str, ...],
) -> RawItem:
    where = f"{path}:{n}"
    text = next((obj[k] for k in text_keys if k in obj), None)
    if not isinstance(text, str):
        raise InputError(f"{where}: missing text key (one of {text_keys})")
    key = next((k for k in media_keys if k in obj), None)
    if key is None:
        raise InputError(f"{where}: missing media key (one of {media_keys})")
    base = os.path.dirname(path)
    value = obj[key]
    media = (
        _media(base, modality, value, where)
        if not key.endswith("_codes")
        else Media(modality, codes=value)
    )
    ex_id = str(obj.get("id", f"{os.path.basename(path)}:{n}"))
    extra = obj.get("meta", {})
    if not isinstance(extra, dict):
        raise InputError(f"{where}: 'meta' must be a JSON object, got {type(extra).__name__}")
    meta = {**extra, "file": os.path.basename(path), "line": n}
    return RawItem(ex_id, kind, text, (media,), meta=meta)


def read_image_text(path: str) -> Iterator[RawItem]:
    """Image-caption pairs from .jsonl or .csv."""
    if path.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(storage.read_text(path), newline="")))
        for n, row in enumerate(rows, 2):
            yield _pair(path, n, row, "image_text", "image", ("caption",), ("image",))
        return
    for n, obj in _jsonl(path):
        yield _pair(
            path, n, obj, "image_text", "image", ("caption", "text"), ("image", "image_codes")
        )


def _walk_order(rel: str) -> tuple:
    """Sort key of a relative file path: a directory's files, then its subdirectories, each
    sorted by name (the order of a sorted top-down os.walk)."""
    *dirs, name = rel.split("/")
    return (*((1, d) for d in dirs), (0, name))


def read_speech_text(path: str) -> Iterator[RawItem]:
    """Speech-transcript pairs from a LibriSpeech-style directory or .jsonl."""
    if storage.isdir(path):
        found = False
        for rel in sorted(storage.walk_files(path), key=_walk_order):
            if not rel.endswith(".trans.txt"):
                continue
            found = True
            folder = posixpath.dirname(rel)
            trans = os.path.join(path, rel)
            for n, line in enumerate(storage.read_text(trans).split("\n"), 1):
                if not line.strip():
                    continue
                utt, _, text = line.strip().partition(" ")
                if not text:
                    raise InputError(f"{trans}:{n}: expected 'UTTERANCE-ID transcript'")
                audio = posixpath.join(folder, utt + ".flac")
                yield RawItem(
                    utt,
                    "speech_text",
                    text,
                    (Media("speech", path=os.path.join(path, audio)),),
                    meta={"file": audio},
                )
        if not found:
            raise InputError(f"{path}: no *.trans.txt files (not a LibriSpeech-style directory)")
        return
    for n, obj in _jsonl(path):
        yield _pair(
            path, n, obj, "speech_text", "speech", ("text", "transcript"), ("audio", "speech_codes")
        )


def read_music_text(path: str) -> Iterator[RawItem]:
    """Music-caption pairs from .jsonl."""
    for n, obj in _jsonl(path):
        yield _pair(
            path, n, obj, "music_text", "music", ("caption", "text"), ("audio", "music_codes")
        )


def read_dialogues(path: str) -> Iterator[RawItem]:
    """AnyInstruct-style dialogues from .json (a list) or .jsonl."""
    if path.endswith(".json"):
        try:
            data = json.loads(storage.read_text(path))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a list of dialogues")
        objs = list(enumerate(data, 1))
    else:
        objs = list(_jsonl(path))
    base = os.path.dirname(path)
    for n, obj in objs:
        where = f"{path}:{n}"
        turns, media = [], []
        for t, turn in enumerate(obj.get("turns") or obj.get("conversations") or []):
            role = ROLES.get(str(turn.get("role", turn.get("from", ""))).lower())
            if role is None:
                raise InputError(
                    f"{where}: turn {t} has role {turn.get('role')!r}; "
                    f"expected one of {sorted(ROLES)}"
                )
            content = turn.get("content", turn.get("value"))
            items = [content] if isinstance(content, str) else content
            if not isinstance(items, list):
                raise InputError(f"{where}: turn {t} content must be a string or a list")
            out = []
            for item in items:
                if isinstance(item, str):
                    out.append(item)
                    continue
                mods = [m for m in media_modalities() if isinstance(item, dict) and m in item]
                if len(mods) != 1:
                    raise InputError(f"{where}: turn {t} item {item!r} names no single modality")
                media.append(_media(base, mods[0], item[mods[0]], f"{where} turn {t}"))
                out.append({"media": len(media) - 1})
            turns.append({"role": role, "content": out})
        if not turns:
            raise InputError(f"{where}: dialogue without turns")
        ex_id = str(obj.get("id", f"{os.path.basename(path)}:{n}"))
        yield RawItem(
            ex_id,
            "dialogue",
            "",
            tuple(media),
            tuple(turns),
            meta={"file": os.path.basename(path), "line": n},
        )


def read_pairs(path: str, modality: str) -> Iterator[RawItem]:
    """'<modality>_text' pairs of any registered modality from .jsonl: {"<modality>": path |
    "<modality>_codes": codes, "caption" | "text": str}."""
    kind = modality + PAIR_SUFFIX
    for n, obj in _jsonl(path):
        yield _pair(path, n, obj, kind, modality, ("caption", "text"),
                    (modality, modality + "_codes"))


# Kinds with formats of their own; every other registered '<m>_text' kind reads read_pairs'.
READERS = {"image_text": read_image_text, "speech_text": read_speech_text,
           "music_text": read_music_text, DIALOGUE: read_dialogues}  # fmt: skip


def reader(kind: str) -> Callable[[str], Iterator[RawItem]]:
    """The reader of shard kind `kind` (one of shards.kinds()); InputError otherwise."""
    if kind in READERS:
        return READERS[kind]
    modality = pair_modality(kind)
    if modality is None:
        raise InputError(f"kind {kind!r}; expected one of {list(kinds())}")
    return lambda path: read_pairs(path, modality)


def read_inputs(kind: str, paths: list[str]) -> list[RawItem]:
    """All items of `paths` for `kind`, in input order; ids must be unique."""
    read = reader(kind)
    items, seen = [], {}
    for p in paths:
        if not storage.exists(p):
            raise InputError(f"{p}: no such file or directory")
        for item in read(p):
            if item.id in seen:
                raise InputError(f"{p}: id {item.id!r} repeats one from {seen[item.id]}")
            seen[item.id] = p
            items.append(item)
    return items
