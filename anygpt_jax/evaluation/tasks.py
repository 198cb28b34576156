"""seqio evaluation Tasks of the paper's benchmarks (REFERENCE.md §7), over eval-set shards.

    anygpt_eval_coco_caption        COCO Karpathy test, image -> text   CIDEr, BLEU-4
    anygpt_eval_coco_text_to_image  COCO captions, text -> image        CLIP score
    anygpt_eval_librispeech_asr     LibriSpeech, speech -> text         WER
    anygpt_eval_vctk_tts            VCTK, text -> speech                WER (ASR), speaker SIM
    anygpt_eval_musiccaps_music     MusicCaps, text -> music            CLAP score

Shards come from `python -m data.eval_sets` (their metadata carry the references). Each
example is rendered in the stage-1 template with a fixed instruction (the first of the pool
unless gin says otherwise), so evaluation is deterministic. Features: `targets` and
`loss_weights` (the whole sample, for teacher-forced loss), `prompt` (ids up to where the
answer starts, for generation), `example_id` and `meta` (JSON: text, references, sources).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np
import seqio
import tensorflow as tf

from anygpt_jax import prompts, storage
from anygpt_jax import tasks as train_tasks
from anygpt_jax.data import shards as shards_lib
from anygpt_jax.data.source import ShardDataSource
from anygpt_jax.evaluation import scoring
from anygpt_jax.vocab import MergedVocabulary


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """What an eval task reads (shard kind, gin parameter of its directories), how it renders
    (direction), what the model outputs, and its metric functions (factories)."""

    kind: str
    dirs_param: str
    direction: str
    output: str
    metrics: tuple[Callable[[], Callable] | Callable, ...]


EVAL_TASKS: dict[str, EvalSpec] = {
    "anygpt_eval_coco_caption": EvalSpec(
        "image_text", "coco_dirs", "image_to_text", "text", (scoring.caption_metric,)),
    "anygpt_eval_coco_text_to_image": EvalSpec(
        "image_text", "coco_dirs", "text_to_image", "image", (scoring.ClipScore,)),
    "anygpt_eval_librispeech_asr": EvalSpec(
        "speech_text", "librispeech_dirs", "speech_to_text", "text", (scoring.asr_metric,)),
    "anygpt_eval_vctk_tts": EvalSpec(
        "speech_text", "vctk_dirs", "text_to_speech", "speech",
        (scoring.TtsWer, scoring.SpeakerSimilarity)),
    "anygpt_eval_musiccaps_music": EvalSpec(
        "music_text", "musiccaps_dirs", "text_to_music", "music", (scoring.ClapScore,)),
}  # fmt: skip
EVAL_MIXTURE = "anygpt_eval"


def render_eval_record(
    record: bytes, vocab: MergedVocabulary, direction: str, instruction: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes, bytes]:
    """A shard record -> (ids, loss weights, prompt ids, example id, meta JSON)."""
    ex = shards_lib.deserialize(bytes(record))
    if ex.kind == "dialogue":
        raise ValueError(f"example {ex.id!r} is a dialogue; eval direction {direction!r}")
    pieces = prompts.render_pretrain(direction, ex.text, ex.spans[0], instruction)
    ids, weights = prompts.tokenize_pieces(pieces, vocab)
    segments = prompts.render_pretrain_prompt(direction, instruction, ex.text, ex.spans[0])
    prompt, _ = prompts.tokenize_pieces([prompts.Piece(segments, 1.0)], vocab, add_eos=False)
    meta = {**dict(ex.meta), "text": ex.text}
    meta.setdefault("references", [ex.text])
    return ids, weights, prompt, ex.id.encode(), json.dumps(meta, ensure_ascii=False).encode()


def _render(direction: str, instruction: str):
    def render(dataset: tf.data.Dataset, output_features: dict) -> tf.data.Dataset:
        vocab = output_features["targets"].vocabulary
        fn = functools.partial(
            render_eval_record, vocab=vocab, direction=direction, instruction=instruction
        )

        def one(ex):
            ids, weights, prompt, ex_id, meta = tf.numpy_function(
                fn, [ex["record"]], [tf.int32, tf.float32, tf.int32, tf.string, tf.string],
                stateful=False,
            )  # fmt: skip
            return {
                "targets": tf.ensure_shape(ids, [None]),
                "loss_weights": tf.ensure_shape(weights, [None]),
                "prompt": tf.ensure_shape(prompt, [None]),
                "example_id": tf.ensure_shape(ex_id, []),
                "meta": tf.ensure_shape(meta, []),
            }

        return dataset.map(one, num_parallel_calls=tf.data.AUTOTUNE)

    render.__name__ = f"render_eval_{direction}"
    return render


def example_meta(example: Mapping[str, Any]) -> dict:
    """The decoded `meta` JSON of a task example (numpy or python values)."""
    raw = example["meta"]
    raw = raw.numpy() if hasattr(raw, "numpy") else raw
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _postprocess(output_kind: str):
    def postprocess(output: Any, example: Mapping[str, Any] | None = None,
                    is_target: bool = False) -> Any:  # fmt: skip
        """Targets: references (text outputs) or the input text and sources (media outputs);
        predictions pass through (the evaluation loop decodes them)."""
        if not is_target:
            return output
        meta = example_meta(example)
        if output_kind == "text":
            return list(meta["references"])
        return {k: meta.get(k) for k in ("text", "source", "prompt_audio", "speaker")}

    postprocess.__name__ = f"postprocess_{output_kind}"
    return postprocess


@gin.configurable
def register_eval(
    vocabulary: MergedVocabulary,
    coco_dirs: Sequence[str] = (),
    librispeech_dirs: Sequence[str] = (),
    vctk_dirs: Sequence[str] = (),
    musiccaps_dirs: Sequence[str] = (),
    instructions: Mapping[str, str] | None = None,
    tokenizers: Mapping[str, str] | None = None,
    verify: str = "size",
) -> list[str]:
    """Registers the eval tasks whose shard directories are given (and the `anygpt_eval`
    mixture of them); returns their names. instructions: direction -> fixed instruction
    (default: the first phrasing of each pool). tokenizers / verify: see tasks.register."""
    dirs = {"coco_dirs": coco_dirs, "librispeech_dirs": librispeech_dirs,
            "vctk_dirs": vctk_dirs, "musiccaps_dirs": musiccaps_dirs}  # fmt: skip
    chosen = {d: pool[0] for d, pool in prompts.instruction_pools().items()}
    unknown = sorted(set(instructions or {}) - set(chosen))
    if unknown:
        raise ValueError(f"register_eval.instructions: unknown directions {unknown}")
    chosen |= dict(instructions or {})
    features = train_tasks.output_features(vocabulary)
    names = []
    for name, spec in EVAL_TASKS.items():
        given = dirs[spec.dirs_param]
        paths = [given] if isinstance(given, str) else list(given)
        if not paths:
            seqio.TaskRegistry.remove(name)
            continue
        for path in paths:
            if not storage.isdir(path):
                raise FileNotFoundError(
                    f"register_eval.{spec.dirs_param}: {path} is not a directory (build the "
                    f"eval set with `python -m data.eval_sets`)"
                )
        task = seqio.Task(
            name,
            ShardDataSource(paths, spec.kind, vocabulary, tokenizers, verify),
            output_features=features,
            preprocessors=[_render(spec.direction, chosen[spec.direction])],
            postprocess_fn=_postprocess(spec.output),
            metric_fns=[m() if isinstance(m, type) else m for m in spec.metrics],
            shuffle_buffer_size=None,
        )
        train_tasks._add(name, task)
        names.append(name)
    seqio.MixtureRegistry.remove(EVAL_MIXTURE)
    if names:
        train_tasks._add(EVAL_MIXTURE, seqio.Mixture(EVAL_MIXTURE, names, default_rate=1.0))
    return names


def eval_spec(task_name: str) -> EvalSpec:
    """The EvalSpec of a registered eval task; ValueError naming the known ones."""
    if task_name not in EVAL_TASKS:
        raise ValueError(f"{task_name!r} is not an eval task; known: {sorted(EVAL_TASKS)}")
    return EVAL_TASKS[task_name]
