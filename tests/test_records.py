"""TFRecord blocks read through the storage layer (local and a GCS emulator)."""

import numpy as np
import pytest
import tensorflow as tf

from anygpt_jax import storage
from anygpt_jax.data import records


def write_records(path, n, seed=0):
    rng = np.random.default_rng(seed)
    recs = [rng.bytes(int(rng.integers(1, 3000))) for _ in range(n)]
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in recs:
            w.write(r)
    return recs


def test_framing_matches_tensorflow(tmp_path):
    recs = write_records(tmp_path / "a.tfrecord", 20)
    data = (tmp_path / "a.tfrecord").read_bytes()
    assert b"".join(records.frame(r) for r in recs) == data
    assert records.parse(data, "a", expected=20) == recs


def test_block_index_covers_the_file_in_whole_records(tmp_path):
    recs = write_records(tmp_path / "a.tfrecord", 50)
    blocks = records.block_index(str(tmp_path / "a.tfrecord"), block_bytes=10_000)
    assert len(blocks) > 3 and blocks[0][0] == 0
    assert sum(n for _, n in blocks) == 50
    size = (tmp_path / "a.tfrecord").stat().st_size
    table = records.BlockTable([str(tmp_path / "a.tfrecord")], [blocks], [size])
    got = [r for b in range(len(blocks)) for r in table.read(b)]
    assert got == recs


@pytest.mark.parametrize("where, message", [(5, "corrupted record length"),
                                            (400, "corrupted record data")])
def test_a_flipped_byte_names_file_and_offset(tmp_path, where, message):
    write_records(tmp_path / "a.tfrecord", 5)
    data = bytearray((tmp_path / "a.tfrecord").read_bytes())
    data[where] ^= 0xFF
    with pytest.raises(records.RecordError, match=f"a.tfrecord: {message} at byte 0"):
        records.parse(bytes(data), str(tmp_path / "a.tfrecord"))


def test_truncation_and_wrong_counts_are_refused(tmp_path):
    write_records(tmp_path / "a.tfrecord", 5)
    data = (tmp_path / "a.tfrecord").read_bytes()
    with pytest.raises(records.RecordError, match="truncated record"):
        records.parse(data[:-3], "a")
    with pytest.raises(records.RecordError, match="the manifest says 6"):
        records.parse(data, "a", expected=6)


def _dataset(files, sizes, blocks, order):
    table = records.BlockTable(files, blocks, sizes)
    return table.dataset(tf.data.Dataset.from_tensor_slices(tf.constant(order, tf.int64)),
                         cycle_length=2)


def test_dataset_from_gs_equals_local_and_resumes(tmp_path, gs_dir):
    local = [str(tmp_path / f"s{i}.tfrecord") for i in range(3)]
    for i, f in enumerate(local):
        write_records(f, 30, seed=i)
    remote = [storage.join(gs_dir, f"s{i}.tfrecord") for i in range(3)]
    for a, b in zip(local, remote, strict=True):
        storage.copy_file(a, b)
    sizes = [storage.size(f) for f in local]
    blocks = [records.block_index(f, block_bytes=8000) for f in remote]
    assert blocks == [records.block_index(f, block_bytes=8000) for f in local]
    want = list(_dataset(local, sizes, blocks, [2, 0, 1]).as_numpy_iterator())
    assert sorted(want) == sorted(r for f in local for r in records.parse(
        open(f, "rb").read(), f))
    ds = _dataset(remote, sizes, blocks, [2, 0, 1])
    assert list(ds.as_numpy_iterator()) == want
    # An iterator checkpoint mid-way restores to exactly the rest of the sequence.
    it = iter(ds)
    head = [next(it).numpy() for _ in range(17)]
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.write(str(tmp_path / "pos"))
    fresh = iter(_dataset(remote, sizes, blocks, [2, 0, 1]))
    tf.train.Checkpoint(iterator=fresh).read(path).assert_consumed()
    assert head + [x.numpy() for x in fresh] == want


def test_corrupt_shard_in_a_dataset_names_the_file(tmp_path):
    f = str(tmp_path / "bad.tfrecord")
    write_records(f, 10)
    data = bytearray(open(f, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(f, "wb").write(bytes(data))
    size = len(data)
    ds = _dataset([f], [size], [[[0, 10]]], [0])
    with pytest.raises(tf.errors.OpError, match="bad.tfrecord: corrupted record"):
        list(ds.as_numpy_iterator())
