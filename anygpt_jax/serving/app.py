"""The HTTP API: OpenAI-shaped chat completions with media in and out, health and metrics.

    POST /v1/chat/completions   JSON (serving/messages.py), or multipart/form-data with the
                                JSON in the `request` field and files referenced by field name;
                                `"stream": true` answers with server-sent events, text as it is
                                decoded (chat mode; the last event has the media and the whole
                                reply)
    GET  /v1/media/{name}       a generated file (PNG, WAV, or codes as JSON)
    GET  /                      the chat page (static/: no asset from anywhere else)
    GET  /health                {"status": "ok", "model": ..., "queue": N}
    GET  /metrics               Prometheus text: requests, errors, queue length, new tokens

A bad request gets a 4xx with {"error": {"message", "type"}} and the server goes on: 400 for a
malformed body, an unknown modality, an unreadable medium or a prompt past the context, 401
without the API key (when one is set; generated media need none: their names are unguessable),
413 past the upload limit. Nothing of a request names a
file the server opens: uploads get server-made names, and /v1/media serves only the files this
server wrote, looked up by name in its own table.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import os
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from anygpt_jax.inference.requests import RequestError
from anygpt_jax.serving.messages import MediaStore, PayloadTooLarge, parse_chat_request
from anygpt_jax.serving.scheduler import BatchScheduler

MEDIA_TYPES = {"png": "image/png", "wav": "audio/wav", "codes": "application/json"}
INLINE_PARSE_BYTES = 64 * 1024  # larger bodies (media) are parsed on a worker thread
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")  # local: its page


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self, scheduler_queue):
        self.registry = CollectorRegistry()
        self.requests = Counter("anygpt_requests", "Chat requests answered, by HTTP status",
                                ["status"], registry=self.registry)
        self.errors = Counter("anygpt_request_errors", "Requests refused or failed, by kind",
                              ["kind"], registry=self.registry)
        self.tokens = Counter("anygpt_generated_tokens", "New tokens generated",
                              registry=self.registry)
        self.latency = Histogram("anygpt_request_seconds", "Time from queued to answered",
                                 registry=self.registry)
        self.round_seconds = Histogram("anygpt_round_seconds", "Time of a batched round",
                                       registry=self.registry)
        queue = Gauge("anygpt_queue_length", "Requests waiting for a round",
                      registry=self.registry)
        queue.set_function(scheduler_queue)

    def observe(self, record: dict, waited: float, round_seconds: float) -> None:
        """A finished request, as the scheduler reports it."""
        self.latency.observe(waited)
        self.round_seconds.observe(round_seconds)
        self.tokens.inc(record.get("num_new_tokens") or 0)


def make_app(scheduler: BatchScheduler, store: MediaStore, model_name: str,
             api_key: str | None = None, metrics: Metrics | None = None,
             media_ttl_s: float = 3600.0) -> FastAPI:
    """The ASGI app over a running scheduler; `api_key` None serves anyone; generated media
    are served (then deleted) `media_ttl_s` seconds after they are made."""
    app = FastAPI(title="anygpt-jax", docs_url=None, redoc_url=None)
    metrics = metrics or Metrics(scheduler.queue_length)
    scheduler.observer = metrics.observe  # each answered request: latency, round time, tokens
    files = GeneratedMedia(media_ttl_s)  # what this server wrote, by name

    def error(status: int, kind: str, message: str) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        metrics.requests.labels(str(status)).inc()
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    if api_key is not None:
        app.add_middleware(_KeyCheck, api_key=api_key, refuse=lambda: error(
            401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY)"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "queue": scheduler.queue_length()}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/media/{name}")
    async def media(name: str):
        found = files.get(name)
        if found is None:
            return error(404, "not_found", f"no generated file named {name!r} (generated files "
                         f"are kept {media_ttl_s:g} s)")
        path, media_type = found
        return FileResponse(path, media_type=media_type)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        length = int(request.headers.get("content-length") or 0)
        if length > 2 * store.max_bytes:  # base64 and form overhead on top of the media
            return error(413, "too_large", f"the request is {length} bytes; the limit is "
                         f"{store.max_bytes} bytes of media")
        with store.collecting() as saved:
            try:
                payload, uploads, size = await _read_body(request)
                # Media are decoded and written off the event loop; a text request parses in
                # microseconds, less than the hop to a thread.
                if size > INLINE_PARSE_BYTES or uploads:
                    job = await asyncio.to_thread(parse_chat_request, payload, store, uploads)
                else:
                    job = parse_chat_request(payload, store, uploads)
            except RequestError as e:
                store.remove(saved)
                if isinstance(e, PayloadTooLarge):
                    return error(413, "too_large", str(e))
                return error(400, "invalid_request", str(e))

        def submit(on_text=None):
            # The uploads are read when the request's round encodes them: gone once answered.
            future = scheduler.submit(job, on_text)
            future.add_done_callback(lambda _: store.remove(saved))
            return asyncio.wrap_future(future)

        if payload.get("stream") is True and job.base is None:
            # The stream opens with the reply's first piece, so that a request the engine
            # refuses (an unreadable medium, a prompt past the context) still gets its 4xx.
            loop = asyncio.get_running_loop()
            pieces: asyncio.Queue[str] = asyncio.Queue()
            done = submit(lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text))
            first = asyncio.ensure_future(pieces.get())
            await asyncio.wait({first, done}, return_when=asyncio.FIRST_COMPLETED)
            if not first.done():
                first.cancel()
                if done.exception() is not None:
                    return error(500, "server_error", f"{type(done.exception()).__name__}: "
                                 f"{done.exception()}")
                if done.result().get("error"):
                    return error(400, "invalid_request", done.result()["error"])
            head = first.result() if first.done() and not first.cancelled() else None
            metrics.requests.labels("200").inc()
            return StreamingResponse(_events(done, pieces, head, job, model_name,
                                             scheduler.media_dir, files, metrics),
                                     media_type="text/event-stream")
        try:
            record = await submit()
        except Exception as e:  # noqa: BLE001 - a fault of the server: said, not hidden
            return error(500, "server_error", f"{type(e).__name__}: {e}")
        if record.get("error"):
            return error(400, "invalid_request", record["error"])
        metrics.requests.labels("200").inc()
        return _completion(record, job.reply_modality, model_name, scheduler.media_dir, files)

    return app


class GeneratedMedia:
    """The files this server generated, by name, each kept `ttl_s` seconds after it is made
    (players and <img> tags fetch them after the reply), then deleted. Used from the event
    loop only."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._files: collections.OrderedDict[str, tuple[str, str, float]] = (
            collections.OrderedDict())  # name -> (path, media type, when made), oldest first

    def add(self, name: str, path: str, media_type: str) -> None:
        """Serves `path` as `name` from now until it expires."""
        self._files[name] = (path, media_type, time.monotonic())
        self._expire()

    def get(self, name: str) -> tuple[str, str] | None:
        """(path, media type) of a file not yet expired, else None."""
        self._expire()
        entry = self._files.get(name)
        return None if entry is None else entry[:2]

    def __len__(self) -> int:
        return len(self._files)

    def _expire(self) -> None:
        oldest_kept = time.monotonic() - self.ttl_s
        while self._files:
            name, (path, _, made) = next(iter(self._files.items()))
            if made > oldest_kept:
                return
            del self._files[name]
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # local: a file this server wrote into its media directory


