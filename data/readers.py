"""Readers of raw corpora -> RawItems (text plus media references: file paths or codes).

Formats (paths inside a file are relative to that file's directory):
- image_text: .jsonl {"image": path | "image_codes": [32 ints], "caption": str[, "id"]} or
  .csv with columns image, caption[, id]. A .jsonl pair may carry "meta": {...}, kept in the
  shard example's metadata (evaluation sets put their references there: data/eval_sets.py).
- speech_text: a LibriSpeech-style directory (`*.trans.txt` lines "UTT-ID transcript", audio
  `UTT-ID.flac` beside it) or .jsonl {"audio": path | "speech_codes": [ints], "text": str}.
- music_text: .jsonl {"audio": path | "music_codes": [[ints] x 4], "caption": str}.
- dialogue: .json (a list) or .jsonl of {"id", "turns": [{"role": "human"|"user"|"assistant"|
  "gpt"|"anygpt", "content": str | [str | {"image"|"speech"|"music": path | {"codes": ...}}]}]}.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

MODALITIES = ("image", "speech", "music")
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
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not valid JSON ({e})") from e
                if not isinstance(obj, dict):
                    raise InputError(f"{path}:{n}: expected a JSON object")
                yield n, obj


def _media(base: str, modality: str, value: Any, where: str) -> Media:
    if isinstance(value, str):
        return Media(modality, path=os.path.join(base, value))
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
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        for n, row in enumerate(rows, 2):
            yield _pair(path, n, row, "image_text", "image", ("caption",), ("image",))
        return
    for n, obj in _jsonl(path):
        yield _pair(
            path, n, obj, "image_text", "image", ("caption", "text"), ("image", "image_codes")
        )


def read_speech_text(path: str) -> Iterator[RawItem]:
    """Speech-transcript pairs from a LibriSpeech-style directory or .jsonl."""
    if os.path.isdir(path):
        found = False
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(f for f in files if f.endswith(".trans.txt")):
                found = True
                trans = os.path.join(root, name)
                with open(trans, encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        utt, _, text = line.strip().partition(" ")
                        if not text:
                            raise InputError(f"{trans}:{n}: expected 'UTTERANCE-ID transcript'")
                        audio = os.path.join(root, utt + ".flac")
                        yield RawItem(
                            utt,
                            "speech_text",
                            text,
                            (Media("speech", path=audio),),
                            meta={"file": os.path.relpath(audio, path)},
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
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
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
                mods = [m for m in MODALITIES if isinstance(item, dict) and m in item]
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


READERS = {"image_text": read_image_text, "speech_text": read_speech_text,
           "music_text": read_music_text, "dialogue": read_dialogues}  # fmt: skip


def read_inputs(kind: str, paths: list[str]) -> list[RawItem]:
    """All items of `paths` for `kind`, in input order; ids must be unique."""
    if kind not in READERS:
        raise InputError(f"kind {kind!r}; expected one of {sorted(READERS)}")
    items, seen = [], {}
    for p in paths:
        if not os.path.exists(p):
            raise InputError(f"{p}: no such file or directory")
        for item in READERS[kind](p):
            if item.id in seen:
                raise InputError(f"{p}: id {item.id!r} repeats one from {seen[item.id]}")
            seen[item.id] = p
            items.append(item)
    return items
