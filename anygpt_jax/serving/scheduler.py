"""Batching concurrent chat requests: a round takes what is queued and generates it together.

One thread owns the engine (the model, its compiled programs, the media codecs). While a round
runs, new requests queue; the next round takes up to `max_batch` of them, and the engine
generates those sharing an output modality and settings in one batched call. A request waits
for the round in progress, never for the whole queue, and a failing request fails alone.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import queue
import threading
import time
import uuid
from collections.abc import Callable

from anygpt_jax.inference.chat import Conversation, chat_style
from anygpt_jax.inference.requests import ChatMessage, MediaRef
from anygpt_jax.inference.session import Engine, message_segments
from anygpt_jax.serving.messages import ChatJob
from anygpt_jax.vocab import Segment


@dataclasses.dataclass
class _Pending:
    job: ChatJob
    future: cf.Future
    queued_at: float
    on_text: Callable[[str], None] | None = None


class RoundScheduler:
    """Runs ChatJobs on `engine` in batched rounds from one worker thread; `submit` returns a
    future of the engine's turn record (text, media, finished, num_new_tokens, error)."""

    def __init__(self, engine: Engine, media_dir: str, max_batch: int = 16,
                 template: str = "anygpt", observer=None, gather_ms: float = 10.0):
        self.engine, self.media_dir, self.max_batch = engine, media_dir, max_batch
        # How long a round waits for company once its first request is in, when the last
        # round had company: clients answered by one round come back at nearly the same time,
        # and a round started with the first of them would leave the rest to the next. A lone
        # client never waits.
        self.gather_s = gather_ms / 1000
        self._last_round = 1
        self.template, self.observer = template, observer
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="anygpt-rounds", daemon=True)
        self._thread.start()

    def submit(self, job: ChatJob, on_text: Callable[[str], None] | None = None) -> cf.Future:
        """Queues `job`; the future resolves to its turn record. `on_text` (chat jobs) gets
        the reply's text as it grows, a piece at a time, from the worker thread."""
        future: cf.Future = cf.Future()
        self._queue.put(_Pending(job, future, time.perf_counter(), on_text))
        return future

    def queue_length(self) -> int:
        """Requests waiting for a round (not those in the round running)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Stops the worker after the round in progress."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + (self.gather_s if self._last_round > 1 else 0.0)
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this round
                    break
                batch.append(nxt)
            self._last_round = len(batch)
            self._round(batch)

    def _round(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        records: list[dict | None] = [None] * len(batch)
        try:
            base = [k for k, p in enumerate(batch) if p.job.base is not None]
            if base:
                names = [uuid.uuid4().hex for _ in base]
                done = self.engine.run_base([batch[k].job.base for k in base], self.media_dir,
                                            names)
                for k, record in zip(base, done, strict=True):
                    records[k] = record
            chats, conversations = [], []
            for k, p in enumerate(batch):
                if p.job.base is not None:
                    continue
                conversation = Conversation(self.engine.vocab, chat_style(self.template))
                problem = self._history(conversation, p.job)
                if problem is not None:
                    records[k] = {"error": problem}
                else:
                    chats.append(k)
                    conversations.append(conversation)
            if chats:
                streams = [_text_stream(c, batch[k].on_text)
                           for c, k in zip(conversations, chats, strict=True)]
                done = self.engine.chat_round(
                    conversations, [batch[k].job.message for k in chats], self.media_dir,
                    [uuid.uuid4().hex for _ in chats], streams)
                for k, record in zip(chats, done, strict=True):
                    records[k] = record
        except Exception as e:  # noqa: BLE001 - the server stays up; each request hears why
            for p in batch:
                p.future.set_exception(e)
            return
        for p, record in zip(batch, records, strict=True):
            if self.observer is not None:
                self.observer(record, time.perf_counter() - p.queued_at,
                              time.perf_counter() - started)
            p.future.set_result(record)

    def _history(self, conversation: Conversation, job: ChatJob) -> str | None:
        """Replays the request's earlier turns into `conversation`; why it cannot, or None."""
        try:
            for user, assistant in job.history:
                user_segments = self._segments(user)
                conversation.add_exchange(user_segments, self._segments(assistant))
        except (ValueError, OSError) as e:
            return str(e)
        return None

    def _segments(self, message: ChatMessage) -> list[Segment]:
        refs = [p for p in message.parts if isinstance(p, MediaRef)]
        return message_segments(message, self.engine.codecs.encode(refs) if refs else [])


def _text_stream(conversation: Conversation,
                 on_text: Callable[[str], None] | None) -> Callable[[list[int]], None] | None:
    """New ids -> `on_text` with what the reply's visible text gained (the conversation's own
    cut: no role or end markers; media spans show in the final record, not here)."""
    if on_text is None:
        return None
    ids: list[int] = []
    sent = [""]
    stops = conversation.stop_ids

    def stream(new: list[int]) -> None:
        ids.extend(new)
        segments, _ = conversation.reply(ids, stops)
        text = "".join(s for s in segments if isinstance(s, str)).lstrip()
        # What may be a marker still forming (`[Hum`, `<eo`) is held back: once whole, the
        # conversation cuts it, and a sent piece cannot be taken back.
        opening = max(text.rfind("["), text.rfind("<"))
        if opening >= 0 and not {"]", ">"} & set(text[opening:]):
            text = text[:opening]
        if text.startswith(sent[0]) and len(text) > len(sent[0]):
            on_text(text[len(sent[0]):])
            sent[0] = text

    return stream
