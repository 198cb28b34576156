"""Continuous batching: prompts join a running generation between chunks of decode steps.

`DecodeSlots` keeps `rows` decoding rows and their KV cache on the device. A prompt joins a
free row (`admit`): its prefill runs on its own, and its keys and values are written into the
row's cache ending at the shared write index, the row's older slots marked empty (segment 0),
so every row attends only to its own sequence (rotary positions are per row). `advance` runs
up to `steps` decode steps for every row at once (generate's own decode step; each row counts
its own new tokens), and `harvest` hands back the rows that finished, freeing them.

The cache holds the longest sequence a row may hold (prompt capacity plus new tokens) and a
quarter more. When the shared index nears its end, the cache is shifted left past the oldest
live row's first slot (`_compact`), which frees at least that quarter: one copy of the cache
every so many steps, no paging.

A row decodes what `generate` decodes for its prompt alone with the same seed (one key per
prompt, as with generate's per-prompt seeds): joining, leaving and shifting change no token.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anygpt_jax import partitioning
from anygpt_jax.inference import constraints, decoding
from anygpt_jax.inference.generate import (
    Generator,
    _own_seed_keys,
    _programs,
    _rows,
    decode_step,
    default_stop_ids,
)
from anygpt_jax.inference.settings import GenerationSettings
from anygpt_jax.model import KVCache


@dataclasses.dataclass
class Finished:
    """A row's generation, handed back by `DecodeSlots.harvest`."""

    owner: Any
    ids: list[int]


