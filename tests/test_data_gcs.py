"""The data builders with gs:// inputs and outputs, against the GCS emulator (conftest `gcs`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from anygpt_jax import storage
from anygpt_jax.data import shards as shards_lib
from data import build, demo, eval_sets, media, readers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_TOKENIZER = {"image": "digits_pixel_pairs"}


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def corpus(tmp_path):
    """A small local image-caption corpus (one missing image) and precomputed music."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    root.mkdir()
    rows = []
    for i in range(7):
        Image.fromarray((rng.integers(0, 17, (8, 8)) * 15).astype(np.uint8)).save(
            root / f"d{i}.png"
        )
        rows.append({"id": f"img{i}", "image": f"d{i}.png", "caption": f"digit number {i}"})
    rows.append({"id": "broken", "image": "missing.png", "caption": "no file"})
    music = [
        {"id": f"m{i}", "music_codes": rng.integers(0, 2048, (4, 5)).tolist(), "caption": "a tune"}
        for i in range(3)
    ]
    return root, _jsonl(root / "images.jsonl", rows), _jsonl(root / "music.jsonl", music)


def _build(inputs, out, vocab_dir, kind="image_text", **kw):
    toks = {"image": "demo"} if kind == "image_text" else {"music": "precomputed:encodec_32khz"}
    return build.build(kind, inputs, out, vocab_dir, toks, examples_per_shard=3, progress=False,
                       **kw)  # fmt: skip


def _shard_files(d) -> dict[str, bytes]:
    return {
        n: storage.read_bytes(storage.join(d, n))
        for n in storage.listdir(d)
        if n.endswith(".tfrecord")
    }


def _cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)  # the emulator's variables are in os.environ
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=300,
    )  # fmt: skip


