"""Running inference requests: base and chat, batched by output modality, media written out.

`Engine` turns parsed requests into prompts, generates every group of requests that share an
output modality in one batched `generate` call, and writes replies and media. `run_batch`
(a JSONL file -> OUT/results.jsonl + media) and `run_interactive` (one request per line) are
what `python -m anygpt_jax.infer` calls; tests call them directly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import gin

from anygpt_jax import partitioning, storage
from anygpt_jax.api import AnyGPT
from anygpt_jax.inference import GenerationSettings, generate
from anygpt_jax.inference.chat import (
    Conversation,
    base_instruction,
    base_prompt_ids,
    base_stop_ids,
    reply_segments,
)
from anygpt_jax.inference.generate import check_length
from anygpt_jax.inference.media import MediaCodecs
from anygpt_jax.inference.requests import (
    BaseRequest,
    ChatMessage,
    ChatRequest,
    MediaRef,
    RequestError,
    check_modality,
    parse_base,
    parse_chat_message,
    read_jsonl,
)
from anygpt_jax.vocab import ModalitySpan, Segment

RESULTS_FILE = "results.jsonl"
MODES = ("base", "chat")
# Errors a request can raise without the session being at fault: bad input or settings.
REQUEST_ERRORS = (RequestError, ValueError, OSError)


@gin.configurable
def load_model(ckpt: str, use_mesh: bool = False, overrides: dict | None = None,
               weights: str = "float32") -> AnyGPT:
    """The model of `ckpt`; with `use_mesh`, sharded over `partitioning.make_mesh()` (gin);
    `weights` as AnyGPT.load takes it (float32, bfloat16, int8)."""
    mesh = partitioning.make_mesh() if use_mesh else None
    model = AnyGPT.load(ckpt, mesh=mesh, weights=weights, **(overrides or {}))
    if model.vocab is None:
        raise ValueError(f"{ckpt} has no vocabulary (vocab/); inference needs one")
    return model


@dataclasses.dataclass
class Engine:
    """A loaded model, its media codecs and the generation seed; see the module docstring."""

    model: AnyGPT
    codecs: MediaCodecs
    seed: int = 0
    constrain: bool = True
    # Prompts longer than this are refused per request (the model's context always applies).
    max_prompt_tokens: int | None = None
    # Decode steps between streamed pieces (and between a continuous batch's joins): each
    # hand-off leaves the compiled loop (~0.5 ms), 8 tokens are a few ms of a reply.
    stream_chunk: int = 8

    @property
    def vocab(self):
        return self.model.vocab

    # ----- base -------------------------------------------------------------------------------

    def run_base(self, requests: Sequence[BaseRequest], out_dir: str,
                 names: Sequence[str]) -> list[dict]:
        """Results (module docstring of infer) of base requests, in order; media in out_dir."""
        results: list[dict | None] = [None] * len(requests)
        resolve = settings_cache()
        spans = self._encode_inputs([r.media for r in requests])
        prompts: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            try:
                if isinstance(spans[i], Exception):
                    raise spans[i]
                if r.voice is not None:
                    self.codecs.check_voice(r.voice)
                instruction = r.instruction or base_instruction(
                    r.direction, f"{r.direction}|{r.text or r.media.path}", self.seed)
                prompt = base_prompt_ids(self.vocab, r.direction, instruction, r.text, spans[i])
                self._check_length(prompt, resolve(r.target))
                prompts[i] = prompt
                results[i] = {"instruction": instruction}
            except REQUEST_ERRORS as e:
                results[i] = error_record(e)
        for target in sorted({requests[i].target for i in prompts}):
            group = [i for i in prompts if requests[i].target == target]
            stops = base_stop_ids(self.vocab, target)
            outs = self._generate([prompts[i] for i in group], resolve(target), stops)
            for i, ids in zip(group, outs, strict=True):
                if isinstance(ids, Exception):
                    results[i] = error_record(ids)
                    continue
                segs, finished = reply_segments(self.vocab, ids, stops,
                                                None if target == "text" else target)
                try:
                    reply = self._write_reply(segs, out_dir, names[i], voice=requests[i].voice)
                except REQUEST_ERRORS as e:  # e.g. a silent voice prompt
                    results[i] = error_record(e)
                    continue
                results[i] = {**results[i], **reply, "finished": finished,
                              "num_new_tokens": len(ids), "error": None}
        return [{"mode": "base", "id": r.id, "request": describe_base(r), **res}
                for r, res in zip(requests, results, strict=True)]

    # ----- chat -------------------------------------------------------------------------------

    def chat_round(self, conversations: Sequence[Conversation], messages: Sequence[ChatMessage],
                   out_dir: str, names: Sequence[str],
                   streams: Sequence[Callable[[list[int]], None] | None] | None = None,
                   ) -> list[dict]:
        """Sends message i to conversation i (all generated together, grouped by settings) and
        returns one turn record each; a conversation's history grows only on success.
        streams[i], when given, receives message i's new ids as they are decoded."""
        resolve = settings_cache()
        refs = [[p for p in m.parts if isinstance(p, MediaRef)] for m in messages]
        flat = self._encode_inputs([r for rs in refs for r in rs])
        records: list[dict] = [{"user": describe_message(m)} for m in messages]
        segments: dict[int, list[Segment]] = {}
        prompts: dict[int, list[int]] = {}
        k = 0
        for i, m in enumerate(messages):
            mine, k = flat[k : k + len(refs[i])], k + len(refs[i])
            try:
                segments[i], prompts[i], _ = self.chat_prompt(conversations[i], m, mine, resolve)
            except REQUEST_ERRORS as e:
                records[i].update(error_record(e))

        def key(i):
            return messages[i].to or "chat", tuple(conversations[i].stop_ids), messages[i].settings

        for group_key in sorted({key(i) for i in prompts}, key=repr):
            settings_name, stops, overrides = group_key
            group = [i for i in prompts if key(i) == group_key]
            row_streams = [streams[i] if streams else None for i in group]
            outs = self._generate([prompts[i] for i in group], resolve(settings_name, overrides),
                                  list(stops), _fan_out(row_streams))
            for i, ids in zip(group, outs, strict=True):
                try:
                    if isinstance(ids, Exception):
                        raise ids
                    records[i].update(self.chat_reply(conversations[i], segments[i], ids,
                                                      stops, out_dir, names[i]))
                except REQUEST_ERRORS as e:
                    records[i].update(error_record(e))
        return records

    def chat_prompt(self, conversation: Conversation, message: ChatMessage,
                    spans: Sequence[ModalitySpan | Exception],
                    resolve: Callable[..., GenerationSettings] | None = None,
                    ) -> tuple[list[Segment], list[int], GenerationSettings]:
        """(the message's segments, the prompt ids, the generation settings) of sending
        `message` (its media encoded as `spans`) to `conversation`; raises a request error
        (REQUEST_ERRORS) when it cannot be sent. `resolve`: settings_for or a cache of it."""
        resolve = resolve or settings_for
        segments = message_segments(message, spans)
        prompt = conversation.prompt_ids(segments)
        settings = resolve(message.to or "chat", message.settings)
        self._check_length(prompt, settings)
        return segments, prompt, settings

    def chat_reply(self, conversation: Conversation, segments: Sequence[Segment],
                   ids: list[int], stops: Sequence[int], out_dir: str, name: str) -> dict:
        """The turn record's fields for the new `ids` generated after chat_prompt (media
        written to out_dir); the conversation then holds the exchange. Raises a request error
        when a medium cannot be written."""
        reply, finished = conversation.reply(ids, stops)
        fields = self._write_reply(reply, out_dir, name)
        conversation.add_exchange(segments, reply)
        return {**fields, "finished": finished, "num_new_tokens": len(ids), "error": None}

    # ----- shared -----------------------------------------------------------------------------

    def _check_length(self, prompt: Sequence[int], settings: GenerationSettings) -> None:
        """ValueError (this request only) when the prompt does not fit; names the lengths."""
        check_length(len(prompt), settings.max_new_tokens,
                     self.model.config.max_position_embeddings, "the prompt",
                     self.max_prompt_tokens)

    def _encode_inputs(
        self, refs: Sequence[MediaRef | None]
    ) -> list[ModalitySpan | Exception | None]:
        real = [i for i, r in enumerate(refs) if r is not None]
        out: list = [None] * len(refs)
        for i, span in zip(real, self.codecs.encode([refs[i] for i in real]), strict=True):
            out[i] = span
        return out

    def _generate(self, prompts: list[list[int]], settings: GenerationSettings, stops: list[int],
                  on_tokens: Callable[[list[list[int]]], None] | None = None,
                  ) -> list[list[int] | Exception]:
        """One batched call; a failure (e.g. a prompt too long) fails the whole group. Beam
        search streams nothing (its beams reorder their past): its reply comes whole."""
        try:
            outs = generate(self.model, prompts, settings, seed=self.seed, stop_ids=stops,
                            constrain=self.constrain,
                            on_tokens=on_tokens if settings.num_beams == 1 else None,
                            chunk=self.stream_chunk)
        except ValueError as e:
            return [e] * len(prompts)
        return [[int(t) for t in ids] for ids in outs]

    def _write_reply(self, segments: Sequence[Segment], out_dir: str, name: str,
                     voice: str | None = None) -> dict:
        """{"text": reply with `[modality: path]` where media went, "media": [records]}."""
        media, parts = [], []
        spans = [s for s in segments if isinstance(s, ModalitySpan)]
        for s in segments:
            if isinstance(s, ModalitySpan):
                stem = name if len(spans) == 1 else f"{name}-{len(media)}"
                rec = self.codecs.write(s, out_dir, stem, seed=self.seed, voice=voice)
                media.append(rec)
                parts.append(f"[{s.modality}: {rec['path']}]")
            else:
                parts.append(s)
        return {"text": "".join(parts).strip(), "media": media}


