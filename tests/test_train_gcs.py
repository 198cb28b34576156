"""Training with every path on gs:// (a real GCS API emulator on 127.0.0.1): shards, the
tokenizer directory and MODEL_DIR in the bucket, SIGKILL and resume, two hosts sharing one
MODEL_DIR. The training runs are real CLI subprocesses."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from synthetic_task import cli_env, tiny_run_gin
from test_train_multihost import free_port, run_all

from anygpt_jax import storage

STEPS = 6
HOLD_SAVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hold_save.py")
TIMEOUT_S = 300


def gin_text(model_dir: str, data: dict, steps: int = STEPS, extra: str = "") -> str:
    """A tiny model pre-trained on `data` (kind -> shard dir, 'vocab' -> tokenizer dir)."""
    register = f"""
import anygpt_jax.tasks
tasks.register.vocabulary = @merged_vocabulary()
merged_vocabulary.tokenizer_dir = {data['vocab']!r}
tasks.register.shard_dirs = {{
    'image_text': [{data['image_text']!r}],
    'speech_text': [{data['speech_text']!r}],
    'music_text': [{data['music_text']!r}],
}}
"""
    return tiny_run_gin(model_dir, data["vocab_size"], steps, 4, 256, "anygpt_pretrain", 2,
                        register + extra)


@pytest.fixture(scope="module")
def gs_data(gcs, shard_corpus, anygpt_tokenizer_dir, merged_vocab):
    """The test shard corpus and tokenizer directory uploaded to the emulator."""
    root = gcs.uri("train-data")
    data = {"vocab": storage.join(root, "vocab"), "vocab_size": merged_vocab.vocab_size}
    storage.copy_tree(anygpt_tokenizer_dir, data["vocab"])
    for kind, (local, _) in shard_corpus.items():
        data[kind] = storage.join(root, kind)
        storage.copy_tree(local, data[kind])
    return data


def start(tmp_path, name: str, model_dir: str, data: dict, env: dict, extra: str = "",
          script: str | None = None):
    """The train CLI on `gin_text(model_dir, data)`, or `script` (e.g. HOLD_SAVE) in its place."""
    gin_path = tmp_path / f"{name}.gin"
    gin_path.write_text(gin_text(model_dir, data, extra=extra))
    command = [script] if script else ["-m", "anygpt_jax.train"]
    return subprocess.Popen(
        [sys.executable, *command, f"--gin_file={gin_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def digests(model_dir: str, process: int = 0) -> dict[int, tuple[str, str]]:
    """step -> (loss, row hashes) from batch_digests (the last line of a step wins)."""
    text = storage.read_text(storage.join(model_dir, "batch_digests", f"process_{process}.tsv"))
    out = {}
    for line in text.splitlines():
        step, loss, rows = line.split("\t")
        out[int(step)] = (loss, rows)
    return out


def committed_step(model_dir: str, step: int) -> bool:
    return storage.exists(storage.join(model_dir, "checkpoints", str(step), "commit_success.txt"))


@pytest.mark.slow
def test_gs_shards_and_model_dir_sigkill_resume_is_exact(tmp_path, gcs, gs_data):
    """Straight run vs a run SIGKILLed in the middle of its step-4 save (written, not
    committed) and resumed from step 2: same data order, same losses and bitwise-equal
    parameters, everything read and written on gs://."""
    from anygpt_jax import AnyGPT

    env = cli_env(1, str(tmp_path / "jax_cache"))
    straight_dir, killed_dir = gcs.uri("run-straight"), gcs.uri("run-killed")
    run_all([start(tmp_path, "straight", straight_dir, gs_data, env)])
    flag = tmp_path / "held"
    held_env = dict(env, HOLD_STEP="4", HOLD_FLAG=str(flag))
    victim = start(tmp_path, "killed", killed_dir, gs_data, held_env, script=HOLD_SAVE)
    deadline = time.time() + TIMEOUT_S
    while not flag.exists():
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.time() < deadline, "the step-4 save never started"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert committed_step(killed_dir, 2) and not committed_step(killed_dir, 4)
    assert storage.listdir(flag.read_text())  # step 4 was written, all but its commit
    run_all([start(tmp_path, "resumed", killed_dir, gs_data, env)])

    want, got = digests(straight_dir), digests(killed_dir)
    assert sorted(want) == list(range(1, STEPS + 1))
    assert got == want
    a, b = AnyGPT.load(straight_dir), AnyGPT.load(killed_dir)
    for x, y in zip(storage_leaves(a.params), storage_leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    for name in ("model_config.json", "operative_config.gin"):
        assert storage.exists(storage.join(straight_dir, name))
    assert storage.listdir(storage.join(straight_dir, "tensorboard"))


def storage_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow
def test_two_hosts_share_one_gs_model_dir_and_resume(tmp_path, gcs, gs_data):
    """Two processes (jax.distributed over gloo) train from gs:// shards into one gs://
    MODEL_DIR; a time-sliced run resumed by two new processes matches the straight run."""

    def hosts(name, model_dir, extra=""):
        env = dict(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
            JAX_NUM_PROCESSES="2",
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        )
        cache = str(tmp_path / "jax_cache")
        return [
            start(tmp_path, f"{name}-{i}", model_dir, gs_data,
                  cli_env(2, cache, JAX_PROCESS_ID=str(i), **env), extra)
            for i in range(2)
        ]

    straight_dir, sliced_dir = gcs.uri("hosts-straight"), gcs.uri("hosts-sliced")
    run_all(hosts("straight", straight_dir))
    run_all(hosts("sliced", sliced_dir, "train.stop_after_steps = 3"))
    assert committed_step(sliced_dir, 3) and not committed_step(sliced_dir, 4)
    run_all(hosts("resumed", sliced_dir))
    for process in range(2):
        want, got = digests(straight_dir, process), digests(sliced_dir, process)
        assert sorted(want) == list(range(1, STEPS + 1))
        assert got == want, f"process {process}"
    # Shared files are written once, by process 0; per-host input positions by each host.
    assert storage.exists(storage.join(straight_dir, "model_config.json"))
    positions = storage.listdir(storage.join(sliced_dir, "input", "6"))
    assert {p.split(".")[0] for p in positions} == {"process_0", "process_1"}
