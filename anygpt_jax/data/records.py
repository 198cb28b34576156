"""TFRecord files read in blocks through the storage layer, so shards on gs:// feed tf.data.

TensorFlow's own file systems cannot be pointed at a GCS emulator (or at anything but their
fixed endpoints), so shard bytes come through anygpt_jax.storage instead: each shard is cut
into blocks of whole records (the manifest records `[offset, records]` per block), a block is
one ranged read, and the TFRecord framing is parsed here with both CRCs checked. tf.data sees
only block ids, so its iterator checkpoints stay small and exact, reads run in parallel
(`num_parallel_calls`), and a corrupted byte raises an error naming the file and offset (or,
with `on_corrupt='skip'`, drops that block's records, counted and logged).

TFRecord framing: uint64 length, uint32 masked crc32c(length), data, uint32 masked crc32c(data).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Sequence

import google_crc32c
import numpy as np
import tensorflow as tf

from anygpt_jax import storage

HEADER = 12  # length + its crc
FOOTER = 4  # data crc
ON_CORRUPT = ("stop", "skip")
BLOCK_BYTES = 4 << 20  # one ranged read; small enough to keep iterator checkpoints small
_MASK_DELTA = 0xA282EAD8


log = logging.getLogger(__name__)


class RecordError(ValueError):
    """Bytes that are not the records the manifest promised; names the file and offset."""


class SkipCounter:
    """Blocks and records a process skipped as corrupt (on_corrupt='skip'), thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.blocks = 0
        self.records = 0

    def add(self, records: int) -> None:
        with self._lock:
            self.blocks += 1
            self.records += records


SKIPPED = SkipCounter()


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record in TFRecord framing (tests and tools; writers use tf.io.TFRecordWriter)."""
    length = struct.pack("<Q", len(record))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + record
        + struct.pack("<I", _masked_crc(record))
    )


def parse(data: bytes, where: str, offset: int = 0, expected: int | None = None) -> list[bytes]:
    """The records framed in `data` (which starts at byte `offset` of file `where`), CRCs checked.

    Raises RecordError naming the file and offset of the first bad record, or when the count
    differs from `expected`.
    """
    out, at, n = [], 0, len(data)
    view = memoryview(data)
    while at < n:
        if at + HEADER > n:
            raise RecordError(f"{where}: truncated record header at byte {offset + at}")
        length_bytes = bytes(view[at : at + 8])
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", view[at + 8 : at + HEADER])
        if _masked_crc(length_bytes) != length_crc:
            raise RecordError(f"{where}: corrupted record length at byte {offset + at}")
        end = at + HEADER + length + FOOTER
        if end > n:
            raise RecordError(f"{where}: truncated record at byte {offset + at}")
        record = bytes(view[at + HEADER : at + HEADER + length])
        (data_crc,) = struct.unpack("<I", view[end - FOOTER : end])
        if _masked_crc(record) != data_crc:
            raise RecordError(f"{where}: corrupted record data at byte {offset + at}")
        out.append(record)
        at = end
    if expected is not None and len(out) != expected:
        raise RecordError(
            f"{where}: {len(out)} records at bytes {offset}-{offset + n}, the manifest says "
            f"{expected}"
        )
    return out


def block_index(path: storage.PathLike, block_bytes: int = BLOCK_BYTES) -> list[list[int]]:
    """`[[offset, records], ...]`: file `path` cut into blocks of whole records of about
    `block_bytes` (a block holds at least one record). Reads only the record headers."""
    total = storage.size(path)
    blocks: list[list[int]] = []
    start, count, at = 0, 0, 0
    with storage.open_file(path, "rb") as f:
        while at < total:
            f.seek(at)
            header = f.read(HEADER)
            if len(header) < HEADER:
                raise RecordError(f"{path}: truncated record header at byte {at}")
            (length,) = struct.unpack("<Q", header[:8])
            if _masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
                raise RecordError(f"{path}: corrupted record length at byte {at}")
            at += HEADER + length + FOOTER
            if at > total:
                raise RecordError(f"{path}: truncated record at byte {at - HEADER - length - 4}")
            count += 1
            if at - start >= block_bytes:
                blocks.append([start, count])
                start, count = at, 0
    if count:
        blocks.append([start, count])
    return blocks


class BlockTable:
    """Every block of a list of files: (file, start, end, records), with per-file row splits."""

    def __init__(self, files: Sequence[str], blocks: Sequence[Sequence[Sequence[int]]],
                 sizes: Sequence[int], on_corrupt: str = "stop"):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt={on_corrupt!r}; expected one of {ON_CORRUPT}")
        self.on_corrupt = on_corrupt
        self.files = list(files)
        self.rows: list[tuple[int, int, int, int]] = []  # (file index, start, end, records)
        self.splits = [0]
        for i, (file_blocks, size) in enumerate(zip(blocks, sizes, strict=True)):
            for b, (start, count) in enumerate(file_blocks):
                end = file_blocks[b + 1][0] if b + 1 < len(file_blocks) else size
                self.rows.append((i, int(start), int(end), int(count)))
            self.splits.append(len(self.rows))

    def read(self, block: int) -> list[bytes]:
        """The records of one block: one ranged read, framing and CRCs checked. A corrupt block
        raises RecordError, or with on_corrupt='skip' yields no records, counted in SKIPPED
        and logged with its file and offsets."""
        try:
            return self._read(block)
        except RecordError as e:
            if self.on_corrupt == "stop":
                raise
            count = self.rows[block][3]
            SKIPPED.add(count)
            log.warning("skipped %d records: %s", count, e)
            return []

    def _read(self, block: int) -> list[bytes]:
        i, start, end, count = self.rows[block]
        path = self.files[i]
        try:
            data = storage.read_range(path, start, end)
        except OSError as e:
            raise RecordError(f"{path}: cannot read bytes {start}-{end} ({e})") from e
        if len(data) != end - start:
            raise RecordError(
                f"{path}: {len(data)} bytes at {start}-{end}, expected {end - start} (truncated)"
            )
        return parse(data, path, start, count)

    def dataset(self, file_order: tf.data.Dataset, cycle_length: int = 8) -> tf.data.Dataset:
        """Records of the files `file_order` yields (file indices), `cycle_length` files
        interleaved block by block, blocks read in parallel, order deterministic."""
        splits = tf.constant(self.splits, tf.int64)

        def blocks_of(i):
            return tf.data.Dataset.range(splits[i], splits[i + 1])

        def read(block):
            records = self.read(int(block.numpy()))
            return np.asarray(records, dtype=object)

        def read_block(block):
            records = tf.py_function(read, [block], tf.string)
            records.set_shape([None])
            return records

        ds = file_order.interleave(
            blocks_of,
            cycle_length=max(1, min(len(self.files), cycle_length)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.map(read_block, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # The reader is a pure function of the block id (files are immutable once their
        # manifest exists), so iterator checkpoints may leave it out.
        options = tf.data.Options()
        options.experimental_external_state_policy = (
            tf.data.experimental.ExternalStatePolicy.IGNORE
        )
        return ds.unbatch().with_options(options)
