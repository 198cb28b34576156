"""The training loop: resume replays no data, checkpoints load for inference, bad config fails."""

import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from anygpt_jax import AnyGPT
from anygpt_jax.model import ModelConfig
from anygpt_jax.tasks import output_features
from anygpt_jax.training.checkpoints import TrainCheckpointer
from anygpt_jax.training.profiling import StepProfiler
from anygpt_jax.training.trainer import TrainingError, train
from anygpt_jax.vocab import MergedVocabulary

TASK = "synthetic_lm_for_trainer_tests"


def register_synthetic_task(vocab: MergedVocabulary, name: str = TASK, nan_from: int | None = None):
    """Deterministic counting sequences from a random start (learnable), weights 1 (seqio)."""

    def dataset_fn(split, shuffle_files, seed=None):
        def example(i):
            length = 6 + tf.cast(i % 11, tf.int32)
            start = tf.random.stateless_uniform([], seed=[i, 7], maxval=40, dtype=tf.int32)
            ids = 3 + (start + tf.range(length)) % 40
            return {"targets": ids, "loss_weights": tf.ones([length])}

        return tf.data.Dataset.range(100_000).map(example)

    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[],
        output_features=output_features(vocab),
        shuffle_buffer_size=64,
    )


@pytest.fixture(scope="module")
def vocab(anygpt_tokenizer_dir):
    v = MergedVocabulary.from_tokenizer_dir(anygpt_tokenizer_dir)
    register_synthetic_task(v)
    return v


def tiny_config(vocab, **overrides):
    return ModelConfig(
        vocab_size=vocab.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        **overrides,
    )


@pytest.fixture(autouse=True)
def one_device_mesh():
    gin.clear_config()
    gin.bind_parameter("make_mesh.num_devices", 1)
    gin.bind_parameter("learning_rate_schedule.peak_learning_rate", 3e-3)
    gin.bind_parameter("learning_rate_schedule.warmup_steps", 1)
    yield
    gin.clear_config()


def run(model_dir, vocab, steps, every=2, model_config=None, **kw):
    """`train` of a tiny model (or `model_config`) on the synthetic task, batch 2 x 32."""
    return train(
        model_dir=str(model_dir),
        train_steps=steps,
        batch_size=2,
        seq_len=32,
        mixture_or_task_name=TASK,
        checkpoint_every=every,
        model_config=model_config or tiny_config(vocab),
        log_every=1,
        register_tasks=False,
        peak_flops_per_device=1e9,
        **kw,
    )


def final_params(model_dir):
    return AnyGPT.load(str(model_dir)).params


def test_resume_replays_no_data_and_matches_a_straight_run(vocab, tmp_path):
    straight = run(tmp_path / "straight", vocab, 6)
    run(tmp_path / "resumed", vocab, 6, every=100, stop_after_steps=3)
    assert TrainCheckpointer(str(tmp_path / "resumed")).latest_step() == 3
    resumed = run(tmp_path / "resumed", vocab, 6)
    assert resumed["loss"] == straight["loss"]
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert (tmp_path / "straight" / "operative_config.gin").exists()
    assert list((tmp_path / "straight" / "tensorboard").iterdir())


def test_loss_falls_and_checkpoint_loads_for_inference(vocab, tmp_path):
    first = run(tmp_path / "a", vocab, 12, every=6, stop_after_steps=1)
    last = run(tmp_path / "a", vocab, 12, every=6)
    assert last["loss"] < first["loss"]
    model = AnyGPT.load(str(tmp_path / "a"))
    assert model.vocab.fingerprint == vocab.fingerprint
    logits = model.logits(np.array([[1, 5, 9]]))
    assert logits.shape == (1, 3, vocab.vocab_size) and np.isfinite(logits).all()


