"""The evaluation loop: teacher-forced metrics and inference metrics of eval tasks, written out.

    evaluate(model, output_dir, step)      # what training calls every N steps (see below)
    run_eval()                             # gin entry of `python -m anygpt_jax.eval`

Inference eval: each task's prompts are generated in batches (`anygpt_jax.inference.generate`,
span-constrained, `GenerationSettings.for_output` of the task's output modality, so gin's
scoped bindings apply: tpu_configs/eval/paper.gin sets the paper's), the new ids are decoded
(text up to the first turn marker, or a span rendered to an image / waveform by the modality
tokenizers), and the task's seqio metric functions score them. A metric that
cannot run (no scoring model, no decoder) is reported under "skipped" with the reason, and
generation is not run for a task none of whose metrics can run.

Outputs (process 0) under `output_dir`: `metrics-STEP.json` {"step", "metrics", "skipped"},
`predictions-STEP.jsonl` (one line per generated example), generated media in `media-STEP/`,
and TensorBoard scalars in `tensorboard/`. Metric names are `TASK/NAME`, e.g.
`anygpt_eval_coco_caption/cider`, `anygpt_eval_librispeech_asr/teacher_forced/loss/speech`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
import seqio

from anygpt_jax import storage
from anygpt_jax.evaluation import tasks as eval_tasks
from anygpt_jax.evaluation.metrics import MetricSkipped
from anygpt_jax.evaluation.scoring import Audio
from anygpt_jax.evaluation.teacher_forced import make_eval_step, teacher_forced_eval
from anygpt_jax.vocab import ModalitySpan

log = logging.getLogger(__name__)

@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how much. tasks None: every registered eval task."""

    tasks: Sequence[str] | None = None
    teacher_forced: bool = True
    inference: bool = True
    seq_len: int = 4500
    batch_size: int = 8
    max_examples: int | None = None
    generation_batch_size: int = 8
    # Overrides per output modality over GenerationSettings.for_output (the release's settings
    # and gin's scoped bindings, e.g. text/GenerationSettings.num_beams = 5).
    generation: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    vocab_tile: int | None = None


def _task_names(options: EvalOptions) -> list[str]:
    registered = [n for n in eval_tasks.EVAL_TASKS if n in seqio.TaskRegistry.names()]
    if options.tasks is None:
        if not registered:
            raise ValueError(
                "no eval task is registered: give shard directories to register_eval "
                "(coco_dirs, librispeech_dirs, vctk_dirs, musiccaps_dirs)"
            )
        return registered
    missing = [t for t in options.tasks if t not in registered]
    if missing:
        raise ValueError(
            f"EvalOptions.tasks names {missing}, which are not registered "
            f"(registered: {registered}); are their shard directories set in register_eval?"
        )
    return list(options.tasks)


def _settings(output: str, options: EvalOptions):
    from anygpt_jax.inference import GenerationSettings

    base = GenerationSettings.for_output(output)
    return GenerationSettings.from_dict(
        dict(options.generation.get(output, {})), f"EvalOptions.generation[{output!r}]", base
    )


def _metric_name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _unscorable(task: seqio.Task) -> dict[str, str]:
    """Metric functions that need a scoring model none is bound to: name -> reason.

    Bound models are loaded here, before generation, so a wrong weights path fails at once.
    """
    out = {}
    for fn in task.predict_metric_fns:
        if not callable(getattr(fn, "model", None)):
            continue
        try:
            fn.model()
        except MetricSkipped as e:
            out[_metric_name(fn)] = str(e)
    return out


def _answer_ids(vocab, ids: list[int], stop_ids: set[int]) -> list[int]:
    """The answer's ids: up to the first stop id or turn marker (<eoh>, [Human], [MMGPT],
    ...); what a model writes after it is another turn of the template, not the answer."""
    ends = stop_ids | set(vocab.marker_ids.values())
    return ids[: next((i for i, t in enumerate(ids) if t in ends), len(ids))]


def empty_text_reason(vocab, ids: list[int], stop_ids: set[int]) -> str:
    """Why a text answer decoded to "" (a model's outcome, named in the metrics file)."""
    if not ids:
        return "nothing generated"
    head = _answer_ids(vocab, ids, stop_ids)
    if not head:
        return f"stopped at once: the first generated id is {vocab.id_to_token(ids[0])}"
    spans = [s.modality for s in vocab.decode_segments(head, strict=False)
             if isinstance(s, ModalitySpan)]
    if spans:
        return f"no text before the stop: {' and '.join(sorted(set(spans)))} codes instead"
    return "only whitespace before the stop"


def _decode(vocab, ids: list[int], output: str, stop_ids: set[int]) -> tuple[Any, str]:
    """New ids -> (text or the first span of `output`, its printable form), of the answer's
    ids (_answer_ids)."""
    ids = _answer_ids(vocab, ids, stop_ids)
    segments = vocab.decode_segments(ids, strict=False)
    if output == "text":
        text = "".join(s for s in segments if isinstance(s, str)).strip()
        return text, text
    span = next((s for s in segments if isinstance(s, ModalitySpan) and s.modality == output), None)
    if span is None or np.asarray(span.codes).size == 0:
        return None, f"<no {output} span in {len(ids)} generated ids>"
    return span, f"<{output} span {tuple(np.asarray(span.codes).shape)}>"


