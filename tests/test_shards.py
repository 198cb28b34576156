"""Shard format: round trips, manifests, and errors naming the file for bad shards."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import make_shard_dir, random_examples

from anygpt_jax.data import shards as shards_lib
from anygpt_jax.data.shards import ShardError, ShardExample
from anygpt_jax.vocab import MergedVocabulary, ModalitySpan, anygpt_layout


@pytest.mark.parametrize("kind", shards_lib.kinds())
def test_serialize_round_trip(kind):
    for ex in random_examples(kind, 5, seed=3):
        back = shards_lib.deserialize(shards_lib.serialize(ex))
        assert back == ex
        for a, b in zip(ex.spans, back.spans, strict=True):
            assert a.codes.shape == b.codes.shape  # music stays [4, T], others [T]


def test_write_read_and_manifest(tmp_path, merged_vocab):
    exs = random_examples("music_text", 9)
    d = make_shard_dir(str(tmp_path / "m"), "music_text", exs, merged_vocab, num_shards=3)
    files = shards_lib.check_manifest(d, merged_vocab, verify="sha256")
    assert [os.path.basename(f) for f in files] == [shards_lib.shard_name(i, 3) for i in range(3)]
    back = [e for f in files for e in shards_lib.read_shard(f)]
    assert sorted(back, key=lambda e: e.id) == sorted(exs, key=lambda e: e.id)
    m = shards_lib.read_manifest(d)
    assert m["examples"] == 9 and m["kind"] == "music_text"
    assert m["tokens"]["music"] == sum(e.spans[0].codes.size for e in exs)
    assert m["tokens"]["text"] > 0
    assert m["tokenizers"]["music"]["name"] == merged_vocab.modality("music").tokenizer
    assert not [f for f in os.listdir(d) if ".tmp" in f]


def test_write_is_atomic(tmp_path, merged_vocab):
    def broken():
        yield from random_examples("image_text", 2)
        raise RuntimeError("reader died")

    path = str(tmp_path / shards_lib.shard_name(0, 1))
    with pytest.raises(RuntimeError):
        shards_lib.write_shard(path, broken(), merged_vocab)
    assert os.listdir(tmp_path) == []


def test_other_vocabulary_is_refused(tmp_path, merged_vocab, anygpt_tokenizer_dir):
    d = make_shard_dir(
        str(tmp_path / "i"), "image_text", random_examples("image_text", 4), merged_vocab
    )
    spm = os.path.join(anygpt_tokenizer_dir, "tokenizer.model")
    other = MergedVocabulary.from_layout(spm, anygpt_layout(include_sft=True))
    with pytest.raises(ShardError, match=r"manifest\.json.*vocabulary"):
        shards_lib.check_manifest(d, other)


def test_other_tokenizer_is_refused(tmp_path, merged_vocab):
    d = make_shard_dir(
        str(tmp_path / "s"), "speech_text", random_examples("speech_text", 4), merged_vocab
    )
    with pytest.raises(ShardError, match=r"manifest\.json: speech codes .*'hubert'"):
        shards_lib.check_manifest(d, merged_vocab, tokenizers={"speech": "hubert"})
    # Pinning the exact identity works too.
    shards_lib.check_manifest(d, merged_vocab, tokenizers={"speech": "test-codes"})
    with pytest.raises(ShardError, match="holds 'speech_text' examples"):
        shards_lib.check_manifest(d, merged_vocab, kind="music_text")


def test_truncated_and_corrupted_shards_name_the_file(tmp_path, merged_vocab):
    d = make_shard_dir(
        str(tmp_path / "i"), "image_text", random_examples("image_text", 8), merged_vocab
    )
    f = os.path.join(d, shards_lib.shard_name(1, 2))
    data = open(f, "rb").read()
    with open(f, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(ShardError, match=f"{f}: .* bytes.*truncated"):
        shards_lib.check_manifest(d, merged_vocab)
    with pytest.raises(ShardError, match=f"{f}: corrupted or truncated"):
        shards_lib.read_shard(f)
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    with open(f, "wb") as fh:
        fh.write(bytes(corrupt))
    shards_lib.check_manifest(d, merged_vocab, verify="size")  # same size: only sha256 sees it
    with pytest.raises(ShardError, match=f"{f}: sha256 differs"):
        shards_lib.check_manifest(d, merged_vocab, verify="sha256")
    with pytest.raises(ShardError, match=f"{f}: corrupted"):
        shards_lib.read_shard(f)


def test_unfinished_directory_and_bad_manifest(tmp_path, merged_vocab):
    d = make_shard_dir(
        str(tmp_path / "i"), "image_text", random_examples("image_text", 2), merged_vocab
    )
    os.remove(os.path.join(d, shards_lib.shard_name(0, 2)))
    with pytest.raises(ShardError, match="listed in .* but missing"):
        shards_lib.check_manifest(d, merged_vocab)
    e = str(tmp_path / "empty")
    os.makedirs(e)
    with pytest.raises(ShardError, match=f"{e}.*manifest.json: missing"):
        shards_lib.check_manifest(e, merged_vocab)
    shutil.copy(os.path.join(d, "manifest.json"), e)
    with open(os.path.join(e, "manifest.json"), "w") as fh:
        fh.write('{"format": "other/9"}')
    with pytest.raises(ShardError, match="format 'other/9'"):
        shards_lib.read_manifest(e)


def test_example_validation():
    span = ModalitySpan("image", np.arange(4))
    with pytest.raises(ValueError, match="kind 'video'"):
        ShardExample("x", "video", "t", [span])
    with pytest.raises(ValueError, match="needs one speech span"):
        ShardExample("x", "speech_text", "t", [span])
    with pytest.raises(ValueError, match="bad span reference"):
        ShardExample(
            "x", "dialogue", spans=[span], turns=[{"role": "human", "content": [{"span": 3}]}]
        )
    with pytest.raises(ValueError, match="role 'bot'"):
        ShardExample("x", "dialogue", turns=[{"role": "bot", "content": ["hi"]}])
    with pytest.raises(ShardError, match="rec: not an anygpt shard example"):
        shards_lib.deserialize(b"\x00garbage", "rec")