def test_scan_unroll_is_a_training_layout_that_inference_leaves_behind(vocab, tmp_path):
    run(tmp_path / "u", vocab, 2, model_config=tiny_config(vocab, scan_unroll=2))
    assert AnyGPT.load(str(tmp_path / "u")).config.scan_unroll == 1
    assert AnyGPT.load(str(tmp_path / "u"), scan_unroll=2).config.scan_unroll == 2
    out = run(tmp_path / "u", vocab, 3, model_config=tiny_config(vocab))  # resumes looped
    assert np.isfinite(out["loss"])


def test_restore_onto_another_mesh(vocab, tmp_path):
    run(tmp_path / "m", vocab, 2)
    gin.bind_parameter("make_mesh.num_devices", 4)
    gin.bind_parameter("make_mesh.mesh_shape", {"fsdp": 2, "tensor": 2})
    out = run(tmp_path / "m", vocab, 3)
    assert np.isfinite(out["loss"])


def test_non_finite_loss_stops_with_the_step_and_no_bad_checkpoint(vocab, tmp_path):
    gin.bind_parameter("learning_rate_schedule.peak_learning_rate", 1e30)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step \d+"):
        run(tmp_path / "nan", vocab, 40, every=1)
    latest = TrainCheckpointer(str(tmp_path / "nan")).latest_step()
    if latest is not None:
        params = final_params(tmp_path / "nan")
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))


