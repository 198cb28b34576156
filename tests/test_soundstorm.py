"""SoundStorm's network in JAX against soundstorm-pytorch's modules (tiny random configs): the
convolution module, rotary attention, the conformer block and the whole network through the
converter; the converter's layouts, its CLI and its errors; the directory loader."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from synthetic_task import noisy_lines, user_env

from anygpt_jax.modalities.soundstorm import PARAMS_FILE, SoundStorm, load_soundstorm
from anygpt_jax.modalities.soundstorm_model import (
    ConformerBlock,
    ConvModule,
    SelfAttention,
    SoundStormConfig,
)
from anygpt_jax.testing.soundstorm_reference import (
    anygpt_state_dict,
    build_reference,
    randomize,
    reference_block,
    reference_logits,
    reference_module,
)
from converters.common import ConversionError
from converters.encodec import TorchTensors
from converters.soundstorm import CONV_LAYOUTS, block_table, convert, main, transform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = SoundStormConfig(dim=32, depth=2, heads=4, dim_head=8, ff_mult=2, conv_kernel=5,
                       codebook_size=16, num_quantizers=3, num_semantic=20)
ATOL = 1e-4


@pytest.fixture(scope="module")
def ss():
    return reference_module()


def _block_params(state: dict, prefix: str = "") -> dict:
    """Our parameters of one block (or one of its parts, under `prefix`) from a torch state
    dict in soundstorm-pytorch's naming, through the converter's own key table."""
    state = {prefix + k.replace(".branch.", "."): v for k, v in state.items()}
    tensors = TorchTensors.from_state_dict(state)
    params: dict = {}
    for name, (key, how) in block_table("anygpt").items():
        if key in state:
            node = params
            *path, leaf = name.split("/")
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = jnp.asarray(transform(tensors.get(key), how, key))
    assert tensors.used == set(state), "the key table missed tensors of the reference"
    return params


def _inputs(batch=2, length=11, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, length, CFG.dim)).astype(np.float32)
    valid = np.ones((batch, length), bool)
    valid[1, 7:] = False  # the second item is padded after 7 frames
    return x, valid


@pytest.mark.parametrize("kernel", [5, 4])
def test_conv_module_matches_reference(ss, kernel):
    cfg = SoundStormConfig(**{**CFG.to_dict(), "conv_kernel": kernel})
    torch.manual_seed(1)
    ref = ss.ConformerConvModule(cfg.dim, expansion_factor=cfg.conv_expansion,
                                 kernel_size=kernel).eval()
    randomize(ref, 1)
    x, valid = _inputs()
    with torch.no_grad():
        want = ref(torch.from_numpy(x), mask=torch.from_numpy(valid)).numpy()
    params = _block_params(ref.state_dict(), "conv.")["conv"]
    got = ConvModule(cfg).apply({"params": params}, x, valid)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    # Padding is zeroed around the depthwise conv: the padded item's real frames equal the
    # item alone.
    alone = ConvModule(cfg).apply({"params": params}, x[1:, :7], None)
    np.testing.assert_allclose(got[1, :7], alone[0], atol=ATOL, rtol=0)


def test_rotary_attention_matches_reference(ss):
    torch.manual_seed(2)
    ref = ss.PreNorm(CFG.dim, ss.Attention(CFG.dim, heads=CFG.heads, dim_head=CFG.dim_head,
                                           flash=False)).eval()
    randomize(ref, 2)
    x, valid = _inputs(seed=2)
    rotary = ss.RotaryEmbedding(CFG.dim_head)(x.shape[1])
    with torch.no_grad():
        want = ref(torch.from_numpy(x), mask=torch.from_numpy(valid), rotary_emb=rotary).numpy()
    params = _block_params(ref.state_dict(), "attn.")["attn"]
    positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    got = SelfAttention(CFG).apply({"params": params}, x, positions, valid)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    # Rotary positions matter: shuffled frames do not give shuffled outputs.
    perm = np.random.default_rng(0).permutation(x.shape[1])
    shuffled = SelfAttention(CFG).apply({"params": params}, x[:, perm], positions, None)
    assert np.abs(np.asarray(shuffled)[0] - np.asarray(got)[0, perm]).max() > 1e-3


def test_conformer_block_matches_reference(ss):
    torch.manual_seed(3)
    ref = reference_block(CFG)
    randomize(ref, 3)
    x, valid = _inputs(seed=3)
    rotary = ss.RotaryEmbedding(CFG.dim_head)(x.shape[1])
    with torch.no_grad():
        want = ref(torch.from_numpy(x), mask=torch.from_numpy(valid), rotary_emb=rotary).numpy()
    params = _block_params(ref.state_dict())
    positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    got, _ = ConformerBlock(CFG).apply({"params": params}, x, (positions, jnp.asarray(valid)))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def reference():
    return build_reference(CFG, seed=0)


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    d = tmp_path_factory.mktemp("soundstorm")
    torch.save(anygpt_state_dict(reference), d / "ss.pt")
    convert(str(d / "ss.pt"), str(d / "out"), heads=CFG.heads)
    return d


def test_network_matches_reference_through_converter(reference, converted):
    config, _, source = load_soundstorm(str(converted / "out"))
    assert config == CFG and source == {"checkpoint": "ss.pt", "layout": "anygpt"}
    model = SoundStorm.load(str(converted / "out"))
    rng = np.random.default_rng(0)
    codes = rng.integers(0, CFG.codebook_size + 1, (2, 13, CFG.num_quantizers))  # mask codes too
    semantic = rng.integers(0, CFG.num_semantic, (2, 13))
    want = reference_logits(reference, codes, semantic)
    got = model.logits(codes, semantic)
    assert got.shape == (2, 13, CFG.num_quantizers, CFG.codebook_size)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    # A padded batch: real frames as in the reference with its padding mask.
    valid = np.ones((2, 13), bool)
    valid[0, 9:] = False
    padded = np.asarray(model._logits(model.params, codes, semantic, valid))
    want = reference_logits(reference, codes, semantic, valid)
    np.testing.assert_allclose(padded[valid], want[valid], atol=ATOL, rtol=0)
    # Unrolled conformer layers (per-layer parameters) compute the same.
    unrolled = SoundStorm.load(str(converted / "out"), scan_layers=False)
    assert "layers_0" in unrolled.params["conformer"] and "layers" in model.params["conformer"]
    np.testing.assert_allclose(unrolled.logits(codes, semantic), got, atol=1e-5, rtol=0)


def _rename(state: dict, old: str, new: str) -> dict:
    return {k.replace(old, new): v for k, v in state.items()}


def test_fork_layout_and_training_checkpoint(reference, converted, tmp_path):
    state = anygpt_state_dict(reference)
    for part, name in CONV_LAYOUTS["anygpt"].items():
        state = _rename(state, f".{name}.", f".{CONV_LAYOUTS['fork'][part]}.")
    assert any(".conv.net.4.conv." in k for k in state)
    torch.save({"model": state, "optim": {}, "scheduler": {}}, tmp_path / "trainer.pt")
    convert(str(tmp_path / "trainer.pt"), str(tmp_path / "out"), heads=CFG.heads)
    _, ours, source = load_soundstorm(str(tmp_path / "out"))
    _, want, _ = load_soundstorm(str(converted / "out"))
    assert source["layout"] == "fork"
    jax.tree_util.tree_map(np.testing.assert_array_equal, ours, want)
    # A directory of safetensors (e.g. re-saved on a model hub) reads the same.
    from safetensors.torch import save_file

    (tmp_path / "st").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "st" / "model.safetensors")
    convert(str(tmp_path / "st"), str(tmp_path / "out_st"), heads=CFG.heads)
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           load_soundstorm(str(tmp_path / "out_st"))[1], want)


def _convert_error(state, tmp_path, heads=CFG.heads) -> str:
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ConversionError) as e:
        convert(str(tmp_path / "bad.pt"), str(tmp_path / "out"), heads=heads)
    assert not (tmp_path / "out").exists()
    return str(e.value)


def test_converter_errors(reference, tmp_path):
    state = anygpt_state_dict(reference)
    key = "net.conformer.layers.1.attn.fn.to_out.weight"
    assert key in _convert_error({k: v for k, v in state.items() if k != key}, tmp_path)
    bad = dict(state, **{key: state[key][:, :-1]})
    message = _convert_error(bad, tmp_path)
    assert key in message and "(32, 31)" in message
    bad = dict(state, **{"net.conformer.layers.0.conv.net2.1.gamma": torch.ones(1, 63, 1)})
    assert "conv.net2.1.gamma" in _convert_error(bad, tmp_path)
    assert "extra.weight" in _convert_error(dict(state, **{"extra.weight": torch.ones(2)}),
                                            tmp_path)
    assert "--heads 5" in _convert_error(state, tmp_path, heads=5)
    hyper = _rename(state, ".attn.fn.", ".attn.branch.fn.")
    assert "hyper-connection" in _convert_error(hyper, tmp_path)
    assert "no SoundStorm conformer" in _convert_error({"a": torch.ones(1)}, tmp_path)
    assert "state dict" in _convert_error([1, 2], tmp_path)
    with pytest.raises(ConversionError, match="missing file"):
        convert(str(tmp_path / "none.pt"), str(tmp_path / "out"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ConversionError, match="junk.pt"):
        convert(str(tmp_path / "junk.pt"), str(tmp_path / "out"))


def test_cli(converted, tmp_path, capsys):
    assert main(["--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x")]) == 1
    assert "missing file" in capsys.readouterr().err
    # The real command, as a user runs it.
    out = tmp_path / "cli_out"
    result = subprocess.run(
        [sys.executable, "-m", "converters.soundstorm", "--ckpt", str(converted / "ss.pt"),
         "--out", str(out), "--heads", "4"], cwd=REPO, capture_output=True, text=True,
        env=user_env(dict(os.environ)), check=False)  # as a user's shell has it
    assert result.returncode == 0, result.stderr
    assert noisy_lines(result.stdout + result.stderr) == [], result.stderr[-3000:]
    assert (out / PARAMS_FILE).is_file()
    assert main(["--ckpt", str(converted / "ss.pt"), "--out", str(out)]) == 1  # exists
    assert "already exists" in capsys.readouterr().err


def test_load_errors(converted, tmp_path):
    with pytest.raises(FileNotFoundError, match="converters.soundstorm"):
        SoundStorm.load(str(tmp_path))
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(converted / "out", d)
    (d / "config.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="config.json.*format"):
        SoundStorm.load(str(d))
    shutil.copy(converted / "out" / "config.json", d / "config.json")
    from safetensors.numpy import load_file, save_file

    flat = load_file(str(d / PARAMS_FILE))
    flat["heads/bias"] = flat["heads/bias"][:-1]
    save_file(flat, str(d / PARAMS_FILE))
    with pytest.raises(ValueError, match="heads/bias: shape"):
        SoundStorm.load(str(d))
