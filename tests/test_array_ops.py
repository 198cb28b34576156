"""array_ops.argmax: jnp.argmax's result (first maximum, NaN first) on every input kind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anygpt_jax.array_ops import argmax


@pytest.mark.parametrize("shape", [(7,), (3, 1000), (2, 5, 3, 64), (5, 18432), (2, 3, 700)])
def test_equals_jnp_argmax_on_random_rows(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    got = jax.jit(argmax)(x)
    assert got.dtype == jnp.int32 and got.shape == shape[:-1]
    np.testing.assert_array_equal(got, jnp.argmax(x, axis=-1))


def test_ties_nan_and_infinite_rows_follow_jnp_argmax():
    rows = np.array([
        [1.0, 3.0, 3.0, 0.0, 3.0],  # ties: the first maximum
        [0.0, np.nan, 5.0, np.nan, 1.0],  # NaN beats everything: the first NaN
        [-np.inf] * 5,  # all -inf: index 0
        [np.inf, 1.0, np.inf, -np.inf, 0.0],
        [-2.0, -1.0, -3.0, -1.0, -5.0],
    ], np.float32)
    np.testing.assert_array_equal(jax.jit(argmax)(jnp.asarray(rows)), [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(argmax(jnp.asarray(rows)), jnp.argmax(rows, axis=-1))


def test_bfloat16_and_vmap():
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 300)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(jax.vmap(argmax)(x), jnp.argmax(x, axis=-1))


@pytest.mark.parametrize("length", [512, 700, 18432])
def test_long_rows_go_blockwise_with_the_same_ties_nans_and_infinities(length):
    # Rows of >= 4 blocks of 128 take the blockwise path on CPU; 700 pads its last block.
    rows = np.full((6, length), -1.0, np.float32)
    rows[0, [130, 300, length - 1]] = 7.0  # ties across blocks: the first
    rows[1, [length - 1, 5]] = [np.nan, np.nan]  # NaN in the first block wins over the last
    rows[2, [129, length - 1]] = [np.nan, 9.0]
    rows[3] = -np.inf  # all -inf: index 0, never a padding index
    rows[4, length - 1] = np.inf
    rows[5, [255, 256]] = 3.0  # the maximum on both sides of a block boundary
    want = np.argmax(rows, axis=-1)
    np.testing.assert_array_equal(jax.jit(argmax)(jnp.asarray(rows)), want)
    assert list(want) == [130, 5, 129, 0, length - 1, 255]
    ints = jnp.asarray(np.random.default_rng(0).integers(-9, 9, (3, length)), jnp.int32)
    np.testing.assert_array_equal(jax.jit(argmax)(ints), jnp.argmax(ints, axis=-1))
