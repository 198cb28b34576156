"""converters.llama: HF -> ours -> HF is exact, loads in transformers, and bad input is refused."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from conftest import make_hf_anygpt_dir
from safetensors import safe_open
from synthetic_task import noisy_lines, user_env

from anygpt_jax import AnyGPT, checkpointing
from anygpt_jax.model import ModelConfig
from converters.common import ConversionError
from converters.llama import export_checkpoint, import_checkpoint, main


def read_all_tensors(directory: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(directory, name), framework="pt") as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


@pytest.mark.parametrize(
    "variant,dtype,scan_layers",
    [
        ("gqa_untied", torch.float32, True),
        ("mha_tied", torch.float32, False),
        ("gqa_untied", torch.bfloat16, False),
        ("mha_tied", torch.float16, True),
    ],
)
def test_round_trip_is_bitwise(anygpt_tokenizer_dir, tmp_path, variant, dtype, scan_layers):
    hf_dir = make_hf_anygpt_dir(str(tmp_path / "hf"), anygpt_tokenizer_dir, variant, dtype=dtype)
    cfg = import_checkpoint(hf_dir, str(tmp_path / "ours"), scan_layers=scan_layers)
    assert cfg.param_dtype == str(dtype).removeprefix("torch.")
    export_checkpoint(str(tmp_path / "ours"), str(tmp_path / "back"), max_shard_bytes=200_000)
    original, back = read_all_tensors(hf_dir), read_all_tensors(str(tmp_path / "back"))
    assert sorted(original) == sorted(back)
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype, key
        assert torch.equal(back[key].view(torch.uint8), tensor.view(torch.uint8)), key
    # Small shards force several files: the index must name each tensor's file.
    index = json.load(open(tmp_path / "back" / "model.safetensors.index.json"))
    assert sorted(index["weight_map"]) == sorted(original)


def test_exported_directory_loads_in_transformers(anygpt_tokenizer_dir, tmp_path):
    import transformers

    hf_dir = make_hf_anygpt_dir(str(tmp_path / "hf"), anygpt_tokenizer_dir, "gqa_untied")
    import_checkpoint(hf_dir, str(tmp_path / "ours"))
    export_checkpoint(str(tmp_path / "ours"), str(tmp_path / "back"))
    model, info = transformers.LlamaForCausalLM.from_pretrained(
        str(tmp_path / "back"), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    original = transformers.LlamaForCausalLM.from_pretrained(hf_dir)
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 11)))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    reference = transformers.AutoTokenizer.from_pretrained(hf_dir)
    text = "[Human]: describe <soim><👀12><👀8191><eoim><eoh> [MMGPT]: a cat<eos>"
    assert tokenizer(text).input_ids == reference(text).input_ids
    assert len(tokenizer) == model.config.vocab_size


@pytest.mark.parametrize("variant", ["gqa_untied", "mha_tied"])
def test_anygpt_load_logits_match_transformers(anygpt_tokenizer_dir, tmp_path, variant):
    import transformers

    hf_dir = make_hf_anygpt_dir(str(tmp_path / "hf"), anygpt_tokenizer_dir, variant)
    import_checkpoint(hf_dir, str(tmp_path / "ours"))
    model = AnyGPT.load(str(tmp_path / "ours"))
    assert model.vocab is not None and model.vocab.vocab_size == model.config.vocab_size
    reference = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 13))
    logits = model.logits(ids)
    assert logits.shape == (2, 13, model.config.vocab_size)
    with torch.no_grad():
        want = reference(torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        model.logits(np.array([[model.config.vocab_size]]))


def test_load_with_other_padding_layout_and_mesh(anygpt_tokenizer_dir, tmp_path):
    from anygpt_jax import partitioning

    hf_dir = make_hf_anygpt_dir(str(tmp_path / "hf"), anygpt_tokenizer_dir, "gqa_untied")
    import_checkpoint(hf_dir, str(tmp_path / "ours"))
    base = AnyGPT.load(str(tmp_path / "ours"))
    ids = np.random.default_rng(2).integers(0, base.config.vocab_size, (4, 8))
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    moved = AnyGPT.load(
        str(tmp_path / "ours"), mesh=mesh, vocab_pad_multiple=1024, scan_layers=False
    )
    assert moved.config.padded_vocab_size % 1024 == 0
    assert moved.params["embed_tokens"]["embedding"].sharding.spec == jax.sharding.PartitionSpec(
        "tensor", "fsdp"
    )
    np.testing.assert_allclose(moved.logits(ids), base.logits(ids), atol=1e-5, rtol=0)
    same = AnyGPT.load(str(tmp_path / "ours"), mesh=mesh)
    np.testing.assert_allclose(same.logits(ids), base.logits(ids), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- bad input


def _assert_refused(tmp_path, argv, message):
    out = argv[2]
    assert main(argv) == 1
    assert not os.path.exists(out) or not os.listdir(out)
    leftovers = [n for n in os.listdir(os.path.dirname(out)) if ".tmp-" in n]
    assert not leftovers, leftovers


@pytest.fixture
def hf_dir(anygpt_tokenizer_dir, tmp_path):
    return make_hf_anygpt_dir(str(tmp_path / "hf"), anygpt_tokenizer_dir, "gqa_untied")


def _edit_config(hf_dir, **changes):
    path = os.path.join(hf_dir, "config.json")
    config = json.load(open(path)) | changes
    json.dump(config, open(path, "w"))


def test_missing_input_directory(tmp_path, capsys):
    _assert_refused(tmp_path, ["import", str(tmp_path / "nope"), str(tmp_path / "out")], "")
    assert "not found" in capsys.readouterr().err


def test_missing_config(hf_dir, tmp_path, capsys):
    os.remove(os.path.join(hf_dir, "config.json"))
    _assert_refused(tmp_path, ["import", hf_dir, str(tmp_path / "out")], "")
    assert "config.json" in capsys.readouterr().err


def test_missing_weights(hf_dir, tmp_path, capsys):
    os.remove(os.path.join(hf_dir, "model.safetensors"))
    _assert_refused(tmp_path, ["import", hf_dir, str(tmp_path / "out")], "")
    assert "no weights" in capsys.readouterr().err


def test_unknown_architecture(hf_dir, tmp_path, capsys):
    _edit_config(hf_dir, model_type="mistral", architectures=["MistralForCausalLM"])
    _assert_refused(tmp_path, ["import", hf_dir, str(tmp_path / "out")], "")
    assert "unknown architecture" in capsys.readouterr().err


def test_unsupported_rope_scaling(hf_dir, tmp_path, capsys):
    _edit_config(hf_dir, rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0})
    _assert_refused(tmp_path, ["import", hf_dir, str(tmp_path / "out")], "")
    assert "llama3" in capsys.readouterr().err


def test_wrong_tensor_shape(hf_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    path = os.path.join(hf_dir, "model.safetensors")
    tensors = load_file(path)
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][
        :, :-1
    ].clone()
    save_file(tensors, path, metadata={"format": "pt"})
    _assert_refused(tmp_path, ["import", hf_dir, str(tmp_path / "out")], "")
    err = capsys.readouterr().err
    assert "model.layers.1.mlp.up_proj.weight" in err and "shape" in err


def test_missing_and_unexpected_keys(hf_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    path = os.path.join(hf_dir, "model.safetensors")
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    del tensors["model.norm.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    _assert_refused(tmp_path, ["import", hf_dir, str(tmp_path / "out")], "")
    err = capsys.readouterr().err
    assert "model.norm.weight" in err and "q_proj.bias" in err


def test_vocab_that_disagrees_with_tokenizer(hf_dir, tmp_path, capsys):
    _edit_config(
        hf_dir, vocab_size=json.load(open(os.path.join(hf_dir, "config.json")))["vocab_size"] + 3
    )
    _assert_refused(tmp_path, ["import", hf_dir, str(tmp_path / "out")], "")
    assert "disagree" in capsys.readouterr().err


def test_existing_output_is_not_overwritten(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["import", hf_dir, str(out)]) == 1
    assert (out / "precious.txt").read_text() == "keep me"
    assert "refusing to overwrite" in capsys.readouterr().err


def test_export_of_a_non_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _assert_refused(tmp_path, ["export", str(tmp_path / "empty"), str(tmp_path / "out")], "")
    assert "model_config.json" in capsys.readouterr().err


def test_checkpoint_config_must_match_params(hf_dir, tmp_path):
    import_checkpoint(hf_dir, str(tmp_path / "ours"))
    cfg = checkpointing.load_config(str(tmp_path / "ours"))
    with pytest.raises(ValueError, match="architecture differs"):
        checkpointing.load_params(
            str(tmp_path / "ours"), cfg.replace(num_layers=cfg.num_layers + 1)
        )
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict(cfg.to_dict() | {"n_layers": 3}, "x.json")
    assert isinstance(ConversionError("x"), ValueError)


def test_cli_help_and_real_command(hf_dir, tmp_path):
    env = user_env(dict(os.environ))  # as a user's shell has it
    help_out = subprocess.run(
        [sys.executable, "-m", "converters.llama", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "import" in help_out and "export" in help_out
    run = subprocess.run(
        [sys.executable, "-m", "converters.llama", "import", hf_dir, str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert noisy_lines(run.stdout + run.stderr) == [], run.stderr[-3000:]
    assert "imported" in run.stdout and os.path.isdir(tmp_path / "o" / "params")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "converters.llama",
            "export",
            str(tmp_path / "missing"),
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr
