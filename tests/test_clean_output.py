"""A successful CLI run prints what the user needs and nothing alarming.

Run with a user's environment (none of the suite's quieting variables): no C++ log lines of
TensorFlow, XLA or libtpu, no CUDA or TPU probes, no Python warnings or errors. The eval and
infer commands are checked the same way in their own tests (test_eval, test_infer).
"""

import subprocess
import sys

import pytest
from synthetic_task import cli_env, cli_gin, noisy_lines, user_env


@pytest.mark.slow
def test_training_prints_no_alarming_lines(tmp_path, anygpt_tokenizer_dir, merged_vocab):
    config = tmp_path / "run.gin"
    config.write_text(cli_gin(str(tmp_path / "m"), anygpt_tokenizer_dir, merged_vocab.vocab_size,
                              4, checkpoint_every=2))
    run = subprocess.run([sys.executable, "-m", "anygpt_jax.train", f"--gin_file={config}"],
                         env=user_env(cli_env(1)), capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    # The synthetic task is a seqio FunctionDataSource, which seqio warns about; real tasks
    # read shards (ShardDataSource).
    noise = [x for x in noisy_lines(output) if "uncached FunctionDataset" not in x]
    assert noise == [], output[-3000:]
    assert "compiling the train step" in output and "checkpoint step 4 committed" in output


def test_jax_imported_first_still_skips_an_absent_tpu():
    """A script that imports jax before anygpt_jax (as the benchmarks do) starts no libtpu on a
    host without TPU chips: jax has read its flags by then, so the package tells it directly."""
    code = "import jax, anygpt_jax; print(jax.devices()[0].platform)"
    run = subprocess.run([sys.executable, "-c", code], env=user_env(cli_env(1)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert noisy_lines(run.stdout + run.stderr) == [], run.stderr[-3000:]
    assert run.stdout.split() == ["cpu"]
