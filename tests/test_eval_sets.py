"""Eval-set readers (COCO Karpathy, LibriSpeech, VCTK, MusicCaps) and their shard builds."""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np
import pytest

from anygpt_jax.data import shards as shards_lib
from data import eval_sets, readers


def _touch(path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"")
    return str(path)


@pytest.fixture()
def coco(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i, split in enumerate(["test", "train", "test"]):
        name = f"COCO_val2014_{i:012d}.jpg"
        path = tmp_path / "coco" / "val2014" / name
        os.makedirs(path.parent, exist_ok=True)
        # 8x8 17-level images, so the demo pixel tokenizer encodes them losslessly.
        Image.fromarray((rng.integers(0, 17, (8, 8)) * 15).astype(np.uint8)).save(path, "PNG")
        images.append({"filepath": "val2014", "filename": name, "split": split, "cocoid": 100 + i,
                       "sentences": [{"raw": f"A picture number {i}. "},
                                     {"raw": f"Another caption {i}"}]})  # fmt: skip
    ann = tmp_path / "dataset_coco.json"
    ann.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return str(ann), str(tmp_path / "coco")


def test_coco_karpathy_reader(coco):
    ann, root = coco
    items = eval_sets.coco_karpathy(ann, root, "test")
    assert [it["id"] for it in items] == ["100", "102"]
    assert items[0]["meta"]["references"] == ["A picture number 0.", "Another caption 0"]
    assert items[0]["caption"] == "A picture number 0."
    assert items[1]["image"] == os.path.join(root, "val2014", "COCO_val2014_000000000002.jpg")
    assert [it["id"] for it in eval_sets.coco_karpathy(ann, root, "train")] == ["101"]


def test_coco_karpathy_errors(coco, tmp_path):
    ann, root = coco
    with pytest.raises(readers.InputError, match="no such file"):
        eval_sets.coco_karpathy(str(tmp_path / "nope.json"), root)
    with pytest.raises(readers.InputError, match="no such directory"):
        eval_sets.coco_karpathy(ann, str(tmp_path / "missing_root"))
    with pytest.raises(readers.InputError, match="no images in split 'val'"):
        eval_sets.coco_karpathy(ann, root, "val")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"split": "test", "sentences": []}]}))
    with pytest.raises(readers.InputError, match=r"images\[0\] lacks 'filename'"):
        eval_sets.coco_karpathy(str(bad), root)


def _args(**kw) -> argparse.Namespace:
    base = dict(media_root=None, split="test", mic="mic1", max_per_speaker=None,
                audio_pattern="{ytid}.wav", subset="all", max_examples=None, allow_missing=False,
                examples_per_shard=1000, workers=1, batch_size=16, no_progress=True)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_coco_build_keeps_references(coco, tmp_path, anygpt_tokenizer_dir):
    ann, root = coco
    out = str(tmp_path / "shards")
    args = _args(input=ann, media_root=root, out=out, vocab=anygpt_tokenizer_dir,
                 tokenizer=["image=demo"])  # fmt: skip
    summary = eval_sets.prepare("coco_karpathy", args)
    assert summary["examples"] == 2 and summary["skipped"] == 0
    [shard] = [f for f in os.listdir(out) if f.endswith(".tfrecord")]
    examples = shards_lib.read_shard(os.path.join(out, shard))
    assert examples[0].meta["references"] == ["A picture number 0.", "Another caption 0"]
    assert examples[0].meta["source"].endswith("COCO_val2014_000000000000.jpg")
    assert examples[0].spans[0].codes.shape == (32,)
    assert os.path.isfile(os.path.join(out, eval_sets.ITEMS_FILE))


def test_librispeech_reader(tmp_path):
    d = tmp_path / "test-clean" / "1089" / "134686"
    os.makedirs(d)
    (d / "1089-134686.trans.txt").write_text(
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW\n1089-134686-0001 STUFF IT INTO YOU\n"
    )
    items = eval_sets.librispeech(str(tmp_path / "test-clean"))
    assert [it["id"] for it in items] == ["1089-134686-0000", "1089-134686-0001"]
    want = {"references": ["HE HOPED THERE WOULD BE STEW"],
            "source": str(d / "1089-134686-0000.flac"), "speaker": "1089"}  # fmt: skip
    assert items[0]["meta"] == want
    with pytest.raises(readers.InputError, match="no such directory"):
        eval_sets.librispeech(str(tmp_path / "test-other"))


def _vctk(root, layout="0.92"):
    texts = {"p225": ["Please call Stella.", "Ask her to bring these things.", "Six spoons."],
             "p226": ["Only one line here."], "p227": ["One.", "Two."]}  # fmt: skip
    for spk, lines in texts.items():
        for n, line in enumerate(lines, 1):
            utt = f"{spk}_{n:03d}"
            (root / "txt" / spk).mkdir(parents=True, exist_ok=True)
            (root / "txt" / spk / f"{utt}.txt").write_text(line + "\n")
            if layout == "0.92":
                _touch(root / "wav48_silence_trimmed" / spk / f"{utt}_mic1.flac")
            else:
                _touch(root / "wav48" / spk / f"{utt}.wav")
    return str(root)


