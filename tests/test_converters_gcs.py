"""converters.llama, model directories and AnyGPT.load on gs:// (a real GCS API emulator)."""

import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from conftest import make_hf_anygpt_dir
from test_converters_llama import read_all_tensors

from anygpt_jax import AnyGPT, checkpointing, storage
from converters.llama import export_checkpoint, import_checkpoint, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def hf_dir(anygpt_tokenizer_dir, tmp_path):
    return make_hf_anygpt_dir(
        str(tmp_path / "hf"), anygpt_tokenizer_dir, "gqa_untied", dtype=torch.bfloat16
    )


def _assert_bitwise(original: dict, back: dict) -> None:
    assert sorted(original) == sorted(back)
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype, key
        assert torch.equal(back[key].view(torch.uint8), tensor.view(torch.uint8)), key


def test_import_to_gs_loads_like_local(hf_dir, tmp_path, gs_dir):
    out = storage.join(gs_dir, "ours")
    import_checkpoint(hf_dir, out)
    import_checkpoint(hf_dir, str(tmp_path / "ours"))
    assert storage.dir_state(out) == "committed"
    remote, local = AnyGPT.load(out), AnyGPT.load(str(tmp_path / "ours"))
    assert remote.vocab.fingerprint == local.vocab.fingerprint
    ids = np.random.default_rng(0).integers(0, local.config.vocab_size, (2, 9))
    np.testing.assert_array_equal(remote.logits(ids), local.logits(ids))


def test_export_from_gs_is_bitwise(hf_dir, tmp_path, gs_dir):
    ours = storage.join(gs_dir, "ours")
    import_checkpoint(hf_dir, ours)
    original = read_all_tensors(hf_dir)
    # Small shards: several files, renamed at the end, and an index naming them.
    export_checkpoint(ours, str(tmp_path / "back"), max_shard_bytes=100_000)
    _assert_bitwise(original, read_all_tensors(str(tmp_path / "back")))
    back = storage.join(gs_dir, "back")
    export_checkpoint(ours, back, max_shard_bytes=100_000)
    names = storage.listdir(back)
    assert storage.COMMIT_MARKER in names and "model.safetensors.index.json" in names
    assert not [n for n in names if n.endswith(".tmp")], names
    with storage.local_copy(back) as local:
        _assert_bitwise(original, read_all_tensors(local))


def test_import_from_gs_hf_dir(hf_dir, tmp_path, gs_dir):
    remote_hf = storage.join(gs_dir, "hf")
    storage.copy_tree(hf_dir, remote_hf)
    import_checkpoint(remote_hf, str(tmp_path / "from_gs"))
    import_checkpoint(hf_dir, str(tmp_path / "from_local"))
    a, _ = checkpointing.load_params(str(tmp_path / "from_gs"))
    b, _ = checkpointing.load_params(str(tmp_path / "from_local"))
    flat_a = dict(jax_leaves(a))
    for key, value in jax_leaves(b):
        np.testing.assert_array_equal(flat_a[key], value)


def jax_leaves(tree):
    import jax

    return [(jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_leaves_with_path(tree)]


def test_cli_imports_into_gs(hf_dir, gs_dir):
    out = storage.join(gs_dir, "cli")
    run = subprocess.run(
        [sys.executable, "-m", "converters.llama", "import", hf_dir, out],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"-> {out}" in run.stdout
    # gcsfs caches listings per process: this one listed the bucket before the CLI wrote to it.
    storage._fs().invalidate_cache()
    assert checkpointing.load_config(out).param_dtype == "bfloat16"


@pytest.mark.parametrize("command", ["import", "export"])
def test_missing_bucket_stops_before_any_work(hf_dir, tmp_path, gcs, capsys, command):
    out = "gs://no-such-bucket-anygpt/out"
    src = hf_dir if command == "import" else "gs://no-such-bucket-anygpt/model"
    assert main([command, src, out]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "no-such-bucket-anygpt" in err[0] and "does not exist" in err[0]
    assert not [n for n in os.listdir(tmp_path) if n != "hf"]  # no scratch left anywhere


def test_half_written_model_dir_is_refused(hf_dir, gs_dir):
    ours = storage.join(gs_dir, "ours")
    import_checkpoint(hf_dir, ours)
    storage.remove(storage.join(ours, storage.COMMIT_MARKER))
    for read in (checkpointing.load_config, checkpointing.params_location):
        with pytest.raises(storage.StorageError, match="never finished"):
            read(ours)


def test_training_model_dir_on_gs(hf_dir, tmp_path, gs_dir):
    """A trainer's MODEL_DIR (no marker at its top): model_config.json, a committed vocab/ and
    the newest committed orbax step of checkpoints/."""
    import_checkpoint(hf_dir, str(tmp_path / "ours"))
    cfg = checkpointing.load_config(str(tmp_path / "ours"))
    vocab = checkpointing.load_vocab(str(tmp_path / "ours"))
    params, _ = checkpointing.load_params(str(tmp_path / "ours"))
    model_dir = storage.join(gs_dir, "run")
    cfg.save(storage.join(model_dir, checkpointing.CONFIG_FILE))
    storage.write_text(storage.join(model_dir, "vocab", "tokenizer.model"), "half")
    with pytest.raises(storage.StorageError, match="never finished"):
        checkpointing.load_vocab(model_dir)  # vocab/ without its commit marker
    storage.rmtree(storage.join(model_dir, "vocab"))
    with storage.output_dir(storage.join(model_dir, "vocab")) as d:
        vocab.save(os.fspath(d))
    assert checkpointing.load_vocab(model_dir).fingerprint == vocab.fingerprint
    with pytest.raises(FileNotFoundError, match="no parameters"):
        checkpointing.params_location(model_dir)
    manager = ocp.CheckpointManager(
        storage.path(model_dir) / "checkpoints", item_names=("state",)
    )
    state = {"params": params, "step": np.int32(7)}
    manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
    manager.close()
    path, prefix = checkpointing.params_location(model_dir)
    assert path.endswith("/checkpoints/7/state") and prefix == ("params",)
    restored, _ = checkpointing.load_params(model_dir)
    flat = dict(jax_leaves(restored))
    for key, value in jax_leaves(params):
        np.testing.assert_array_equal(flat[key], value)