def _render(codecs: Any, span: ModalitySpan, meta: dict, path: str,
            seed: int) -> tuple[Any, str] | None:
    """A generated span -> (PIL image or Audio, the file's extension), also written to `path`
    (+ .png / .wav); None when it cannot be rendered (e.g. a truncated image span)."""
    rendered = codecs.render(span, seed, meta.get("prompt_audio"))
    if isinstance(rendered, str):
        return None
    storage.write_bytes(f"{path}.{rendered.extension}", rendered.data)
    if rendered.sample_rate is None:
        return rendered.value, rendered.extension
    audio = Audio(np.asarray(rendered.value, np.float32), int(rendered.sample_rate))
    return audio, rendered.extension


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100]


def inference_eval(
    model: Any, task_name: str, options: EvalOptions, codecs: Any, media_dir: str,
) -> tuple[dict[str, float], dict[str, str], list[dict]]:
    """(metrics, skipped {metric: reason}, prediction records) of generation on one task.

    Every process generates (the program is SPMD over the mesh); process 0 alone decodes,
    renders media into `media_dir` and scores, the others return no metrics.
    """
    from anygpt_jax.inference import default_stop_ids, generate

    spec = eval_tasks.eval_spec(task_name)
    task = seqio.get_mixture_or_task(task_name)
    problem = codecs.missing(spec.output)
    unscorable = {} if problem else _unscorable(task)
    if problem or len(unscorable) == len(task.predict_metric_fns):
        reason = problem or "; ".join(unscorable.values())
        return {}, {_metric_name(f): reason for f in task.predict_metric_fns}, []
    ds = task.get_dataset(None, split="train", shuffle=False, num_epochs=1, use_cached=False,
                          trim_output_features=False, try_in_mem_cache=False)  # fmt: skip
    if options.max_examples is not None:
        ds = ds.take(options.max_examples)
    examples = list(ds.as_numpy_iterator())
    if not examples:
        raise ValueError(f"{task_name}: no examples to evaluate")
    settings = _settings(spec.output, options)
    stop_ids = default_stop_ids(model.vocab)
    predictions, records = [], []
    lead = jax.process_index() == 0
    if lead and spec.output != "text":
        storage.makedirs(os.path.join(media_dir, task_name))
    size = options.generation_batch_size
    for b in range(0, len(examples), size):
        chunk = examples[b : b + size]
        new_ids = generate(model, [ex["prompt"].tolist() for ex in chunk], settings,
                           seed=options.seed + b, stop_ids=stop_ids)  # fmt: skip
        if not lead:
            continue
        for k, (ex, ids) in enumerate(zip(chunk, new_ids, strict=True)):
            ex_id = ex["example_id"].decode()
            meta = eval_tasks.example_meta(ex)
            value, shown = _decode(model.vocab, ids, spec.output, set(stop_ids))
            record = {"task": task_name, "id": ex_id, "input": meta.get("source") or meta["text"],
                      "references": meta["references"], "num_generated": len(ids)}  # fmt: skip
            if isinstance(value, ModalitySpan):
                path = os.path.join(media_dir, task_name, _safe(ex_id))
                rendered = _render(codecs, value, meta, path, options.seed + b + k)
                value = None
                if rendered is not None:  # shown relative to the output directory
                    value, ext = rendered
                    shown = f"{os.path.basename(media_dir)}/{task_name}/{_safe(ex_id)}.{ext}"
            record["prediction"] = shown
            if spec.output == "text" and not value:
                record["empty_because"] = empty_text_reason(model.vocab, ids, set(stop_ids))
            predictions.append(value)
            records.append(record)
    if not lead:
        return {}, {}, []
    targets = [task.postprocess_fn(None, example=ex, is_target=True) for ex in examples]
    scores: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for fn in task.predict_metric_fns:
        try:
            scores |= {k: float(v) for k, v in fn(targets, predictions).items()}
        except MetricSkipped as e:
            skipped[_metric_name(fn)] = str(e)
    return scores, skipped, records


