"""Model matmuls with a hand-written backward pass: fp32 sums, weight gradients in place.

Two reasons to not leave the backward pass to JAX's transpose rules:

- Mixed precision. `lax.dot_general(a_bf16, b_bf16)` returns bf16, and its transposes in the
  backward pass do too. XLA:CPU runs bf16 x bf16 -> bf16 dots at fp32 speed, while bf16 x
  bf16 -> fp32 dots run on the CPU's bf16 dot-product instructions (avx512_bf16) at about
  twice that (~380 vs ~190 GFLOP/s here, compiled with runtime.training_compiler_options);
  TPUs accumulate in fp32 either way. So when the compute dtype is narrower than fp32 every
  matmul here asks for an fp32 result, in the forward pass and in both gradient matmuls, and
  casts it back: the parameter's gradient stays in fp32 (the parameter dtype) instead of
  passing through bf16.
- Layout, in every dtype. JAX's rule computes a weight gradient as dot(g, x), [out, in], and
  then transposes it to the weight's [in, out]. XLA:CPU folds that transpose into the dot by
  transposing g instead, fused into g's elementwise producer as a strided copy (the SwiGLU
  gradient: ~45-75 ms a layer for 8 MiB). Here the weight gradient is dot(x, g), already in
  the weight's layout: a ~100M fp32 train step went from 4.6 to 3.8 s on this CPU.

`dots_saveable` is the remat policy that saves matmul outputs (the model's `minimal`). Being a
custom VJP, these matmuls support reverse-mode autodiff only (no jax.jvp / jacfwd).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

NARROW_OUTPUT = "mixed_dot_narrow_output"
Contracting = tuple[tuple[int, ...], tuple[int, ...]]


def mixed_dot(
    x: jax.Array,
    y: jax.Array,
    contracting: Contracting,
    dtype: jnp.dtype,
    out_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """dot_general(x, y) without batch dims, operands in `dtype`, accumulated in fp32.

    The result is in `out_dtype` (default `dtype`); gradients come back in each operand's own
    dtype. With an fp32 `dtype` the values are the plain fp32 dot_general's.
    """
    dtype = jnp.dtype(dtype)
    out_dtype = dtype if out_dtype is None else jnp.dtype(out_dtype)
    cx = tuple(a % x.ndim for a in contracting[0])
    cy = tuple(a % y.ndim for a in contracting[1])
    return _mixed_dot(x.astype(dtype), y, (cx, cy), jnp.dtype(y.dtype), out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _mixed_dot(x: jax.Array, y: jax.Array, contracting: Contracting, y_dtype, out_dtype):
    return _forward(x, y, contracting, y_dtype, out_dtype)[0]


def _forward(x, y, contracting, y_dtype, out_dtype):
    y = y.astype(x.dtype)
    out = lax.dot_general(x, y, (contracting, ((), ())), preferred_element_type=jnp.float32)
    out = out.astype(out_dtype)
    if x.dtype != jnp.float32:
        out = checkpoint_name(out, NARROW_OUTPUT)  # what dots_saveable keeps of a mixed dot
    return out, (x, y)


def _dots_except_mixed(prim, *avals, **params) -> bool:
    if prim is lax.dot_general_p and params.get("preferred_element_type") == jnp.float32 and (
        avals[0].dtype != jnp.float32
    ):
        return False
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *avals, **params)


# Remat policy: JAX's `dots_with_no_batch_dims_saveable`, except that a mixed dot is saved as
# its cast output rather than its fp32 sum, so bf16 compute saves bf16 activations (half the
# bytes) and everything downstream sees the same values.
dots_saveable = jax.checkpoint_policies.save_from_both_policies(
    _dots_except_mixed, jax.checkpoint_policies.save_only_these_names(NARROW_OUTPUT)
)


def _backward(contracting, y_dtype, out_dtype, residuals, g):
    x, y = residuals
    cx, cy = contracting
    free_x = [a for a in range(x.ndim) if a not in cx]
    free_y = [a for a in range(y.ndim) if a not in cy]
    g = g.astype(x.dtype)
    g_x = tuple(range(len(free_x)))  # g's axes: x's free axes, then y's
    g_y = tuple(range(len(free_x), g.ndim))
    # dx: g's y-part against y's free axes; the result is [x free..., y contracted (in y order)].
    dx = lax.dot_general(g, y, ((g_y, tuple(free_y)), ((), ())), preferred_element_type=jnp.float32)
    dx = dx.transpose(_inverse(free_x + [cx[cy.index(a)] for a in sorted(cy)]))
    # dy: x's free axes against g's x-part; the result is [x contracted (in x order), y free...].
    dy = lax.dot_general(x, g, ((tuple(free_x), g_x), ((), ())), preferred_element_type=jnp.float32)
    dy = dy.transpose(_inverse([cy[cx.index(a)] for a in sorted(cx)] + free_y))
    return dx.astype(x.dtype), dy.astype(y_dtype)


def _inverse(order: list[int]) -> tuple[int, ...]:
    """The permutation that puts axis `order[i]` (currently at position i) back at its place."""
    inverse = [0] * len(order)
    for position, axis in enumerate(order):
        inverse[axis] = position
    return tuple(inverse)


_mixed_dot.defvjp(_forward, _backward)
