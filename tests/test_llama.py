"""The Flax LLaMA against transformers' LlamaForCausalLM, and its own invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import LLAMA_VARIANTS, make_hf_llama

from anygpt_jax import partitioning
from anygpt_jax.model import KVCache, Transformer, init_params, param_shardings
from converters.common import TensorReader
from converters.llama import convert_hf_state, hf_to_model_config

TOL = 1e-4


def import_hf(model, tmp_path, scan_layers=True, **layout):
    """Saves an HF model and converts it with the real converter code path."""
    model.save_pretrained(tmp_path)
    cfg = hf_to_model_config(
        model.config.to_dict() | {"architectures": ["LlamaForCausalLM"]},
        "test",
        scan_layers=scan_layers,
        **layout,
    )
    params = convert_hf_state(TensorReader(str(tmp_path)), cfg, None)
    return cfg, jax.tree_util.tree_map(jnp.asarray, params)


def tiny_config(**overrides):
    """A small random-weight LLaMA for the model's own invariants (no transformers twin)."""
    from anygpt_jax.model import ModelConfig

    fields = dict(
        vocab_size=200, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2,
    )
    return ModelConfig(**(fields | overrides))


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids))).logits.float().numpy()


@pytest.fixture(params=sorted(LLAMA_VARIANTS))
def variant(request):
    return request.param


@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(variant, scan_layers, tmp_path):
    hf = make_hf_llama(variant)
    cfg, params = import_hf(hf, tmp_path, scan_layers=scan_layers)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 19))
    ours = Transformer(cfg).apply({"params": params}, jnp.asarray(ids))
    assert ours.shape == (2, 19, cfg.padded_vocab_size)
    np.testing.assert_allclose(
        np.asarray(ours[..., : cfg.vocab_size]), hf_logits(hf, ids), atol=TOL, rtol=0
    )


def test_packed_segments_equal_separate_runs(variant, tmp_path):
    hf = make_hf_llama(variant)
    cfg, params = import_hf(hf, tmp_path)
    rng = np.random.default_rng(1)
    lengths = [7, 5, 4]  # the last segment id 0 is padding
    seqs = [rng.integers(0, cfg.vocab_size, n) for n in lengths]
    ids = np.concatenate(seqs)[None]
    segment_ids = np.concatenate([np.full(n, s) for s, n in zip([1, 2, 0], lengths, strict=True)])[
        None
    ]
    positions = np.concatenate([np.arange(n) for n in lengths])[None]
    logits = np.asarray(
        Transformer(cfg).apply(
            {"params": params}, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(segment_ids)
        )
    )
    start = 0
    for seq, n in zip(seqs[:2], lengths[:2], strict=True):
        alone = hf_logits(hf, seq[None])
        np.testing.assert_allclose(
            logits[:, start : start + n, : cfg.vocab_size], alone, atol=TOL, rtol=0
        )
        start += n
    assert np.isfinite(logits).all()


def test_padded_vocab_rows_get_no_probability(tmp_path):
    hf = make_hf_llama("gqa_untied")
    cfg, params = import_hf(hf, tmp_path, vocab_pad_multiple=256)
    assert cfg.padded_vocab_size == 512 and cfg.vocab_size == 300
    logits = Transformer(cfg).apply({"params": params}, jnp.zeros((1, 4), jnp.int32))
    probs = jax.nn.softmax(logits, axis=-1)
    assert float(probs[..., cfg.vocab_size :].max()) == 0.0
    np.testing.assert_allclose(np.asarray(probs[..., : cfg.vocab_size].sum(-1)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_kv_cache_decode_equals_full_forward(variant, scan_layers, tmp_path):
    hf = make_hf_llama(variant)
    cfg, params = import_hf(hf, tmp_path, scan_layers=scan_layers)
    model = Transformer(cfg)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 12))
    full = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
    prompt = 5
    cache = KVCache.init(cfg, batch_size=2, max_length=16)
    step = jax.jit(lambda p, x, pos, c: model.apply({"params": p}, x, pos, cache=c))
    positions = np.broadcast_to(np.arange(12), (2, 12))
    logits, cache = step(params, ids[:, :prompt], positions[:, :prompt], cache)
    np.testing.assert_allclose(np.asarray(logits), full[:, :prompt], atol=TOL, rtol=0)
    for t in range(prompt, 12):
        logits, cache = step(params, ids[:, t : t + 1], positions[:, t : t + 1], cache)
        np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, t], atol=TOL, rtol=0)
    assert int(cache.index) == 12