def test_build_to_gs_equals_local_build(corpus, gs_dir, anygpt_tokenizer_dir, merged_vocab):
    root, images, _ = corpus
    local = str(root.parent / "local")
    want = _build([images], local, anygpt_tokenizer_dir)
    out = storage.join(gs_dir, "shards")
    r = _cli("data.build", "--kind", "image_text", "--input", images, "--out", out,
             "--vocab", anygpt_tokenizer_dir, "--tokenizer", "image=demo",
             "--examples-per-shard", "3", "--workers", "1", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # Only the builder's own lines: no library's notices (gcsfs/fsspec caches, ...).
    own = ("INFO data.build:", "WARNING data.build:")
    assert [x for x in r.stderr.splitlines() if not x.startswith(own)] == [], r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert (got["examples"], got["skipped"], got["shards"]) == (7, 1, 3) == (
        want["examples"], want["skipped"], want["shards"])  # fmt: skip
    assert shards_lib.read_manifest(out) == shards_lib.read_manifest(local)
    assert _shard_files(out) == _shard_files(local) and len(_shard_files(out)) == 3
    files = shards_lib.check_manifest(out, merged_vocab, IMAGE_TOKENIZER, "image_text", "sha256")
    assert all(f.startswith("gs://") for f in files)
    back = {e.id: e for f in files for e in shards_lib.read_shard(f)}
    assert sorted(back) == [f"img{i}" for i in range(7)]
    # No temp files or sidecars of other runs are left behind; a finished output is refused.
    assert not [n for n in storage.listdir(out) if ".tmp" in n]
    with pytest.raises(FileExistsError, match="finished shard directory"):
        _build([images], out, anygpt_tokenizer_dir)
    # A truncated object is caught by size, as a local file is.
    f = files[1]
    storage.write_bytes(f, storage.read_bytes(f)[:-10])
    with pytest.raises(shards_lib.ShardError, match=f"{f}: .* bytes.*truncated"):
        shards_lib.check_manifest(out, merged_vocab, IMAGE_TOKENIZER)


def test_build_reads_inputs_from_gs(corpus, gs_dir, anygpt_tokenizer_dir, tmp_path):
    root, images, music = corpus
    storage.copy_tree(str(root), storage.join(gs_dir, "corpus"))
    remote = storage.join(gs_dir, "corpus", "images.jsonl")
    local_out, gs_out = str(tmp_path / "from_local"), str(tmp_path / "from_gs")
    _build([images], local_out, anygpt_tokenizer_dir)
    s = _build([remote], gs_out, anygpt_tokenizer_dir)
    assert (s["examples"], s["skipped"]) == (7, 1)
    assert storage.join(gs_dir, "corpus", "missing.png") in s["skipped_examples"][0][1]
    assert _shard_files(gs_out) == _shard_files(local_out)
    assert shards_lib.read_manifest(gs_out) == shards_lib.read_manifest(local_out)
    # Precomputed codes from a gs:// corpus, written to gs://.
    out = storage.join(gs_dir, "music")
    s = _build([storage.join(gs_dir, "corpus", "music.jsonl")], out, anygpt_tokenizer_dir,
               kind="music_text")  # fmt: skip
    assert s["examples"] == 3 and s["tokens"]["music"] == 60


def test_gs_readers_librispeech_and_media(gs_dir, tmp_path):
    import soundfile as sf

    ls = storage.join(gs_dir, "LibriSpeech")
    storage.write_text(storage.join(ls, "19", "198", "19-198.trans.txt"),
                       "19-198-0000 HELLO WORLD\n19-198-0001 GOOD DAY\n")  # fmt: skip
    storage.write_text(storage.join(ls, "2", "2-1.trans.txt"), "2-1-0000 FIRST DIR\n")
    items = readers.read_inputs("speech_text", [ls])
    assert [(i.id, i.meta["file"]) for i in items] == [
        ("19-198-0000", "19/198/19-198-0000.flac"),
        ("19-198-0001", "19/198/19-198-0001.flac"),
        ("2-1-0000", "2/2-1-0000.flac"),
    ]
    assert items[0].media[0].path == storage.join(ls, "19", "198", "19-198-0000.flac")
    # Audio media on gs:// reach the encoder as downloads; errors name the URL.
    wav = str(tmp_path / "a.wav")
    sf.write(wav, np.random.default_rng(0).uniform(-0.5, 0.5, 3200).astype(np.float32), 16000)
    storage.copy_file(wav, storage.join(gs_dir, "a.wav"))

    class Codec:
        sample_rate = 16000

        def read(self, path):
            from anygpt_jax.modalities.audio_io import load_audio

            return load_audio(path, self.sample_rate)

        def encode_arrays(self, waves, n_q=None):
            return [np.round(w[None, ::160] * 100).astype(np.int32) + 100 for w in waves]

    enc = media._media_encoder("speech", Codec(), media.TokenizerInfo("t", "t"))
    missing = storage.join(gs_dir, "missing.wav")
    got, err = enc.encode([storage.join(gs_dir, "a.wav"), missing])
    assert np.array_equal(got, enc.encode([wav])[0])
    assert isinstance(err, OSError) and missing in str(err)


def test_crashed_build_on_gs_is_finished_by_a_rerun(corpus, gs_dir, anygpt_tokenizer_dir):
    _, images, _ = corpus
    out = storage.join(gs_dir, "crashed")
    _build([images], out, anygpt_tokenizer_dir)
    manifest = shards_lib.read_manifest(out)
    files = _shard_files(out)
    # A crash before the manifest: shard 0 uploaded but its sidecar not, shard 1 never made.
    storage.remove(storage.join(out, shards_lib.MANIFEST))
    storage.remove(storage.join(out, shards_lib.shard_name(0, 3) + ".json"))
    storage.remove(storage.join(out, shards_lib.shard_name(1, 3)))
    with pytest.raises(shards_lib.ShardError, match="not a finished shard directory"):
        shards_lib.read_manifest(out)
    again = _build([images], out, anygpt_tokenizer_dir)
    assert again["resumed_shards"] == 1 and again["examples"] == 7
    assert shards_lib.read_manifest(out) == manifest and _shard_files(out) == files


def test_missing_bucket_stops_the_clis_before_any_work(corpus, gcs, anygpt_tokenizer_dir, capsys):
    root, _, music = corpus
    out = "gs://no-such-bucket-anygpt/shards"
    before = sorted(os.listdir(root))
    r = _cli("data.build", "--kind", "music_text", "--input", music, "--out", out,
             "--vocab", anygpt_tokenizer_dir, "--tokenizer", "music=precomputed:x",
             "--no-progress")  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stdout == ""
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "gs://no-such-bucket-anygpt" in line and "does not exist" in line, line
    assert sorted(os.listdir(root)) == before
    # data.demo and data.eval_sets say the same, in one line, before rendering or reading.
    assert demo.main(["--out", out, "--no-progress"]) == 1
    assert demo.main(["--out", out, "--raw-only"]) == 1
    args = ["librispeech", "--input", str(root), "--out", out, "--vocab", anygpt_tokenizer_dir]
    assert eval_sets.main(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(e.startswith("error: gs://no-such-bucket-anygpt") for e in err)
    with pytest.raises(storage.StorageError):
        storage.check_access(out)  # still no bucket: nothing was created


def test_eval_set_from_gs_to_gs(gs_dir, anygpt_tokenizer_dir, merged_vocab):
    """A MusicCaps-layout set on gs:// (one clip missing) -> its items file on gs://."""
    ann = storage.join(gs_dir, "musiccaps.csv")
    storage.write_text(ann, "ytid,start_s,end_s,caption,aspect_list\n"
                            "a1,0,10,a calm piano,piano\nb2,0,10,loud drums,drums\n")  # fmt: skip
    clips = storage.join(gs_dir, "clips")
    storage.write_bytes(storage.join(clips, "a1.wav"), b"not decoded here")
    items = eval_sets.musiccaps(ann, clips, allow_missing=True)
    assert [i["id"] for i in items] == ["a1"] and items[0]["audio"] == storage.join(clips, "a1.wav")
    out = storage.join(gs_dir, "eval")
    path = eval_sets.write_items(items, out)
    assert [i.id for i in readers.read_inputs("music_text", [path])] == ["a1"]


@pytest.mark.slow
def test_demo_cli_to_gs(gs_dir):
    """python -m data.demo --out gs://... end to end, at a reduced corpus size (the renders and
    codecs are those of the full demo; test_demo builds the full-size corpus locally)."""
    out = storage.join(gs_dir, "demo")
    small = (
        "import functools, sys; from data import demo; "
        "demo._write_raw = functools.partial(demo._write_raw, num_images=24, num_music=4, "
        "num_dialogues=24); sys.exit(demo.main(sys.argv[1:]))"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    cmd = [sys.executable, "-c", small, "--out", out, "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    sizes = {"image_text": 24, "speech_text": 57, "music_text": 4, "dialogue": 24}
    assert {k: v["examples"] for k, v in summary.items()} == sizes
    from anygpt_jax.vocab import MergedVocabulary

    vocab = MergedVocabulary.load(storage.join(out, "vocab"))
    assert storage.dir_state(storage.join(out, "vocab")) == "committed"
    for kind in sizes:
        d = storage.join(out, kind)
        shards_lib.check_manifest(d, vocab, demo.DEMO_TOKENIZERS, kind, "sha256")
    # The raw corpus was uploaded whole and reads back from gs://.
    raw = storage.join(out, "raw")
    names = storage.read_json(storage.join(raw, demo.RAW_DONE))
    items = readers.read_inputs("music_text", [storage.join(raw, names["music_text"])])
    assert len(items) == 4 and all(storage.isfile(i.media[0].path) for i in items)
    # A finished corpus is kept: a rerun rebuilds nothing and reports the same.
    r2 = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads(r2.stdout) == summary
