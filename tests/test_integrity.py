"""Array fingerprints: equal on host and device (sharded too), sensitive to any bit and move."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from anygpt_jax import integrity


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int32, np.uint8, np.uint32])
def test_host_and_device_agree(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((37, 53)) * 100).astype(dtype)
    host = integrity.fingerprints({"x": x})
    device = integrity.fingerprints({"x": jnp.asarray(x)})
    assert host == device


def test_sharded_arrays_give_the_same_fingerprint():
    mesh = jax.make_mesh((8,), ("d",))
    x = np.random.default_rng(1).standard_normal((64, 24)).astype(np.float32)
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("d", None)))
    assert integrity.fingerprints([sharded]) == integrity.fingerprints([x])


def test_chunked_host_sum_equals_one_pass(monkeypatch):
    x = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    whole = integrity.fingerprint_np(x)
    monkeypatch.setattr(integrity, "_CHUNK", 7)
    assert integrity.fingerprint_np(x) == whole


def test_every_single_bit_flip_and_a_swap_are_caught():
    x = np.random.default_rng(3).standard_normal(16).astype(np.float32)
    base = integrity.fingerprint_np(x)
    words = x.view(np.uint32)
    for i in range(16):
        for bit in range(32):
            y = words.copy()
            y[i] ^= np.uint32(1 << bit)
            assert integrity.fingerprint_np(y.view(np.float32)) != base, (i, bit)
    swapped = x.copy()
    swapped[[2, 9]] = swapped[[9, 2]]
    assert integrity.fingerprint_np(swapped) != base


def test_verify_names_the_arrays_that_differ():
    tree = {"a": np.ones(3, np.float32), "b": {"c": np.zeros(2, np.float32)}}
    saved = integrity.fingerprints(tree, "params/")
    integrity.verify(tree, saved, "ckpt", "params/")
    integrity.verify(tree, None, "legacy checkpoint", "params/")
    tree["b"]["c"][1] = 1e-30
    with pytest.raises(integrity.IntegrityError, match=r"ckpt: corrupted: 1 arrays .*params/b/c"):
        integrity.verify(tree, saved, "ckpt", "params/")
