"""A modality registered by this test alone goes the whole way, with no edit to the library.

"video" is a clip of small grey frames; its tokenizer turns each frame into two codes (the
mean of its left and right halves, 16 levels each), like an image tokenizer per frame. The
test declares a vocabulary with its block, builds '<video>_text' shards from a JSONL file,
trains a step on the seqio task the registry derives, generates a clip from text under the
span constraints (its fixed length included), and writes it as a file through its renderer.
"""

import io
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import seqio

from anygpt_jax import tasks
from anygpt_jax.data import shards
from anygpt_jax.inference.media import MediaCodecs, MediaSettings
from anygpt_jax.inference.renderers import Rendered
from anygpt_jax.inference.requests import parse_base
from anygpt_jax.inference.session import Engine, load_model
from anygpt_jax.modalities import registry
from anygpt_jax.modalities.registry import MediaModality, PairTasks
from anygpt_jax.model import ModelConfig
from anygpt_jax.testing.tokenizers import train_spm
from anygpt_jax.training.trainer import train
from anygpt_jax.vocab import Layout, MergedVocabulary, ModalitySpec, anygpt_layout
from data import build

FRAMES_PER_CLIP = 4
FRAME_SHAPE = (4, 4)
VIDEO = ModalitySpec("video", "\U0001f39e", "<sovi>", "<eovi>", 16, 2, "toy_video")
TASKS = PairTasks("anygpt_video_caption", "anygpt_text_to_video", 0.5, 0.5)


