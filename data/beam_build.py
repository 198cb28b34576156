"""data.build as an Apache Beam pipeline: the same shard directory from any Beam runner.

    python -m data.build --kind image_text --input gs://b/laion/part-*.jsonl ... \\
        --out gs://b/shards/laion --runner DataflowRunner --project P --region R \\
        --temp_location gs://b/tmp --setup_file ./setup.py

The stages are Beam transforms: list each input's items (a reader of data/readers.py per input
file or directory), number them in input order and cut the numbering into shards, then per
shard read and decode its media and tokenize them in batches and write the shard, and last
write skipped.jsonl and manifest.json. The per-shard work is data.build.build_shard, the local
builder's own, so both builders write the same bytes; an item's number, hence its shard, is
its position in input order whichever worker reads it. A retried bundle rewrites its shard
whole at the same path (a temp file renamed, or one upload), so retries leave no duplicate and
no gap; a rerun after a crash keeps the shards already finished by the same tokenizers.
Unreadable items are the dead-letter output (id, reason): counted, listed in skipped.jsonl.
Tokenizers load once per worker process (DoFn.setup) and run on the worker's JAX backend (a
TPU VM's chips, a GPU), one process per accelerator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from anygpt_jax import storage
from anygpt_jax.data import shards as shards_lib
from anygpt_jax.vocab import MergedVocabulary

from . import build, readers

NAMESPACE = "data.build"
DEAD_LETTER = "dead_letter"


def runner_options(runner: str, beam_args: Sequence[str], workers: int) -> PipelineOptions:
    """Pipeline options for `runner` with the user's Beam flags passed through.

    DirectRunner means Beam's FnApiRunner, the direct runner's batch engine, with `workers`
    processes (multi_processing) unless the flags say otherwise: Beam's DirectRunner would
    first try to fetch and start Prism, which ignores those flags."""
    flags = [*beam_args]
    if runner == "DirectRunner":
        runner = "FnApiRunner"
        if workers > 1 and not any(f.startswith("--direct_num_workers") for f in beam_args):
            flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    if not any(f.startswith("--default_sdk_harness_log_level") for f in beam_args):
        flags.append("--default_sdk_harness_log_level=WARNING")  # workers' INFO lines: noise
    return PipelineOptions([f"--runner={runner}", *flags])


def _list_input(numbered: tuple[int, str], kind: str,
                imports: tuple[str, ...]) -> Iterator[tuple[int, int, readers.RawItem]]:
    """(input number, path) -> (input number, item number within the input, item)."""
    build.import_modules(imports)  # a worker registers the user's modalities first
    input_no, path = numbered
    for local_no, item in enumerate(readers.reader(kind)(path)):
        yield input_no, local_no, item


def _plan(counts: list[tuple[int, int]], repeats: list[tuple[str, list[int]]],
          modalities: list[str], inputs: Sequence[str], per_shard: int) -> dict:
    """What every shard needs to know of the whole corpus: each input's first item number, the
    shard count, the media modalities used, and why the build must stop (repeated ids)."""
    per_input = dict(counts)
    offsets, total = {}, 0
    for no in range(len(inputs)):
        offsets[no] = total
        total += per_input.get(no, 0)
    problems = [f"{inputs[nos[1]]}: id {item_id!r} repeats one from {inputs[nos[0]]}"
                for item_id, nos in sorted(repeats)[:3]]
    return {"offsets": offsets, "total": total, "num_shards": math.ceil(total / per_shard),
            "used": sorted(set(modalities)), "problems": problems}


def _shard_of(element: tuple[int, int, readers.RawItem], plan: dict,
              per_shard: int) -> tuple[int, tuple[int, readers.RawItem]]:
    input_no, local_no, item = element
    number = plan["offsets"][input_no] + local_no
    return number // per_shard, (number, item)


class EncodeShard(beam.DoFn):
    """(shard number, numbered items) -> (shard number, sidecar), skipped items as dead letters.

    A shard already finished by the same tokenizers is kept (a rerun resumes)."""

    def __init__(self, kind: str, out_dir: str, vocab_dir: str, tokenizers: dict[str, str],
                 batch_size: int, imports: tuple[str, ...]):
        self.kind, self.out_dir, self.vocab_dir = kind, out_dir, vocab_dir
        self.tokenizers, self.batch_size, self.imports = dict(tokenizers), batch_size, imports
        self.written = Metrics.counter(NAMESPACE, "shards_written")
        self.resumed = Metrics.counter(NAMESPACE, "shards_resumed")
        self.examples = Metrics.counter(NAMESPACE, "examples")
        self.skipped = Metrics.counter(NAMESPACE, "skipped")

    def setup(self) -> None:
        # Once per worker process: the weights, and the compiled tokenizers, are shared by its
        # bundles (data.build keeps one Encoder per spec and process).
        build.import_modules(self.imports)
        self.vocab = MergedVocabulary.load(self.vocab_dir)
        pair = shards_lib.pair_modality(self.kind)
        self.encoders = {m: build.get_encoder(m, spec) for m, spec in self.tokenizers.items()
                         if pair is None or m == pair}

    def process(self, element: tuple[int, Iterable[tuple[int, readers.RawItem]]],
                plan: dict) -> Iterator:
        if plan["problems"]:
            raise readers.InputError("; ".join(plan["problems"]))
        missing = [m for m in plan["used"] if m not in self.encoders]
        if missing:
            raise ValueError(f"no --tokenizer given for {missing} (a directory, 'demo' or "
                             f"'precomputed:NAME')")
        shard_no, numbered = element
        items = [item for _, item in sorted(numbered, key=lambda x: x[0])]
        path = os.path.join(self.out_dir, shards_lib.shard_name(shard_no, plan["num_shards"]))
        # As the local builder: only the tokenizers these items use are recorded.
        encoders = {m: e for m, e in self.encoders.items() if m in plan["used"]}
        infos = {m: dataclasses.asdict(e.info) for m, e in encoders.items()}
        side = build.finished_shard(path)
        if side is not None and build.reusable(side, infos):
            self.resumed.inc()
        else:
            side = build.build_shard(path, items, self.vocab, encoders, self.batch_size)
            self.written.inc()
        self.examples.inc(side["entry"]["examples"])
        self.skipped.inc(len(side["errors"]))
        for item_id, reason in side["errors"]:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"id": item_id, "reason": reason})
        yield shard_no, side


def _finish(sides: list[tuple[int, dict]], plan: dict, kind: str, out_dir: str,
            vocab_dir: str, inputs: Sequence[str]) -> dict:
    """Every shard's sidecar -> skipped.jsonl and manifest.json (data.build.finish_build)."""
    if plan["total"] == 0:
        raise readers.InputError(f"{', '.join(inputs)}: no {kind} items")
    numbers = sorted(no for no, _ in sides)
    if numbers != list(range(plan["num_shards"])):  # a lost or repeated shard is never hidden
        raise RuntimeError(f"{out_dir}: shards {numbers} do not make 0..{plan['num_shards'] - 1}")
    vocab = MergedVocabulary.load(vocab_dir)
    ordered = [side for _, side in sorted(sides, key=lambda x: x[0])]
    return build.finish_build(kind, out_dir, ordered, vocab, set(plan["used"]), plan["total"])


