"""Weight formats (model/quantize.py): int8 with a scale per output channel, and bfloat16,
loaded through AnyGPT.load and the CLIs' --weights, close to the fp32 model they come from."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_generate import load_tiny, span_prompts, text_prompts

from anygpt_jax import AnyGPT
from anygpt_jax.inference import GenerationSettings
from anygpt_jax.model import ModelConfig
from anygpt_jax.model.quantize import convert, quantize_channels


def test_channels_are_quantized_symmetrically_each_with_its_own_scale():
    w = np.random.default_rng(0).standard_normal((2, 6, 5)).astype(np.float32)
    w[1, :, 3] = 0.0  # an all-zero output channel
    # A scanned kernel [layers, in, out]: one scale per layer and output channel.
    values, scale = quantize_channels(jnp.asarray(w), (2, 1, 5))
    values, scale = np.asarray(values), np.asarray(scale)
    assert values.dtype == np.int8 and scale.shape == (2, 1, 5) and scale.dtype == np.float32
    assert np.abs(values).max() == 127 and values.min() >= -127
    np.testing.assert_allclose(scale[0, 0], np.abs(w[0]).max(axis=0) / 127, rtol=1e-6)
    assert scale[1, 0, 3] == 1.0 and not values[1, :, 3].any()
    assert np.all(np.abs(values * scale - w) <= scale / 2 + 1e-6)
    # The extreme value of every live channel maps to +-127 exactly.
    peaks = np.abs(values).max(axis=1)
    assert np.all((peaks == 127) | (scale[:, 0] == 1.0))


@pytest.fixture(scope="module", params=[("gqa_untied", True), ("gqa_untied", False),
                                        ("mha_tied", True)],
                ids=["untied-scanned", "untied-unrolled", "tied-scanned"])
def tiny(request, anygpt_tokenizer_dir, tmp_path_factory):
    variant, scanned = request.param
    root = str(tmp_path_factory.mktemp("quantize"))
    _, model = load_tiny(root, anygpt_tokenizer_dir, variant, scan_layers=scanned)
    return root, f"{root}/ours_{variant}_{scanned}", model


def _agreement(a: AnyGPT, b: AnyGPT, prompts) -> float:
    x, y = np.asarray(a.logits(prompts)), np.asarray(b.logits(prompts))
    mask = np.zeros(x.shape[:2], bool)
    for r, p in enumerate(prompts):
        mask[r, : len(p)] = True
    return float((x.argmax(-1) == y.argmax(-1))[mask].mean())


def test_int8_and_bfloat16_weights_load_and_decode_close_to_fp32(tiny):
    _, path, fp32 = tiny
    prompts = span_prompts(fp32.vocab) + text_prompts(fp32.vocab, 3, seed=2)
    for weights, groups in (("int8", ("layers", "lm_head")),
                            ("int8", ("layers", "lm_head", "embed")), ("bfloat16", ())):
        model = AnyGPT.load(path, weights=weights, int8_groups=groups or ("layers", "lm_head"))
        leaves = dict(jax.tree_util.tree_leaves_with_path(model.params))
        kinds = {jax.tree_util.keystr(k): str(v.dtype) for k, v in leaves.items()}
        if weights == "int8":
            assert model.config.int8_weights == groups
            kernels = [k for k in kinds if k.endswith("['kernel']")]
            assert kernels and all(kinds[k] == "int8" for k in kernels)
            assert all(kinds[k.replace("kernel", "scale")] == "float32" for k in kernels)
            embed = kinds["['embed_tokens']['embedding']"]
            assert embed == ("int8" if "embed" in groups else "float32")
            assert any(k.endswith("norm']['scale']") and v == "float32" for k, v in kinds.items())
        else:
            assert set(kinds.values()) == {"bfloat16"}
        # Untrained random weights: near-ties abound, so agreement is lower than on a model.
        assert _agreement(fp32, model, prompts) >= 0.9, (weights, groups)
        settings = GenerationSettings(do_sample=False, max_new_tokens=40)
        for ids in model.generate(prompts, settings):
            assert 0 < len(ids) <= 40


def test_int8_halves_and_quarters_the_bytes(tiny):
    _, path, fp32 = tiny

    def kernel_bytes(model):
        return sum(x.nbytes for k, x in jax.tree_util.tree_leaves_with_path(model.params)
                   if "layers" in jax.tree_util.keystr(k))

    int8 = AnyGPT.load(path, weights="int8")
    bf16 = AnyGPT.load(path, weights="bfloat16")
    assert kernel_bytes(bf16) == kernel_bytes(fp32) / 2
    assert kernel_bytes(int8) < kernel_bytes(fp32) / 3.5  # int8 values + fp32 scales


def test_bad_weight_formats_are_refused(tiny):
    _, path, fp32 = tiny
    with pytest.raises(ValueError, match="weights='int4'; expected one of"):
        AnyGPT.load(path, weights="int4")
    with pytest.raises(ValueError, match=r"int8_weights names \['heads'\]"):
        ModelConfig(int8_weights=("heads",))
    int8_config = dataclasses.replace(fp32.config, int8_weights=("layers",))
    with pytest.raises(ValueError, match="int8 already"):
        convert(fp32.params, int8_config, "int8")


def test_the_clis_take_weights():
    from anygpt_jax import infer, serve

    args, _ = infer.parse_args(["--ckpt", "m", "--weights", "int8", "--mode", "chat"])
    assert args.weights == "int8"
    args, _ = serve.parse_args(["--ckpt", "m", "--weights", "bfloat16"])
    assert args.weights == "bfloat16"
    with pytest.raises(SystemExit):
        serve.parse_args(["--ckpt", "m", "--weights", "int4"])
