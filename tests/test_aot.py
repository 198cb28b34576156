"""AOT compiles of a tiny model for TPU slices (v4-8, v5e-16) on this host, through libtpu."""

import os
import subprocess
import sys

import gin
import jax
import pytest
from synthetic_task import noisy_lines, user_env

from anygpt_jax import aot, aot_compile, partitioning, tpu_topology
from anygpt_jax import train as train_cli
from anygpt_jax.model import ModelConfig
from anygpt_jax.model.tpu_attention import kernel_calls
from anygpt_jax.training.optimizer import learning_rate_schedule, make_optimizer
from anygpt_jax.training.step import LossConfig

pytest.importorskip("libtpu", reason="AOT compiles for TPU need libtpu (the setup installs it)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ModelConfig(
    vocab_size=1000,
    hidden_size=128,
    intermediate_size=256,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    dtype="bfloat16",
    remat_policy="full",
    vocab_pad_multiple=256,
    max_position_embeddings=256,
)
SCHEDULE = learning_rate_schedule(100, peak_learning_rate=1e-3, warmup_steps=10)
TX = make_optimizer(SCHEDULE)


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def tpu_mesh(name, shape, num_slices=1):
    topology = tpu_topology.parse_topology(name)
    devices = tpu_topology.topology_devices(topology, num_slices)
    return topology, partitioning.make_mesh(shape, devices=devices, num_slices=num_slices)


@pytest.mark.parametrize(
    "name, libtpu_name, chips, hbm_gib",
    [
        ("v4-8", "v4:2x2x1", 4, 32),
        ("v4-64", "v4:2x4x4", 32, 32),
        ("v5e-16", "v5e:4x4", 16, 16),
        ("v5e-256", "v5e:16x16", 256, 16),
        ("v5p-128", "v5:4x4x4", 64, 95),
        ("v5p-256", "v5:4x4x8", 128, 95),
        ("v6e-8", "v6e:2x4", 8, 32),
        ("v5p-384:4x4x12", "v5:4x4x12", 192, 95),
    ],
)
def test_topology_names(name, libtpu_name, chips, hbm_gib):
    t = tpu_topology.parse_topology(name)
    assert (t.libtpu_name, t.chips, t.hbm_bytes) == (libtpu_name, chips, hbm_gib * 1024**3)


@pytest.mark.parametrize(
    "name, match",
    [
        ("v3-8", "unknown TPU topology 'v3-8'"),
        ("v4-7", "2 cores per chip"),
        ("v5p-384", "not a power of two"),
        ("v5e-16:4x8", "not a 2-D grid of 16 chips"),
    ],
)
def test_bad_topology_names(name, match):
    with pytest.raises(ValueError, match=match):
        tpu_topology.parse_topology(name)


def test_devices_of_one_and_two_slices():
    t = tpu_topology.parse_topology("v5e-16")
    devices = tpu_topology.topology_devices(t)
    assert len(devices) == 16 and devices[0].platform == "tpu"
    assert devices[0].device_kind.startswith("TPU v5")
    two = tpu_topology.topology_devices(tpu_topology.parse_topology("v4-8"), num_slices=2)
    assert sorted({d.slice_index for d in two}) == [0, 1]
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 4}, devices=two, num_slices=2)
    # The data axis is the one laid across slices.
    assert {d.slice_index for d in mesh.devices[0].flat} == {0}
    assert {d.slice_index for d in mesh.devices[1].flat} == {1}


def test_v5e_256_hosts_feed_row_blocks_of_480():
    """8-way tensor over 4-chip hosts: 32 blocks of 15 rows, each loaded by 2 hosts."""
    import collections

    topology, mesh = tpu_mesh("v5e-256", {"data": -1, "fsdp": 32, "tensor": 8})
    sharding = partitioning.batch_sharding(mesh)
    blocks = [partitioning.process_row_block(sharding, 480, p) for p in range(topology.hosts)]
    assert {count for _, count in blocks} == {32}
    assert collections.Counter(index for index, _ in blocks) == {i: 2 for i in range(32)}
    # A process's block is the rows its devices hold.
    for device, (rows, _) in sharding.devices_indices_map((480, 1)).items():
        index, _ = blocks[device.process_index]
        assert (rows.start, rows.stop) == (15 * index, 15 * index + 15)
    with pytest.raises(ValueError, match="batch size 500 does not split over the 32 batch"):
        partitioning.process_row_block(sharding, 500, 0)