class BuildShards(beam.PTransform):
    """Input paths (a PCollection of str, in input order) -> the finish's summary; the shard
    directory is written as a side effect. `.dead_letters` (after expansion): skipped items."""

    def __init__(self, kind: str, inputs: Sequence[str], out_dir: str, vocab_dir: str,
                 tokenizers: dict[str, str], examples_per_shard: int = 1000,
                 batch_size: int = 16, imports: tuple[str, ...] = ()):
        super().__init__()
        self.kind, self.inputs = kind, list(inputs)
        self.out_dir, self.vocab_dir = out_dir, vocab_dir
        self.tokenizers, self.per_shard = dict(tokenizers), examples_per_shard
        self.batch_size, self.imports = batch_size, tuple(imports)
        self.dead_letters = None

    def expand(self, root):
        kind, inputs, per_shard = self.kind, self.inputs, self.per_shard
        listed = (root
                  | "NumberInputs" >> beam.Create(list(enumerate(inputs)))
                  | "ListItems" >> beam.FlatMap(_list_input, kind, self.imports)
                  # Items of one input file stay together until here; spread them out before
                  # the media are read.
                  | "Spread" >> beam.Reshuffle())
        counts = (listed | "InputOf" >> beam.Map(lambda x: (x[0], 1))
                  | "CountPerInput" >> beam.CombinePerKey(sum))
        repeats = (listed | "IdOf" >> beam.Map(lambda x: (x[2].id, x[0]))
                   | "GroupIds" >> beam.GroupByKey()
                   | "Repeated" >> beam.Map(lambda kv: (kv[0], sorted(kv[1])))
                   | "Keep" >> beam.Filter(lambda kv: len(kv[1]) > 1))
        modalities = (listed | "ModalitiesOf" >> beam.FlatMap(
                          lambda x: {md.modality for md in x[2].media})
                      | "Distinct" >> beam.Distinct())
        plan = (root
                | "One" >> beam.Create([None])
                | "Plan" >> beam.Map(
                    lambda _, c, r, m: _plan(c, r, m, inputs, per_shard),
                    beam.pvalue.AsList(counts), beam.pvalue.AsList(repeats),
                    beam.pvalue.AsList(modalities)))
        encoded = (listed
                   | "AssignShards" >> beam.Map(_shard_of, beam.pvalue.AsSingleton(plan),
                                                per_shard)
                   | "GroupShards" >> beam.GroupByKey()
                   | "EncodeAndWrite" >> beam.ParDo(
                       EncodeShard(kind, self.out_dir, self.vocab_dir, self.tokenizers,
                                   self.batch_size, self.imports),
                       beam.pvalue.AsSingleton(plan)).with_outputs(DEAD_LETTER, main="shards"))
        self.dead_letters = encoded[DEAD_LETTER]
        return (encoded.shards
                | "AllShards" >> beam.combiners.ToList()
                | "WriteManifest" >> beam.Map(
                    _finish, beam.pvalue.AsSingleton(plan), kind, self.out_dir,
                    self.vocab_dir, inputs))


