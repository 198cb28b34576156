"""seqio Tasks and Mixtures of AnyGPT's two training stages, over pre-tokenized shards.

Tasks, one per direction (shard kind -> template):

    anygpt_image_caption   image_text  -> image->text     (caption sets)
    anygpt_text_to_image   image_text  -> text->image     (other image sets; default: the same)
    anygpt_asr             speech_text -> speech->text
    anygpt_tts             speech_text -> text->speech
    anygpt_music_caption   music_text  -> music->text
    anygpt_text_to_music   music_text  -> text->music
    anygpt_instruct        dialogue    -> chat template, loss on assistant turns

Mixtures: `anygpt_pretrain` (stage 1, rates from REFERENCE.md §5: caption 0.2, text-to-image
0.22, speech 0.3 and music 0.28, each split 50/50 between its two directions) and `anygpt_sft`
(stage 2). Paths and rates come from gin: call `register()` (gin-configured) before reading.
A task with no shard directories is not registered and leaves its mixtures (seqio renormalizes
the remaining rates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from anygpt_jax import prompts
from anygpt_jax.data import preprocessors
from anygpt_jax.data.source import ShardDataSource
from anygpt_jax.vocab import MergedVocabulary

# task -> (shard kind, direction of the template)
TASKS: dict[str, tuple[str, str]] = {
    "anygpt_image_caption": ("image_text", "image_to_text"),
    "anygpt_text_to_image": ("image_text", "text_to_image"),
    "anygpt_asr": ("speech_text", "speech_to_text"),
    "anygpt_tts": ("speech_text", "text_to_speech"),
    "anygpt_music_caption": ("music_text", "music_to_text"),
    "anygpt_text_to_music": ("music_text", "text_to_music"),
    "anygpt_instruct": ("dialogue", preprocessors.DIALOGUE),
}
PRETRAIN_RATES: dict[str, float] = {
    "anygpt_image_caption": 0.2,
    "anygpt_text_to_image": 0.22,
    "anygpt_asr": 0.15,
    "anygpt_tts": 0.15,
    "anygpt_music_caption": 0.14,
    "anygpt_text_to_music": 0.14,
}
SFT_RATES: dict[str, float] = {"anygpt_instruct": 1.0}
PRETRAIN, SFT = "anygpt_pretrain", "anygpt_sft"


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
    image_caption_dirs: Sequence[str] = (),
    text_to_image_dirs: Sequence[str] | None = None,
    speech_dirs: Sequence[str] = (),
    music_dirs: Sequence[str] = (),
    dialogue_dirs: Sequence[str] = (),
    pretrain_rates: Mapping[str, float] | None = None,
    sft_rates: Mapping[str, float] | None = None,
    tokenizers: Mapping[str, str] | None = None,
    verify: str = "size",
    on_corrupt: str = "stop",
    chat_style: prompts.ChatStyle | None = None,
    shuffle_buffer_size: int = 256,
) -> list[str]:
    """Registers the tasks that have shards and the two mixtures; returns the names.

    text_to_image_dirs None reads the caption shards in that direction too. pretrain_rates /
    sft_rates None: PRETRAIN_RATES / SFT_RATES. tokenizers: modality -> accepted tokenizer
    name or identity (default: the vocabulary's registry names). verify: see check_manifest.
    on_corrupt: a record block whose CRCs fail 'stop's training in one line naming the file
    and offset, or is 'skip'ped, counted and logged (data/records.py).
    """
    dirs = {
        "anygpt_image_caption": image_caption_dirs,
        "anygpt_text_to_image": image_caption_dirs
        if text_to_image_dirs is None
        else text_to_image_dirs,
        "anygpt_asr": speech_dirs,
        "anygpt_tts": speech_dirs,
        "anygpt_music_caption": music_dirs,
        "anygpt_text_to_music": music_dirs,
        "anygpt_instruct": dialogue_dirs,
    }
    features = output_features(vocabulary)
    names = []
    for name, (kind, direction) in TASKS.items():
        paths = [dirs[name]] if isinstance(dirs[name], str) else list(dirs[name])
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
        (PRETRAIN, pretrain_rates or PRETRAIN_RATES),
        (SFT, sft_rates or SFT_RATES),
    ):
        unknown = sorted(set(rates) - set(TASKS))
        if unknown:
            raise ValueError(f"{mixture} rates name unknown tasks {unknown}; known: {list(TASKS)}")
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