def test_profile_steps_write_a_trace_for_tensorboard(vocab, tmp_path):
    run(tmp_path / "p", vocab, 3, hooks=[StepProfiler((2, 3))])
    traces = list((tmp_path / "p" / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert traces and all(t.stat().st_size > 0 for t in traces)


def test_bad_profile_steps_are_refused_before_any_work(vocab, tmp_path):
    with pytest.raises(ValueError, match=r"StepProfiler\.steps=\(2, 9\).*train_steps=3"):
        run(tmp_path / "bad", vocab, 3, hooks=[StepProfiler((2, 9))])
    assert not (tmp_path / "bad").exists()


def test_vocab_mismatch_is_refused(vocab, tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train(
            model_dir=str(tmp_path / "v"),
            train_steps=1,
            batch_size=2,
            seq_len=16,
            mixture_or_task_name=TASK,
            checkpoint_every=1,
            register_tasks=False,
            model_config=tiny_config(vocab).replace(vocab_size=vocab.vocab_size + 1),
        )


def test_cli_refuses_bad_gin_before_work(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    good = tmp_path / "x.gin"
    good.write_text("MODEL_DIR = 'm'\nTRAIN_STEPS = 1\n")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "anygpt_jax.train", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    missing_file = cli("--gin_file=nope.gin")
    assert missing_file.returncode == 1 and "nope.gin" in missing_file.stderr
    missing_macro = cli(f"--gin_file={good}")
    assert missing_macro.returncode == 1 and "BATCH_SIZE" in missing_macro.stderr
    unknown = cli(f"--gin_file={good}", "--gin.train.no_such_arg=3")
    assert unknown.returncode == 1 and "no_such_arg" in unknown.stderr
    stray = cli(f"--gin_file={good}", "--bogus")
    assert stray.returncode == 2 and "--bogus" in stray.stderr
    assert not (tmp_path / "m").exists()
    helped = cli("--help")
    assert helped.returncode == 0 and "--gin_file" in helped.stdout


def test_checkpoint_holds_the_rng_of_the_seed(vocab, tmp_path):
    from anygpt_jax import partitioning
    from anygpt_jax.training.optimizer import learning_rate_schedule, make_optimizer
    from anygpt_jax.training.step import abstract_train_state
    from anygpt_jax.training.trainer import _training_rng

    run(tmp_path / "r", vocab, 2, seed=5)
    tx = make_optimizer(learning_rate_schedule(2))
    mesh = partitioning.make_mesh()
    rules = partitioning.logical_axis_rules()
    abstract, _ = abstract_train_state(tiny_config(vocab), tx, mesh, rules)
    with jax.set_mesh(mesh):
        state = TrainCheckpointer(str(tmp_path / "r")).restore(2, abstract)
    assert int(state.step) == 2
    np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(_training_rng(5)))
    assert not np.array_equal(np.asarray(_training_rng(5)), np.asarray(_training_rng(6)))


def test_fine_tunes_from_a_converted_pytorch_checkpoint(vocab, anygpt_tokenizer_dir, tmp_path):
    """init_from a `converters.llama import` directory starts from the PyTorch weights."""
    from conftest import make_hf_anygpt_dir

    from converters.llama import import_checkpoint

    hf_dir = make_hf_anygpt_dir(str(tmp_path / "hf"), anygpt_tokenizer_dir, "gqa_untied")
    imported = str(tmp_path / "imported")
    cfg = import_checkpoint(hf_dir, imported)
    # A zero learning rate leaves the weights where step 0 put them: the imported ones.
    gin.bind_parameter("learning_rate_schedule.peak_learning_rate", 0.0)
    out = run(tmp_path / "ft", vocab, 1, every=1, model_config=cfg, init_from=imported)
    assert np.isfinite(out["loss"])
    start, tuned = AnyGPT.load(imported).params, final_params(tmp_path / "ft")
    flat_start = jax.tree_util.tree_leaves_with_path(start)
    flat_tuned = dict(jax.tree_util.tree_leaves_with_path(tuned))
    assert len(flat_start) == len(flat_tuned)
    for path, x in flat_start:
        got = np.asarray(flat_tuned[path])
        np.testing.assert_array_equal(got, np.asarray(x), err_msg=str(path))


def test_cli_arguments_other_than_gin_bindings_are_usage_errors(capsys):
    import argparse

    from anygpt_jax.gin_utils import gin_bindings

    parser = argparse.ArgumentParser(prog="train")
    assert gin_bindings(parser, ["--gin.TRAIN_STEPS=3", "--gin.x.y='a=b'"]) == [
        "TRAIN_STEPS=3",
        "x.y='a=b'",
    ]
    with pytest.raises(SystemExit) as e:
        gin_bindings(parser, ["--gin.TRAIN_STEPS=3", "--train_steps=3"])
    assert e.value.code == 2
    assert "unrecognized argument '--train_steps=3'" in capsys.readouterr().err


def test_checkpointing_is_a_hook_saving_every_nth_the_last_and_a_stopping_step(tmp_path):
    from anygpt_jax.training.checkpoints import CheckpointHook
    from anygpt_jax.training.hooks import TrainHook

    class Saves(TrainHook):
        def __init__(self):
            self.steps = []

        def after_save(self, step):
            self.steps.append(step)

    listener = Saves()
    checkpointer = TrainCheckpointer(str(tmp_path), keep_last=10)
    hook = CheckpointHook(checkpointer, None, every=3, train_steps=7, listeners=[listener])
    state = {"w": np.arange(4, dtype=np.float32)}
    try:
        for step in range(1, 8):
            hook.stop_after_this_step = step == 4
            hook.after_step(step, state)
        hook.end()
    finally:
        checkpointer.close()
    assert listener.steps == [3, 4, 6, 7]
    assert TrainCheckpointer(str(tmp_path)).all_steps() == [3, 4, 6, 7]


def test_training_narrates_compiling_resuming_commits_and_the_final_wait(vocab, tmp_path, capsys):
    """What a user waits for is said: the compile (timed), each committed checkpoint (async:
    once written), the final wait, the resumed step; the ETA leaves the compile out."""
    run(tmp_path / "m", vocab, 4, every=2, stop_after_steps=2)
    first = capsys.readouterr().out
    assert first.index("compiling the train step (the first step, 1, waits for it)") < \
        first.index("compiled the train step and ran step 1 in ")
    assert "checkpoint step 2 committed" in first
    assert "trained 2 steps in " in first
    run(tmp_path / "m", vocab, 4, every=2)
    second = capsys.readouterr().out
    assert f"resumed from step 2 of {tmp_path / 'm'}" in second
    assert "compiling the train step (the first step, 3, waits for it)" in second
    assert "checkpoint step 4 committed" in second
    steps = [line for line in second.splitlines() if line.startswith("step 4/4")]
    assert len(steps) == 1 and steps[0].endswith(" eta 0:00:00")
