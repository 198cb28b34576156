"""The shard builder: readers, precomputed and file media, errors counted, resume, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from synthetic_task import noisy_lines, user_env

from anygpt_jax.data import shards as shards_lib
from data import build, readers


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture()
def corpus(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):
        Image.fromarray((rng.integers(0, 17, (8, 8)) * 15).astype(np.uint8)).save(
            tmp_path / f"d{i}.png"
        )
        rows.append({"id": f"img{i}", "image": f"d{i}.png", "caption": f"digit number {i}"})
    rows.append({"id": "broken", "image": "missing.png", "caption": "no file"})
    images = _write_jsonl(tmp_path / "images.jsonl", rows)
    music = _write_jsonl(
        tmp_path / "music.jsonl",
        [
            {
                "id": f"m{i}",
                "music_codes": rng.integers(0, 2048, (4, 5)).tolist(),
                "caption": "a tune",
            }
            for i in range(3)
        ],
    )
    dialogues = _write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "id": "c0",
                "turns": [
                    {"role": "user", "content": ["what is this? ", {"image": "d0.png"}]},
                    {
                        "role": "assistant",
                        "content": [
                            "a digit, and a tune: ",
                            {"music": {"codes": rng.integers(0, 2048, (4, 3)).tolist()}},
                        ],
                    },
                ],
            }
        ],
    )
    return tmp_path, images, music, dialogues


def test_build_pairs_with_a_bad_file(corpus, anygpt_tokenizer_dir, merged_vocab):
    tmp, images, _, _ = corpus
    out = str(tmp / "shards")
    s = build.build(
        "image_text",
        [images],
        out,
        anygpt_tokenizer_dir,
        {"image": "demo"},
        examples_per_shard=3,
        progress=False,
    )
    assert (s["inputs"], s["examples"], s["skipped"], s["shards"]) == (8, 7, 1, 3)
    assert "missing.png" in s["skipped_examples"][0][1]
    files = shards_lib.check_manifest(out, merged_vocab, {"image": "digits_pixel_pairs"})
    got = {e.id: e for f in files for e in shards_lib.read_shard(f)}
    assert sorted(got) == [f"img{i}" for i in range(7)]
    assert got["img3"].text == "digit number 3" and got["img3"].spans[0].codes.shape == (32,)
    with pytest.raises(shards_lib.ShardError, match="digits_pixel_pairs"):
        shards_lib.check_manifest(out, merged_vocab)  # not the SEED tokenizer the vocab names
    # A finished directory is refused, not overwritten.
    args = ("image_text", [images], out, anygpt_tokenizer_dir, {"image": "demo"}, 3, 1, 16, False)
    with pytest.raises(FileExistsError, match="finished shard directory.*refusing"):
        build.build(*args)
    # Resume after a crash (no manifest yet, one shard lost): it is rebuilt, the others kept.
    os.remove(os.path.join(out, shards_lib.MANIFEST))
    os.remove(os.path.join(out, shards_lib.shard_name(1, 3)))
    again = build.build(*args)
    assert again["resumed_shards"] == 2 and again["examples"] == 7
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_encoders_made_once_per_process_and_only_when_used(
    corpus, anygpt_tokenizer_dir, monkeypatch
):
    tmp, images, _, _ = corpus
    made = []
    real = build.media_lib.make_encoder
    monkeypatch.setattr(build, "_encoders", {})
    monkeypatch.setattr(build.media_lib, "make_encoder", lambda m, s: made.append(m) or real(m, s))
    toks = {"image": "demo", "speech": "demo", "music": "demo"}
    for k in range(2):
        s = build.build(
            "image_text", [images], str(tmp / f"once{k}"), anygpt_tokenizer_dir, toks,
            progress=False,
        )  # fmt: skip
        assert s["examples"] == 7
    # The audio codecs are neither loaded nor compiled for an image-only build.
    assert made == ["image"]
    assert build.get_encoder("image", "demo") is build.get_encoder("image", "demo")
    assert made == ["image"]


def test_precomputed_music_and_dialogues(corpus, anygpt_tokenizer_dir, merged_vocab):
    tmp, _, music, dialogues = corpus
    out = str(tmp / "m")
    s = build.build(
        "music_text",
        [music],
        out,
        anygpt_tokenizer_dir,
        {"music": "precomputed:encodec_32khz"},
        progress=False,
    )
    assert s["examples"] == 3 and s["tokens"]["music"] == 60
    [f] = shards_lib.check_manifest(out, merged_vocab)
    want = [r["music_codes"] for r in map(json.loads, open(music))]
    assert [e.spans[0].codes.tolist() for e in shards_lib.read_shard(f)] == want
    out = str(tmp / "d")
    s = build.build(
        "dialogue",
        [dialogues],
        out,
        anygpt_tokenizer_dir,
        {"image": "demo", "music": "precomputed:encodec_32khz"},
        progress=False,
    )
    [ex] = shards_lib.read_shard(
        shards_lib.check_manifest(out, merged_vocab, {"image": "digits_pixel_pairs"})[0]
    )
    assert [t["role"] for t in ex.turns] == ["human", "assistant"]
    assert ex.turns[1]["content"][1] == {"span": 1} and ex.spans[1].codes.shape == (4, 3)


def test_reader_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png"}\n')
    with pytest.raises(readers.InputError, match=r"bad.jsonl:1: missing text key"):
        readers.read_inputs("image_text", [str(bad)])
    bad.write_text('{"turns": [{"role": "robot", "content": "hi"}]}\n')
    with pytest.raises(readers.InputError, match=r"bad.jsonl:1: turn 0 has role 'robot'"):
        readers.read_inputs("dialogue", [str(bad)])
    with pytest.raises(readers.InputError, match="no .*trans.txt"):
        readers.read_inputs("speech_text", [str(tmp_path)])


def test_librispeech_directory(tmp_path):
    d = tmp_path / "LibriSpeech" / "19" / "198"
    d.mkdir(parents=True)
    (d / "19-198.trans.txt").write_text("19-198-0000 HELLO WORLD\n19-198-0001 GOOD DAY\n")
    items = readers.read_inputs("speech_text", [str(tmp_path / "LibriSpeech")])
    assert [(i.id, i.text) for i in items] == [
        ("19-198-0000", "HELLO WORLD"),
        ("19-198-0001", "GOOD DAY"),
    ]
    assert items[0].media[0].path.endswith("19/198/19-198-0000.flac")


def test_cli(corpus, anygpt_tokenizer_dir):
    tmp, _, music, _ = corpus
    env = user_env(dict(os.environ, PYTHONPATH=os.getcwd()))  # as a user's shell has it
    cmd = [
        sys.executable,
        "-m",
        "data.build",
        "--kind",
        "music_text",
        "--input",
        music,
        "--vocab",
        anygpt_tokenizer_dir,
        "--tokenizer",
        "music=precomputed:encodec_32khz",
        "--no-progress",
        "--out",
    ]
    r = subprocess.run(cmd + [str(tmp / "cli")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert noisy_lines(r.stdout + r.stderr) == [], r.stderr[-3000:]
    assert json.loads(r.stdout)["examples"] == 3
    # Bad input: exit status 1 and a message (in-process; one real command per CLI is enough).
    assert build.main(cmd[3:-4] + ["--out", str(tmp / "cli2")]) == 1
    assert not os.path.exists(tmp / "cli2" / "manifest.json")


def test_resume_rebuilds_shards_of_other_tokenizers(corpus, anygpt_tokenizer_dir):
    """A crashed build resumed with another tokenizer keeps none of the old shards: one
    manifest never names codes of two tokenizers."""
    tmp, _, music, _ = corpus
    out = str(tmp / "m")
    args = ("music_text", [music], out, anygpt_tokenizer_dir)
    build.build(*args, {"music": "precomputed:old_codec"}, examples_per_shard=1, progress=False)
    os.remove(os.path.join(out, shards_lib.MANIFEST))  # crashed before its manifest
    again = build.build(*args, {"music": "precomputed:encodec_32khz"}, examples_per_shard=1,
                        progress=False)
    assert again["resumed_shards"] == 0
    manifest = shards_lib.read_manifest(out)
    assert manifest["tokenizers"]["music"]["identity"] == "precomputed:encodec_32khz"
    sides = [json.load(open(os.path.join(out, f))) for f in sorted(os.listdir(out))
             if f.endswith(".tfrecord.json")]
    assert {s["tokenizers"]["music"]["identity"] for s in sides} == {"precomputed:encodec_32khz"}


def test_a_build_where_every_item_fails_writes_no_manifest(tmp_path, anygpt_tokenizer_dir):
    images = _write_jsonl(tmp_path / "bad.jsonl", [
        {"id": f"x{i}", "image": f"missing{i}.png", "caption": "gone"} for i in range(3)])
    out = str(tmp_path / "out")
    with pytest.raises(readers.InputError, match=r"every one of the 3 image_text items failed"):
        build.build("image_text", [images], out, anygpt_tokenizer_dir, {"image": "demo"},
                    progress=False)
    assert not os.path.exists(os.path.join(out, shards_lib.MANIFEST))
    assert not [f for f in os.listdir(out) if f.endswith(".tfrecord")]