def message_segments(message: ChatMessage,
                     spans: Sequence[ModalitySpan | Exception]) -> list[Segment]:
    """The message's parts with its media references replaced by their encoded spans, in
    order; raises the first encoding error among `spans`."""
    bad = next((s for s in spans if isinstance(s, Exception)), None)
    if bad is not None:
        raise bad
    it = iter(spans)
    return [next(it) if isinstance(p, MediaRef) else p for p in message.parts]


def _fan_out(streams: Sequence[Callable[[list[int]], None] | None]
             ) -> Callable[[list[list[int]]], None] | None:
    """generate's on_tokens that hands row r's new ids to streams[r] (None: none streams)."""
    if not any(streams):
        return None

    def on_tokens(new: list[list[int]]) -> None:
        for stream, ids in zip(streams, new, strict=True):
            if stream is not None and ids:
                stream(ids)

    return on_tokens


def settings_cache() -> Callable[..., GenerationSettings]:
    """settings_for, memoized for one batch of requests: each call reads gin's bindings
    (~0.4 ms), and a batch's requests mostly share their settings."""
    return functools.lru_cache(maxsize=None)(settings_for)


def settings_for(output: str, overrides: Sequence[tuple[str, Any]] = ()) -> GenerationSettings:
    """The generation settings of `output` with a message's own changes applied (validated)."""
    base = GenerationSettings.for_output(output)
    return GenerationSettings.from_dict(dict(overrides), "settings", base) if overrides else base


