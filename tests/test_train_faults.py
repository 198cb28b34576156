"""Faults during training end in one clear line and never commit bad state: divergence (stop, or
roll back and skip the batch), configuration errors before MODEL_DIR is written, a corrupt
shard named by file and offset, flipped or truncated checkpoints, a full disk during a save.
(Kills, also during a save, are in test_train_preemption.py and test_train_gcs.py.)"""

import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
import test_trainer
from synthetic_task import cli_env, cli_gin

from anygpt_jax import checkpointing, storage, tasks
from anygpt_jax.data.pipeline import InputIterator, get_dataset
from anygpt_jax.training import trainer
from anygpt_jax.training.checkpoints import CHECKPOINTS_DIR, STATE_ITEM, TrainCheckpointer
from anygpt_jax.training.digests import BatchDigests
from anygpt_jax.training.trainer import TrainingError

# The trainer tests' tiny model, synthetic task and fixtures.
run = test_trainer.run
vocab = test_trainer.vocab
one_device_mesh = test_trainer.one_device_mesh


def committed_states(model_dir) -> dict[int, list[np.ndarray]]:
    """step -> every leaf of the whole train state (params and optimizer) of each committed step."""
    out = {}
    with_manager = TrainCheckpointer(str(model_dir))
    steps = with_manager._manager.all_steps()
    with_manager.close()
    for step in steps:
        path = storage.join(model_dir, CHECKPOINTS_DIR, str(step), STATE_ITEM)
        tree = checkpointing.restore_subtree(path, (), None)
        out[step] = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    return out


def test_divergence_commits_no_non_finite_state(vocab, tmp_path):
    """The issue's repro: with a huge step size the first update is already inf/NaN while its
    loss (computed before the update) is finite; that state must not be checkpointed."""
    gin.bind_parameter("learning_rate_schedule.peak_learning_rate", 1e39)
    gin.bind_parameter("learning_rate_schedule.warmup_steps", 0)
    with pytest.raises(TrainingError, match=r"non-finite .* at step 1; nothing of it was saved; "
                                            r"the last good checkpoint is step None"):
        run(tmp_path / "nan", vocab, 6, every=1)
    for step, leaves in committed_states(tmp_path / "nan").items():
        assert all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f"), step


def inject_nan_at(monkeypatch, at_step: int, times: int = 1):
    """Makes the train step report a NaN loss at step `at_step` (its first `times` runs)."""
    real = trainer.sharded_train_step
    fired = []

    def sharded(*args, **kwargs):
        built = real(*args, **kwargs)

        def fn(state, batch):
            step = int(jax.device_get(state.step)) + 1
            new_state, metrics = built.fn(state, batch)
            if step == at_step and len(fired) < times:
                fired.append(step)
                metrics = dict(metrics, loss=np.float32("nan"))
            return new_state, metrics

        return type(built)(fn, built.abstract_state, built.state_shardings, built.batch_sharding)

    monkeypatch.setattr(trainer, "sharded_train_step", sharded)
    return fired


def digests(model_dir):
    from synthetic_task import read_digests

    return {s: (loss, rows) for s, loss, rows in read_digests(str(model_dir))}


def test_rollback_restores_the_last_good_step_and_skips_the_batch(vocab, tmp_path, monkeypatch,
                                                                 capsys):
    run(tmp_path / "straight", vocab, 6, hooks=[BatchDigests()])
    fired = inject_nan_at(monkeypatch, 4)
    out = run(tmp_path / "rolled", vocab, 6, every=2, hooks=[BatchDigests()],
              on_divergence="rollback")
    assert fired == [4] and np.isfinite(out["loss"])
    assert "at step 4: rolled back to step 2" in capsys.readouterr().out
    straight, rolled = digests(tmp_path / "straight"), digests(tmp_path / "rolled")
    assert sorted(rolled) == list(range(1, 7))
    assert all(rolled[s] == straight[s] for s in (1, 2, 3))
    # Step 4 trained on the batch after the one that diverged.
    assert rolled[4][1] != straight[4][1]
    assert TrainCheckpointer(str(tmp_path / "rolled")).latest_step() == 6


def test_stop_names_the_last_good_checkpoint_and_rollbacks_are_bounded(vocab, tmp_path,
                                                                       monkeypatch):
    inject_nan_at(monkeypatch, 4, times=10)
    with pytest.raises(TrainingError, match="at step 4; nothing of it was saved; the last good "
                                            "checkpoint is step 2"):
        run(tmp_path / "stop", vocab, 6, every=2)
    with pytest.raises(TrainingError, match="at step 4 after 2 rollbacks"):
        run(tmp_path / "bounded", vocab, 6, every=2, on_divergence="rollback", max_rollbacks=2)