@pytest.mark.parametrize("layout", ["0.92", "old"])
def test_vctk_reader_prompts_with_another_utterance(tmp_path, layout):
    root = _vctk(tmp_path, layout)
    items = eval_sets.vctk(root)
    # p226 has a single utterance: no other one to prompt with, so it is left out.
    ids = ["p225_001", "p225_002", "p225_003", "p227_001", "p227_002"]
    assert [it["id"] for it in items] == ids
    first, last = items[0]["meta"], items[2]["meta"]
    assert first["prompt_text"] == "Ask her to bring these things."
    want = "p225_002_mic1.flac" if layout == "0.92" else "p225_002.wav"
    assert first["prompt_audio"].endswith(want)
    assert last["prompt_text"] == "Please call Stella."  # cyclic
    assert first["speaker"] == "p225" and first["references"] == ["Please call Stella."]
    assert [it["id"] for it in eval_sets.vctk(root, max_per_speaker=1)] == ["p225_001", "p227_001"]


def test_vctk_missing_audio(tmp_path):
    root = _vctk(tmp_path)
    os.remove(tmp_path / "wav48_silence_trimmed" / "p227" / "p227_002_mic1.flac")
    match = r"1 missing VCTK audio.*p227/p227_002.*--allow_missing"
    with pytest.raises(readers.InputError, match=match):
        eval_sets.vctk(root)
    ids = [it["id"] for it in eval_sets.vctk(root, allow_missing=True)]
    assert ids == ["p225_001", "p225_002", "p225_003"]  # p227 now has one utterance
    with pytest.raises(readers.InputError, match="VCTK's txt/ folder"):
        eval_sets.vctk(str(tmp_path / "elsewhere"))


def _musiccaps(tmp_path):
    path = tmp_path / "musiccaps-public.csv"
    rows = [("abc", "30", "40", "A calm piano piece.", "True"),
            ("def", "0", "10", "Loud drums.", "False"),
            ("ghi", "10", "20", "A sad violin.", "True")]  # fmt: skip
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list",
                    "caption", "author_id", "is_balanced_subset", "is_audioset_eval"])  # fmt: skip
        for ytid, s, e, cap, ev in rows:
            w.writerow([ytid, s, e, "/m/0", "['piano']", cap, "1", "False", ev])
    for ytid in ("abc", "def"):
        _touch(tmp_path / "clips" / f"{ytid}-{'30' if ytid == 'abc' else '0'}.wav")
    return str(path), str(tmp_path / "clips")


def test_musiccaps_reader(tmp_path):
    csv_path, clips = _musiccaps(tmp_path)
    pattern = "{ytid}-{start_s}.wav"
    with pytest.raises(readers.InputError, match=r"1 missing clips.*ghi-10.wav"):
        eval_sets.musiccaps(csv_path, clips, pattern)
    items = eval_sets.musiccaps(csv_path, clips, pattern, allow_missing=True)
    assert [(it["id"], it["caption"]) for it in items] == [("abc", "A calm piano piece."),
                                                           ("def", "Loud drums.")]  # fmt: skip
    assert items[0]["meta"]["references"] == ["A calm piano piece."]
    evals = eval_sets.musiccaps(csv_path, clips, pattern, "audioset_eval", allow_missing=True)
    assert [it["id"] for it in evals] == ["abc"]
    with pytest.raises(readers.InputError, match="no such directory"):
        eval_sets.musiccaps(csv_path, str(tmp_path / "no_clips"))


def test_reader_meta_passthrough_and_errors(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"id": "a", "image_codes": [1] * 32, "caption": "x",
                                "meta": {"references": ["x", "y"]}}) + "\n"
                    + json.dumps({"id": "b", "image_codes": [1] * 32, "caption": "x",
                                  "meta": ["not", "a", "dict"]}) + "\n")  # fmt: skip
    items = readers.read_image_text(str(path))
    first = next(items)
    assert first.meta["references"] == ["x", "y"] and first.meta["line"] == 1
    with pytest.raises(readers.InputError, match=r"pairs.jsonl:2: 'meta' must be a JSON object"):
        next(items)


def test_cli_reports_missing_input(tmp_path, capsys, anygpt_tokenizer_dir):
    code = eval_sets.main(["librispeech", "--input", str(tmp_path / "absent"), "--out",
                           str(tmp_path / "out"), "--vocab", anygpt_tokenizer_dir,
                           "--tokenizer", "speech=demo"])  # fmt: skip
    assert code == 1
    assert "absent: no such directory" in capsys.readouterr().err
    code = eval_sets.main(["coco_karpathy", "--input", "x.json", "--out", str(tmp_path / "o"),
                           "--vocab", anygpt_tokenizer_dir])  # fmt: skip
    assert code == 1
    assert "needs --media_root" in capsys.readouterr().err
