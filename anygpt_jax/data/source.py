"""seqio DataSource over shard directories: manifest checks, per-host file sharding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

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
        self._files: list[str] | None = None
        self._count = 0
        super().__init__(splits=(SPLIT,))

    def _check(self) -> list[str]:
        if self._files is None:
            files, count = [], 0
            for d in self._dirs:
                files += shards_lib.check_manifest(
                    d, self._vocab, self._tokenizers, self._kind, self._verify
                )
                count += shards_lib.read_manifest(d)["examples"]
            if not files:
                raise shards_lib.ShardError(f"{', '.join(self._dirs)}: no shard files")
            self._files, self._count = files, count
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
        index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        by_file = len(files) >= count
        if by_file:
            files = files[index::count]
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 8),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if not by_file:
            ds = ds.shard(count, index)
        return ds.map(lambda r: {"record": r})
