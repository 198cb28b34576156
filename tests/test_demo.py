"""The demo corpus: its vocabulary, concurrent renders, the code cache, the real CLI end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from synthetic_task import noisy_lines, user_env

from anygpt_jax import storage
from anygpt_jax.data import shards as shards_lib
from anygpt_jax.vocab import MergedVocabulary
from data import demo, media

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_DEFAULT_GIN = os.path.join(REPO, "tpu_configs", "cpu_default.gin")
SIZES = {"image_text": 300, "speech_text": 57, "music_text": 48, "dialogue": 300}


def cpu_default_vocab_size() -> int:
    """ModelConfig.vocab_size bound in tpu_configs/cpu_default.gin."""
    with open(CPU_DEFAULT_GIN) as f:
        found = re.findall(r"^ModelConfig\.vocab_size\s*=\s*(\d+)", f.read(), re.M)
    assert len(found) == 1, f"{CPU_DEFAULT_GIN}: expected one ModelConfig.vocab_size binding"
    return int(found[0])


def test_demo_vocabulary_is_deterministic_and_fits_the_cpu_default(tmp_path):
    from data.demo_vocab import build_demo_vocab

    inputs = demo.make_raw(str(tmp_path / "raw"), render=False)
    assert sorted(inputs) == sorted(SIZES)
    a = build_demo_vocab(str(tmp_path / "a"), inputs.values())
    b = build_demo_vocab(str(tmp_path / "b"), inputs.values())
    for name in sorted(set(os.listdir(tmp_path / "a")) - {storage.COMMIT_MARKER}):  # a time
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # The CPU default's embedding is sized for this vocabulary: a drift must fail here.
    assert a.vocab_size == b.vocab_size == cpu_default_vocab_size()


def test_corpus_text_matches_the_promised_sizes(tmp_path):
    inputs = demo.make_raw(str(tmp_path / "raw"), render=False)
    for kind, path in inputs.items():
        with open(path) as f:
            assert sum(1 for _ in f) == SIZES[kind], kind
    assert len(demo.zen_sentences()) * len(demo.VOICES) == SIZES["speech_text"]


def test_render_all_writes_every_file_and_reports_failures(tmp_path):
    cmds = [["sh", "-c", f"echo {i} > {tmp_path / f'{i}.txt'}"] for i in range(9)]
    demo.render_all(cmds, workers=4)
    assert [(tmp_path / f"{i}.txt").read_text().strip() for i in range(9)] == [
        str(i) for i in range(9)
    ]
    with pytest.raises(subprocess.CalledProcessError):
        demo.render_all([["true"], ["sh", "-c", "exit 3"], ["true"]], workers=2)


class _CountingCodec:
    """Stands in for an AudioCodec: codes are a function of the samples; calls are counted."""

    sample_rate = 16000

    def __init__(self):
        self.encoded = 0

    def read(self, path):
        from anygpt_jax.modalities.audio_io import load_audio

        return load_audio(path, self.sample_rate)

    def encode_arrays(self, waves, n_q=None):
        self.encoded += len(waves)
        return [np.round(w[None, ::160] * 100).astype(np.int32) + 100 for w in waves]


def test_audio_encoder_reuses_codes_of_files_seen(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for i, n in enumerate((3200, 4800, 1600)):
        paths.append(str(tmp_path / f"a{i}.wav"))
        sf.write(paths[-1], rng.uniform(-0.5, 0.5, n).astype(np.float32), 16000)
    codec = _CountingCodec()
    enc = media._media_encoder("speech", codec, media.TokenizerInfo("t", "t"))
    first = enc.encode(paths[:2])
    calls = codec.encoded
    again = enc.encode([paths[1], paths[0], paths[2]])
    assert codec.encoded == calls + 1  # only the new file was encoded
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[1], first[0])
    # A rewritten file is encoded again; a missing one is an error naming it.
    sf.write(paths[0], np.zeros(800, np.float32), 16000)
    missing = str(tmp_path / "missing.wav")
    out = enc.encode([paths[0], missing])
    assert out[0].shape == (5,) and isinstance(out[1], Exception) and "missing.wav" in str(out[1])


@pytest.mark.slow
def test_demo_cli_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "data.demo", "--out", str(out), "--no-progress"]
    env = user_env(dict(os.environ, PYTHONPATH=REPO))  # as a user's shell has it
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    took = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-3000:]
    assert noisy_lines(r.stdout + r.stderr) == [], r.stderr[-3000:]
    summary = json.loads(r.stdout)
    vocab = MergedVocabulary.load(str(out / "vocab"))
    assert vocab.vocab_size == cpu_default_vocab_size()
    for kind, n in SIZES.items():
        m = shards_lib.read_manifest(str(out / kind))
        assert m["kind"] == kind and m["examples"] == n == summary[kind]["examples"], kind
        assert summary[kind]["skipped"] == 0 and m["tokens"] == summary[kind]["tokens"]
        shards_lib.check_manifest(str(out / kind), vocab, demo.DEMO_TOKENIZERS, kind, "sha256")
    assert summary["music_text"]["tokens"]["music"] == 48 * 4 * 250  # 5 s at 50 Hz, 4 books
    assert set(shards_lib.read_manifest(str(out / "dialogue"))["tokenizers"]) == {
        "image",
        "speech",
        "music",
    }
    # Dialogues quote the speech set: their codes must be those of the speech_text shards.
    speech = {
        tuple(np.ravel(ex.spans[0].codes))
        for p in sorted((out / "speech_text").glob("*.tfrecord"))
        for ex in shards_lib.read_shard(str(p))
    }
    quoted = 0
    for p in sorted((out / "dialogue").glob("*.tfrecord")):
        for ex in shards_lib.read_shard(str(p)):
            for turn in ex.turns:
                said = [c for c in turn["content"] if isinstance(c, str)]
                spans = [c["span"] for c in turn["content"] if isinstance(c, dict)]
                if turn["role"] == "human" and said and said[0].startswith("Please say: "):
                    continue  # the answer turn holds the span
                if spans and ex.spans[spans[0]].modality == "speech":
                    quoted += 1
                    assert tuple(np.ravel(ex.spans[spans[0]].codes)) in speech
    assert quoted > 50
    # A finished corpus is kept: a second run rebuilds nothing and reports the same.
    r2 = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads(r2.stdout) == summary
    print(f"demo corpus built in {took:.0f} s")