@pytest.mark.slow
def test_v4_8_train_step_flops_match_a_loop_free_compile():
    """The fitted FLOPs of the scanned, micro-batched, vocab-tiled step equal a loop-free one."""
    topology, mesh = tpu_mesh("v4-8", {"fsdp": 2, "tensor": 2})
    loss = LossConfig(num_microbatches=2, vocab_tile=256)
    report = aot_compile.compile_train(
        TINY, mesh, 8, 128, topology.hbm_bytes, TX, SCHEDULE, loss, count_flops=True
    )
    m = report.memory
    assert report.fits() and 0 < m.total < m.hbm
    assert m.total == m.arguments + m.outputs - m.aliased + m.temporaries + m.code
    assert m.aliased > 0  # the donated state is updated in place
    # Ground truth: unrolled layers, one micro-batch, whole-vocabulary loss: no loops at all.
    truth = aot_compile.compile_train(
        TINY.replace(scan_layers=False),
        mesh,
        8,
        128,
        topology.hbm_bytes,
        TX,
        SCHEDULE,
        LossConfig(vocab_tile=TINY.padded_vocab_size),
        count_flops=False,
    )
    assert report.compiled_flops == pytest.approx(truth.raw_flops, rel=0.01)
    assert report.raw_flops < 0.5 * report.compiled_flops  # why the probes exist
    # Full remat recomputes the forward: ~4/3 of the model's 6N (+ vocab-sized extras).
    assert 1.2 < report.flops_ratio < 1.6


def test_flops_probes_of_an_unrolled_scan_are_valid_configs():
    # The probes compile 1 and 2 loop-free layers, whatever the run's scan_unroll.
    cfg = TINY.replace(scan_unroll=TINY.num_layers)
    for depth in (1, 2):
        probe = aot_compile._probe_config(cfg, depth)
        assert (probe.num_layers, probe.scan_layers, probe.scan_unroll) == (depth, False, 1)


def test_v5e_16_splash_train_and_decode_lower_for_tpu():
    gin.bind_parameter("SplashConfig.block_q", 128)  # gin reaches the kernel at trace time
    topology, mesh = tpu_mesh("v5e-16", {"fsdp": 8, "tensor": 2})
    cfg = TINY.replace(attention_kernel="splash")

    def train_calls():
        report = aot_compile.compile_train(
            cfg, mesh, 16, 256, topology.hbm_bytes, TX, SCHEDULE, count_flops=False
        )
        assert report.fits()
        assert report.kernels == ("splash_mha_dkv", "splash_mha_dq", "splash_mha_fwd")
        return kernel_calls(report.hlo)

    # Under conftest's process-wide "highest" precision the bf16 kernel still lowers (its
    # backward re-derives the forward once more inside a default-precision scope) ...
    assert len(train_calls()) == 5
    # ... and at the default precision, per scanned layer body: forward, its full-remat
    # recompute, dQ and dK/dV.
    with jax.default_matmul_precision("default"):
        calls = train_calls()
    assert sorted(name for name, _ in calls) == [
        "splash_mha_dkv",
        "splash_mha_dq",
        "splash_mha_fwd",
        "splash_mha_fwd",
    ]
    # Each device runs 2 rows x 2 of the 4 heads over the whole (unsharded) 256-token sequence.
    assert {shape for _, shape in calls} == {(2, 2, 256, 32)}

    decode = aot_compile.compile_decode(
        cfg, mesh, topology.hbm_bytes, aot_compile.DecodeShape(batch_size=16), count_flops=False
    )
    assert decode.fits() and decode.kernels == ()  # the cache path attends through XLA
    # bf16 serving weights over 16 chips, plus a [3, 16, 256, 2, 32] bf16 cache per K and V
    # with batch over fsdp and kv heads over tensor: 1/16 of it per chip.
    cache_bytes = 2 * 3 * 16 * 256 * 2 * 32 * 2 // 16
    assert decode.memory.aliased >= cache_bytes
    # int8 layers and LM head: the decode step's arguments shrink by about half the bf16
    # kernels' bytes (one byte a weight, plus a scale per output channel).
    int8 = aot_compile.compile_decode(
        cfg, mesh, topology.hbm_bytes,
        aot_compile.DecodeShape(batch_size=16, int8_weights=("layers", "lm_head")),
        count_flops=False)
    assert int8.fits()
    saved = decode.memory.arguments - int8.memory.arguments
    assert saved > 0.3 * (decode.memory.arguments - cache_bytes), (decode.memory, int8.memory)


