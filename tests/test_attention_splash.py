"""The splash kernel path (Pallas interpreter on CPU) against the XLA attention it replaces."""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anygpt_jax import partitioning
from anygpt_jax.model import ModelConfig, Transformer, init_params
from anygpt_jax.model.attention import attention_mask, dot_product_attention
from anygpt_jax.model.tpu_attention import (
    SplashConfig,
    causal_blocks,
    padded_length,
    splash_attention,
)

# 128-wide blocks: the smallest the kernel takes, so a 150-token sequence pads to 2 x 2 tiles.
SMALL = SplashConfig(**{name: 128 for name in SplashConfig().blocks()}, interpret=True)


def packed_inputs(batch=2, length=150, heads=4, kv_heads=2, head_dim=16, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.float32)
    seg = np.zeros((batch, length), np.int32)
    seg[0::2] = 1  # full rows
    seg[1::2, :40], seg[1::2, 40:131] = 1, 2  # two packed segments, then padding (0)
    return q, k, v, jnp.asarray(seg)


def xla_attention(q, k, v, seg):
    slots = jnp.arange(q.shape[1])
    return dot_product_attention(q, k, v, attention_mask(slots, slots, seg, seg), jnp.float32)


def test_kernel_equals_xla_on_real_tokens_forward_and_backward():
    q, k, v, seg = packed_inputs()
    real = np.asarray(seg) != 0

    def loss(fn):
        def f(q, k, v):
            out = fn(q, k, v, seg)
            # Padding rows differ by design (they attend to padding, not uniformly).
            return jnp.sum(jnp.where(real[..., None, None], out, 0.0) ** 2)

        return f

    kernel = lambda *a: splash_attention(*a, jnp.float32, SMALL)  # noqa: E731
    out = kernel(q, k, v, seg)
    assert out.shape == q.shape
    np.testing.assert_allclose(
        np.asarray(out)[real], np.asarray(xla_attention(q, k, v, seg))[real], atol=2e-6
    )
    got = jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(xla_attention), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5)


def test_segments_never_see_each_other():
    """Changing the first segment's keys/values leaves the second segment's outputs unchanged."""
    q, k, v, seg = packed_inputs()
    base = splash_attention(q, k, v, seg, jnp.float32, SMALL)
    k2, v2 = k.at[1, :40].add(3.0), v.at[1, :40].add(3.0)
    moved = splash_attention(q, k2, v2, seg, jnp.float32, SMALL)
    np.testing.assert_array_equal(np.asarray(moved)[1, 40:131], np.asarray(base)[1, 40:131])
    assert not np.allclose(np.asarray(moved)[1, :40], np.asarray(base)[1, :40])


def test_sharded_kernel_equals_unsharded():
    """Under a (data, fsdp, tensor) mesh the kernel runs per shard: batch and heads split."""
    q, k, v, seg = packed_inputs(batch=4)
    want = np.asarray(splash_attention(q, k, v, seg, jnp.float32, SMALL))
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.DEFAULT_RULES):
        got = jax.jit(lambda *a: splash_attention(*a, jnp.float32, SMALL))(q, k, v, seg)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_sequence_sharding_is_refused():
    q, k, v, seg = packed_inputs(batch=4)
    rules = (("activation_length", "tensor"),) + tuple(
        r for r in partitioning.DEFAULT_RULES if r[0] != "activation_length"
    )
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        with pytest.raises(ValueError, match="activation_length"):
            jax.jit(lambda *a: splash_attention(*a, jnp.float32, SMALL))(q, k, v, seg)


TINY = ModelConfig(
    vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2
)


def model_logits(cfg, params, ids, seg):
    positions = jnp.asarray(np.maximum(np.cumsum(np.asarray(seg) != 0, axis=1) - 1, 0))
    return np.asarray(Transformer(cfg).apply({"params": params}, ids, positions, seg))


@pytest.fixture
def gin_splash():
    gin.clear_config()
    for name, size in SMALL.blocks().items():
        gin.bind_parameter(f"SplashConfig.{name}", size)
    gin.bind_parameter("SplashConfig.interpret", True)
    yield
    gin.clear_config()


def test_model_with_splash_equals_xla_model(gin_splash):
    """attention_kernel='splash' (gin-configured interpreter) gives the XLA model's logits."""
    params = init_params(TINY, jax.random.PRNGKey(0))
    rng = np.random.default_rng(3)
    ids = jnp.asarray(rng.integers(0, TINY.vocab_size, (2, 130)))
    seg = np.ones((2, 130), np.int32)
    seg[1, 70:], seg[1, 120:] = 2, 0
    want = model_logits(TINY, params, ids, jnp.asarray(seg))
    got = model_logits(TINY.replace(attention_kernel="splash"), params, ids, jnp.asarray(seg))
    real = seg != 0
    np.testing.assert_allclose(got[real], want[real], atol=2e-5)


def test_off_tpu_the_splash_config_runs_the_xla_path():
    """Without the interpreter, a CPU lowering takes platform_dependent's XLA branch."""
    params = init_params(TINY, jax.random.PRNGKey(0))
    ids = jnp.asarray(np.random.default_rng(4).integers(0, TINY.vocab_size, (2, 24)))
    seg = jnp.asarray(np.repeat([[1] * 10 + [2] * 10 + [0] * 4], 2, axis=0))
    want = model_logits(TINY, params, ids, seg)
    got = model_logits(TINY.replace(attention_kernel="splash"), params, ids, seg)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_unknown_kernel_and_bad_blocks_are_named():
    with pytest.raises(ValueError, match="attention_kernel='flash2'"):
        TINY.replace(attention_kernel="flash2")
    with pytest.raises(ValueError, match="block_kv_dq=200"):
        SplashConfig(block_kv_dq=200)


def test_padding_and_block_counts():
    assert padded_length(4500, SplashConfig()) == 4608
    assert padded_length(4096, SplashConfig()) == 4096
    assert padded_length(150, SplashConfig()) == 256  # blocks clip to the lane-rounded length
    for length, bq, bkv in [(4608, 512, 512), (1024, 256, 512), (512, 512, 128)]:
        brute = sum(
            any(kk <= qq for qq in range(i * bq, (i + 1) * bq) for kk in (j * bkv,))
            for i in range(length // bq)
            for j in range(length // bkv)
        )
        assert causal_blocks(length, bq, bkv) == brute


def test_bf16_kernel_under_highest_precision_has_the_same_gradients():
    """conftest sets "highest" matmul precision; the bf16 kernel then runs through a custom
    VJP that traces it at the default precision: same values and gradients as without."""
    q, k, v, seg = (
        x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in packed_inputs()
    )
    assert jax.config.jax_default_matmul_precision == "highest"

    def loss(q, k, v):
        out = splash_attention(q, k, v, seg, jnp.float32, SMALL)
        return jnp.sum(jnp.where(np.asarray(seg)[..., None, None] != 0, out, 0.0) ** 2)

    got = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
    with jax.default_matmul_precision("default"):
        want = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