def error_record(e: BaseException) -> dict:
    """The result fields of a failed request."""
    return {"error": str(e)}


def describe_base(r: BaseRequest) -> str:
    """A base request in the line syntax."""
    tail = f"|{r.voice}" if r.voice else ""
    return f"{r.source}|{r.target}|{r.text or r.media.path}{tail}"


def describe_message(m: ChatMessage) -> str:
    """A chat message in the `[modality: path]` syntax."""
    return "".join(p if isinstance(p, str) else f"[{p.modality}: {p.path}]" for p in m.parts)


def media_name(line: int, request_id: str) -> str:
    """A file-name stem for a request's media: its line number and a sanitized id."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", request_id)[:40].strip("._")
    return f"{line:05d}-{safe}" if safe else f"{line:05d}"


# ----- batch ----------------------------------------------------------------------------------


def run_batch(engine: Engine, requests_path: str, mode: str, out_dir: str) -> tuple[int, int]:
    """Runs a JSONL file into out_dir (results.jsonl + media), committed whole (local or gs://,
    see storage.output_dir); -> (done, failed).

    Base requests sharing an output modality are one batched call; chat dialogues advance
    one message per round, all dialogues of a round together.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    entries = list(read_jsonl(requests_path, mode))
    with storage.output_dir(out_dir) as out:
        tmp = os.fspath(out)
        records: dict[int, dict] = {}
        good = [(n, r) for n, r in entries if not isinstance(r, Exception)]
        for n, r in entries:
            if isinstance(r, Exception):
                records[n] = {"mode": mode, "id": None, **error_record(r)}
        if mode == "base":
            names = [media_name(n, r.id) for n, r in good]
            out = engine.run_base([r for _, r in good], tmp, names)
            records.update({n: rec for (n, _), rec in zip(good, out, strict=True)})
        else:
            records.update(_run_dialogues(engine, good, tmp))
        storage.write_text(os.path.join(tmp, RESULTS_FILE), "".join(
            json.dumps({"line": n, **records[n]}, ensure_ascii=False) + "\n"
            for n in sorted(records)))
    failed = sum(1 for rec in records.values() if _failed(rec))
    return len(records) - failed, failed


def _failed(rec: dict) -> bool:
    return bool(rec.get("error")) or any(t.get("error") for t in rec.get("turns", []))