class VideoTokenizer:
    """Frames [T, H, W] uint8 -> codes [2, T]: the quantized means of each frame's halves."""

    codebook_size = 16
    n_q = 2
    sample_rate = None

    @classmethod
    def load(cls, directory):
        return cls()

    def read(self, path):
        return np.load(path)

    def encode_arrays(self, items, n_q=None):
        out = []
        for frames in items:
            halves = np.split(np.asarray(frames, np.float32), 2, axis=-1)
            codes = np.stack([h.mean(axis=(1, 2)) // 16 for h in halves]).astype(np.int32)
            out.append(codes[: n_q or self.n_q])
        return out

    def decode(self, codes):
        """Codes [2, T] -> frames [T, H, W]: each half filled with its level."""
        codes = np.asarray(codes)
        half = (FRAME_SHAPE[0], FRAME_SHAPE[1] // 2)
        return np.stack([
            np.concatenate([np.full(half, 16 * c + 8, np.uint8) for c in codes[:, t]], axis=1)
            for t in range(codes.shape[1])
        ])


class ClipRenderer:
    """Generated video codes (flattened frame-major) -> frames, as an .npy file."""

    def missing(self, codecs, modality):
        return None if modality in codecs.dirs else "no video tokenizer given"

    def render(self, codes, codecs, modality, seed, voice):
        frames = codecs.tokenizer(modality).decode(np.asarray(codes).reshape(-1, 2).T)
        buf = io.BytesIO()
        np.save(buf, frames)
        return Rendered(frames, "npy", buf.getvalue())


def video_record() -> MediaModality:
    return MediaModality(
        VIDEO, f"{__name__}:VideoTokenizer", demo=VideoTokenizer,
        to_text_instructions=("Describe this clip.",),
        from_text_instructions=("Make a clip of this.",),
        generation_defaults={"do_sample": True, "max_new_tokens": 16},
        tasks=TASKS,
        fixed_length=2 * FRAMES_PER_CLIP,
        renderer=f"{__name__}:ClipRenderer",
    )


@pytest.fixture
def video(monkeypatch):
    record = video_record()
    monkeypatch.setitem(registry._REGISTRY, "video", record)
    gin.clear_config()
    gin.bind_parameter("make_mesh.num_devices", 1)
    gin.bind_parameter("learning_rate_schedule.warmup_steps", 1)
    yield record
    gin.clear_config()
    for name in (TASKS.to_text, TASKS.from_text):
        seqio.TaskRegistry.remove(name)


def video_vocabulary(root):
    """The paper's layout with a video block after music, saved to `root`/vocab."""
    spm = os.path.join(root, "spm.model")
    train_spm(spm)
    layout = Layout(anygpt_layout().blocks + (VIDEO,), "anygpt+video")
    vocab_dir = os.path.join(root, "vocab")
    MergedVocabulary.from_layout(spm, layout).save(vocab_dir)
    return vocab_dir, MergedVocabulary.load(vocab_dir)


def clips_jsonl(root, n=8):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "clips"))
    with open(os.path.join(root, "clips.jsonl"), "w") as f:
        for i in range(n):
            path = os.path.join(root, "clips", f"c{i}.npy")
            np.save(path, rng.integers(0, 256, (FRAMES_PER_CLIP, *FRAME_SHAPE), np.uint8))
            f.write(json.dumps({"id": f"c{i}", "video": path, "caption": f"clip number {i}"}))
            f.write("\n")
    return os.path.join(root, "clips.jsonl")


def test_a_test_registered_video_modality_goes_from_files_to_a_trained_model_and_back(
    video, tmp_path
):
    vocab_dir, vocab = video_vocabulary(str(tmp_path))
    assert vocab.modality("video").count == 32

    # Shards: the generic pair reader reads the clips through the record's tokenizer.
    shard_dir = str(tmp_path / "shards")
    summary = build.build("video_text", [clips_jsonl(str(tmp_path))], shard_dir, vocab_dir,
                          {"video": "demo"}, examples_per_shard=4, workers=1, progress=False)
    assert summary["examples"] == 8

    # seqio: the record's pair tasks, in the stage-1 mixture at its rates.
    names = tasks.register(vocab, shard_dirs={"video_text": [shard_dir]})
    assert {TASKS.to_text, TASKS.from_text} <= set(names)
    [example] = seqio.get_mixture_or_task(TASKS.from_text).get_dataset(
        {"targets": 96}, shuffle=False, num_epochs=1).take(1).as_numpy_iterator()
    spans = vocab.decode_segments(example["targets"].tolist())
    [clip] = [s for s in spans if not isinstance(s, str)]
    assert clip.modality == "video" and np.asarray(clip.codes).shape == (2, FRAMES_PER_CLIP)

    # One training step on the derived task.
    model_dir = str(tmp_path / "model")
    cfg = ModelConfig(vocab_size=vocab.vocab_size, hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2)
    metrics = train(model_dir=model_dir, train_steps=1, batch_size=2, seq_len=96,
                    mixture_or_task_name=TASKS.from_text, checkpoint_every=1,
                    model_config=cfg, register_tasks=False, log_every=1)
    assert np.isfinite(metrics["loss"])

    # Text -> video: constrained to exactly the record's fixed length, then rendered.
    engine = Engine(load_model(model_dir),
                    MediaCodecs(vocab, MediaSettings(tokenizer_dirs={"video": "demo"})))
    out = tmp_path / "out"
    [result] = engine.run_base([parse_base("text|video|a bright clip")], str(out), ["r0"])
    assert result["error"] is None, result
    [media] = result["media"]
    assert media["modality"] == "video" and media["format"] == "npy"
    frames = np.load(out / media["path"])
    assert frames.shape == (FRAMES_PER_CLIP, *FRAME_SHAPE) and frames.dtype == np.uint8


def test_the_build_cli_imports_a_users_modality_module_in_every_worker(tmp_path):
    """`--import MODULE` registers the modality before the CLI reads its flags, and again in
    each spawned worker (two shards, two workers; local and on Beam); a module that fails to
    import is named."""
    (tmp_path / "video_modality.py").write_text(
        "from anygpt_jax.modalities.registry import register_modality\n"
        "from test_modality_e2e import video_record\n\n"
        "register_modality(video_record())\n"
    )
    vocab_dir, _ = video_vocabulary(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    out = str(tmp_path / "shards")
    cmd = [sys.executable, "-m", "data.build", "--kind", "video_text",
           "--input", clips_jsonl(str(tmp_path)), "--vocab", vocab_dir,
           "--tokenizer", "video=demo", "--out", out, "--examples-per-shard", "4",
           "--workers", "2", "--no-progress"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([*cmd, "--import", "video_modality"], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["examples"] == 8
    assert len(shards.read_manifest(out)["shards"]) == 2
    # The same build on Beam's two worker processes, which import the module too: same bytes.
    on_beam = str(tmp_path / "on_beam")
    beam = subprocess.run([*cmd[:cmd.index("--out") + 1], on_beam, *cmd[cmd.index("--out") + 2:],
                           "--import", "video_modality", "--runner", "DirectRunner"],
                          env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert beam.returncode == 0, beam.stderr[-3000:]
    assert sorted(os.listdir(on_beam)) == sorted(os.listdir(out))
    for name in os.listdir(out):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(on_beam, name), "rb") as b:
            assert a.read() == b.read(), name
    bad = subprocess.run([*cmd[:-1], "--import", "no_such_modality_module"], env=env, cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1
    assert "--import no_such_modality_module: No module named" in bad.stderr