def evaluate(
    model: Any,
    output_dir: str,
    step: int = 0,
    options: EvalOptions | None = None,
    codecs: Any = None,
) -> dict[str, Any]:
    """Runs the eval tasks on `model` (an AnyGPT) and writes metrics, predictions and scalars.

    The trainer's hook: call it every N steps with `AnyGPT(state.params, cfg, vocab, mesh)`,
    `output_dir=os.path.join(model_dir, "eval")` and the step, after `register_eval(vocab)`.
    Returns {"step", "metrics": {TASK/NAME: value}, "skipped": {TASK/NAME: reason}}.
    """
    options = options or EvalOptions()
    if model.vocab is None:
        raise ValueError("evaluation needs the model's vocabulary (vocab/ in its directory)")
    names = _task_names(options)
    if codecs is None:
        from anygpt_jax.inference.media import MediaCodecs

        codecs = MediaCodecs(model.vocab)  # gin's MediaSettings()
    writer = jax.process_index() == 0
    media_dir = os.path.join(output_dir, f"media-{step:08d}")
    results: dict[str, float] = {}
    skipped: dict[str, str] = {}
    records: list[dict] = []
    step_fn = make_eval_step(model, model.vocab, options.vocab_tile)
    for name in names:
        start = time.perf_counter()
        if options.teacher_forced:
            tf = teacher_forced_eval(model, name, options.seq_len, options.batch_size,
                                     options.max_examples, step_fn=step_fn)  # fmt: skip
            results |= {f"{name}/teacher_forced/{k}": v for k, v in tf.items()}
        if options.inference:
            scores, skips, recs = inference_eval(model, name, options, codecs, media_dir)
            results |= {f"{name}/{k}": v for k, v in scores.items()}
            skipped |= {f"{name}/{k}": v for k, v in skips.items()}
            records += recs
        log.info("evaluated %s in %.1fs", name, time.perf_counter() - start)
    summary = {"step": int(step), "metrics": results, "skipped": skipped,
               "empty_predictions": _empty_predictions(records)}
    for key, reason in skipped.items():
        print(f"eval step {step}: skipped {key}: {reason}", flush=True)
    for task, empty in summary["empty_predictions"].items():
        reasons = "; ".join(f"{n} {why}" for why, n in empty["reasons"].items())
        print(f"eval step {step}: {task}: {empty['count']} of {empty['of']} predictions are "
              f"empty ({reasons}); they score as empty answers", flush=True)
    if writer:
        _write(output_dir, step, summary, records)
    return summary


def _empty_predictions(records: list[dict]) -> dict[str, dict]:
    """{task: {"count", "of", "reasons": {reason: count}}} of text predictions that are empty."""
    out: dict[str, dict] = {}
    for r in records:
        task = out.setdefault(r["task"], {"count": 0, "of": 0, "reasons": {}})
        task["of"] += 1
        if "empty_because" in r:
            task["count"] += 1
            task["reasons"][r["empty_because"]] = task["reasons"].get(r["empty_because"], 0) + 1
    return {t: e for t, e in out.items() if e["count"]}


def _write(output_dir: str, step: int, summary: dict, records: list[dict]) -> None:
    """metrics-STEP.json, predictions-STEP.jsonl (each written whole) and TensorBoard scalars
    (written to a local mirror of output_dir/tensorboard, uploaded when remote)."""
    storage.makedirs(output_dir)
    storage.write_json(os.path.join(output_dir, f"metrics-{step:08d}.json"), summary)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    storage.write_text(os.path.join(output_dir, f"predictions-{step:08d}.jsonl"), lines)
    import tensorflow as tf

    # tf.summary cannot write gs:// through the project's client: write locally, then upload.
    mirror = storage.MirroredDir(os.path.join(output_dir, "tensorboard"))
    try:
        writer = tf.summary.create_file_writer(mirror.local)
        with writer.as_default(step=step):
            for name, value in summary["metrics"].items():
                tf.summary.scalar(name, value)
        writer.flush()
        writer.close()
    finally:
        mirror.close()
    print(f"eval step {step}: wrote metrics-{step:08d}.json and predictions-{step:08d}.jsonl "
          f"to {output_dir}", flush=True)


@gin.configurable
def run_eval(
    model_dir: str = gin.REQUIRED,
    output_dir: str | None = None,
    step: int | None = None,
    options: EvalOptions | None = None,
    data_parallel: bool = True,
) -> dict[str, Any]:
    """Loads a model directory (converted, or a training MODEL_DIR's latest checkpoint),
    registers the eval tasks over its vocabulary and evaluates. output_dir None:
    MODEL_DIR/eval. step None: the checkpoint's training step (0 for a converted model)."""
    from anygpt_jax import checkpointing, partitioning
    from anygpt_jax.api import AnyGPT

    if not storage.isdir(model_dir):
        raise FileNotFoundError(f"run_eval.model_dir {model_dir}: no such directory")
    output_dir = output_dir or os.path.join(model_dir, "eval")
    storage.check_access(output_dir, write=True)  # an unusable bucket fails before loading
    path, prefix = checkpointing.params_location(model_dir)
    if step is None:
        step = int(os.path.basename(os.path.dirname(path))) if prefix else 0
    mesh = partitioning.make_mesh() if data_parallel else None
    model = AnyGPT.load(model_dir, mesh=mesh)
    if model.vocab is None:
        raise FileNotFoundError(f"{model_dir} has no vocab/: evaluation needs the vocabulary")
    eval_tasks.register_eval(model.vocab)
    return evaluate(model, output_dir, step, options)