class _KeyCheck:
    """ASGI middleware: /v1/ requests need `Authorization: Bearer KEY`, except generated
    media, which players and <img> tags fetch without one (their names are 128 random bits,
    known only to whoever got the reply). Plain ASGI: starlette's BaseHTTPMiddleware costs
    every request a task and a queue."""

    def __init__(self, app, api_key: str, refuse):
        self.app, self.expected, self.refuse = app, f"Bearer {api_key}".encode(), refuse

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] == "http" and path.startswith("/v1/")
                and not path.startswith("/v1/media/")):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await self.refuse()(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _events(done: asyncio.Future, pieces: asyncio.Queue, head: str | None, job,
                  model_name: str, media_dir: str, files: GeneratedMedia,
                  metrics: Metrics):
    """Server-sent events of a streamed chat: a chunk per piece of text as it is decoded
    (`head` first), then one with the media and finish reason (or the error), then [DONE]."""
    chunk_id = f"chatcmpl-{uuid.uuid4().hex}"

    def event(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield event({"role": "assistant"})
    if head is not None:
        yield event({"content": head})
    while not (done.done() and pieces.empty()):
        getter = asyncio.ensure_future(pieces.get())
        finished, _ = await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
        if getter in finished:
            yield event({"content": getter.result()})
        else:
            getter.cancel()
    try:
        record = done.result()
    except Exception as e:  # noqa: BLE001 - a fault of the server, said in the stream
        record = {"error": f"{type(e).__name__}: {e}"}
    if record.get("error"):
        metrics.errors.labels("invalid_request").inc()
        yield f"data: {json.dumps({'error': {'message': record['error']}})}\n\n"
    else:
        whole = _completion(record, job.reply_modality, model_name, media_dir, files)
        message = whole["choices"][0]["message"]
        yield event({"media": message["media"]}, whole["choices"][0]["finish_reason"],
                    content=message["content"], usage=whole["usage"])
    yield "data: [DONE]\n\n"


async def _read_body(request: Request) -> tuple[Any, dict[str, bytes], int]:
    """The JSON payload, uploaded files and the JSON's size of a JSON or multipart request."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        uploads, payload = {}, None
        for field, value in form.multi_items():
            if field == "request":
                payload = value if isinstance(value, str) else (await value.read()).decode()
            elif not isinstance(value, str):
                uploads[field] = await value.read()
        if payload is None:
            raise RequestError("a multipart request needs its JSON in the 'request' field")
        return _json(payload), uploads, len(payload)
    body = (await request.body()).decode("utf-8", errors="replace")
    return _json(body), {}, len(body)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"malformed JSON: {e}") from e


def _completion(record: dict, reply_modality: str, model_name: str, media_dir: str,
                files: GeneratedMedia) -> dict:
    """The engine's turn record as an OpenAI chat completion, media as URLs of this server."""
    text = record.get("text", "")
    media = []
    for m in record.get("media", []):
        text = text.replace(f"[{m['modality']}: {m['path']}]", "")
        name = os.path.basename(m["path"])
        files.add(name, os.path.join(media_dir, m["path"]),
                  MEDIA_TYPES.get(m["format"], "application/json"))
        media.append({"modality": m["modality"], "format": m["format"],
                      "url": f"/v1/media/{name}", **({"note": m["note"]} if "note" in m else {})})
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": re.sub(r"[ \t]{2,}", " ", text).strip(),
                        "media": media},
            "finish_reason": "stop" if record.get("finished") else "length",
        }],
        "reply_modality": reply_modality,
        "usage": {"completion_tokens": record.get("num_new_tokens", 0)},
    }