class DecodeSlots:
    """A running generation that prompts join and leave; see the module docstring.

    settings: shared by every row (one compiled program), except min_new_tokens and
    max_new_tokens, which are each row's own (`admit`); max_new_tokens here sizes the rows
    (no row may ask for more). prompt_capacity: the longest prompt (tokens) a row may take;
    owners: any value naming a row's request.
    """

    def __init__(self, model: Generator, settings: GenerationSettings, rows: int,
                 prompt_capacity: int, stop_ids: Sequence[int] | None = None,
                 constrain: bool = True):
        if settings.num_beams > 1:
            raise ValueError("continuous batching decodes num_beams == 1 only: beams reorder "
                             "their past")
        if model.mesh is not None:
            raise ValueError("continuous batching runs a model loaded without a mesh (one "
                             "device's programs); use generate() for a sharded model")
        cfg, vocab = model.config, model.vocab
        if stop_ids is None:
            stop_ids = default_stop_ids(vocab)
        self.model, self.settings, self.constrain = model, settings, constrain
        self.stop_ids = sorted({int(i) for i in stop_ids})
        self.plan = decoding.Plan.of(settings, constrain, len(self.stop_ids))
        self.slots = decoding.bucket(settings.max_new_tokens)
        self.knobs = decoding.Knobs.of(settings, self.stop_ids, cfg.padded_vocab_size,
                                       self.slots)
        self.table = None
        if constrain:
            programs = _programs(model)
            if programs.get("table") is None:
                programs["table"] = constraints.span_table(vocab, cfg.padded_vocab_size)
            self.table = programs["table"]
        self.capacity = decoding.bucket(prompt_capacity,
                                        per_octave=decoding.PROMPT_BUCKETS_PER_OCTAVE)
        self.width = self.capacity + self.slots  # the most slots one row's sequence spans
        # Room past one sequence: every step attends over the whole cache, and a shift copies
        # it once every `room` steps or more.
        self.room = max(self.width // 4, 16)
        self.length = self.width + self.room
        self.rows = _rows(rows, model.mesh)
        self.owners: list[Any] = [None] * self.rows
        self.first_slot = [0] * self.rows  # where each row's sequence starts in the cache
        self.index = self.capacity  # the next slot to write, shared (host copy)
        self._sent = [0] * self.rows
        self._finished: dict[int, list[int]] = {}  # row -> ids, done at the last advance
        self.shifts = 0  # cache shifts so far
        self.state = _programs_of(model, self.plan)["empty"](
            model.params, rows=self.rows, length=self.length, slots=self.slots,
            index=self.capacity, with_seen=self.plan.use_penalty)

    # ----- rows -------------------------------------------------------------------------------

    def free_rows(self) -> list[int]:
        """Rows no request holds."""
        return [r for r, o in enumerate(self.owners) if o is None]

    @property
    def busy(self) -> int:
        """Rows a request holds (decoding, or finished and not yet harvested)."""
        return self.rows - len(self.free_rows())

    def grow(self, rows: int) -> None:
        """Room for `rows` rows (bucketed; the new ones free), every row keeping its state: a
        batch starts as small as its first requests and grows as more come."""
        rows = _rows(rows, self.model.mesh)
        if rows <= self.rows:
            return
        extra = rows - self.rows
        self.state = _programs_of(self.model, self.plan)["grow"](self.state, extra=extra)
        self.owners += [None] * extra
        self.first_slot += [0] * extra
        self._sent += [0] * extra
        self.rows = rows

    def takes(self, settings: GenerationSettings) -> bool:
        """Whether a request with these settings may join: the batch's own, but for its
        budget of new tokens, which must fit the rows."""
        return same_but_budget(settings, self.settings) and settings.max_new_tokens <= self.slots

    def check(self, prompt: Sequence[int], settings: GenerationSettings | None = None,
              ) -> tuple[int, int]:
        """The constraint state after `prompt`; ValueError when it cannot join (with
        `settings`, default the batch's): longer than the rows' prompt capacity, settings
        the batch cannot take, or ending inside a span the budget cannot close."""
        settings = settings or self.settings
        if not self.takes(settings):
            raise ValueError(f"this batch decodes with {self.settings} up to {self.slots} "
                             f"new tokens; it cannot take {settings}")
        cfg = self.model.config
        [array] = decoding.check_prompts([prompt], cfg.vocab_size)
        if len(array) > self.capacity:
            raise ValueError(f"the prompt has {len(array)} tokens; this batch's rows take "
                             f"{self.capacity}")
        if not self.constrain:
            return 0, 0
        span, pos = constraints.prompt_state(self.model.vocab, self.table, array, "the prompt")
        if constraints.state_need(self.table, span, pos) > settings.max_new_tokens:
            raise ValueError(f"the prompt ends inside a {self.model.vocab.modality_names[span]} "
                             f"span that max_new_tokens={settings.max_new_tokens} cannot close")
        return span, pos

    def admit(self, prompts: Sequence[Sequence[int]], owners: Sequence[Any],
              seeds: Sequence[int],
              settings: Sequence[GenerationSettings] | None = None) -> list[int]:
        """Prompts join free rows (prefilled now, decoding from the next `advance`), held by
        `owners` (not None), each with its settings (default the batch's: `takes` says which
        may differ); returns their rows. ValueError (nothing joins) as `check` says, naming
        the prompt."""
        free = self.free_rows()
        if len(prompts) > len(free):
            raise ValueError(f"{len(prompts)} prompts for {len(free)} free rows")
        settings = list(settings or [self.settings] * len(prompts))
        states = []
        for i, (p, own) in enumerate(zip(prompts, settings, strict=True)):
            try:
                states.append(self.check(p, own))
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
        arrays = [np.asarray(p, np.int32) for p in prompts]
        joiners = decoding.bucket(len(arrays), minimum=1)
        batch = decoding.make_batch(arrays, joiners, self.model.config.padded_vocab_size,
                                    states, self.plan.use_penalty)
        rows = free[: len(arrays)]
        targets = np.full(joiners, self.rows, np.int32)  # padding joiners land nowhere
        targets[: len(rows)] = rows
        keys = _own_seed_keys(jnp.asarray(list(seeds) + [0] * (joiners - len(seeds))))
        budgets = np.zeros((joiners, 2), np.int32)  # (min, max) new tokens per joiner
        budgets[: len(settings)] = [(x.min_new_tokens, x.max_new_tokens) for x in settings]
        programs = _programs_of(self.model, self.plan)
        logits, joined = programs["prefill"](self.model.params, batch)
        self.state = programs["admit"](self.state, batch, logits, joined, jnp.asarray(targets),
                                       keys, jnp.asarray(budgets))
        prompt_slots = batch.ids.shape[1]
        for r, owner in zip(rows, owners, strict=True):
            self.owners[r], self.first_slot[r], self._sent[r] = owner, self.index - prompt_slots, 0
        return rows

    def advance(self, steps: int, at_least: int | None = None) -> dict[int, list[int]]:
        """Up to `steps` decode steps, fewer if every row is done or, past `at_least` steps,
        once a row finishes (its request can be answered and its row taken); the new ids of
        each held row since the last call, by row."""
        steps = max(1, min(int(steps), self.slots, self.room))
        if self.index + steps > self.length:
            self._compact()
        programs = _programs_of(self.model, self.plan)
        self.state = programs["advance"](self.model.params, self.knobs, self.table, self.state,
                                         np.int32(steps), np.int32(at_least or steps))
        host = jax.device_get({k: self.state[k] for k in ("counts", "tokens", "steps", "done")})
        self.index += int(host["steps"])
        new = {}
        for r, owner in enumerate(self.owners):
            if owner is None:
                continue
            count = int(host["counts"][r])
            if count > self._sent[r]:
                new[r] = host["tokens"][r, self._sent[r] : count].tolist()
                self._sent[r] = count
            if host["done"][r] and r not in self._finished:
                self._finished[r] = host["tokens"][r, :count].tolist()
        return new

    def harvest(self) -> list[Finished]:
        """The held rows that were done at the last `advance`, with all their new ids; their
        rows are freed."""
        out = [Finished(self.owners[r], ids) for r, ids in sorted(self._finished.items())]
        for r in self._finished:
            self.owners[r] = None
        self._finished = {}
        return out

    def _compact(self) -> None:
        """Shifts the cache left past the oldest live row's first slot (at most down to the
        prompt capacity, where a joiner's prompt must still fit below the index)."""
        live = [self.first_slot[r] for r, o in enumerate(self.owners) if o is not None]
        shift = min([*live, self.index - self.capacity])
        if shift <= 0:
            raise RuntimeError("the decode cache is full: no row can be shifted out")
        self.state = _programs_of(self.model, self.plan)["shift"](self.state, np.int32(shift))
        self.index -= shift
        self.shifts += 1
        self.first_slot = [s - shift for s in self.first_slot]


def same_but_budget(a: GenerationSettings, b: GenerationSettings) -> bool:
    """Whether `a` and `b` differ at most in min/max new tokens (one batch's program: each row
    has its own budget)."""
    budget = {"min_new_tokens": 0, "max_new_tokens": 1}
    return dataclasses.replace(a, **budget) == dataclasses.replace(b, **budget)


def _programs_of(model: Generator, plan: decoding.Plan) -> dict:
    """The jitted programs of continuous batching for this model and plan (cached)."""
    programs = _programs(model)
    key = ("continuous", plan)
    if key not in programs:
        rules = partitioning.logical_axis_rules()

        def traced(fn):
            return decoding.traced(model.model, rules, fn)

        programs[key] = {
            "empty": jax.jit(traced(_empty),
                             static_argnames=("rows", "length", "slots", "index", "with_seen")),
            "prefill": jax.jit(traced(_prefill)),
            "admit": jax.jit(_admit, donate_argnames=("state",)),
            "advance": jax.jit(traced(functools.partial(_advance, plan=plan)),
                               donate_argnames=("state",)),
            "shift": jax.jit(_shift, donate_argnames=("state",)),
            "grow": jax.jit(_grow, static_argnames=("extra",)),
        }
    return programs[key]


def _empty(model, params, *, rows: int, length: int, slots: int, index: int,
           with_seen: bool) -> dict:
    """A state with every row done and empty, its cache index at `index`."""
    cfg = model.config
    prompt = decoding.PromptBatch(
        ids=jnp.zeros((rows, 1), jnp.int32), positions=jnp.zeros((rows, 1), jnp.int32),
        segment_ids=jnp.zeros((rows, 1), jnp.int32), next_position=jnp.zeros(rows, jnp.int32),
        real=jnp.zeros(rows, bool), span=jnp.zeros(rows, jnp.int32),
        pos=jnp.zeros(rows, jnp.int32),
        seen=jnp.zeros((rows, cfg.padded_vocab_size), bool) if with_seen else None)
    logits, cache = decoding.prefill(model, params, prompt, length)
    cache = cache.replace(segment_ids=jnp.zeros_like(cache.segment_ids),
                          index=jnp.asarray(index, jnp.int32))
    return dict(
        logits=jnp.zeros_like(logits), cache=cache, tokens=jnp.zeros((rows, slots), jnp.int32),
        counts=jnp.zeros(rows, jnp.int32), done=jnp.ones(rows, bool),
        span=prompt.span, pos=prompt.pos, seen=prompt.seen, position=prompt.next_position,
        keys=jax.random.split(jax.random.key(0), rows), steps=jnp.zeros((), jnp.int32),
        budgets=jnp.zeros((rows, 2), jnp.int32))


def _prefill(model, params, batch: decoding.PromptBatch):
    """The joiners' prefill on their own: (last logits, their cache of exactly their slots).
    A program of its own: it compiles per joiner count and prompt bucket, not per batch."""
    return decoding.prefill(model, params, batch, batch.ids.shape[1])


def _admit(state: dict, batch: decoding.PromptBatch, logits: jax.Array, joined: decoding.Cache,
           targets: jax.Array, keys: jax.Array, budgets: jax.Array) -> dict:
    """Writes each prefilled prompt into row targets[j] (a row number past the last drops
    padding joiners), its cache slots ending at the shared index; budgets [j, 2] are its
    (min, max) new tokens."""
    length = batch.ids.shape[1]
    cache = state["cache"]
    at = cache.index - length
    cache = _write_rows(cache, joined, targets, at)

    def put(x, new):
        return None if x is None else x.at[targets].set(new, mode="drop")

    out = dict(state)
    out.update(cache=cache, logits=put(state["logits"], logits),
               tokens=put(state["tokens"], jnp.zeros_like(state["tokens"][: len(targets)])),
               counts=put(state["counts"], jnp.zeros_like(targets)),
               done=put(state["done"], ~batch.real), span=put(state["span"], batch.span),
               pos=put(state["pos"], batch.pos), seen=put(state["seen"], batch.seen),
               position=put(state["position"], batch.next_position),
               keys=put(state["keys"], keys), budgets=put(state["budgets"], budgets))
    return out


def _write_rows(cache: decoding.Cache, joined: decoding.Cache, targets: jax.Array,
                at: jax.Array) -> decoding.Cache:
    """`cache` with rows `targets` holding the joiners' slots at [at, at + their length) and
    nothing else (older slots segment 0: a row's last request is never attended to)."""
    rows_axis = 1 if isinstance(cache, KVCache) else 0

    def rows_of(big, small):
        # Gather the target rows, write the joiners' slots into them, scatter them back.
        taken = jnp.take(big, targets, axis=rows_axis, mode="clip")
        start = [0] * taken.ndim
        start[rows_axis + 2] = at  # [.., rows, kv_heads, slots, head_dim]
        updated = jax.lax.dynamic_update_slice(taken, small.astype(big.dtype), start)
        index = (slice(None),) * rows_axis + (targets,)
        return big.at[index].set(updated, mode="drop")

    if isinstance(cache, KVCache):
        keys, values = rows_of(cache.keys, joined.keys), rows_of(cache.values, joined.values)
    else:
        keys = tuple(rows_of(b, s) for b, s in zip(cache.keys, joined.keys, strict=True))
        values = tuple(rows_of(b, s) for b, s in zip(cache.values, joined.values, strict=True))
    segments = jax.lax.dynamic_update_slice(
        jnp.zeros((len(targets), cache.segment_ids.shape[1]), jnp.int32),
        joined.segment_ids, (0, at))
    return cache.replace(keys=keys, values=values,
                         segment_ids=cache.segment_ids.at[targets].set(segments, mode="drop"))


def _advance(model, params, knobs: decoding.Knobs, table, state: dict, steps: jax.Array,
             at_least: jax.Array, *, plan: decoding.Plan) -> dict:
    """Up to `steps` decode steps for every row; stops early when every row is done, or past
    `at_least` steps when a row has finished. state["steps"] says how many ran."""

    def cond(c):
        finished = (c["steps"] >= at_least) & jnp.any(c["done"] & ~state["done"])
        return (c["steps"] < steps) & ~jnp.all(c["done"]) & ~finished

    def body(c):
        # Each row's own budget of new tokens; the rest of the knobs are the batch's.
        own = knobs.replace(min_new_tokens=c["budgets"][:, 0], max_new_tokens=c["budgets"][:, 1])
        return {**decode_step(model, plan, params, own, table, c["keys"], c),
                "steps": c["steps"] + 1}

    return jax.lax.while_loop(cond, body, {**state, "steps": jnp.zeros((), jnp.int32)})


def _shift(state: dict, shift: jax.Array) -> dict:
    """The cache moved `shift` slots left (the first `shift` slots dropped, the freed end
    empty); the index follows."""
    cache = state["cache"]
    length = cache.segment_ids.shape[1]
    slot_axis = 3 if isinstance(cache, KVCache) else 2

    def left(x, axis):
        return jnp.roll(x, -shift, axis=axis)

    if isinstance(cache, KVCache):
        keys, values = left(cache.keys, slot_axis), left(cache.values, slot_axis)
    else:
        keys = tuple(left(k, slot_axis) for k in cache.keys)
        values = tuple(left(v, slot_axis) for v in cache.values)
    kept = jnp.arange(length) < length - shift
    segments = jnp.where(kept[None, :], left(cache.segment_ids, 1), 0)
    return {**state, "cache": cache.replace(keys=keys, values=values, segment_ids=segments,
                                            index=cache.index - shift)}


def _grow(state: dict, *, extra: int) -> dict:
    """`extra` more rows, done and empty, after the others."""
    cache = state["cache"]

    def pad(x, axis=0, value=0):
        if x is None:
            return None
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, extra)
        return jnp.pad(x, widths, constant_values=value)

    rows_axis = 1 if isinstance(cache, KVCache) else 0
    if isinstance(cache, KVCache):
        keys, values = pad(cache.keys, rows_axis), pad(cache.values, rows_axis)
    else:
        keys, values = tuple(pad(k) for k in cache.keys), tuple(pad(v) for v in cache.values)
    out = {k: pad(v) for k, v in state.items()
           if k not in ("cache", "keys", "done", "steps")}
    return {**out, "cache": cache.replace(keys=keys, values=values,
                                          segment_ids=pad(cache.segment_ids)),
            "done": pad(state["done"], value=True), "steps": state["steps"],
            "keys": jnp.concatenate([state["keys"], jax.random.split(jax.random.key(0), extra)])}