def test_kv_cache_left_padded_batch_equals_unpadded(tmp_path):
    hf = make_hf_llama("gqa_untied")
    cfg, params = import_hf(hf, tmp_path)
    model = Transformer(cfg)
    rng = np.random.default_rng(3)
    short, long = rng.integers(0, cfg.vocab_size, 4), rng.integers(0, cfg.vocab_size, 7)
    pad = len(long) - len(short)
    ids = np.stack([np.concatenate([np.zeros(pad, np.int64), short]), long])
    segments = np.stack([np.r_[np.zeros(pad), np.ones(len(short))], np.ones(len(long))]).astype(
        np.int32
    )
    positions = np.stack(
        [np.r_[np.zeros(pad), np.arange(len(short))], np.arange(len(long))]
    ).astype(np.int32)
    cache = KVCache.init(cfg, batch_size=2, max_length=10)
    logits, cache = model.apply({"params": params}, ids, positions, segments, cache=cache)
    next_ids = np.array([[11], [12]])
    next_pos = positions[:, -1:] + 1
    step_logits, _ = model.apply(
        {"params": params}, next_ids, next_pos, np.ones((2, 1), np.int32), cache=cache
    )
    for row, seq in enumerate([short, long]):
        alone = hf_logits(hf, np.r_[seq, next_ids[row]][None])[0]
        np.testing.assert_allclose(
            np.asarray(logits[row, -1, : cfg.vocab_size]), alone[-2], atol=TOL, rtol=0
        )
        np.testing.assert_allclose(
            np.asarray(step_logits[row, 0, : cfg.vocab_size]), alone[-1], atol=TOL, rtol=0
        )


