"""Every gin file under tpu_configs/ parses (a typo fails CI) and the run x topology math holds."""

import glob
import math
import os
import subprocess

import gin
import pytest

from anygpt_jax import gin_utils
from anygpt_jax import train as train_cli

CONFIG_DIR = gin_utils.CONFIG_DIR
RUNS = ("recipes/pretrain.gin", "recipes/instruct.gin")
# Topology -> (chips, hosts): the global batch must split over both.
TOPOLOGIES = {
    "v4-8": (4, 1),
    "v4-64": (32, 8),
    "v5e-16": (16, 4),
    "v5e-256": (256, 64),
    "v5p-128": (64, 16),
}


def parse(*names: str, bindings=()) -> None:
    """train's parser (imports, search paths, required macros) on files under tpu_configs/."""
    train_cli.parse_gin([os.path.join(CONFIG_DIR, n) for n in names], list(bindings))


def gin_files() -> list[str]:
    """Training configs: inference/ is the inference CLI's, parsed by its own tests."""
    paths = glob.glob(os.path.join(CONFIG_DIR, "**", "*.gin"), recursive=True)
    names = (os.path.relpath(p, CONFIG_DIR) for p in paths)
    return sorted(n for n in names if not n.startswith("inference" + os.sep))


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("name", gin_files())
def test_gin_file_parses(name):
    if name.startswith("topologies/"):
        # A topology is a layer: parse it over a full run.
        parse(RUNS[0], name)
    elif name.startswith("models/"):
        parse(name, bindings=[f"{m}=0" for m in train_cli.REQUIRED_MACROS])
    else:
        parse(name)


def test_every_topology_has_a_file():
    assert {f"topologies/{t}.gin" for t in TOPOLOGIES} <= set(gin_files())


def test_recipe_values():
    parse(RUNS[0])
    assert gin.query_parameter("%BATCH_SIZE") == 480
    assert gin.query_parameter("%SEQ_LEN") == 4500
    assert gin.query_parameter("%TRAIN_STEPS") == 81000
    assert gin.query_parameter("learning_rate_schedule.peak_learning_rate") == 6e-5
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "anygpt_pretrain"
    parse(RUNS[1])
    assert gin.query_parameter("%BATCH_SIZE") == 64
    assert gin.query_parameter("%TRAIN_STEPS") == 5000
    assert gin.query_parameter("learning_rate_schedule.peak_learning_rate") == 2e-5
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "anygpt_sft"
    assert gin.query_parameter("%INIT_FROM") == "runs/anygpt_pretrain"


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_batch_splits_over_hosts_and_batch_axis(run, topology):
    """The global batch divides by data x fsdp on one slice and by the hosts' row blocks.

    Hosts of one tensor group (8-way tensor over 4-chip v5e hosts) load the same rows, so the
    batch need only split over the groups (tests/test_aot.py checks the blocks on v5e-256).
    """
    chips, hosts = TOPOLOGIES[topology]
    parse(run, f"topologies/{topology}.gin")
    shape = dict(gin.query_parameter("make_mesh.mesh_shape"))
    known = math.prod(v for v in shape.values() if v != -1)
    assert chips % known == 0
    shape = {k: (chips // known if v == -1 else v) for k, v in shape.items()}
    batch = gin.query_parameter("%BATCH_SIZE")
    hosts_per_tensor_group = max(1, shape.get("tensor", 1) // (chips // hosts))
    assert batch % (hosts // hosts_per_tensor_group) == 0
    assert batch % (shape["data"] * shape["fsdp"]) == 0


RUNS_7B = {"v4-64": (32, 8), "v5e-256": (256, 64), "v5p-128": (64, 16)}


@pytest.mark.parametrize("topology", sorted(RUNS_7B))
def test_7b_pretraining_runs_are_consistent(topology):
    """Each 7B run file layers the recipe and its topology and splits its batch evenly."""
    from anygpt_jax.model import ModelConfig
    from anygpt_jax.training.step import LossConfig

    chips, _ = RUNS_7B[topology]
    parse(f"pretrain_7b/{topology}.gin")
    assert gin.query_parameter("%BATCH_SIZE") == 480
    assert gin.query_parameter("%SEQ_LEN") == 4500
    cfg, loss = ModelConfig(), LossConfig()
    assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == (4096, 32, 53516)
    assert cfg.attention_kernel == "splash" and cfg.remat_policy == "full"
    shape = dict(gin.query_parameter("make_mesh.mesh_shape"))
    batch_shards = chips // shape.get("tensor", 1)
    assert 480 % (batch_shards * loss.num_microbatches) == 0
    if loss.vocab_tile is not None:
        assert cfg.padded_vocab_size % loss.vocab_tile == 0
    assert cfg.padded_vocab_size % (128 * shape.get("tensor", 1)) == 0


LAUNCH = os.path.join(CONFIG_DIR, "launch", "tpu_vm.sh")


def launch(*args):
    return subprocess.run(["bash", LAUNCH, *args], capture_output=True, text=True)


def test_launch_dry_run_prints_the_commands():
    common = ["--dry_run", "--name", "anygpt", "--zone", "us-east5-a"]
    proc = launch(*common, "--accelerator", "v5e-256", "create")
    assert proc.returncode == 0, proc.stderr
    assert "gcloud compute tpus tpu-vm create anygpt --zone us-east5-a" in proc.stdout
    assert "--accelerator-type v5litepod-256" in proc.stdout

    proc = launch(*common, "--num_slices", "2", "train", "--", "--gin_file=pretrain_7b/v5p-128.gin")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("+ gcloud")]
    assert len(lines) == 2  # one ssh per slice, every worker of each
    for node, line in zip(("anygpt-0", "anygpt-1"), lines, strict=True):
        assert f"tpu-vm ssh {node} --zone us-east5-a --worker=all" in line
        assert "anygpt_jax.train" in line and "pretrain_7b/v5p-128.gin" in line
        assert "NUM_SLICES=2" in line

    proc = launch(*common, "aot", "--", "--gin_file=pretrain_7b/v5p-128.gin")
    assert "anygpt_jax.aot\\ --topology=v5p-128" in proc.stdout and "--worker=0" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone", "z", "train"], "--name is required"),
        (["--name", "n", "--zone", "z"], "no command"),
        (["--name", "n", "--zone", "z", "train"], "train needs the run's flags"),
        (["--name", "n", "--zone", "z", "--num_slices", "0", "check"], "--num_slices"),
        (["--name", "n", "--zone", "z", "--accelerator", "v3-8", "create"], "--runtime"),
    ],
)
def test_launch_refuses_bad_arguments(args, message):
    proc = launch("--dry_run", *args)
    assert proc.returncode == 2 and message in proc.stderr