def run(kind: str, inputs: list[str], out_dir: str, vocab_dir: str, tokenizers: dict[str, str],
        options: PipelineOptions, examples_per_shard: int = 1000, batch_size: int = 16,
        imports: tuple[str, ...] = ()) -> dict:
    """Builds (or finishes) a shard directory on the Beam runner of `options`; returns the
    summary data.build.build returns, from the manifest and the pipeline's counters."""
    build.check_paths(inputs, out_dir)
    for p in inputs:  # as the local builder: a missing input stops the build before any work
        if not storage.exists(p):
            raise readers.InputError(f"{p}: no such file or directory")
    storage.makedirs(out_dir)
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "Build" >> BuildShards(kind, inputs, out_dir, vocab_dir, tokenizers,
                                         examples_per_shard, batch_size, imports)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as e:  # noqa: BLE001 - runners wrap a worker's error in their own types
        raise _user_error(e) from e
    manifest = shards_lib.read_manifest(out_dir)
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query()["counters"]
                if r.key.metric.namespace == NAMESPACE}
    return build.summary_of(out_dir, manifest) | {
        "resumed_shards": counters.get("shards_resumed", 0)}


# The errors a build raises for bad input or storage, by name: a remote worker's error reaches
# the driver as the runner's exception quoting its traceback.
_USER_ERRORS = {cls.__name__: cls for cls in (readers.InputError, shards_lib.ShardError,
                                             ValueError, FileNotFoundError, FileExistsError,
                                             PermissionError, OSError)}
_QUOTED = re.compile(r"^(?:[\w.]+\.)?(" + "|".join(_USER_ERRORS) + r"): (.+)$", re.MULTILINE)


def _user_error(e: Exception) -> Exception:
    """The bad-input or storage error a failed pipeline stands for, as its own type with its
    own message (Beam's "[while running 'STEP']" suffix dropped); other failures unchanged."""
    if isinstance(e, tuple(_USER_ERRORS.values())):
        kind, message = type(e), str(e)
    elif found := _QUOTED.findall(str(e)):
        kind, message = _USER_ERRORS[found[-1][0]], found[-1][1]
    else:
        return e
    try:
        return kind(re.sub(r" \[while running '[^']*'\]$", "", message.strip()))
    except TypeError:  # a subclass wanting other arguments: kept as it came
        return e


def read_dead_letters(out_dir: str) -> list[dict]:
    """The skipped items of a finished build ({"id", "reason"} each), in shard order."""
    text = storage.read_text(os.path.join(out_dir, build.SKIPPED))
    return [json.loads(line) for line in text.splitlines() if line]
