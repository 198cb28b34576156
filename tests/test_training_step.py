"""Optimizer schedule, losses (full and tiled) and the train step's invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anygpt_jax.model import ModelConfig, init_params
from anygpt_jax.training.loss import cross_entropy, tiled_cross_entropy
from anygpt_jax.training.optimizer import learning_rate_schedule, make_optimizer
from anygpt_jax.training.step import LossConfig, init_train_state, make_train_step

CFG = ModelConfig(
    vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2
)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    schedule = learning_rate_schedule(100, peak_learning_rate=1.0, warmup_fraction=0.1)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(55)) == pytest.approx(0.5, abs=1e-6)  # half-way through the cosine
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-6)
    steps = learning_rate_schedule(100, peak_learning_rate=1.0, warmup_steps=20)
    assert float(steps(10)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        learning_rate_schedule(10, warmup_steps=11)


def test_weight_decay_spares_norm_scales():
    params = {"norm": {"scale": jnp.ones(3)}, "proj": {"kernel": jnp.ones((3, 3))}}
    tx = make_optimizer(lambda _: 0.1, weight_decay=0.5, clip_global_norm=None)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert float(jnp.abs(updates["norm"]["scale"]).max()) == 0.0
    assert float(jnp.abs(updates["proj"]["kernel"]).max()) > 0.0


@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
def test_tiled_loss_equals_full_logits_loss_and_gradients(z_loss):
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((16, 384)) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 300, (2, 5)))

    def full(h, k):
        logits = jnp.where(jnp.arange(384) < 300, h @ k, jnp.finfo(jnp.float32).min)
        loss, _ = cross_entropy(logits, targets, z_loss)
        return loss.sum(), logits.argmax(-1)

    def tiled(h, k):
        loss, _, best = tiled_cross_entropy(h, k, targets, 300, 128, z_loss)
        return loss.sum(), best

    (want, want_best), want_grads = jax.value_and_grad(full, (0, 1), has_aux=True)(hidden, kernel)
    (got, got_best), got_grads = jax.value_and_grad(tiled, (0, 1), has_aux=True)(hidden, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(got_best, want_best)
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)


def _batch(rng, batch=4, length=12, vocab=300):
    ids = rng.integers(3, vocab, (batch, length + 1))
    segments = np.ones((batch, length), np.int32)
    segments[:, -3:] = 0  # trailing padding
    weights = (segments > 0).astype(np.int32)
    weights[0, :4] = 0  # e.g. a prompt without loss
    return {
        "decoder_input_tokens": ids[:, :-1].astype(np.int32),
        "decoder_target_tokens": ids[:, 1:].astype(np.int32),
        "decoder_loss_weights": weights,
        "decoder_segment_ids": segments,
        "decoder_positions": np.broadcast_to(np.arange(length), (batch, length)).astype(np.int32),
    }


def _run(loss_cfg, steps=3, cfg=CFG):
    schedule = learning_rate_schedule(10, peak_learning_rate=1e-2, warmup_steps=2)
    tx = make_optimizer(schedule, weight_decay=0.1)
    modality_index = np.zeros(cfg.vocab_size, np.int32)
    modality_index[200:] = 1
    step = jax.jit(make_train_step(cfg, tx, schedule, modality_index, loss_cfg))
    state = init_train_state(init_params(cfg, jax.random.PRNGKey(0)), tx)
    rng = np.random.default_rng(0)
    history = []
    for _ in range(steps):
        state, metrics = step(state, _batch(rng))
        history.append(jax.device_get(metrics))
    return state, history


def test_gradient_accumulation_gives_the_large_batch_update():
    whole, whole_metrics = _run(LossConfig())
    split, split_metrics = _run(LossConfig(num_microbatches=4))
    for a, b in zip(
        jax.tree_util.tree_leaves(whole.params),
        jax.tree_util.tree_leaves(split.params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)
    for m1, m2 in zip(whole_metrics, split_metrics, strict=True):
        np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
        np.testing.assert_allclose(m1["tokens_per_modality"], m2["tokens_per_modality"])


def test_tiled_loss_step_equals_full_step():
    full, full_metrics = _run(LossConfig(z_loss=1e-4))
    tiled, tiled_metrics = _run(LossConfig(z_loss=1e-4, vocab_tile=128))
    for a, b in zip(
        jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(tiled.params), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)
    for m1, m2 in zip(full_metrics, tiled_metrics, strict=True):
        np.testing.assert_allclose(m1["correct_per_modality"], m2["correct_per_modality"])


@pytest.mark.parametrize("vocab_tile", [None, 128])
def test_bf16_compute_gradients_are_fp32_and_follow_the_fp32_ones(vocab_tile):
    # Plain SGD with rate 1: the update is minus the gradient, so it shows the gradient itself.
    tx = optax.sgd(1.0)
    schedule = optax.constant_schedule(1.0)
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = _batch(np.random.default_rng(0))
    deltas, norms = [], []
    for dtype in ("float32", "bfloat16"):
        cfg = CFG.replace(dtype=dtype)
        step = make_train_step(cfg, tx, schedule, np.zeros(cfg.vocab_size, np.int32),
                               LossConfig(vocab_tile=vocab_tile))
        state, metrics = jax.jit(step)(init_train_state(params, tx), batch)
        deltas.append(jax.tree_util.tree_map(jnp.subtract, state.params, params))
        norms.append(float(metrics["grad_norm"]))
    np.testing.assert_allclose(norms[1], norms[0], rtol=0.03)
    for name, fp32, bf16 in zip(
        jax.tree_util.tree_leaves_with_path(deltas[0]), *map(jax.tree_util.tree_leaves, deltas),
        strict=True,
    ):
        assert bf16.dtype == jnp.float32, name[0]
        cosine = float(jnp.vdot(fp32, bf16) / (jnp.linalg.norm(fp32) * jnp.linalg.norm(bf16)))
        assert cosine > 0.99, (jax.tree_util.keystr(name[0]), cosine)


def test_metrics_split_by_modality_and_respect_loss_weights():
    _, history = _run(LossConfig(), steps=1)
    m = history[0]
    batch = _batch(np.random.default_rng(0))
    weights = batch["decoder_loss_weights"]
    targets = batch["decoder_target_tokens"]
    assert m["tokens_per_modality"][0] == ((targets < 200) * weights).sum()
    assert m["tokens_per_modality"][1] == ((targets >= 200) * weights).sum()
    np.testing.assert_allclose(
        m["loss"], m["loss_sum_per_modality"].sum() / weights.sum(), rtol=1e-6
    )
    assert m["learning_rate"] == 0.0 and m["grad_norm"] > 0


def test_loss_falls_on_a_repeated_batch():
    schedule = optax.constant_schedule(3e-3)
    tx = make_optimizer(schedule)
    step = jax.jit(make_train_step(CFG, tx, schedule, np.zeros(CFG.vocab_size, np.int32)))
    state = init_train_state(init_params(CFG, jax.random.PRNGKey(0)), tx)
    batch = _batch(np.random.default_rng(1))
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_device_peak_flops_measures_the_compute_dtype_and_knows_tpus():
    from anygpt_jax.training.metrics import TPU_PEAK_FLOPS, device_peak_flops

    cpu = jax.devices("cpu")[0]
    for dtype in ("float32", "bfloat16"):
        assert 1e8 < device_peak_flops(cpu, dtype, n=256) < 1e14

    class V5e:
        device_kind = "TPU v5 lite"
        platform = "tpu"

    assert device_peak_flops(V5e(), "bfloat16") == TPU_PEAK_FLOPS["TPU v5 lite"]
