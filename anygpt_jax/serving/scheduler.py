"""Batching concurrent chat requests: continuous batching, and rounds for what it cannot take.

One thread owns the engine (the model, its compiled programs, the media codecs). Chat requests
that sample or decode greedily run in a continuous batch (inference/continuous.py): a new
request joins the running generation at the next chunk of decode steps, into a row another
request has left, and leaves it as soon as its reply is done. Requests the batch cannot take
(beam search, other settings, base mode, a longer prompt than its rows hold) wait for it to
drain, then go in a batched round: the engine generates those sharing an output modality and
settings in one call. Nothing waits for the whole queue, and a failing request fails alone.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable

from anygpt_jax.inference.chat import Conversation, chat_style
from anygpt_jax.inference.continuous import DecodeSlots, same_but_budget
from anygpt_jax.inference.decoding import PROMPT_BUCKETS_PER_OCTAVE, bucket
from anygpt_jax.inference.requests import ChatMessage, MediaRef
from anygpt_jax.inference.session import (
    REQUEST_ERRORS,
    Engine,
    describe_message,
    error_record,
    message_segments,
    settings_for,
)
from anygpt_jax.inference.settings import GenerationSettings
from anygpt_jax.serving.messages import ChatJob
from anygpt_jax.vocab import Segment


@dataclasses.dataclass
class _Pending:
    job: ChatJob
    future: cf.Future
    queued_at: float
    on_text: Callable[[str], None] | None = None
    eligible: bool | None = None  # for a continuous batch (worked out once)
    prepared: _Prepared | None = None  # its prompt, once built


@dataclasses.dataclass
class _Prepared:
    """A chat request ready to join a continuous batch."""

    pending: _Pending
    conversation: Conversation
    segments: list[Segment]
    prompt: list[int]
    settings: GenerationSettings
    stops: list[int]
    stream: Callable[[list[int]], None] | None = None
    joined_at: float = 0.0


class BatchScheduler:
    """Runs ChatJobs on `engine` from one worker thread (see the module docstring); `submit`
    returns a future of the engine's turn record (text, media, finished, num_new_tokens,
    error). continuous=False batches in rounds only."""

    def __init__(self, engine: Engine, media_dir: str, max_batch: int = 16,
                 template: str = "anygpt", observer=None, gather_ms: float = 10.0,
                 continuous: bool = True):
        self.engine, self.media_dir, self.max_batch = engine, media_dir, max_batch
        # How long a round (or a batch started from idle) waits for company once its first
        # request is in, when the last one had company: clients answered together come back
        # at nearly the same time. A lone client never waits.
        self.gather_s = gather_ms / 1000
        self._last_round = 1
        self.template, self.observer, self.continuous = template, observer, continuous
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._running: DecodeSlots | None = None  # its rows' owners are _Prepared requests
        self._seeds = itertools.count(engine.seed)  # one sampling seed per request
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="anygpt-batches", daemon=True)
        self._thread.start()

    def submit(self, job: ChatJob, on_text: Callable[[str], None] | None = None) -> cf.Future:
        """Queues `job`; the future resolves to its turn record. `on_text` (chat jobs) gets
        the reply's text as it grows, a piece at a time, from the worker thread."""
        future: cf.Future = cf.Future()
        self._queue.put(_Pending(job, future, time.perf_counter(), on_text))
        return future

    def queue_length(self) -> int:
        """Requests waiting to start (not those decoding)."""
        return self._queue.qsize() + len(self._waiting)

    def close(self) -> None:
        """Stops the worker after the requests it holds are answered."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    # ----- the worker -------------------------------------------------------------------------

    def _run(self) -> None:
        while not (self._stopping and not self._waiting and self._running is None):
            self._take_new(block=self._running is None and not self._waiting)
            if self._running is None and self._waiting:
                if self.continuous and self._eligible(self._waiting[0]):
                    self._start_batch()
                else:
                    self._round(self._round_batch())
            if self._running is not None:
                self._step()

    def _take_new(self, block: bool) -> None:
        """Moves queued requests to the waiting line; from idle, waits for the first and
        gathers company for it (see gather_s)."""
        try:
            if block:
                self._hold(self._queue.get())
                deadline = time.perf_counter() + (self.gather_s if self._last_round > 1 else 0)
                while not self._stopping and len(self._waiting) < self.max_batch:
                    self._hold(self._queue.get(
                        timeout=max(0.0, deadline - time.perf_counter())))
            while not self._stopping:
                self._hold(self._queue.get_nowait())
        except queue.Empty:
            pass

    def _hold(self, item: _Pending | None) -> None:
        if item is None:
            self._stopping = True
        else:
            self._waiting.append(item)

    def _eligible(self, p: _Pending) -> bool:
        """Whether `p` can decode in a continuous batch (sampling or greedy chat)."""
        if p.eligible is None:
            p.eligible = p.job.base is None
            if p.eligible:
                try:
                    settings = settings_for(p.job.message.to or "chat", p.job.message.settings)
                    p.eligible = settings.num_beams == 1
                except ValueError:
                    pass  # refused as it joins, with the reason
        return p.eligible

    def _round_batch(self) -> list[_Pending]:
        """The requests of the next round: from the head of the line, up to max_batch, until
        one a continuous batch can take."""
        batch = [self._waiting.popleft()]
        while (self._waiting and len(batch) < self.max_batch
               and not (self.continuous and self._eligible(self._waiting[0]))):
            batch.append(self._waiting.popleft())
        self._last_round = len(batch)
        return batch

    # ----- continuous batching ----------------------------------------------------------------

    def _start_batch(self) -> None:
        """A continuous batch for the head of the line's settings, sized for the longest
        prompt among the requests that could join it now."""
        peers: list[_Prepared] = []
        while self._waiting and len(peers) < self.max_batch and self._eligible(self._waiting[0]):
            prepared = self._prepare(self._waiting[0])
            if prepared is not None and peers and not _compatible(prepared, peers[0]):
                break  # it starts the next batch
            self._waiting.popleft()
            if prepared is not None:
                peers.append(prepared)
        if not peers:
            return
        capacity = bucket(max(len(p.prompt) for p in peers), per_octave=PROMPT_BUCKETS_PER_OCTAVE)
        budget = max(p.settings.max_new_tokens for p in peers)  # sizes the rows
        self._last_round = len(peers)
        self._running = DecodeSlots(
            self.engine.model, dataclasses.replace(peers[0].settings, max_new_tokens=budget),
            len(peers), capacity, peers[0].stops, self.engine.constrain)
        self._admit(peers)

    def _step(self) -> None:
        """Joins what waits and fits, runs a chunk of decode steps, answers finished rows."""
        running = self._running
        joiners: list[_Prepared] = []
        try:
            wanted = min(self.max_batch, running.busy + len(self._waiting))
            if wanted > running.rows:
                running.grow(wanted)
            while self._waiting and len(joiners) < len(running.free_rows()):
                head = self._waiting[0]
                if not self._eligible(head):
                    break  # it waits for the batch to drain; nothing overtakes it
                prepared = self._prepare(head)
                if prepared is not None and not (
                        running.takes(prepared.settings)
                        and sorted(prepared.stops) == running.stop_ids
                        and len(prepared.prompt) <= running.capacity):
                    break
                self._waiting.popleft()
                if prepared is not None:
                    joiners.append(prepared)
            if joiners:
                self._admit(joiners)
            if running.busy:
                # Hand-offs cost ~0.5 ms: with no one to stream to or waiting to join, decode
                # on past a chunk until a row finishes (at most 4 chunks, for who arrives
                # meanwhile).
                chunk = self.engine.stream_chunk
                quiet = not self._waiting and self._queue.empty() and not any(
                    o is not None and o.stream is not None for o in running.owners)
                for row, ids in running.advance(4 * chunk if quiet else chunk, chunk).items():
                    if running.owners[row].stream is not None:
                        running.owners[row].stream(ids)
                for finished in running.harvest():
                    self._finish(finished.owner, finished.ids)
        except Exception as e:  # noqa: BLE001 - the server stays up; each request hears why
            for prepared in [*running.owners, *joiners]:
                if prepared is not None and not prepared.pending.future.done():
                    prepared.pending.future.set_exception(e)
            self._running = None
            return
        if not running.busy:
            self._running = None

    def _admit(self, joiners: list[_Prepared]) -> None:
        """Joiners take rows of the running batch; one that cannot is answered with why."""
        fit = []
        for prepared in joiners:
            try:
                self._running.check(prepared.prompt, prepared.settings)
                fit.append(prepared)
            except ValueError as e:
                self._answer(prepared.pending, {"user": describe_message(
                    prepared.pending.job.message), **error_record(e)}, prepared.pending.queued_at)
        if not fit:
            return
        self._running.admit([p.prompt for p in fit], fit, [next(self._seeds) for _ in fit],
                            [p.settings for p in fit])
        now = time.perf_counter()
        for prepared in fit:
            prepared.joined_at = now

    def _prepare(self, p: _Pending) -> _Prepared | None:
        """The request's conversation and prompt (built once), or None after answering it
        with its error (a bad medium, a prompt past the context, bad settings)."""
        if p.prepared is not None:
            return p.prepared
        conversation = Conversation(self.engine.vocab, chat_style(self.template))
        message = p.job.message
        problem = self._history(conversation, p.job)
        if problem is None:
            try:
                refs = [part for part in message.parts if isinstance(part, MediaRef)]
                spans = self.engine.codecs.encode(refs) if refs else []
                segments, prompt, settings = self.engine.chat_prompt(conversation, message,
                                                                     spans)
            except REQUEST_ERRORS as e:
                problem = str(e)
        if problem is not None:
            self._answer(p, {"user": describe_message(message), "error": problem}, p.queued_at)
            return None
        p.prepared = _Prepared(p, conversation, segments, prompt, settings,
                               conversation.stop_ids, _text_stream(conversation, p.on_text))
        return p.prepared

    def _finish(self, prepared: _Prepared, ids: list[int]) -> None:
        record = {"user": describe_message(prepared.pending.job.message)}
        try:
            record.update(self.engine.chat_reply(prepared.conversation, prepared.segments, ids,
                                                 prepared.stops, self.media_dir,
                                                 uuid.uuid4().hex))
        except REQUEST_ERRORS as e:
            record.update(error_record(e))
        self._answer(prepared.pending, record, prepared.joined_at)

    def _answer(self, p: _Pending, record: dict, started: float) -> None:
        if self.observer is not None:
            now = time.perf_counter()
            self.observer(record, now - p.queued_at, now - started)
        p.future.set_result(record)

    # ----- rounds -----------------------------------------------------------------------------

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
            self._answer(p, record, started)

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


def _compatible(prepared: _Prepared, other: _Prepared) -> bool:
    """Whether two requests can share a continuous batch: the same settings but for their
    budgets of new tokens (each row has its own), the same stop ids."""
    return (same_but_budget(prepared.settings, other.settings)
            and sorted(prepared.stops) == sorted(other.stops))


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