def test_out_of_hbm_is_a_verdict_not_a_crash():
    topology, mesh = tpu_mesh("v4-8", {"fsdp": 4})
    huge = TINY.replace(remat_policy="none", hidden_size=1024, intermediate_size=4096)
    report = aot_compile.compile_train(
        huge, mesh, 4096, 4096, topology.hbm_bytes, TX, SCHEDULE, count_flops=False
    )
    assert not report.fits() and report.memory is None
    assert "RESOURCE_EXHAUSTED" in report.out_of_memory


def test_bad_shapes_are_named():
    topology, mesh = tpu_mesh("v4-8", {"fsdp": 4})
    with pytest.raises(ValueError, match="batch_size=6 does not split into 1 micro-batches"):
        aot_compile.compile_train(TINY, mesh, 6, 128, topology.hbm_bytes, TX, SCHEDULE)
    with pytest.raises(ValueError, match="DecodeShape.batch_size=3"):
        aot_compile.compile_decode(TINY, mesh, topology.hbm_bytes, aot_compile.DecodeShape(3))


def write_run(tmp_path, extra=""):
    path = tmp_path / "tiny_run.gin"
    path.write_text(
        "include 'models/tiny.gin'\n"
        "MODEL_DIR = 'unused'\nTRAIN_STEPS = 10\nBATCH_SIZE = 8\nSEQ_LEN = 128\n"
        "MIXTURE_OR_TASK_NAME = 'unused'\nCHECKPOINT_EVERY = 5\n"
        "train.train_steps = %TRAIN_STEPS\ntrain.batch_size = %BATCH_SIZE\n"
        "train.seq_len = %SEQ_LEN\n"
        "ModelConfig.vocab_size = 1000\nModelConfig.remat_policy = 'full'\n"
        "make_mesh.mesh_shape = {'fsdp': 2, 'tensor': 2}\n"
        "DecodeShape.max_length = 256\n" + extra
    )
    return str(path)


def test_v4_8_run_from_gin_and_the_cli_exit_codes(tmp_path, capsys):
    run_file = write_run(tmp_path)
    train_cli.parse_gin([run_file], [])
    result = aot.run("v4-8", count_flops=False)
    train, decode = result.steps
    for step in result.steps:
        m = step.memory
        assert step.fits() and 0 < m.total < m.hbm
        assert m.total == m.arguments + m.outputs - m.aliased + m.temporaries + m.code
        assert m.aliased > 0  # the donated state / cache is updated in place
    assert result.mesh_shape == {"data": 1, "fsdp": 2, "tensor": 2}
    assert (result.batch_size, result.seq_len) == (8, 128)
    out = aot.format_report(result)
    assert "topology v4-8: v4:2x2x1, 4 chips" in out
    assert "train step (compiled in" in out and "decode step (compiled in" in out
    assert "lm_head/kernel" in out and "(embed, vocab) -> (fsdp, tensor)" in out

    argv = ["--topology=v4-8", f"--gin_file={run_file}", "--skip_flops"]
    # Demanding all of HBM free cannot be met: exit 1, and the report says why.
    assert aot.main([*argv, "--skip_decode", "--min_headroom=0.9999999"]) == 1
    assert "DOES NOT FIT (needs 100% free)" in capsys.readouterr().out
    # A serving slice: the decode step only, its weights int8.
    assert aot.main([*argv, "--skip_train",
                     "--gin.DecodeShape.int8_weights=('layers', 'lm_head')"]) == 0
    out = capsys.readouterr().out
    assert "decode step (compiled in" in out and "train step" not in out
    assert aot.main(["--topology=v9-8", f"--gin_file={write_run(tmp_path)}"]) == 2
    assert "unknown TPU topology 'v9-8'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_as_a_command(tmp_path):
    extra = "ModelConfig.attention_kernel = 'splash'\nSplashConfig.block_q = 128\n"
    cmd = [
        sys.executable,
        "-m",
        "anygpt_jax.aot",
        "--topology=v5e-16",
        f"--gin_file={write_run(tmp_path, extra)}",
        "--gin.make_mesh.mesh_shape={'fsdp': 8, 'tensor': 2}",
        "--gin.BATCH_SIZE=16",
    ]
    env = dict(user_env(os.environ), PYTHONPATH=REPO)  # a user's shell: nothing quieted
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert noisy_lines(proc.stdout + proc.stderr) == [], proc.stderr[-3000:]
    assert "custom kernels: splash_mha_dkv, splash_mha_dq, splash_mha_fwd" in proc.stdout
    assert "FLOPs: compiled" in proc.stdout
    # What it waits for is said as it starts, on stderr (stdout keeps the report).
    assert "compiling the train step for v5e-16 (16 chips, mesh" in proc.stderr
    assert "compiling one decode step for v5e-16" in proc.stderr
