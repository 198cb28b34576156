"""seqio Tasks and Mixtures of AnyGPT's two training stages, over pre-tokenized shards.

Tasks, one per direction of each registered media modality's '<m>_text' shards (names and
stage-1 rates from its record, modalities.registry.PairTasks), then the dialogues:

    anygpt_image_caption   image_text  -> image->text     rate 0.2
    anygpt_text_to_image   image_text  -> text->image     rate 0.22
    anygpt_asr             speech_text -> speech->text    rate 0.15
    anygpt_tts             speech_text -> text->speech    rate 0.15
    anygpt_music_caption   music_text  -> music->text     rate 0.14
    anygpt_text_to_music   music_text  -> text->music     rate 0.14
    anygpt_instruct        dialogue    -> chat template, loss on assistant turns

Mixtures: `anygpt_pretrain` (stage 1, rates from REFERENCE.md section 5: caption 0.2,
text-to-image 0.22, speech 0.3 and music 0.28, each split 50/50 between its two directions)
and `anygpt_sft` (stage 2). Paths and rates come from gin: call `register()` (gin-configured)
before reading. A task with no shard directories is not registered and leaves its mixtures
(seqio renormalizes the remaining rates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from anygpt_jax import prompts
from anygpt_jax.data import preprocessors, shards
from anygpt_jax.data.source import ShardDataSource
from anygpt_jax.modalities.registry import media_modalities, media_modality
from anygpt_jax.vocab import MergedVocabulary

# seqio's interface without its import (vocab/merged.py): here, a seqio.Vocabulary for checks.
seqio.Vocabulary.register(MergedVocabulary)

INSTRUCT = "anygpt_instruct"
PRETRAIN, SFT = "anygpt_pretrain", "anygpt_sft"


def task_table() -> dict[str, tuple[str, str]]:
    """task -> (shard kind, direction of its template): two per registered media modality (in
    the registry's order), then the instruction task over dialogues."""
    table = {}
    for name in media_modalities():
        pair = media_modality(name).pair_tasks
        kind = name + shards.PAIR_SUFFIX
        table[pair.to_text] = (kind, prompts.direction_of(name, to_text=True))
        table[pair.from_text] = (kind, prompts.direction_of(name, to_text=False))
    table[INSTRUCT] = (shards.DIALOGUE, preprocessors.DIALOGUE)
    return table


def registered_pretrain_rates() -> dict[str, float]:
    """Stage-1 mixture rates of the pair tasks whose records give one."""
    rates = {}
    for name in media_modalities():
        pair = media_modality(name).pair_tasks
        rates |= {pair.to_text: pair.to_text_rate, pair.from_text: pair.from_text_rate}
    return {t: r for t, r in rates.items() if r > 0}


# The import-time views of the built-in modalities (registering one later: call the functions).
TASKS: dict[str, tuple[str, str]] = task_table()
PRETRAIN_RATES: dict[str, float] = registered_pretrain_rates()
SFT_RATES: dict[str, float] = {INSTRUCT: 1.0}


def output_features(vocab: MergedVocabulary) -> dict[str, seqio.Feature]:
    """`targets` (ids, <s> ... </s> added by the preprocessor) and per-id `loss_weights`."""
    return {
        "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
        "loss_weights": seqio.Feature(
            seqio.PassThroughVocabulary(1), add_eos=False, dtype=tf.float32, required=False
        ),
    }


def _add(name: str, item) -> None:
    registry = seqio.MixtureRegistry if isinstance(item, seqio.Mixture) else seqio.TaskRegistry
    registry.remove(name)  # re-registration (tests, notebooks) replaces the old entry
    registry.add_provider(name, item)


@gin.configurable
def register(
    vocabulary: MergedVocabulary,
    shard_dirs: Mapping[str, str | Sequence[str]] | None = None,
    task_dirs: Mapping[str, str | Sequence[str]] | None = None,
    pretrain_rates: Mapping[str, float] | None = None,
    sft_rates: Mapping[str, float] | None = None,
    tokenizers: Mapping[str, str] | None = None,
    verify: str = "size",
    on_corrupt: str = "stop",
    chat_style: prompts.ChatStyle | None = None,
    shuffle_buffer_size: int = 256,
) -> list[str]:
    """Registers the tasks that have shards and the two mixtures; returns the names.

    shard_dirs: shard kind -> directories ({'image_text': [...], 'speech_text': [...],
    'dialogue': [...]}); each kind's tasks read them in every direction. task_dirs: task ->
    directories, replacing its kind's (e.g. other image sets for anygpt_text_to_image).
    pretrain_rates / sft_rates None: the records' rates
    (registered_pretrain_rates()) / SFT_RATES.
    tokenizers: modality -> accepted tokenizer name or identity (default: the vocabulary's
    registry names). verify: see check_manifest. on_corrupt: a record block whose CRCs fail
    'stop's training in one line naming the file and offset, or is 'skip'ped, counted and
    logged (data/records.py).
    """
    table = task_table()
    shard_dirs, task_dirs = dict(shard_dirs or {}), dict(task_dirs or {})
    bad_kinds = sorted(set(shard_dirs) - set(shards.kinds()))
    if bad_kinds:
        raise ValueError(f"tasks.register.shard_dirs names unknown shard kinds {bad_kinds}; "
                         f"known: {list(shards.kinds())}")
    bad_tasks = sorted(set(task_dirs) - set(table))
    if bad_tasks:
        raise ValueError(f"tasks.register.task_dirs names unknown tasks {bad_tasks}; "
                         f"known: {list(table)}")
    features = output_features(vocabulary)
    names = []
    for name, (kind, direction) in table.items():
        dirs = task_dirs.get(name, shard_dirs.get(kind, ()))
        paths = [dirs] if isinstance(dirs, str) else list(dirs)
        if not paths:
            seqio.TaskRegistry.remove(name)
            continue
        source = ShardDataSource(paths, kind, vocabulary, tokenizers, verify, on_corrupt)
        task = seqio.Task(
            name,
            source,
            output_features=features,
            preprocessors=[
                # Rendering follows the cache point, so each epoch draws new instructions.
                seqio.CacheDatasetPlaceholder(),
                _bind(direction, chat_style),
            ],
            shuffle_buffer_size=shuffle_buffer_size,
        )
        _add(name, task)
        names.append(name)
    for mixture, rates in (
        (PRETRAIN, pretrain_rates or registered_pretrain_rates()),
        (SFT, sft_rates or SFT_RATES),
    ):
        unknown = sorted(set(rates) - set(table))
        if unknown:
            raise ValueError(f"{mixture} rates name unknown tasks {unknown}; known: {list(table)}")
        present = [(t, float(r)) for t, r in rates.items() if t in names and r > 0]
        seqio.MixtureRegistry.remove(mixture)
        if present:
            _add(mixture, seqio.Mixture(mixture, present))
            names.append(mixture)
    return names


def _bind(direction: str, style: prompts.ChatStyle | None):
    def render(dataset, output_features):
        return preprocessors.render_and_tokenize(dataset, output_features, direction, style)

    render.__name__ = f"render_{direction}"
    return render
