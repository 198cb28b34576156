"""The trainer tests' synthetic seqio task, registrable from gin (for CLI subprocess tests).

    import synthetic_task
    train.register_tasks = @synthetic_task.register
    synthetic_task.register.tokenizer_dir = '<an AnyGPT tokenizer directory>'

The directory of this file must be on PYTHONPATH (the tests set it for their subprocesses).
"""

from __future__ import annotations

import re

import gin
from test_trainer import TASK, register_synthetic_task

from anygpt_jax.vocab import MergedVocabulary


@gin.configurable(module="synthetic_task")
def register(tokenizer_dir: str = gin.REQUIRED, name: str = TASK) -> list[str]:
    """Registers the counting-sequence task of test_trainer under `name`; returns [name]."""
    register_synthetic_task(MergedVocabulary.from_tokenizer_dir(tokenizer_dir), name)
    return [name]


def cli_gin(
    model_dir: str,
    tokenizer_dir: str,
    vocab_size: int,
    steps: int,
    batch_size: int = 2,
    checkpoint_every: int = 5,
    extra: str = "",
) -> str:
    """The text of a gin file that trains a tiny model on the synthetic task (seq 32)."""
    data = f"""
import synthetic_task
train.register_tasks = @synthetic_task.register
synthetic_task.register.tokenizer_dir = {tokenizer_dir!r}
"""
    return tiny_run_gin(model_dir, vocab_size, steps, batch_size, 32, TASK, checkpoint_every,
                        data + extra)


def tiny_run_gin(model_dir: str, vocab_size: int, steps: int, batch_size: int, seq_len: int,
                 task: str, checkpoint_every: int, data: str) -> str:
    """A gin file's text training a tiny model on `task`, whose registration `data` binds,
    logging every step with batch digests."""
    return f"""
from anygpt_jax.model import config

MODEL_DIR = {model_dir!r}
TRAIN_STEPS = {steps}
BATCH_SIZE = {batch_size}
SEQ_LEN = {seq_len}
MIXTURE_OR_TASK_NAME = {task!r}
CHECKPOINT_EVERY = {checkpoint_every}

train.model_dir = %MODEL_DIR
train.train_steps = %TRAIN_STEPS
train.batch_size = %BATCH_SIZE
train.seq_len = %SEQ_LEN
train.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
train.checkpoint_every = %CHECKPOINT_EVERY
train.log_every = 1
train.peak_flops_per_device = 1e9
train.hooks = [@BatchDigests()]

ModelConfig.vocab_size = {vocab_size}
ModelConfig.hidden_size = 32
ModelConfig.intermediate_size = 64
ModelConfig.num_layers = 2
ModelConfig.num_heads = 4
ModelConfig.num_kv_heads = 2
learning_rate_schedule.peak_learning_rate = 3e-3
learning_rate_schedule.warmup_steps = 1
{data}
"""


def read_digests(model_dir: str, process: int = 0) -> list[tuple[int, str, list[str]]]:
    """The (step, loss repr, row hashes) lines that the BatchDigests hook wrote, in order."""
    import os

    path = os.path.join(model_dir, "batch_digests", f"process_{process}.tsv")
    out = []
    with open(path) as f:
        for line in f:
            step, loss, rows = line.rstrip("\n").split("\t")
            out.append((int(step), loss, rows.split(",")))
    return out


def cli_env(num_devices: int, compilation_cache: str | None = None, **extra: str) -> dict:
    """Environment of a CLI subprocess: `num_devices` forced CPU devices, tests/ importable.

    A shared persistent compilation cache spares later runs of a test the ~20 s compile.
    """
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=path,
        XLA_FLAGS=" ".join(flags),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    if compilation_cache:
        env["JAX_COMPILATION_CACHE_DIR"] = compilation_cache
    return env | extra


# Lines a successful CLI run must not print: C++ log lines (I/W/E + date), their preamble,
# accelerator probes, Python logging errors and warnings, tracebacks.
NOISE = re.compile(
    r"^[IWEF]\d{4} |All log messages before absl|cuInit|libtpu|host bounds|TPU_WORKER|"
    r"^ERROR:|^WARNING:|Traceback \(most recent|Warning: ",
    re.MULTILINE,
)


def user_env(env: dict) -> dict:
    """`env` as a user's shell has it: without the suite's quieting variables."""
    return {k: v for k, v in env.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS")}


def noisy_lines(output: str) -> list[str]:
    """The lines of `output` a user should not see after a successful run."""
    return [line for line in output.splitlines() if NOISE.search(line)]