@pytest.mark.parametrize("policy", ["full", "minimal", "save_qkv_proj", "save_dot_except_mlp"])
def test_remat_policies_keep_gradients(policy):
    base = tiny_config()
    params = init_params(base, jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 200)

    def grads(cfg):
        def loss(p):
            return Transformer(cfg).apply({"params": p}, ids).astype(jnp.float32)[..., :200].mean()

        return jax.grad(loss)(params)

    want, got = grads(base), grads(base.replace(remat_policy=policy))
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("scan_unroll", [2, 3])  # 2 leaves a remainder of the 3 layers
def test_unrolled_layer_scan_keeps_logits_gradients_and_decode(scan_unroll):
    base = tiny_config(num_layers=3)
    unrolled = base.replace(scan_unroll=scan_unroll)
    params = init_params(base, jax.random.PRNGKey(0))  # one parameter layout for both
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 200)

    def loss(cfg, p):
        return Transformer(cfg).apply({"params": p}, ids)[..., :200].mean()

    def has_loop(cfg) -> bool:
        return "stablehlo.while" in jax.jit(lambda p: loss(cfg, p)).lower(params).as_text()

    assert has_loop(base) and has_loop(unrolled) == (scan_unroll < base.num_layers)
    np.testing.assert_allclose(loss(unrolled, params), loss(base, params), rtol=1e-6)
    want = jax.grad(lambda p: loss(base, p))(params)
    got = jax.grad(lambda p: loss(unrolled, p))(params)
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5)

    def decode(cfg):
        cache = KVCache.init(cfg, batch_size=2, max_length=8)
        logits, cache = Transformer(cfg).apply({"params": params}, ids[:, :5], cache=cache)
        positions = jnp.full((2, 1), 5)
        step, _ = Transformer(cfg).apply({"params": params}, ids[:, 5:6], positions, cache=cache)
        return np.asarray(logits), np.asarray(step)

    for want, got in zip(decode(base), decode(unrolled), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scan_unroll", [0, 4])
def test_scan_unroll_outside_the_layer_count_is_refused(scan_unroll):
    from anygpt_jax.model import ModelConfig

    with pytest.raises(ValueError, match=f"scan_unroll={scan_unroll} must be between 1 and "
                       "num_layers=3"):
        ModelConfig(num_layers=3, scan_unroll=scan_unroll)


def test_scanned_decode_step_updates_the_cache_in_place():
    # The layer scan carries the stacked cache and writes only the new slots; taking it as scanned
    # inputs and outputs instead had XLA:CPU build a second whole cache at every step.

    cfg = tiny_config(hidden_size=64, intermediate_size=128, num_layers=4)
    params = init_params(cfg, jax.random.PRNGKey(0))
    cache = KVCache.init(cfg, batch_size=2, max_length=4096)
    ids, positions = jnp.ones((2, 1), jnp.int32), jnp.zeros((2, 1), jnp.int32)
    step = jax.jit(
        lambda p, c: Transformer(cfg).apply({"params": p}, ids, positions, cache=c),
        donate_argnums=1,
    )
    memory = step.lower(params, cache).compile().memory_analysis()
    cache_bytes = cache.keys.nbytes + cache.values.nbytes
    assert memory.temp_size_in_bytes < cache_bytes / 2  # a layer's slice, not a whole cache


def test_parameters_carry_logical_axes():
    from anygpt_jax.model import param_logical_axes

    cfg = tiny_config()
    axes = param_logical_axes(cfg)
    assert tuple(axes["embed_tokens"]["embedding"]) == ("vocab", "embed")
    assert tuple(axes["lm_head"]["kernel"]) == ("embed", "vocab")
    assert tuple(axes["layers"]["self_attn"]["q_proj"]["kernel"]) == (
        "layers",
        "embed",
        "heads",
        "head_dim",
    )
    assert tuple(axes["layers"]["self_attn"]["k_proj"]["kernel"]) == (
        "layers",
        "embed",
        "kv_heads",
        "head_dim",
    )
    assert tuple(axes["layers"]["mlp"]["down_proj"]["kernel"]) == ("layers", "mlp", "embed")
    for spec in jax.tree_util.tree_leaves(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    ):
        assert all(name is not None for name in spec), spec


def test_sharded_forward_on_8_devices_equals_single_device(tmp_path):
    assert jax.device_count() == 8, "conftest forces 8 host devices"
    hf = make_hf_llama("gqa_untied")
    cfg, params = import_hf(hf, tmp_path, vocab_pad_multiple=256)
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, (4, 16))
    single = np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(ids)))

    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = partitioning.logical_axis_rules()
    shardings = param_shardings(cfg, mesh, rules)
    sharded_params = jax.device_put(params, shardings)
    q_sharding = sharded_params["layers"]["self_attn"]["q_proj"]["kernel"].sharding
    assert q_sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    batch = jax.device_put(jnp.asarray(ids), partitioning.batch_sharding(mesh, rules))

    def forward(p, x):
        import flax.linen as nn

        with nn.logical_axis_rules(rules):
            return Transformer(cfg).apply({"params": p}, x)

    with jax.set_mesh(mesh):
        logits = jax.jit(forward)(sharded_params, batch)
    assert len(logits.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(logits), single, atol=1e-5, rtol=0)


def test_bf16_compute_stays_close_to_fp32(tmp_path):
    hf = make_hf_llama("gqa_untied")
    cfg, params = import_hf(hf, tmp_path)
    ids = jnp.asarray(np.random.default_rng(5).integers(0, cfg.vocab_size, (2, 9)))
    fp32 = Transformer(cfg).apply({"params": params}, ids)
    bf16 = Transformer(cfg.replace(dtype="bfloat16")).apply({"params": params}, ids)
    assert bf16.dtype == jnp.float32  # logits always come back in fp32 for the loss
    valid = slice(0, cfg.vocab_size)
    assert float(jnp.abs(fp32[..., valid] - bf16[..., valid]).max()) < 0.1
