"""Raw corpora -> pre-tokenized shards (anygpt_jax.data.shards format).

    python -m data.build --kind speech_text --input LibriSpeech/train-clean-100 \\
        --vocab TOKENIZER_DIR --tokenizer speech=CONVERTED_DIR --out shards/librispeech

Inputs, media and --out may be local paths or gs:// URLs. Items are read in input order and cut
into shards of --examples-per-shard; shards are encoded in parallel worker processes
(--workers), media in batches (--batch-size). Each shard is written whole (renamed into place,
or uploaded) with a `.json` sidecar, so a rerun after a crash skips finished shards (resumable).
manifest.json is written last and marks the directory finished: a finished --out is refused.
Unreadable media are logged, counted and skipped: the summary at the end lists the first ones,
skipped.jsonl in --out every one (id, reason).
`--import MODULE` imports a module first, in this process and every worker: one that registers
a modality (modalities/registry.py) makes its '<name>_text' kind buildable. `--runner NAME`
builds the same directory, byte for byte, as an Apache Beam pipeline on that runner, with the
flags this parser does not know passed to it as pipeline options (data/beam_build.py). Exit
status: 0 done, 1 bad input, unusable path or nothing written.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import importlib
import json
import logging
import math
import multiprocessing
import os
import sys
import threading
from collections.abc import Sequence

import numpy as np

from anygpt_jax import storage
from anygpt_jax.data import shards as shards_lib
from anygpt_jax.modalities.registry import media_modalities
from anygpt_jax.vocab import MergedVocabulary, ModalitySpan

from . import media as media_lib
from . import readers

log = logging.getLogger("data.build")
# The items a build skipped, one JSON object per line ({"id", "reason"}): its dead letters.
SKIPPED = "skipped.jsonl"
_worker: dict = {}
# (modality, spec) -> Encoder, kept for the process: building several kinds in one process
# (data.demo) then loads weights and compiles each codec once, and its code cache spans kinds.
_encoders: dict[tuple[str, str], media_lib.Encoder] = {}
_encoders_lock = threading.Lock()


def _init_worker(vocab_dir: str, tokenizers: dict[str, str], imports: tuple[str, ...] = ()) -> None:
    import_modules(imports)  # a spawned worker registers the user's modalities again
    _worker["vocab"] = MergedVocabulary.load(vocab_dir)
    _worker["encoders"] = {m: get_encoder(m, s) for m, s in tokenizers.items()}


def import_modules(modules: Sequence[str]) -> None:
    """Imports `modules` (e.g. one that registers a modality); ValueError naming a failed one."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"--import {name}: {e}") from e


def get_encoder(modality: str, spec: str) -> media_lib.Encoder:
    """The process's Encoder of a tokenizer spec, made on first use (once, whichever thread
    asks: a Beam worker runs several bundles at once)."""
    with _encoders_lock:
        if (modality, spec) not in _encoders:
            _encoders[(modality, spec)] = media_lib.make_encoder(modality, spec)
        return _encoders[(modality, spec)]


def _codes(item_media, encoded, vocab, where):
    m = vocab.modality(item_media.modality)
    codes = np.asarray(encoded, np.int64)
    if m.num_codebooks > 1 and codes.ndim == 1 and codes.size % m.num_codebooks == 0:
        codes = codes.reshape(m.num_codebooks, -1)
    m.codes_to_ids(codes)  # validates shape and range, naming the offending code
    if codes.size == 0:
        raise ValueError(f"{where}: empty {m.name} codes")
    return codes.astype(np.int32)


