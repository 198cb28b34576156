"""Two processes x 2 CPU devices (jax.distributed over gloo) train like 1 process x 4 devices.

Both runs are real CLI subprocesses. Unpacked, unshuffled rows make the data comparable:
each host reads every second record, so the hosts' rows together are the single run's rows.
"""

import collections
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from synthetic_task import cli_env, cli_gin, read_digests

STEPS = 4
TIMEOUT_S = 300  # per run: a process waiting forever on its peer fails the test
DATA = """
get_dataset.shuffle = False
get_dataset.pack = False
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(procs: list[subprocess.Popen]) -> None:
    """Waits for every process (bounded); on a hang or failure kills all and reports."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = "\n---\n".join(p.communicate()[0][-2000:] for p in procs)
        pytest.fail(f"a training process hung:\n{tails}")
    failed = [out[-3000:] for p, out in zip(procs, outs, strict=True) if p.returncode]
    assert not failed, "\n---\n".join(failed)


def launch(tmp_path, name, env, anygpt_tokenizer_dir, merged_vocab, extra=""):
    """Starts one training CLI process on the gin file `name` (written once)."""
    path = tmp_path / f"{name}.gin"
    if not path.exists():
        path.write_text(
            cli_gin(
                str(tmp_path / name),
                anygpt_tokenizer_dir,
                merged_vocab.vocab_size,
                STEPS,
                batch_size=4,
                checkpoint_every=100,
                extra=DATA + extra,
            )
        )
    return subprocess.Popen(
        [sys.executable, "-m", "anygpt_jax.train", f"--gin_file={path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def two_hosts(tmp_path, name, tokenizer_dir, merged_vocab, extra=""):
    """Two CLI processes of 2 CPU devices each, joined by jax.distributed over gloo."""
    address = f"127.0.0.1:{free_port()}"
    env = dict(
        JAX_COORDINATOR_ADDRESS=address,
        JAX_NUM_PROCESSES="2",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )
    return [
        launch(
            tmp_path,
            name,
            cli_env(2, JAX_PROCESS_ID=str(i), **env),
            tokenizer_dir,
            merged_vocab,
            extra,
        )
        for i in range(2)
    ]


# ~1.5-3 min on two busy cores: three CLI processes compile at once.
@pytest.mark.slow
def test_two_processes_match_one(tmp_path, anygpt_tokenizer_dir, merged_vocab):
    """Same losses (float tolerance), and per step the hosts' rows are the single run's rows."""
    cache = str(tmp_path / "jax_cache")
    single = launch(tmp_path, "single", cli_env(4, cache), anygpt_tokenizer_dir, merged_vocab)
    hosts = two_hosts(tmp_path, "multi", anygpt_tokenizer_dir, merged_vocab)
    run_all([single, *hosts])

    one = read_digests(str(tmp_path / "single"))
    two = [read_digests(str(tmp_path / "multi"), i) for i in range(2)]
    assert [s for s, _, _ in one] == list(range(1, STEPS + 1))
    for (step, loss, rows), *per_host in zip(one, *two, strict=True):
        assert all(h[0] == step for h in per_host)
        # Each host built only its half of the global batch; together they are the batch.
        assert all(len(h[2]) == len(rows) // 2 for h in per_host)
        union = collections.Counter(per_host[0][2] + per_host[1][2])
        assert union == collections.Counter(rows), f"step {step}"
        # The loss is global: both hosts report it, equal to the single run's up to rounding
        # (another reduction order over the same tokens).
        for h in per_host:
            np.testing.assert_allclose(float(h[1]), float(loss), rtol=1e-5)
    assert os.path.isdir(tmp_path / "multi" / "checkpoints" / str(STEPS))


# Tensor parallelism across hosts (as 8-way tensor over 4-chip v5e hosts): both hosts' devices
# hold every row, so each host must load the whole batch, the same rows as its peer.
TENSOR_ACROSS_HOSTS = """
ModelConfig.num_kv_heads = 4
make_mesh.mesh_shape = {'fsdp': 1, 'tensor': 4}
"""


@pytest.mark.slow
def test_hosts_holding_the_same_rows_load_the_same_rows(
    tmp_path, anygpt_tokenizer_dir, merged_vocab
):
    """A 4-way tensor mesh over 2 hosts trains like 1 host with 4-way FSDP (same rows, losses)."""
    cache = str(tmp_path / "jax_cache")
    single = launch(
        tmp_path,
        "single",
        cli_env(4, cache),
        anygpt_tokenizer_dir,
        merged_vocab,
        "ModelConfig.num_kv_heads = 4",
    )
    hosts = two_hosts(tmp_path, "tensor", anygpt_tokenizer_dir, merged_vocab, TENSOR_ACROSS_HOSTS)
    run_all([single, *hosts])

    one = read_digests(str(tmp_path / "single"))
    two = [read_digests(str(tmp_path / "tensor"), i) for i in range(2)]
    assert [s for s, _, _ in one] == list(range(1, STEPS + 1))
    for (step, loss, rows), *per_host in zip(one, *two, strict=True):
        for host_step, host_loss, host_rows in per_host:
            assert host_step == step
            assert host_rows == rows, f"step {step}: a host did not load the whole batch"
            np.testing.assert_allclose(float(host_loss), float(loss), rtol=1e-5)


@pytest.mark.slow
def test_one_host_refusing_its_configuration_ends_every_host(
    tmp_path, anygpt_tokenizer_dir, merged_vocab
):
    """Host 0's MODEL_DIR is a file: it exits 1 naming it, and host 1, left waiting for its
    peer at the model-dir barrier, exits non-zero too instead of holding the slice."""
    (tmp_path / "bad").write_text("not a directory")
    env = dict(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
        JAX_NUM_PROCESSES="2",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )
    procs = [
        launch(tmp_path, name, cli_env(2, JAX_PROCESS_ID=str(i), **env),
               anygpt_tokenizer_dir, merged_vocab)
        for i, name in enumerate(["bad", "good"])
    ]
    outs = []
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("a host kept waiting for a peer that had quit")
    assert procs[0].returncode == 1
    assert f"MODEL_DIR {tmp_path / 'bad'} is a file" in outs[0]
    assert procs[1].returncode != 0, outs[1][-2000:]