@pytest.mark.parametrize("bad, message", [
    (dict(steps=-5), r"train\.train_steps=-5"),
    (dict(every=0), r"train\.checkpoint_every=0"),
    (dict(on_divergence="ignore"), r"on_divergence='ignore'"),
    (dict(steps=3, warmup=5), r"warmup_steps=5"),
])
def test_configuration_errors_come_before_model_dir_is_written(vocab, tmp_path, bad, message):
    if "warmup" in bad:
        gin.bind_parameter("learning_rate_schedule.warmup_steps", bad.pop("warmup"))
    kwargs = {"on_divergence": bad.pop("on_divergence")} if "on_divergence" in bad else {}
    with pytest.raises(ValueError, match=message):
        run(tmp_path / "m", vocab, bad.get("steps", 3), every=bad.get("every", 2), **kwargs)
    assert not (tmp_path / "m").exists()


def test_model_dir_that_is_a_file_is_one_clear_error(vocab, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file; it must be a directory"):
        run(tmp_path / "f", vocab, 2)
    assert (tmp_path / "f").read_text() == "x"


def corrupt_speech_shards(tmp_path, merged_vocab):
    """(shard dir, its first shard with one byte flipped): 30 examples over 2 shards."""
    from conftest import make_shard_dir, random_examples

    shard_dir = make_shard_dir(str(tmp_path / "speech"), "speech_text",
                               random_examples("speech_text", 30), merged_vocab)
    victim = sorted((tmp_path / "speech").glob("*.tfrecord"))[0]
    flip_bytes(victim, n=1, mask=0x40)
    return shard_dir, victim


def test_a_corrupt_shard_stops_in_one_line_naming_file_and_offset(tmp_path, merged_vocab):
    shard_dir, victim = corrupt_speech_shards(tmp_path, merged_vocab)
    tasks.register(merged_vocab, shard_dirs={"speech_text": [shard_dir]})
    inputs = InputIterator(get_dataset("anygpt_asr", 256, 2, seed=0))
    with pytest.raises(TrainingError, match=rf"before step 1: {victim}: corrupted record .* at "
                                            r"byte \d+"):
        for _ in range(20):
            trainer._next_batch(inputs, 1)


def largest_state_file(model_dir, step):
    files = [p for p in (model_dir / CHECKPOINTS_DIR / str(step) / STATE_ITEM).rglob("*")
             if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def flip_bytes(path, at=None, n=4, mask=0xFF):
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    for i in range(at, at + n):
        data[i] ^= mask
    path.write_bytes(bytes(data))


def flip_bytes_in_the_params(model_dir, step):
    """Flips 4 bytes in the middle of the biggest data file of `step` whose flip changes the
    parameters as read back raw (without fingerprints). Which file of the OCDBT store holds
    the parameters, rather than only optimizer state, depends on write timing."""
    path = storage.join(model_dir, CHECKPOINTS_DIR, str(step), STATE_ITEM)
    clean = [np.asarray(x) for x in jax.tree_util.tree_leaves(
        checkpointing.restore_subtree(path, ("params",), None))]
    files = sorted((p for p in (model_dir / CHECKPOINTS_DIR / str(step) / STATE_ITEM).rglob("*")
                    if p.is_file() and "/d/" in str(p)), key=lambda p: -p.stat().st_size)
    for victim in files:
        original = victim.read_bytes()
        flip_bytes(victim)
        raw = jax.tree_util.tree_leaves(checkpointing.restore_subtree(path, ("params",), None))
        if any(not np.array_equal(a, np.asarray(b)) for a, b in zip(clean, raw, strict=True)):
            return victim
        victim.write_bytes(original)
    raise AssertionError(f"no data file of {path} holds the parameters")


def test_flipped_bytes_in_a_checkpoint_are_caught_on_load_export_and_resume(
    vocab, tmp_path, capsys
):
    """The issue's repro: 4 flipped bytes in a data file of the newest step (one that holds
    parameters). Loading and exporting refuse it in one line; resuming falls back to the
    previous step, saying so."""
    from anygpt_jax import AnyGPT, integrity
    from converters import llama as llama_converter

    model_dir = tmp_path / "m"
    run(model_dir, vocab, 4, every=2)
    flip_bytes_in_the_params(model_dir, 4)
    with pytest.raises(integrity.IntegrityError, match=r"checkpoints/4/state: corrupted"):
        AnyGPT.load(str(model_dir))
    status = llama_converter.main(["export", str(model_dir), str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert status == 1 and "corrupted" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()
    out = run(model_dir, vocab, 6, every=2)
    printed = capsys.readouterr().out
    assert "checkpoint step 4 is unusable" in printed and "resumed from step 2" in printed
    assert np.isfinite(out["loss"]) and TrainCheckpointer(str(model_dir)).latest_step() == 6


# Orphaned orbax/tensorstore errors once printed ~22 tracebacks ('Exception ignored in').
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_truncated_newest_checkpoint_falls_back_in_one_line(vocab, tmp_path, capfd):
    model_dir = tmp_path / "m"
    run(model_dir, vocab, 4, every=2)
    victim = largest_state_file(model_dir, 4)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    capfd.readouterr()
    run(model_dir, vocab, 6, every=2)
    printed = capfd.readouterr()
    assert "checkpoint step 4 is unusable" in printed.out and "resumed from step 2" in printed.out
    assert "Traceback" not in printed.err  # once ~22 tensorstore/asyncio tracebacks


def test_export_of_a_checkpoint_without_its_manifest_is_one_line(vocab, tmp_path, capsys):
    from converters import llama as llama_converter

    model_dir = tmp_path / "m"
    run(model_dir, vocab, 2, every=2)
    for manifest in (model_dir / CHECKPOINTS_DIR / "2" / STATE_ITEM).rglob("manifest.ocdbt"):
        manifest.unlink()
    status = llama_converter.main(["export", str(model_dir), str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1 and "error:" in err
    assert not (tmp_path / "hf").exists()


def dir_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs to fill (mounting needs root, as CI and the development machines have)."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def make(size_bytes: int):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs",
                            str(mount)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
        return mount

    yield make
    # Lazy: the failed save may still hold files open in this process.
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def run_cli(gin_path, cache=None) -> subprocess.CompletedProcess:
    """`python -m anygpt_jax.train` on `gin_path` (one CPU device), output captured."""
    return subprocess.run([sys.executable, "-m", "anygpt_jax.train", f"--gin_file={gin_path}"],
                          capture_output=True, text=True, env=cli_env(1, cache and str(cache)),
                          timeout=600)


def test_a_full_disk_is_reported_at_the_failed_save_and_keeps_the_previous_step(
    tmp_path, small_disk, anygpt_tokenizer_dir, merged_vocab
):
    """Through the CLI: exit 1 and one line, once behind ~40 tracebacks of orbax's threads and
    of tensorstore callbacks into closed event loops."""
    def gin_file(model_dir, steps):
        path = tmp_path / f"{model_dir.name}.gin"
        path.write_text(cli_gin(str(model_dir), anygpt_tokenizer_dir, merged_vocab.vocab_size,
                                steps, 2, 2))
        return path

    cache = tmp_path / "jax_cache"
    assert run_cli(gin_file(tmp_path / "probe", 2), cache).returncode == 0
    one_step = dir_bytes(tmp_path / "probe" / CHECKPOINTS_DIR / "2")
    everything = dir_bytes(tmp_path / "probe")
    disk = small_disk(everything + one_step // 2)  # room for step 2, not for step 4
    r = run_cli(gin_file(disk / "m", 8), cache)
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert "saving checkpoint step 4 " in errors[0] and "the last committed step is 2" in errors[0]
    assert "No space left on device" in errors[0] or "RESOURCE_EXHAUSTED" in errors[0]
    assert "Traceback" not in r.stderr and "ERROR:" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.rstrip().endswith(errors[0])
    checkpointer = TrainCheckpointer(str(disk / "m"))
    assert checkpointer.all_steps() == [2]
    checkpointer.close()
    # Step 2 is whole: it restores with its fingerprints checked.
    assert committed_states(disk / "m")[2]


def test_a_corrupt_shard_block_can_be_skipped_and_counted(tmp_path, merged_vocab):
    from anygpt_jax.data import records

    shard_dir, _ = corrupt_speech_shards(tmp_path, merged_vocab)
    tasks.register(merged_vocab, shard_dirs={"speech_text": [shard_dir]}, on_corrupt="skip")
    before = records.SKIPPED.records
    inputs = InputIterator(get_dataset("anygpt_asr", 256, 2, seed=0, shuffle=False,
                                       num_epochs=1, pack=False))
    rows = sum(len(b["decoder_segment_ids"]) for b in inputs)
    # The corrupt shard's only block is dropped, the other shard's 15 examples are read.
    assert records.SKIPPED.records - before == 15
    assert rows == 14  # 15 examples in batches of 2, the remainder dropped
    with pytest.raises(ValueError, match="on_corrupt='drop'"):
        tasks.register(merged_vocab, shard_dirs={"speech_text": [shard_dir]}, on_corrupt="drop")


@pytest.mark.slow
def test_the_cli_ends_a_run_on_a_corrupt_shard_with_one_line(tmp_path, merged_vocab,
                                                             anygpt_tokenizer_dir):
    """The issue's repro through the real CLI: a flipped byte in a shard once aborted the
    process (exit 134) or hung it in a tf.data destructor. Now: exit 1, one line naming it."""
    from conftest import make_shard_dir, random_examples
    from test_train_gcs import gin_text

    data = {"vocab": anygpt_tokenizer_dir, "vocab_size": merged_vocab.vocab_size}
    for k, kind in enumerate(("image_text", "speech_text", "music_text")):
        data[kind] = make_shard_dir(str(tmp_path / kind), kind,
                                    random_examples(kind, 20, seed=k), merged_vocab)
    for victim in sorted((tmp_path / "speech_text").glob("*.tfrecord")):
        flip_bytes(victim, n=1)
    gin_path = tmp_path / "run.gin"
    gin_path.write_text(gin_text(str(tmp_path / "m"), data))
    r = run_cli(gin_path)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 1, r.stderr[-3000:]
    assert len(errors) == 1 and "speech_text/shard-" in errors[0], r.stderr[-3000:]
    assert "corrupted record" in errors[0] and "at byte" in errors[0]
    assert r.stderr.rstrip().endswith(errors[0])  # nothing after the one line
