"""Sharding does not change the math: a (data 2, fsdp 2, tensor 2) mesh trains like 1 device."""

import gin
import numpy as np
import pytest
from synthetic_task import read_digests
from test_trainer import TASK, register_synthetic_task, tiny_config

from anygpt_jax import partitioning
from anygpt_jax.training.digests import BatchDigests
from anygpt_jax.training.trainer import train
from anygpt_jax.vocab import MergedVocabulary

STEPS = 3


@pytest.fixture(scope="module")
def vocab(anygpt_tokenizer_dir):
    v = MergedVocabulary.from_tokenizer_dir(anygpt_tokenizer_dir)
    register_synthetic_task(v)
    return v


def losses(model_dir, vocab, **mesh) -> list[float]:
    """Per-step losses of a short run on the mesh that the `make_mesh` bindings describe."""
    gin.clear_config()
    for key, value in mesh.items():
        gin.bind_parameter(f"make_mesh.{key}", value)
    gin.bind_parameter("learning_rate_schedule.peak_learning_rate", 3e-3)
    gin.bind_parameter("learning_rate_schedule.warmup_steps", 1)
    try:
        train(
            model_dir=str(model_dir),
            train_steps=STEPS,
            batch_size=4,
            seq_len=32,
            mixture_or_task_name=TASK,
            checkpoint_every=100,
            model_config=tiny_config(vocab),
            log_every=STEPS,
            register_tasks=False,
            peak_flops_per_device=1e9,
            hooks=[BatchDigests()],
        )
    finally:
        gin.clear_config()
    return read_digests(str(model_dir))


def test_eight_device_mesh_matches_one_device(vocab, tmp_path):
    one = losses(tmp_path / "one", vocab, num_devices=1)
    eight = losses(
        tmp_path / "eight", vocab, num_devices=8, mesh_shape={"data": 2, "fsdp": 2, "tensor": 2}
    )
    assert [(s, rows) for s, _, rows in one] == [(s, rows) for s, _, rows in eight]
    # Loss and updates after sharded reductions agree up to fp32 summation order.
    np.testing.assert_allclose(
        [float(x) for _, x, _ in eight], [float(x) for _, x, _ in one], rtol=2e-5
    )


@pytest.mark.parametrize(
    "sizes, num_slices, ici, dcn",
    [
        ((4, 32, 2), 4, (1, 32, 2), (4, 1, 1)),
        ((8, 16, 2), 2, (4, 16, 2), (2, 1, 1)),
        ((1, 256, 1), 1, (1, 256, 1), (1, 1, 1)),
    ],
)
def test_hybrid_mesh_shapes_put_data_across_slices(sizes, num_slices, ici, dcn):
    assert partitioning.hybrid_mesh_shapes(sizes, num_slices) == (ici, dcn)


def test_hybrid_mesh_shapes_refuse_a_data_axis_that_slices_do_not_divide():
    with pytest.raises(ValueError, match="num_slices"):
        partitioning.hybrid_mesh_shapes((3, 4, 1), 2)


def test_make_mesh_with_slices_on_cpu_keeps_the_shape():
    # CPU devices have no slice_index: make_mesh falls back to process order (shape only).
    mesh = partitioning.make_mesh({"data": -1, "fsdp": 2, "tensor": 2}, num_slices=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
