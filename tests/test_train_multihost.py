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


# ~1.5-3 min on two busy cores: three CLI processes compile at once.
@pytest.mark.slow
def test_two_processes_match_one(tmp_path, anygpt_tokenizer_dir, merged_vocab):
    """Same losses (float tolerance), and per step the hosts' rows are the single run's rows."""
    cache = str(tmp_path / "jax_cache")

    def gin_file(name):
        path = tmp_path / f"{name}.gin"
        path.write_text(
            cli_gin(
                str(tmp_path / name),
                anygpt_tokenizer_dir,
                merged_vocab.vocab_size,
                STEPS,
                batch_size=4,
                checkpoint_every=100,
                extra=DATA,
            )
        )
        return path

    def cli(path, env):
        return subprocess.Popen(
            [sys.executable, "-m", "anygpt_jax.train", f"--gin_file={path}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    single = cli(gin_file("single"), cli_env(4, cache))
    address = f"127.0.0.1:{free_port()}"
    multi_gin = gin_file("multi")
    hosts = [
        cli(
            multi_gin,
            cli_env(
                2,
                JAX_COORDINATOR_ADDRESS=address,
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
                JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            ),
        )
        for i in range(2)
    ]
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
