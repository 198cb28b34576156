"""mixed_dot: values and gradients equal the plain dot_general's; bf16 operands, fp32 sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from anygpt_jax.model.mixed_dot import _mixed_dot, mixed_dot

CASES = [
    ((4, 5, 6), (6, 7), ((2,), (0,))),  # projection [b, t, e] @ [e, f]
    ((4, 6), (3, 2, 6), ((1,), (2,))),  # tied head: contract the table's last axis
    ((2, 3, 4, 5), (4, 5, 7, 2), ((2, 3), (0, 1))),  # two contracted axes, two free on each side
    ((5, 2, 3), (3, 4, 5), ((0, 2), (2, 0))),  # contracted axes out of order
]


@pytest.mark.parametrize("x_shape,y_shape,contracting", CASES)
def test_custom_gradient_equals_autodiff_in_fp32(x_shape, y_shape, contracting):
    # The hand-written backward pass, run in fp32, against JAX's own transpose rules.
    kx, ky, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, x_shape)
    y = jax.random.normal(ky, y_shape)
    dims = (contracting, ((), ()))
    out_shape = lax.dot_general(x, y, dims).shape
    g = jax.random.normal(kg, out_shape)

    def loss_ref(x, y):
        return jnp.sum(lax.dot_general(x, y, dims, precision="highest") * g)

    def loss_custom(x, y):
        f32 = jnp.dtype(jnp.float32)
        return jnp.sum(_mixed_dot(x, y, contracting, f32, f32) * g)

    with jax.default_matmul_precision("highest"):
        ref = jax.grad(loss_ref, argnums=(0, 1))(x, y)
        got = jax.grad(loss_custom, argnums=(0, 1))(x, y)
        np.testing.assert_allclose(loss_custom(x, y), loss_ref(x, y), rtol=1e-5)
    for r, c in zip(ref, got, strict=True):
        assert c.shape == r.shape and c.dtype == r.dtype
        np.testing.assert_allclose(c, r, rtol=1e-5, atol=1e-5)


def test_bf16_dot_accumulates_in_fp32_and_keeps_parameter_grads_fp32():
    x = jnp.full((1, 4096), 1.0, jnp.float32)
    y = jnp.full((4096, 2), 1.0 / 4096 + 1e-6, jnp.float32)
    out = mixed_dot(x, y, ((1,), (0,)), jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    # 4096 products summed: a bf16 accumulator stalls at 256 + small terms; fp32 does not.
    np.testing.assert_allclose(np.asarray(out, np.float32), 1.0, rtol=1e-2)
    gx, gy = jax.grad(lambda x, y: mixed_dot(x, y, ((1,), (0,)), jnp.bfloat16).sum(), (0, 1))(x, y)
    assert gx.dtype == jnp.float32 and gy.dtype == jnp.float32
    np.testing.assert_allclose(gy, 1.0)
    np.testing.assert_allclose(gx, 2 * (1.0 / 4096 + 1e-6), rtol=1e-2)


def test_fp32_dtype_is_the_plain_dot():
    x = jnp.arange(6.0).reshape(2, 3)
    y = jnp.arange(12.0).reshape(3, 4)
    jaxpr = jax.make_jaxpr(lambda x, y: mixed_dot(x, y, ((1,), (0,)), jnp.float32))(x, y)
    assert "custom_vjp" not in str(jaxpr)
    np.testing.assert_array_equal(mixed_dot(x, y, ((-1,), (0,)), jnp.float32), x @ y)
