"""array_ops.argmax: jnp.argmax's result (first maximum, NaN first) on every input kind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anygpt_jax.array_ops import argmax


@pytest.mark.parametrize("shape", [(7,), (3, 1000), (2, 5, 3, 64)])
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
