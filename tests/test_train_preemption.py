"""The CLI survives preemption: SIGKILL loses only uncheckpointed steps, SIGTERM saves and exits.

Each run is a real `python -m anygpt_jax.train` subprocess on a gin file written here.
"""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from synthetic_task import cli_env, cli_gin, read_digests

from anygpt_jax import AnyGPT
from anygpt_jax.train import EXIT_PREEMPTED
from anygpt_jax.training.checkpoints import CHECKPOINTS_DIR, TrainCheckpointer

STEPS = 40
EVERY = 5
TIMEOUT_S = 240  # per subprocess: a hang fails the test instead of blocking CI


def start(gin_file) -> subprocess.Popen:
    """A CLI run on one forced CPU device, sharing a compilation cache with the others."""
    cache = os.path.join(os.path.dirname(str(gin_file)), "jax_cache")
    return subprocess.Popen(
        [sys.executable, "-m", "anygpt_jax.train", f"--gin_file={gin_file}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(1, cache),
    )


def finish(proc: subprocess.Popen, status: int = 0) -> str:
    """Waits (bounded) for `proc` to exit with `status`; returns its output."""
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"training subprocess hung:\n{out[-3000:]}")
    assert proc.returncode == status, out[-3000:]
    return out


def committed_steps(model_dir) -> list[int]:
    root = os.path.join(model_dir, CHECKPOINTS_DIR)
    return sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []


def interrupt_at(proc: subprocess.Popen, model_dir, at_step: int, sig: int) -> str:
    """Sends `sig` once the run logged `at_step` and has a committed checkpoint."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step "):
            step = int(line.split()[1].split("/")[0])
            if step >= at_step and committed_steps(model_dir):
                proc.send_signal(sig)
                break
    else:
        proc.wait(timeout=TIMEOUT_S)
        pytest.fail(f"run ended before step {at_step}:\n{''.join(lines)[-3000:]}")
    return "".join(lines)


def params(model_dir):
    return jax.tree_util.tree_leaves(AnyGPT.load(str(model_dir)).params)


def run_seed() -> int:
    """Random per run, but the same in every xdist worker, which must collect the same tests."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return int(run_id, 16) % 1000 if run_id else random.randrange(1000)


# ~2 min on two busy cores: four CLI processes, each paying start-up and (the first) compile.
@pytest.mark.slow
@pytest.mark.parametrize("seed", [run_seed()])
def test_sigkill_and_sigterm_resume_bitwise(tmp_path, anygpt_tokenizer_dir, merged_vocab, seed):
    """Straight run vs one SIGKILLed, resumed, SIGTERMed, resumed: same params, same data order."""
    rng = random.Random(seed)
    kill_at = rng.randrange(EVERY + 1, STEPS // 2)
    term_at = rng.randrange(STEPS // 2 + 1, STEPS - 5)
    straight_dir, chain_dir = str(tmp_path / "straight"), str(tmp_path / "chain")
    for name, model_dir in (("straight", straight_dir), ("chain", chain_dir)):
        (tmp_path / f"{name}.gin").write_text(
            cli_gin(model_dir, anygpt_tokenizer_dir, merged_vocab.vocab_size, STEPS, 2, EVERY)
        )
    # The straight run overlaps the interrupted chain (two cores).
    straight = start(tmp_path / "straight.gin")

    killed = start(tmp_path / "chain.gin")
    interrupt_at(killed, chain_dir, kill_at, signal.SIGKILL)
    killed.communicate(timeout=TIMEOUT_S)
    assert killed.returncode == -signal.SIGKILL
    after_kill = TrainCheckpointer(chain_dir).latest_step()
    assert after_kill is not None and after_kill % EVERY == 0

    termed = start(tmp_path / "chain.gin")
    head = interrupt_at(termed, chain_dir, term_at, signal.SIGTERM)
    assert f"step {after_kill + 1}/" in head  # it resumed from the last committed checkpoint
    # Checkpointed but unfinished: a status a supervisor can tell from a finished run.
    out = head + finish(termed, EXIT_PREEMPTED)
    saved = int(out.split("SIGTERM: saved step ")[1].split(",")[0])
    assert saved >= term_at
    assert TrainCheckpointer(chain_dir).latest_step() == saved
    logged_before_resume = len(read_digests(chain_dir))

    finish(start(tmp_path / "chain.gin"))
    finish(straight)

    reference = {step: (loss, rows) for step, loss, rows in read_digests(straight_dir)}
    assert sorted(reference) == list(range(1, STEPS + 1))
    chain = read_digests(chain_dir)
    # Every step any invocation ran saw the straight run's batch and loss, bit for bit.
    for step, loss, rows in chain:
        assert (loss, rows) == reference[step], f"step {step} differs (seed {seed})"
    assert {s for s, _, _ in chain} == set(reference)
    assert chain[logged_before_resume][0] == saved + 1  # the SIGTERM checkpoint was resumed
    for a, b in zip(params(straight_dir), params(chain_dir), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def start_held(gin_file, hold_step: int, flag) -> subprocess.Popen:
    """A CLI run (as `start`) whose save of `hold_step` is written but never committed."""
    cache = os.path.join(os.path.dirname(str(gin_file)), "jax_cache")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hold_save.py")
    return subprocess.Popen(
        [sys.executable, script, f"--gin_file={gin_file}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(1, cache, HOLD_STEP=str(hold_step), HOLD_FLAG=str(flag)),
    )


def wait_for_flag(proc: subprocess.Popen, flag) -> None:
    deadline = time.time() + TIMEOUT_S
    while not flag.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended before its save was held:\n{proc.communicate()[0][-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the held save never started")
        time.sleep(0.05)


# ~1 min: two CLI processes.
@pytest.mark.slow
def test_a_kill_during_a_save_resumes_from_the_previous_step(tmp_path, anygpt_tokenizer_dir,
                                                             merged_vocab):
    """SIGKILL while step 2*EVERY's async save is written but uncommitted: that step does not
    count, the resumed run starts after step EVERY and replays the same batches and losses."""
    model_dir = str(tmp_path / "m")
    gin_file = tmp_path / "run.gin"
    steps = 3 * EVERY
    gin_file.write_text(
        cli_gin(model_dir, anygpt_tokenizer_dir, merged_vocab.vocab_size, steps, 2, EVERY)
    )
    flag = tmp_path / "held"
    victim = start_held(gin_file, 2 * EVERY, flag)
    wait_for_flag(victim, flag)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=TIMEOUT_S)
    partial = flag.read_text()
    assert os.path.isdir(partial) and os.listdir(partial)  # written, not committed
    assert committed_steps(model_dir) == [EVERY]
    before = {step: (loss, rows) for step, loss, rows in read_digests(model_dir)}
    assert max(before) > EVERY

    out = finish(start(gin_file))
    assert f"resumed from step {EVERY} " in out
    assert "Traceback" not in out
    assert committed_steps(model_dir) == [EVERY, 2 * EVERY, 3 * EVERY]
    assert not os.path.exists(partial)
    replayed = read_digests(model_dir)[len(before):]
    assert [s for s, _, _ in replayed] == list(range(EVERY + 1, steps + 1))
    for step, loss, rows in replayed:
        if step in before:
            assert (loss, rows) == before[step], f"step {step} differs after the resume"
    assert np.isfinite(np.asarray(params(model_dir)[0])).all()  # loads, fingerprints checked
