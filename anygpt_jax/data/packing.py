"""The feature converter: task examples -> the batches the trainer consumes.

Batches follow the contract of data/features.py.

Task feature lengths are one more than the row length (n ids make n - 1 predictions).
Task examples carry `targets` (int32 ids: <s> ... </s>) and `loss_weights` (float32, one per
id). An example longer than length + 1 ids is truncated to its first length + 1 ids (t5x's
rule; a span may lose its end marker). Packing is best-fit over `num_bins` open rows: each
example goes into the fullest open row it fits in; when none has room, the fullest row is
emitted and the example starts a new one. Examples are never split across rows. The packer is
a tf.data `scan`, so its state is part of a tf.data iterator checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import gin
import seqio
import tensorflow as tf

from anygpt_jax.data.features import (
    INPUTS,
    MODEL_FEATURES,
    POSITIONS,
    SEGMENTS,
    TARGETS,
    WEIGHTS,
)

_DTYPES = {
    INPUTS: tf.int32,
    TARGETS: tf.int32,
    WEIGHTS: tf.float32,
    SEGMENTS: tf.int32,
    POSITIONS: tf.int32,
}


def to_lm_example(ex: Mapping[str, tf.Tensor], length: int) -> dict[str, tf.Tensor]:
    """targets/loss_weights [n] -> next-token inputs, targets, weights [min(n-1, length)]."""
    ids = tf.cast(ex["targets"], tf.int32)[: length + 1]
    w = tf.cast(ex["loss_weights"], tf.float32)[: length + 1]
    return {INPUTS: ids[:-1], TARGETS: ids[1:], WEIGHTS: w[1:]}


def pad_example(ex: Mapping[str, tf.Tensor], length: int) -> dict[str, tf.Tensor]:
    """One unpacked example padded to `length` (segment id 1, positions from 0)."""
    n = tf.shape(ex[INPUTS])[0]
    out = {k: tf.pad(ex[k], [[0, length - n]]) for k in (INPUTS, TARGETS, WEIGHTS)}
    out[SEGMENTS] = tf.pad(tf.ones([n], tf.int32), [[0, length - n]])
    out[POSITIONS] = tf.pad(tf.range(n, dtype=tf.int32), [[0, length - n]])
    return {k: tf.ensure_shape(v, [length]) for k, v in out.items()}


def _empty_state(num_bins: int, length: int) -> dict[str, tf.Tensor]:
    state = {k: tf.zeros([num_bins, length], _DTYPES[k]) for k in MODEL_FEATURES}
    state["fill"] = tf.zeros([num_bins], tf.int32)
    state["count"] = tf.zeros([num_bins], tf.int32)
    return state


def pack_dataset(ds: tf.data.Dataset, length: int, num_bins: int = 8) -> tf.data.Dataset:
    """Best-fit packing of lm examples (see module docstring) into rows of `length`."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    flush = {k: tf.zeros([0], _DTYPES[k]) for k in (INPUTS, TARGETS, WEIGHTS)}
    # num_bins sentinels (length -1) flush every open row at the end of a finite dataset.
    items = ds.map(lambda ex: (ex, tf.constant(False))).concatenate(
        tf.data.Dataset.from_tensors((flush, tf.constant(True))).repeat(num_bins)
    )

    def step(state, item):
        ex, is_flush = item
        n = tf.shape(ex[INPUTS])[0]
        fill = state["fill"]
        fits = (fill + n <= length) & ~is_flush
        # Best fit: among rows with room, the fullest (ties: lowest index).
        best = tf.argmax(tf.where(fits, fill, -1), output_type=tf.int32)
        fullest = tf.argmax(fill, output_type=tf.int32)
        placed = tf.reduce_any(fits)
        row = tf.where(placed, best, fullest)
        emitted = {k: state[k][row] for k in MODEL_FEATURES}
        emit = ~placed & (fill[row] > 0)
        # A row that is emitted restarts empty before the example goes in.
        start = tf.where(placed, fill[row], 0)
        new = {}
        for k in MODEL_FEATURES:
            cur = tf.where(placed, state[k][row], tf.zeros([length], _DTYPES[k]))
            if k in (INPUTS, TARGETS, WEIGHTS):
                val = ex[k]
            elif k == SEGMENTS:
                count = tf.where(placed, state["count"][row], 0)
                val = tf.fill([n], count + 1)
            else:
                val = tf.range(n, dtype=tf.int32)
            idx = tf.expand_dims(start + tf.range(n), 1)
            cur = tf.tensor_scatter_nd_update(cur, idx, val)
            new[k] = tf.tensor_scatter_nd_update(state[k], [[row]], cur[None])
        new["fill"] = tf.tensor_scatter_nd_update(fill, [[row]], [start + n])
        count = tf.where(placed, state["count"][row], 0) + tf.cast(n > 0, tf.int32)
        new["count"] = tf.tensor_scatter_nd_update(state["count"], [[row]], [count])
        return new, (emit, emitted)

    packed = items.scan(_empty_state(num_bins, length), step)
    return packed.filter(lambda emit, row: emit).map(
        lambda emit, row: {k: tf.ensure_shape(v, [length]) for k, v in row.items()}
    )


@gin.configurable
class AnyGPTFeatureConverter(seqio.FeatureConverter):
    """targets + loss_weights -> the batch contract above, packed (default) or padded."""

    TASK_FEATURES = {
        "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.float32),
    }
    MODEL_FEATURES = {
        k: seqio.FeatureConverter.FeatureSpec(dtype=_DTYPES[k]) for k in MODEL_FEATURES
    }
    PACKING_FEATURE_DTYPES = {SEGMENTS: tf.int32, POSITIONS: tf.int32}

    def __init__(self, pack: bool = True, num_bins: int = 8, **kwargs):
        super().__init__(pack=pack, **kwargs)
        self._num_bins = num_bins

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        length = task_feature_lengths["targets"] - 1  # one id more than the row (see above)
        ds = ds.map(lambda ex: to_lm_example(ex, length), num_parallel_calls=tf.data.AUTOTUNE)
        if self.pack:
            return pack_dataset(ds, length, self._num_bins)
        return ds.map(lambda ex: pad_example(ex, length), num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        length = task_feature_lengths["targets"] - 1
        return {k: length for k in MODEL_FEATURES}
