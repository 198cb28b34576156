"""The trainer's input: per-host packed batches and a resumable position.

    ds = get_dataset("anygpt_pretrain", sequence_length=4500, batch_size=480, seed=0)
    it = InputIterator(ds)
    batch = next(it)                  # dict of numpy [batch_size // process_count, 4500]
    it.save(prefix)                   # e.g. f"{ckpt_dir}/{step}/input/process_{i}"
    it.restore(prefix)                # in a fresh process, same get_dataset arguments

Resume scheme: a tf.data iterator checkpoint per process (t5x's). It holds the file order,
reader offsets, shuffle buffers, mixture sampler state and the packer's open rows, so a
resumed run yields exactly the batches the uninterrupted run would have, replaying none. It
is valid only for the same arguments, shards and process count.

Sharding: each process reads only its own part (whole shard files when there are at least
as many as parts, else every n-th record) and builds only its own rows of the global batch.
The trainer passes `host_shard_info(batch_sharding, batch_size)`: processes whose devices
hold the same rows (tensor parallelism across hosts) read the same part.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from anygpt_jax import partitioning, storage
from anygpt_jax.data.packing import AnyGPTFeatureConverter


def host_shard_info(
    batch_sharding: jax.sharding.NamedSharding | None = None, batch_size: int | None = None
) -> seqio.ShardInfo:
    """This process's part of the data.

    Without arguments (jax.process_index(), jax.process_count()). Given the batch's sharding
    and global size, the block of rows this process's devices hold: processes that hold the
    same rows (tensor parallelism across hosts) get the same part and read the same data.
    """
    if batch_sharding is None:
        return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
    index, count = partitioning.process_row_block(batch_sharding, batch_size)
    return seqio.ShardInfo(index=index, num_shards=count)


@gin.configurable
def get_dataset(
    mixture_or_task_name: str,
    sequence_length: int = 4500,
    batch_size: int | None = 8,
    seed: int = 0,
    shuffle: bool = True,
    pack: bool = True,
    num_bins: int = 8,
    num_epochs: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    split: str = "train",
) -> tf.data.Dataset:
    """Batches of the contract in packing.py; batch_size is global (this host builds its part).

    batch_size None yields single rows. num_epochs None repeats forever (training).
    """
    shard_info = shard_info or host_shard_info()
    if batch_size is not None and batch_size % shard_info.num_shards:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {shard_info.num_shards} input "
            "shards (processes, or groups of processes that hold the same rows)"
        )
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    # One more id than the row: inputs are ids[:-1], targets ids[1:].
    lengths = {"targets": sequence_length + 1, "loss_weights": sequence_length + 1}
    ds = provider.get_dataset(
        sequence_length=lengths,
        split=split,
        shuffle=shuffle,
        seed=seed,
        shard_info=shard_info,
        num_epochs=num_epochs,
        use_cached=False,
        trim_output_features=True,
        try_in_mem_cache=False,  # an in-memory cache would end up in every iterator checkpoint
    )
    ds = AnyGPTFeatureConverter(pack=pack, num_bins=num_bins)(ds, lengths)
    if batch_size is not None:
        ds = ds.batch(batch_size // shard_info.num_shards, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    # The numpy renderer is a pure function of its inputs; saving iterators may ignore it.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


class InputIterator:
    """numpy batches from a dataset, with a checkpointable position (tf.data iterator state)."""

    def __init__(self, dataset: tf.data.Dataset):
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

    def __iter__(self) -> InputIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in next(self._iterator).items()}

    def save(self, prefix: str) -> str:
        """Writes the position under `prefix` (local or gs://; one per process); returns the
        checkpoint path. TensorFlow writes it locally, then its files are uploaded whole."""
        with tempfile.TemporaryDirectory(prefix="anygpt-input-") as tmp:
            local = self._checkpoint.write(os.path.join(tmp, "position"))
            for name in sorted(os.listdir(tmp)):  # local: the temp dir TensorFlow wrote
                suffix = name[len("position"):]
                storage.copy_file(os.path.join(tmp, name), f"{prefix}{suffix}")
        return prefix + local[len(os.path.join(tmp, "position")):]

    def restore(self, path: str) -> None:
        """Moves to a position written by save() (the path it returned, or its prefix)."""
        if not storage.exists(path + ".index"):
            raise FileNotFoundError(f"{path}: no input position saved there")
        parent, base = os.path.split(os.fspath(storage.path(path)))
        with tempfile.TemporaryDirectory(prefix="anygpt-input-") as tmp:
            for name in storage.listdir(parent):
                if name.startswith(base + "."):
                    storage.copy_file(storage.join(parent, name), os.path.join(tmp, name))
            self._checkpoint.read(os.path.join(tmp, base)).assert_consumed()


def describe_batch(batch: dict[str, Any]) -> str:
    """Shapes, dtypes and the non-pad fraction of a batch (logs, benchmarks)."""
    seg = np.asarray(batch["decoder_segment_ids"])
    shapes = ", ".join(f"{k}{tuple(np.shape(v))}" for k, v in sorted(batch.items()))
    return f"{shapes}; non-pad {np.mean(seg > 0):.3f}"
