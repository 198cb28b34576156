"""seqio preprocessors: shard records -> rendered, tokenized `targets` + `loss_weights`.

Rendering (template, instruction drawn from the pool, chat markers) and tokenization run in
python inside `tf.numpy_function`: a pure function of the record and a per-example seed that
seqio derives statelessly from the task seed, so pipelines are deterministic and their
iterators can be checkpointed.
"""

from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

from anygpt_jax import prompts
from anygpt_jax.data import shards as shards_lib
from anygpt_jax.vocab import MergedVocabulary

DIALOGUE = "dialogue"


def render_record(
    record: bytes,
    seed: np.ndarray,
    vocab: MergedVocabulary,
    direction: str,
    style: prompts.ChatStyle | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One serialized shard example -> (ids int32 [n], loss weights float32 [n])."""
    ex = shards_lib.deserialize(bytes(record))
    if direction == DIALOGUE:
        if ex.kind != "dialogue":
            raise ValueError(f"example {ex.id!r} is {ex.kind}, not a dialogue")
        pieces = prompts.render_dialogue(ex.turns, ex.spans, style)
    else:
        if ex.kind == "dialogue":
            raise ValueError(f"example {ex.id!r} is a dialogue; direction {direction!r}")
        rng = np.random.default_rng(np.asarray(seed, np.int64) & 0xFFFFFFFF)
        instruction = prompts.pick_instruction(direction, rng)
        pieces = prompts.render_pretrain(direction, ex.text, ex.spans[0], instruction)
    return prompts.tokenize_pieces(pieces, vocab)


def render_and_tokenize(
    dataset: tf.data.Dataset,
    output_features: dict,
    direction: str,
    style: prompts.ChatStyle | None = None,
) -> tf.data.Dataset:
    """seqio preprocessor: {"record"} -> {"targets", "loss_weights"} for `direction`."""
    if direction != DIALOGUE and direction not in prompts.instruction_pools():
        raise ValueError(f"direction {direction!r}; expected {DIALOGUE!r} or "
                         f"{tuple(prompts.instruction_pools())}")
    vocab = output_features["targets"].vocabulary
    fn = functools.partial(render_record, vocab=vocab, direction=direction, style=style)

    @seqio.map_over_dataset(num_seeds=1)
    def render(ex, seed):
        ids, weights = tf.numpy_function(
            fn, [ex["record"], seed], [tf.int32, tf.float32], stateful=False
        )
        return {
            "targets": tf.ensure_shape(ids, [None]),
            "loss_weights": tf.ensure_shape(weights, [None]),
        }

    return render(dataset)
