"""Checkpoint retention: the last `keep_last` steps plus every `keep_every`-th survive."""

import os

import jax.numpy as jnp
import tensorflow as tf

from anygpt_jax.data.pipeline import InputIterator
from anygpt_jax.training.checkpoints import INPUT_DIR, TrainCheckpointer


def batches() -> tf.data.Dataset:
    return tf.data.Dataset.range(1000).batch(2).map(lambda x: {"x": x})


def test_keeps_last_k_and_every_mth_step_with_their_input_positions(tmp_path):
    ckpt = TrainCheckpointer(str(tmp_path), keep_last=2, keep_every=5)
    inputs = InputIterator(batches())
    state = {"w": jnp.zeros(3)}
    for step in range(1, 13):
        next(inputs)
        ckpt.save(step, {"w": state["w"] + step}, inputs)
    ckpt.wait()
    kept = [5, 10, 11, 12]
    assert sorted(ckpt._manager.all_steps()) == kept
    assert sorted(int(n) for n in os.listdir(tmp_path / INPUT_DIR)) == kept
    ckpt.close()

    # A periodic step outside the last K restores, input position included.
    reopened = TrainCheckpointer(str(tmp_path), keep_last=2, keep_every=5)
    assert reopened.latest_step() == 12
    fresh = InputIterator(batches())
    restored = reopened.restore(5, {"w": jnp.zeros(3)}, fresh)
    assert float(restored["w"][0]) == 5.0
    assert next(fresh)["x"].tolist() == [10, 11]
    reopened.close()
