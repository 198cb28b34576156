"""Inference requests: AnyGPT's base-mode syntax, chat messages with media, JSONL batches.

Base mode (REFERENCE.md §3), one request per line:

    text|image|{caption}            image|text|{image path}
    text|speech|{text}[|{voice.wav}] speech|text|{wav}
    text|music|{caption}            music|text|{wav}

The last field is taken whole (a caption may hold '|'), except for text|speech, where a
last '|' separates the optional voice prompt.

Chat mode: free text in which `[image: PATH]`, `[speech: PATH]` and `[music: PATH]` insert
media, e.g. `What is in [image: cat.png]? Answer in speech.`

Batch files (`--requests in.jsonl`) hold one JSON object per line:

    {"id": "a", "request": "text|image|a red bus"}                     base, line syntax
    {"id": "b", "from": "text", "to": "speech", "input": "hi", "voice": "v.wav"}
    {"id": "c", "messages": ["Hi [image: a.png]", {"content": "Play it", "to": "music"}]}

`instruction` (base) fixes the instruction instead of drawing it from the pool; a chat
message's `to` picks the generation settings of that output modality for its reply.
Relative media paths in a batch file are resolved against the file's directory; every path
(the batch file, media) may be local or a gs:// URL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from anygpt_jax import storage
from anygpt_jax.modalities.registry import media_modalities, media_modality


def base_forms() -> tuple[str, ...]:
    """The base request forms of every registered modality (its record's request_forms)."""
    return tuple(f for m in media_modalities() for f in media_modality(m).request_forms)


# `[word: path]`; the word decides whether it is a media reference (see _media_or_text).
_MEDIA_TAG = re.compile(r"\[\s*([A-Za-z_]+)\s*:\s*([^\]]*?)\s*\]")


class RequestError(ValueError):
    """A request that cannot be run; the message names the request and the field at fault."""


@dataclasses.dataclass(frozen=True)
class MediaRef:
    """A media file given as input: its modality and path."""

    modality: str
    path: str


@dataclasses.dataclass(frozen=True)
class BaseRequest:
    """One base-model request: `source` input -> `target` output, AnyGPT's stage-1 template."""

    source: str
    target: str
    text: str = ""  # the input text (source == "text")
    media: MediaRef | None = None  # the input media (source != "text")
    voice: str | None = None  # text->speech voice prompt
    instruction: str | None = None  # fixed instruction; None draws one from the pool
    id: str = ""

    @property
    def direction(self) -> str:
        """'text_to_image', 'speech_to_text', ... (a key of prompts.INSTRUCTION_POOLS)."""
        return f"{self.source}_to_{self.target}"

    @property
    def output_modality(self) -> str:
        return self.target


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    """A user message: text runs and media references in order, plus an output hint."""

    parts: tuple[str | MediaRef, ...]
    to: str | None = None  # the expected reply modality; picks the generation settings
    # GenerationSettings fields changed for this message only, as sorted (name, value) pairs.
    settings: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A scripted dialogue: each message gets the model's reply before the next is sent."""

    messages: tuple[ChatMessage, ...]
    id: str = ""


Request = BaseRequest | ChatRequest


def check_modality(word: str, where: str, allowed: tuple[str, ...] | None = None) -> str:
    """`word` lower-cased if it is one of `allowed` (default: text and the registered media
    modalities), else a RequestError naming it."""
    allowed = ("text", *media_modalities()) if allowed is None else allowed
    m = word.strip().lower()
    if m not in allowed:
        raise RequestError(f"{where}: unknown modality {word.strip()!r}; expected one of "
                           f"{', '.join(allowed)}")
    return m


def _media_path(path: str, modality: str, base_dir: str | None, where: str) -> str:
    path = path.strip()
    if not path:
        raise RequestError(f"{where}: empty {modality} file path")
    relative = not (os.path.isabs(path) or storage.is_remote(path))
    full = os.path.join(base_dir, path) if base_dir and relative else path
    if not storage.isfile(full):
        raise RequestError(f"{where}: {modality} file not found: {full}")
    return full


def parse_base(line: str, base_dir: str | None = None, where: str = "request",
               request_id: str = "", instruction: str | None = None) -> BaseRequest:
    """Parses `input|output|content[|voice]` (module docstring); RequestError names the fault."""
    fields = line.strip().split("|", 2)
    if len(fields) < 3:
        raise RequestError(f"{where}: {line.strip()!r} is not a base request; expected one of "
                           f"{'; '.join(base_forms())}")
    src = check_modality(fields[0], f"{where} (input modality)")
    dst = check_modality(fields[1], f"{where} (output modality)")
    voice = None
    content = fields[2]
    if src == "text" and dst != "text" and media_modality(dst).takes_voice and "|" in content:
        content, voice = content.rsplit("|", 1)
    return make_base(src, dst, content, voice, base_dir, where, request_id, instruction)


def make_base(src: str, dst: str, content: str, voice: str | None = None,
              base_dir: str | None = None, where: str = "request", request_id: str = "",
              instruction: str | None = None) -> BaseRequest:
    """A checked BaseRequest from its fields (media files must exist)."""
    if (src, dst) not in {p for m in media_modalities() for p in (("text", m), (m, "text"))}:
        raise RequestError(f"{where}: {src}|{dst} is not a base-model direction; supported: "
                           f"{'; '.join(base_forms())}")
    content = content.strip()
    if not content:
        raise RequestError(f"{where}: empty input for {src}|{dst}")
    if instruction is not None and not instruction.strip():
        raise RequestError(f"{where}: empty instruction")
    if voice is not None and voice.strip():
        voice = _media_path(voice, "voice prompt", base_dir, where)
    else:
        voice = None
    if src == "text":
        return BaseRequest(src, dst, text=content, voice=voice, instruction=instruction,
                           id=request_id)
    media = MediaRef(src, _media_path(content, src, base_dir, where))
    return BaseRequest(src, dst, media=media, instruction=instruction, id=request_id)


def parse_chat_message(text: str, base_dir: str | None = None, where: str = "message",
                       to: str | None = None) -> ChatMessage:
    """Splits a chat message into text runs and `[image|speech|music: PATH]` references."""
    parts: list[str | MediaRef] = []
    pos = 0
    for m in _MEDIA_TAG.finditer(text):
        ref = _media_or_text(m, base_dir, where)
        if ref is None:
            continue
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(ref)
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    _refuse_unclosed_tags(parts, where)
    if not any(isinstance(p, MediaRef) or p.strip() for p in parts):
        raise RequestError(f"{where}: empty message")
    if to is not None:
        to = check_modality(to, f"{where} ('to')")
    return ChatMessage(tuple(parts), to)


def _media_or_text(m: re.Match, base_dir: str | None, where: str) -> MediaRef | None:
    word, path = m.group(1), m.group(2)
    if word.lower() in media_modalities():
        return MediaRef(word.lower(), _media_path(path, word.lower(), base_dir, where))
    # Brackets are ordinary text ("[note: see above]"), but a one-word argument (a file name,
    # "[bogus: x]") means a mistyped media tag, which should not silently become text.
    if path and not re.search(r"\s", path):
        tags = ", ".join(f"[{name}: PATH]" for name in media_modalities())
        raise RequestError(f"{where}: unknown modality {word!r} in {m.group(0)!r}; media tags "
                           f"are {tags}")
    return None


def _refuse_unclosed_tags(parts: list, where: str) -> None:
    """RequestError for a media tag left open (`[image: cat.png` with no `]`)."""
    words = "|".join(map(re.escape, media_modalities()))
    opened = re.compile(rf"\[\s*({words})\s*:", re.IGNORECASE)
    for p in parts:
        hit = opened.search(p) if isinstance(p, str) else None
        if hit:
            tail = p[hit.start():][:40]
            raise RequestError(f"{where}: unclosed media tag {tail!r}; write "
                               f"[{hit.group(1).lower()}: PATH]")


def parse_json_request(obj: object, mode: str, base_dir: str | None, where: str) -> Request:
    """One decoded JSONL object (module docstring forms) -> a request of `mode`."""
    if not isinstance(obj, dict):
        raise RequestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id", "")
    if not isinstance(rid, (str, int)):
        raise RequestError(f"{where}: 'id' must be a string or integer, got {rid!r}")
    rid = str(rid)
    if mode == "base":
        known = {"id", "request", "from", "to", "input", "voice", "instruction"}
        _no_unknown(obj, known, where)
        instruction = _opt_str(obj, "instruction", where)
        if "request" in obj:
            if {"from", "to", "input"} & set(obj):
                raise RequestError(f"{where}: give either 'request' or 'from'/'to'/'input'")
            return parse_base(_str(obj, "request", where), base_dir, where, rid, instruction)
        for key in ("from", "to", "input"):
            if key not in obj:
                raise RequestError(f"{where}: missing key {key!r} (or give 'request')")
        src = check_modality(_str(obj, "from", where), f"{where} ('from')")
        dst = check_modality(_str(obj, "to", where), f"{where} ('to')")
        return make_base(src, dst, _str(obj, "input", where), _opt_str(obj, "voice", where),
                         base_dir, where, rid, instruction)
    if mode != "chat":
        raise ValueError(f"mode must be 'base' or 'chat', got {mode!r}")
    _no_unknown(obj, {"id", "messages"}, where)
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for k, msg in enumerate(messages):
        at = f"{where}, message {k}"
        if isinstance(msg, str):
            out.append(parse_chat_message(msg, base_dir, at))
        elif isinstance(msg, dict):
            _no_unknown(msg, {"content", "to"}, at)
            out.append(parse_chat_message(_str(msg, "content", at), base_dir, at,
                                          _opt_str(msg, "to", at)))
        else:
            raise RequestError(f"{at}: expected a string or {{'content', 'to'}} object")
    return ChatRequest(tuple(out), rid)


def read_jsonl(path: str, mode: str) -> Iterator[tuple[int, Request | RequestError]]:
    """(line number, request or the error that line raised) for each non-blank line.

    Bad lines come back as errors instead of stopping the batch; an unreadable file raises.
    """
    if not storage.isfile(path):
        raise FileNotFoundError(f"requests file not found: {path}")
    base_dir = os.fspath(storage.path(path).parent)
    # Universal newlines, as a file opened in text mode reads them.
    text = storage.read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, RequestError(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        try:
            yield n, parse_json_request(obj, mode, base_dir, where)
        except RequestError as e:
            yield n, e


def _str(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise RequestError(f"{where}: {key!r} must be a string, got {value!r}")
    return value


def _opt_str(obj: dict, key: str, where: str) -> str | None:
    return None if obj.get(key) is None else _str(obj, key, where)


def _no_unknown(obj: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise RequestError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
