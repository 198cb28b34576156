"""seqio DataSource over shard directories: manifest checks, per-host file sharding.

Shards are read through the storage layer in blocks of whole records (data/records.py), so a
shard directory on gs:// feeds tf.data with parallel ranged reads, and a corrupted byte names
its file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from anygpt_jax.data import records as records_lib
from anygpt_jax.data import shards as shards_lib
from anygpt_jax.vocab import MergedVocabulary

SPLIT = "train"


class ShardDataSource(seqio.DataSource):
    """Raw records `{"record": bytes}` of one or more shard directories of one kind.

    Every directory is checked against the vocabulary and tokenizers when the source is first
    read (shards_lib.check_manifest); a mismatch raises ShardError naming the manifest.
    """

    def __init__(
        self,
        shard_dirs: Sequence[str],
        kind: str,
        vocabulary: MergedVocabulary,
        tokenizers: Mapping[str, str] | None = None,
        verify: str = "size",
        on_corrupt: str = "stop",
    ):
        if isinstance(shard_dirs, str):
            shard_dirs = [shard_dirs]
        if not shard_dirs:
            raise ValueError(f"no shard directories given for {kind!r} examples")
        self._dirs = tuple(shard_dirs)
        self._kind = kind
        self._vocab = vocabulary
        self._tokenizers = dict(tokenizers or {})
        self._verify = verify
        if on_corrupt not in records_lib.ON_CORRUPT:
            raise ValueError(
                f"on_corrupt={on_corrupt!r}; expected one of {records_lib.ON_CORRUPT}"
            )
        self._on_corrupt = on_corrupt
        self._files: list[str] | None = None
        self._blocks: list | None = None
        self._sizes: list[int] = []
        self._count = 0
        super().__init__(splits=(SPLIT,))

    def _check(self) -> list[str]:
        if self._files is None:
            files, blocks, sizes, count = [], [], [], 0
            for d in self._dirs:
                files += shards_lib.check_manifest(
                    d, self._vocab, self._tokenizers, self._kind, self._verify
                )
                manifest = shards_lib.read_manifest(d)
                count += manifest["examples"]
                for entry in manifest["shards"]:
                    sizes.append(int(entry["bytes"]))
                    blocks.append(entry.get("blocks"))
            # Shards built before block indices were recorded: index them from their headers.
            blocks = [b if b is not None else records_lib.block_index(f)
                      for f, b in zip(files, blocks, strict=True)]
            if not files:
                raise shards_lib.ShardError(f"{', '.join(self._dirs)}: no shard files")
            self._files, self._blocks, self._sizes, self._count = files, blocks, sizes, count
        return self._files

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    @property
    def output_features(self) -> dict:
        return {"record": tf.TensorSpec([], tf.string)}

    def list_shards(self, split: str = SPLIT) -> list[str]:
        self._check_split(split)
        return list(self._check())

    def num_input_examples(self, split: str = SPLIT) -> int:
        self._check_split(split)
        self._check()
        return self._count

    def _check_split(self, split: str) -> None:
        if split != SPLIT:
            raise ValueError(f"shards have one split {SPLIT!r}, asked for {split!r}")

    def get_dataset(
        self,
        split: str = SPLIT,
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        """Records of this host's part: whole files when there are enough, else every n-th."""
        files = self.list_shards(split)
        table = records_lib.BlockTable(files, self._blocks, self._sizes, self._on_corrupt)
        index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        by_file = len(files) >= count
        mine = list(range(len(files)))[index::count] if by_file else list(range(len(files)))
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(mine, tf.int64))
        if shuffle:
            ds = ds.shuffle(len(mine), seed=seed, reshuffle_each_iteration=True)
        ds = table.dataset(ds)
        if not by_file:
            ds = ds.shard(count, index)
        return ds.map(lambda r: {"record": r})