def encode_items(items, encoders, vocab, batch_size: int):
    """RawItems -> (ShardExamples, errors [(id, message)]); a bad item is skipped, not fatal."""
    results: dict[tuple[int, int], object] = {}
    for modality, enc in encoders.items():
        todo = [
            (i, k, md.path)
            for i, it in enumerate(items)
            for k, md in enumerate(it.media)
            if md.modality == modality and md.path is not None
        ]
        for b in range(0, len(todo), batch_size):
            chunk = todo[b : b + batch_size]
            try:
                outs = enc.encode([p for _, _, p in chunk])
            except Exception as e:  # noqa: BLE001 - one bad batch must not end the build
                outs = [e] * len(chunk)
            for (i, k, _), o in zip(chunk, outs, strict=True):
                results[(i, k)] = o
    examples, errors = [], []
    for i, it in enumerate(items):
        try:
            spans = []
            for k, md in enumerate(it.media):
                where = f"{it.id} {md.modality} {md.path or 'codes'}"
                if md.modality not in encoders:
                    raise ValueError(f"{where}: no --tokenizer for {md.modality}")
                got = md.codes if md.path is None else results.get((i, k))
                if isinstance(got, Exception):
                    raise got
                spans.append(ModalitySpan(md.modality, _codes(md, got, vocab, where)))
            turns = tuple(
                {
                    "role": t["role"],
                    "content": [
                        {"span": c["media"]} if isinstance(c, dict) else c for c in t["content"]
                    ],
                }
                for t in it.turns
            )
            examples.append(shards_lib.ShardExample(it.id, it.kind, it.text, spans, turns, it.meta))
        except (ValueError, OSError) as e:
            errors.append((it.id, str(e)))
    return examples, errors


def build_shard(path: str, items, vocab: MergedVocabulary,
                encoders: dict[str, media_lib.Encoder], batch_size: int) -> dict:
    """Encodes `items` and writes them as shard `path` whole, then its `.json` sidecar (entry,
    skipped items, tokenizers); returns the sidecar. The per-item work of both builders: a
    rerun (or a retried Beam bundle) writes the same bytes to the same path."""
    examples, errors = encode_items(items, encoders, vocab, batch_size)
    entry = shards_lib.write_shard(path, examples, vocab)
    infos = {m: dataclasses.asdict(e.info) for m, e in encoders.items()}
    side = {"entry": entry, "errors": errors, "tokenizers": infos}
    storage.write_json(path + ".json", side)  # after the shard: a sidecar means it is whole
    return side


def _build_shard_in_worker(path: str, items, batch_size: int) -> dict:
    return build_shard(path, items, _worker["vocab"], _worker["encoders"], batch_size)


