"""mixed_dot: values and gradients equal the plain dot_general's; bf16 operands, fp32 sums;
weight gradients without a transpose; the remat policy saves mixed dots in the compute dtype."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.ad_checkpoint import print_saved_residuals

from anygpt_jax.model.mixed_dot import _mixed_dot, dots_saveable, mixed_dot

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


def test_fp32_values_are_the_plain_dot():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 8))
    y = jax.random.normal(jax.random.PRNGKey(2), (8, 4))
    got = mixed_dot(x, y, ((-1,), (0,)), jnp.float32)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, lax.dot_general(x, y, (((2,), (0,)), ((), ()))))


def _transposes_in_weight_gradient(dot) -> int:
    x, y = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
    jaxpr = jax.make_jaxpr(jax.grad(lambda y: jnp.sum(jnp.sin(dot(x, y)))))(y)
    return sum(eqn.primitive.name == "transpose" for eqn in jaxpr.jaxpr.eqns)


def test_weight_gradient_comes_out_in_the_weight_layout():
    # JAX's rule builds dW as dot(g, x) [out, in] plus a transpose, which XLA:CPU turns into a
    # strided copy of g; ours contracts x against g straight into [in, out].
    plain = _transposes_in_weight_gradient(
        lambda x, y: lax.dot_general(x, y, (((2,), (0,)), ((), ()))))
    ours = _transposes_in_weight_gradient(lambda x, y: mixed_dot(x, y, ((2,), (0,)), jnp.float32))
    assert plain == 1 and ours == 0


def _saved(fn, *args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(fn, *args)
    return out.getvalue()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dots_saveable_keeps_matmul_outputs_in_the_compute_dtype(dtype):
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 8))
    w = jax.random.normal(jax.random.PRNGKey(4), (8, 16))

    def f(x, w):
        h = mixed_dot(x, w, ((1,), (0,)), dtype)
        return jnp.sum(jnp.sin(h.astype(jnp.float32)))

    ours = jax.checkpoint(f, policy=dots_saveable)
    jax_policy = jax.checkpoint(f, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    if dtype == jnp.bfloat16:
        assert "bf16[4,16] named" in _saved(ours, x, w)
        assert "f32[4,16] output of dot_general" not in _saved(ours, x, w)
        assert "f32[4,16] output of dot_general" in _saved(jax_policy, x, w)  # twice the bytes
    else:
        assert "f32[4,16] output of dot_general" in _saved(ours, x, w)
    for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(jax_policy, (0, 1))(x, w), strict=True):
        np.testing.assert_array_equal(a, b)