def _run_dialogues(engine: Engine, good: list[tuple[int, ChatRequest]], out_dir: str) -> dict:
    convs = {n: Conversation(engine.vocab) for n, _ in good}
    turns: dict[int, list[dict]] = {n: [] for n, _ in good}
    alive = {n for n, _ in good}
    for t in range(max((len(r.messages) for _, r in good), default=0)):
        batch = [(n, r) for n, r in good if n in alive and t < len(r.messages)]
        out = engine.chat_round([convs[n] for n, _ in batch], [r.messages[t] for _, r in batch],
                                out_dir, [f"{media_name(n, r.id)}-t{t}" for n, r in batch])
        for (n, _), rec in zip(batch, out, strict=True):
            turns[n].append(rec)
            if rec.get("error"):  # later messages assume this reply: the dialogue stops here
                alive.discard(n)
    return {n: {"mode": "chat", "id": r.id, "turns": turns[n],
                "error": next((x["error"] for x in turns[n] if x.get("error")), None)}
            for n, r in good}


# ----- interactive ----------------------------------------------------------------------------

CHAT_HELP = ("chat: type a message; [image: PATH], [speech: PATH], [music: PATH] insert media. "
             "/to MODALITY uses that output's generation settings (/to chat: the default), "
             "/clear forgets the history, /quit ends.")
BASE_HELP = ("base: input|output|content, e.g. text|image|a red bus, image|text|cat.png, "
             "text|speech|hello[|voice.wav], speech|text|a.wav, text|music|jazz, music|text|b.wav;"
             " quit ends.")


def run_interactive(engine: Engine, mode: str, out_dir: str, stdin: IO[str] = sys.stdin,
                    stdout: IO[str] = sys.stdout, stderr: IO[str] = sys.stderr) -> int:
    """One request per line until EOF or quit; a bad request prints `error: ...` to stderr
    and the session goes on. Returns the number of failed requests."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    storage.check_access(out_dir, write=True)
    storage.makedirs(out_dir)
    prefix = time.strftime("%Y%m%d-%H%M%S")  # media of earlier sessions are never overwritten
    tty = stdin.isatty()
    print(CHAT_HELP if mode == "chat" else BASE_HELP, file=stdout)
    state = {"to": None, "conv": Conversation(engine.vocab), "n": 0, "failed": 0}
    handle = _chat_line if mode == "chat" else _base_line
    while True:
        if tty:
            print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() in ("quit", "exit", "/quit", "/exit"):
            return state["failed"]
        if not line.strip():
            continue
        state["n"] += 1
        name = f"{prefix}-{state['n']:04d}"
        try:
            rec = handle(engine, line.strip(), out_dir, name, state, stdout)
        except REQUEST_ERRORS as e:
            rec = error_record(e)
        if rec is None:
            continue
        if rec.get("error"):
            state["failed"] += 1
            print(f"error: {rec['error']}", file=stderr, flush=True)
        else:
            _print_reply(rec, out_dir, stdout)


def _base_line(engine: Engine, line: str, out_dir: str, name: str, state: dict,
               stdout: IO[str]) -> dict:
    [rec] = engine.run_base([parse_base(line)], out_dir, [name])
    return rec


def _chat_line(engine: Engine, line: str, out_dir: str, name: str, state: dict,
               stdout: IO[str]) -> dict | None:
    if line.startswith("/"):
        cmd, _, arg = line.partition(" ")
        commands: dict[str, Callable[[], Any]] = {
            "/clear": lambda: state["conv"].clear(),
            "/to": lambda: state.update(to=_to_hint(arg)),
            "/help": lambda: None,
        }
        if cmd not in commands:
            raise RequestError(f"unknown command {cmd!r}; {CHAT_HELP}")
        commands[cmd]()
        print({"/clear": "history cleared", "/help": CHAT_HELP}.get(
            cmd, f"replies use the {state['to'] or 'chat'} generation settings"), file=stdout)
        return None
    message = parse_chat_message(line, to=state["to"])
    [rec] = engine.chat_round([state["conv"]], [message], out_dir, [name])
    return rec


def _to_hint(arg: str) -> str | None:
    arg = arg.strip().lower()
    if arg in ("", "chat"):
        return None
    return check_modality(arg, "/to")


def _print_reply(rec: dict, out_dir: str, stdout: IO[str]) -> None:
    print(rec.get("text", ""), file=stdout)
    for m in rec.get("media", []):
        path = os.path.join(out_dir, m["path"])
        note = f" ({m['note']})" if m.get("note") else ""
        print(f"  {m['modality']}: {path}{note}", file=stdout)
    stdout.flush()