def finished_shard(path: str) -> dict | None:
    """The sidecar of shard `path` when both are whole (a finished shard), else None."""
    try:
        side = storage.read_json(path + ".json")
        return side if storage.size(path) == side["entry"]["bytes"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_paths(inputs: list[str], out_dir: str) -> None:
    """Stops before any work when --out is a finished shard directory or a gs:// input or
    output cannot be reached (StorageError naming the path and the fix)."""
    manifest = os.path.join(out_dir, shards_lib.MANIFEST)
    storage.check_access(out_dir, write=True)
    if storage.exists(manifest):
        raise FileExistsError(
            f"{out_dir}: a finished shard directory ({manifest} exists); refusing to overwrite "
            f"it: choose another --out or delete it"
        )
    for p in inputs:
        storage.check_access(p)


def build(
    kind: str,
    inputs: list[str],
    out_dir: str,
    vocab_dir: str,
    tokenizers: dict[str, str],
    examples_per_shard: int = 1000,
    workers: int = 1,
    batch_size: int = 16,
    progress: bool = True,
    imports: tuple[str, ...] = (),
) -> dict:
    """Builds (or finishes a crashed build of) a shard directory; returns the summary.

    `imports`: modules each worker process imports first (those registering the modalities
    this process registered beyond the built-in ones).
    """
    check_paths(inputs, out_dir)
    items = readers.read_inputs(kind, inputs)
    if not items:
        raise readers.InputError(f"{', '.join(inputs)}: no {kind} items")
    missing = [
        m
        for m in media_modalities()
        if m not in tokenizers and any(md.modality == m for it in items for md in it.media)
    ]
    if missing:
        raise ValueError(
            f"no --tokenizer given for {missing} (a directory, 'demo' or 'precomputed:NAME')"
        )
    # Only the tokenizers these items use: an image-only build loads no audio codec.
    used = {md.modality for it in items for md in it.media}
    tokenizers = {m: s for m, s in tokenizers.items() if m in used}
    vocab = MergedVocabulary.load(vocab_dir)
    n = math.ceil(len(items) / examples_per_shard)
    storage.makedirs(out_dir)
    paths = [os.path.join(out_dir, shards_lib.shard_name(i, n)) for i in range(n)]
    done = {p: s for p in paths if (s := finished_shard(p)) is not None}
    if done:  # shards a crashed run finished count only if made by the same tokenizers
        want = {m: dataclasses.asdict(get_encoder(m, spec).info) for m, spec in tokenizers.items()}
        stale = [p for p, side in done.items() if not reusable(side, want)]
        for p in stale:
            log.warning("%s: made by other tokenizers than this run's; rebuilding it", p)
            del done[p]
    todo = [p for p in paths if p not in done]
    log.info("%s: %d items, %d shards, %d already finished", out_dir, len(items), n, len(done))
    from tqdm import tqdm

    bar = tqdm(
        total=len(items),
        initial=sum(
            len(items[i * examples_per_shard :][:examples_per_shard])
            for i, p in enumerate(paths)
            if p in done
        ),
        unit="ex",
        disable=not progress,
    )
    jobs = [(p, items[i * examples_per_shard :][:examples_per_shard])
            for i, p in enumerate(paths) if p in todo]  # fmt: skip

    def finish(path, side):
        done[path] = side
        bar.update(side["entry"]["examples"] + len(side["errors"]))
        for ex_id, msg in side["errors"]:
            log.warning("skipped %s: %s", ex_id, msg)

    if workers <= 1 or len(jobs) <= 1:  # in-process: no start-up cost of a worker
        if jobs:
            _init_worker(vocab_dir, tokenizers, imports)
        for path, chunk in jobs:
            finish(path, _build_shard_in_worker(path, chunk, batch_size))
    else:
        ctx = multiprocessing.get_context("spawn")  # JAX and TF do not survive fork
        with cf.ProcessPoolExecutor(
            min(workers, len(jobs)), ctx, _init_worker, (vocab_dir, tokenizers, tuple(imports))
        ) as pool:
            futs = {pool.submit(_build_shard_in_worker, p, chunk, batch_size): p
                    for p, chunk in jobs}
            for fut in cf.as_completed(futs):
                finish(futs[fut], fut.result())
    bar.close()
    summary = finish_build(kind, out_dir, [done[p] for p in paths], vocab, used, len(items))
    return summary | {"resumed_shards": n - len(todo)}


def reusable(side: dict, infos: dict[str, dict]) -> bool:
    """Whether a finished shard's sidecar was made by the tokenizers `infos` (modality ->
    TokenizerInfo as a dict): shards of other tokenizers are rebuilt, never mixed in."""
    return all(side.get("tokenizers", {}).get(m) == info for m, info in infos.items())


def finish_build(kind: str, out_dir: str, sides: list[dict], vocab: MergedVocabulary,
                 used: set[str], num_inputs: int) -> dict:
    """Shard sidecars, in shard order -> the skipped list and manifest.json (written last: it
    marks the directory finished); returns the summary. Both builders end here. Raises
    InputError, removing the shards, when every item failed."""
    entries = [s["entry"] for s in sides]
    errors = [e for s in sides for e in s["errors"]]
    infos = {
        m: shards_lib.TokenizerInfo(**i)
        for s in sides
        for m, i in s.get("tokenizers", {}).items()
        if m in used
    }
    manifest = shards_lib.make_manifest(
        kind, entries, vocab, infos, {"errors": len(errors), "inputs": num_inputs}
    )
    paths = [os.path.join(out_dir, e["file"]) for e in entries]
    if manifest["examples"] == 0:  # no manifest for nothing; a rerun starts afresh
        for p in paths:
            storage.remove(p)
            storage.remove(p + ".json")
        first = "; ".join(f"{i}: {m}" for i, m in errors[:3])
        raise readers.InputError(f"{out_dir}: every one of the {num_inputs} {kind} items "
                                 f"failed, nothing was written ({first})")
    lines = [json.dumps({"id": i, "reason": m}, ensure_ascii=False) for i, m in errors]
    storage.write_text(os.path.join(out_dir, SKIPPED), "".join(f"{x}\n" for x in lines))
    shards_lib.write_manifest(out_dir, manifest)
    return summary_of(out_dir, manifest)


def summary_of(out_dir: str, manifest: dict) -> dict:
    """A finished build's summary: its manifest's counts and its first skipped items (none
    listed for a directory built before skipped.jsonl was written)."""
    skipped, first = os.path.join(out_dir, SKIPPED), []
    if storage.exists(skipped):
        with storage.open_file(skipped, "r") as f:
            first = [json.loads(line) for line, _ in zip(f, range(20), strict=False)]
    return {
        "out": out_dir,
        "kind": manifest["kind"],
        "inputs": manifest.get("inputs"),
        "examples": manifest["examples"],
        "skipped": manifest.get("errors", 0),
        "shards": len(manifest["shards"]),
        "tokens": manifest["tokens"],
        "skipped_examples": [[x["id"], x["reason"]] for x in first],
    }


def _tokenizer_args(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        m, sep, spec = v.partition("=")
        if not sep or m not in media_modalities() or not spec:
            raise ValueError(
                f"--tokenizer {v!r}: expected MODALITY=SPEC with MODALITY in {media_modalities()}"
            )
        out[m] = spec
    return out


def _run_on_beam(args: argparse.Namespace, beam_args: list[str]) -> int:
    # Beam's own lines (optional I/O clients missing, workers starting, a failure's traceback
    # logged before it is raised) say nothing a user acts on; its failures come back as the
    # pipeline's exception, printed below in one line.
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    from . import beam_build

    options = beam_build.runner_options(args.runner, beam_args, args.workers)
    summary = beam_build.run(args.kind, args.input, args.out, args.vocab,
                             _tokenizer_args(args.tokenizer), options,
                             args.examples_per_shard, args.batch_size, tuple(args.imports))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The command line -> (data.build's arguments, the pipeline options left for --runner);
    exits 2 naming a bad or unknown flag."""
    p = argparse.ArgumentParser(
        prog="python -m data.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a runner's flag is never taken for a prefix of one of ours
    )
    p.add_argument("--kind", required=True, choices=shards_lib.kinds())
    p.add_argument(
        "--input",
        required=True,
        action="append",
        help="corpus file or directory (repeatable); formats in data/readers.py",
    )
    p.add_argument(
        "--out",
        required=True,
        help="shard directory, local or gs:// (created; a crashed build is resumed, a finished "
        "one refused)",
    )
    p.add_argument("--vocab", required=True, help="tokenizer directory of the merged vocabulary")
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        help="MODALITY=SPEC: converted dir, 'demo' or 'precomputed:NAME'",
    )
    p.add_argument("--examples-per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--batch-size", type=int, default=16, help="media files per encoder call")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module to import first (repeatable), e.g. one registering a modality")
    p.add_argument("--runner", metavar="NAME",
                   help="build as an Apache Beam pipeline on this runner (DirectRunner, "
                   "DataflowRunner, FlinkRunner, SparkRunner, PortableRunner); the flags this "
                   "parser does not know go to the runner's pipeline options (data/beam_build.py)."
                   " Default: this machine's process pool (--workers)")
    args, beam_args = p.parse_known_args(argv)
    if beam_args and args.runner is None:
        p.error(f"unrecognized arguments: {' '.join(beam_args)} (pipeline options need --runner)")
    return args, beam_args


def main(argv: list[str] | None = None) -> int:
    # --import first: the modules it names may register modalities, hence shard kinds.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--import", dest="imports", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    try:
        import_modules(known.imports)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    args, beam_args = parse_args(argv)
    # Our own progress at INFO; other libraries only past their warnings (fsspec announces
    # its read caches at INFO on every gs:// file).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("data").setLevel(logging.INFO)
    try:
        if args.runner is not None:
            return _run_on_beam(args, beam_args)
        summary = build(
            args.kind,
            args.input,
            args.out,
            args.vocab,
            _tokenizer_args(args.tokenizer),
            args.examples_per_shard,
            args.workers,
            args.batch_size,
            not args.no_progress,
            tuple(args.imports),
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0 if summary["examples"] else 1


if __name__ == "__main__":
    sys.exit(main())
