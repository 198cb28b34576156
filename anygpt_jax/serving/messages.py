"""OpenAI-shaped chat requests -> the inference engine's history and message.

A request is `{"messages": [...], "reply_modality": "text"|"image"|"speech"|"music", ...}` with
OpenAI's chat message shape. A message's `content` is a string or a list of parts:
- `{"type": "text", "text": ...}`;
- `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` (data URLs only:
  the server fetches nothing);
- `{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"}, "modality":
  "speech"|"music"}` (speech when `modality` is left out);
- `{"type": "media", "modality": M, "data": BASE64}` or, in a multipart upload,
  `{"type": "media", "modality": M, "file": FIELD}` naming an uploaded file, for any media
  modality of the registry.
Every earlier user message must be followed by the assistant's reply; the last message is the
user's. `"mode": "base"` runs AnyGPT's pre-training templates instead (a base checkpoint cannot
chat): one user message, text or one medium, to `reply_modality` (text|image, image|text,
text|speech, ...; the reply's modality is then guaranteed). AnyGPT's settings ride along (chat
mode): `temperature`, `top_p`, `top_k`, `max_tokens` and `min_tokens` (new tokens),
`repetition_penalty`, `num_beams`, `do_sample`. Media become files the server names
in its own upload directory: no path of a request is ever opened.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import dataclasses
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from anygpt_jax.inference.requests import (
    BaseRequest,
    ChatMessage,
    MediaRef,
    RequestError,
    make_base,
)
from anygpt_jax.modalities.registry import media_modalities

REPLY_MODALITIES = ("text",)  # plus every registered media modality (reply_modalities())
# API setting -> GenerationSettings field.
SETTINGS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens",
            "repetition_penalty": "repetition_penalty", "num_beams": "num_beams",
            "do_sample": "do_sample"}
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,(.*)$", re.S)


class PayloadTooLarge(RequestError):
    """The request's media exceed the server's upload limit."""


@dataclasses.dataclass
class ChatJob:
    """One API request: the history as (user, assistant) message pairs, the new message."""

    history: list[tuple[ChatMessage, ChatMessage]]
    message: ChatMessage
    reply_modality: str
    base: BaseRequest | None = None  # mode "base": the base-model request instead of a chat


def reply_modalities() -> tuple[str, ...]:
    """What a reply may be asked to be: text, or any registered media modality."""
    return (*REPLY_MODALITIES, *media_modalities())


# The files saved for the request being parsed (a context variable: asyncio.to_thread and
# concurrent requests each see their own list).
_SAVED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("saved", default=None)


class MediaStore:
    """Where decoded uploads go: files named by the server, never by a request. A request's
    uploads live as long as the request (the API is stateless: a history carries its media
    again), so a long-running server keeps none of them."""

    def __init__(self, root: str, max_bytes: int):
        self.root, self.max_bytes = root, max_bytes
        os.makedirs(root, exist_ok=True)  # local: a directory of this host's, never a request's

    def save(self, data: bytes, suffix: str = "") -> str:
        """Writes `data` to a new file of the store; returns its path."""
        path = os.path.join(self.root, uuid.uuid4().hex + suffix)
        with open(path, "wb") as f:  # local: the server's own upload directory
            f.write(data)
        saved = _SAVED.get()
        if saved is not None:
            saved.append(path)
        return path

    @contextlib.contextmanager
    def collecting(self) -> Iterator[list[str]]:
        """Yields the list of files `save` writes inside the block (for `remove`)."""
        token = _SAVED.set([])
        try:
            yield _SAVED.get()
        finally:
            _SAVED.reset(token)

    def remove(self, paths: list[str]) -> None:
        """Deletes files this store saved (those already gone are skipped)."""
        for path in paths:
            if os.path.dirname(path) == self.root:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)  # local: the server's own upload directory


def parse_chat_request(payload: Any, store: MediaStore,
                       uploads: Mapping[str, bytes] | None = None) -> ChatJob:
    """The request body (decoded JSON) -> ChatJob; RequestError naming the field at fault."""
    if not isinstance(payload, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(payload).__name__}")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects")
    reply = payload.get("reply_modality", "text")
    if reply not in reply_modalities():
        raise RequestError(f"reply_modality {reply!r} is not one of {list(reply_modalities())}")
    settings = _settings(payload)
    budget = [store.max_bytes]
    parsed = [_message(m, k, store, uploads or {}, budget) for k, m in enumerate(messages)]
    roles = [role for role, _ in parsed]
    if roles[-1] != "user":
        raise RequestError(f"messages[{len(roles) - 1}]: the last message must be the user's")
    expected = ["user", "assistant"] * (len(roles) // 2) + ["user"]
    if roles != expected:
        raise RequestError(f"messages: roles must alternate user, assistant, ..., user; got "
                           f"{roles}")
    turns = [parts for _, parts in parsed]
    history = [(ChatMessage(tuple(turns[k])), ChatMessage(tuple(turns[k + 1])))
               for k in range(0, len(turns) - 1, 2)]
    to = None if reply == "text" else reply
    final = ChatMessage(tuple(turns[-1]), to, settings)
    mode = payload.get("mode", "chat")
    if mode == "chat":
        return ChatJob(history, final, reply)
    if mode != "base":
        raise RequestError(f"mode {mode!r} is not 'chat' or 'base'")
    if history:
        raise RequestError("mode 'base' takes one user message, no history")
    refs = [p for p in final.parts if isinstance(p, MediaRef)]
    if len(refs) > 1:
        raise RequestError("mode 'base' takes text or one medium, not several")
    if refs:
        base = make_base(refs[0].modality, reply, refs[0].path, where="messages[0]")
    else:
        base = make_base("text", reply, "".join(final.parts), where="messages[0]")
    return ChatJob([], final, reply, base)


def _settings(payload: dict) -> tuple[tuple[str, Any], ...]:
    changed = {}
    for name, field in SETTINGS.items():
        if payload.get(name) is not None:
            changed[field] = payload[name]
    return tuple(sorted(changed.items()))


def _message(message: Any, k: int, store: MediaStore, uploads: Mapping[str, bytes],
             budget: list[int]) -> tuple[str, list]:
    where = f"messages[{k}]"
    if not isinstance(message, dict):
        raise RequestError(f"{where} must be an object with 'role' and 'content'")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise RequestError(f"{where}.role must be 'user' or 'assistant', got {role!r}")
    content = message.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise RequestError(f"{where}.content must be a string or a non-empty list of parts")
    parts: list = []
    for j, part in enumerate(content):
        parts.append(_part(part, f"{where}.content[{j}]", store, uploads, budget))
    if not any(isinstance(p, MediaRef) or p.strip() for p in parts):
        raise RequestError(f"{where}: empty message")
    return role, parts


def _part(part: Any, where: str, store: MediaStore, uploads: Mapping[str, bytes],
          budget: list[int]) -> str | MediaRef:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise RequestError(f"{where} must be an object with a 'type'")
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.text must be a string")
        return part["text"]
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url") if isinstance(
            part.get("image_url"), dict) else None
        match = _DATA_URL.match(url) if isinstance(url, str) else None
        if match is None:
            raise RequestError(f"{where}.image_url.url must be a base64 data URL "
                               "(data:image/png;base64,...); the server fetches no URL")
        return _media("image", _b64(match.group(3), where), where, store, budget)
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            raise RequestError(f"{where}.input_audio must be {{'data': BASE64, 'format': ...}}")
        modality = part.get("modality", "speech")
        if modality not in ("speech", "music"):
            raise RequestError(f"{where}.modality: audio is 'speech' or 'music', got "
                               f"{modality!r}")
        return _media(modality, _b64(audio["data"], where), where, store, budget)
    if kind == "media":
        modality = part.get("modality")
        if modality not in media_modalities():
            raise RequestError(f"{where}.modality {modality!r} is not one of "
                               f"{list(media_modalities())}")
        if isinstance(part.get("file"), str):
            if part["file"] not in uploads:
                raise RequestError(f"{where}.file {part['file']!r} names no uploaded file")
            data = uploads[part["file"]]
        elif isinstance(part.get("data"), str):
            data = _b64(part["data"], where)
        else:
            raise RequestError(f"{where} needs 'data' (base64) or 'file' (an upload's field)")
        return _media(modality, data, where, store, budget)
    raise RequestError(f"{where}.type {kind!r} is not one of text, image_url, input_audio, "
                       "media")


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{where}: not valid base64 ({e})") from e


def _media(modality: str, data: bytes, where: str, store: MediaStore,
           budget: list[int]) -> MediaRef:
    if not data:
        raise RequestError(f"{where}: empty {modality} data")
    budget[0] -= len(data)
    if budget[0] < 0:
        raise PayloadTooLarge(f"{where}: the request's media exceed the upload limit of "
                              f"{store.max_bytes} bytes")
    suffix = ".png" if modality == "image" else ".wav"
    return MediaRef(modality, store.save(data, suffix))
