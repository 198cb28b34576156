"""Evaluation and inference against gs:// (a real GCS API emulator): the eval loop's metrics,
predictions and TensorBoard events written to a bucket, a batch of requests read from a bucket
(media beside it) into a gs:// output, and one clear error line for a missing bucket."""

from __future__ import annotations

import io
import json
import math

import gin
import pytest
import seqio
from infer_assets import FAST, build_assets, make_engine
from test_eval import TEXT_ONLY, _register, clean_gin, eval_sets, model  # noqa: F401

from anygpt_jax import infer, storage
from anygpt_jax.evaluation import loop
from anygpt_jax.inference import session
from anygpt_jax.inference.media import MediaCodecs, MediaSettings

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
NO_BUCKET = "gs://no-such-bucket-anygpt"


def test_evaluate_writes_outputs_to_gcs(model, merged_vocab, eval_sets, gs_dir,  # noqa: F811
                                        tmp_path):
    _register(merged_vocab, eval_sets)
    options = loop.EvalOptions(tasks=["anygpt_eval_coco_caption"], seq_len=160, batch_size=4,
                               max_examples=2, generation=TEXT_ONLY, generation_batch_size=2)
    out = storage.join(gs_dir, "eval")
    summary = loop.evaluate(model, out, step=5, options=options)
    assert math.isfinite(summary["metrics"]["anygpt_eval_coco_caption/cider"])
    assert storage.read_json(storage.join(out, "metrics-00000005.json")) == json.loads(
        json.dumps(summary))
    lines = storage.read_text(storage.join(out, "predictions-00000005.jsonl")).splitlines()
    assert [json.loads(x)["task"] for x in lines] == ["anygpt_eval_coco_caption"] * 2
    # TensorBoard wrote locally and the events file was uploaded.
    [events] = storage.glob(storage.join(out, "tensorboard", "events.out.tfevents.*"))
    local = tmp_path / "events"
    local.write_bytes(storage.read_bytes(events))
    import tensorflow as tf

    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(local))
            for v in e.summary.value}
    assert "anygpt_eval_coco_caption/cider" in tags


def test_evaluate_writes_media_to_gcs(model, merged_vocab, eval_sets, gs_dir,  # noqa: F811
                                      tmp_path, monkeypatch):
    """Music spans (each example's own answer, so every one is a span) decoded by the demo
    codec and written as WAVs under gs://.../media-STEP/."""
    from test_metrics_models import make_tiny_clap

    import anygpt_jax.inference
    from anygpt_jax.evaluation import models

    gin.bind_parameter("ClapScore.model", models.HFClap)
    gin.bind_parameter("HFClap.path", make_tiny_clap(str(tmp_path / "clap")))
    _register(merged_vocab, eval_sets)
    task = "anygpt_eval_musiccaps_music"
    ds = seqio.get_mixture_or_task(task).get_dataset(
        None, shuffle=False, num_epochs=1, use_cached=False, trim_output_features=False)
    answers = {tuple(ex["prompt"].tolist()): ex["targets"][len(ex["prompt"]):].tolist()
               for ex in ds.as_numpy_iterator()}
    monkeypatch.setattr(anygpt_jax.inference, "generate",
                        lambda model, prompts, settings, **kw: [answers[tuple(p)]
                                                                for p in prompts])
    options = loop.EvalOptions(tasks=[task], teacher_forced=False, max_examples=2)
    codecs = MediaCodecs(model.vocab, MediaSettings({"music": "demo"}))
    out = storage.join(gs_dir, "eval")
    summary = loop.evaluate(model, out, step=3, options=options, codecs=codecs)
    assert summary["skipped"] == {}
    lines = storage.read_text(storage.join(out, "predictions-00000003.jsonl")).splitlines()
    made = [r["prediction"] for r in map(json.loads, lines) if r["prediction"].endswith(".wav")]
    assert len(made) == 2 and all(p.startswith(f"media-00000003/{task}/") for p in made)
    import soundfile as sf

    for p in made:
        wav, rate = sf.read(io.BytesIO(storage.read_bytes(storage.join(out, *p.split("/")))))
        assert rate == 32000 and len(wav) > 0


def test_run_eval_missing_bucket_fails_before_loading(tmp_path, gcs):
    (tmp_path / "model").mkdir()  # never read: the output is checked first
    with pytest.raises(storage.StorageError, match=f"{NO_BUCKET}.*does not exist"):
        loop.run_eval(model_dir=str(tmp_path / "model"), output_dir=f"{NO_BUCKET}/eval")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, merged_vocab):
    return build_assets(tmp_path_factory.mktemp("infer_gcs"), merged_vocab)


@pytest.fixture(scope="module")
def engine(assets):
    return make_engine(assets)


def _argv(assets, requests: str, out: str) -> list[str]:
    return ["--ckpt", str(assets / "model"), "--requests", requests, "--out", out,
            "--image_tokenizer", str(assets / "image"), "--speech_tokenizer",
            str(assets / "speech"), "--music_tokenizer", str(assets / "music"),
            "--soundstorm", str(assets / "soundstorm"),
            *[f"--gin.{b.replace(' ', '')}" for b in FAST]]


def test_infer_batch_from_and_to_gcs(assets, engine, gs_dir, monkeypatch):
    # Requests and their media in a bucket; relative paths resolve against the file's prefix.
    for name in ("hello.wav", "voice.wav", "pic0.png", "notaudio.wav"):
        storage.copy_file(assets / "media" / name, storage.join(gs_dir, "in", "media", name))
    lines = [
        {"id": "bus", "request": "text|image|a red bus"},
        {"id": "cap", "request": "image|text|media/pic0.png"},
        {"id": "asr", "request": "speech|text|media/hello.wav"},
        {"id": "tts", "request": "text|speech|hi there|media/voice.wav"},
        {"id": "jazz", "request": "text|music|calm jazz"},
        {"id": "gone", "request": "image|text|media/gone.png"},
        {"id": "noise", "request": "speech|text|media/notaudio.wav"},
    ]
    requests = storage.join(gs_dir, "in", "requests.jsonl")
    storage.write_text(requests, "".join(json.dumps(x) + "\n" for x in lines))
    out = storage.join(gs_dir, "out")
    monkeypatch.setattr(session, "load_model", lambda ckpt, **_: engine.model)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        status = infer.main(_argv(assets, requests, out), stdout=stdout, stderr=stderr)
    finally:
        gin.clear_config()
    assert status == 1 and "7 requests: 5 done, 2 failed" in stdout.getvalue(), stderr.getvalue()
    assert storage.dir_state(out) == "committed"
    by_line = [json.loads(x) for x in storage.read_text(storage.join(out, "results.jsonl"))
               .splitlines()]
    assert [r["line"] for r in by_line] == list(range(1, 8))
    recs = {x["id"]: r for x, r in zip(lines, by_line, strict=True)}
    assert [recs[i]["error"] for i in ("bus", "cap", "asr", "tts", "jazz")] == [None] * 5
    assert f"image file not found: {gs_dir}/in/media/gone.png" in recs["gone"]["error"]
    assert f"{gs_dir}/in/media/notaudio.wav: cannot read audio" in recs["noise"]["error"]
    assert recs["tts"]["request"] == f"text|speech|hi there|{gs_dir}/in/media/voice.wav"
    made = {m["path"] for i in ("bus", "tts", "jazz") for m in recs[i]["media"]}
    assert made == {"00001-bus.image.json", "00004-tts.wav", "00005-jazz.wav"}
    assert storage.listdir(out) == sorted(
        [storage.COMMIT_MARKER, "results.jsonl", *made])
    import soundfile as sf

    wav, _ = sf.read(io.BytesIO(storage.read_bytes(storage.join(out, "00005-jazz.wav"))))
    assert len(wav) > 0
    # A committed output is never overwritten; the model is not loaded for that.
    monkeypatch.setattr(session, "load_model", lambda ckpt, **_: pytest.fail("loaded"))
    stderr = io.StringIO()
    assert infer.main(_argv(assets, requests, out), stdout=io.StringIO(), stderr=stderr) == 1
    assert f"--out {out} already exists and is not empty" in stderr.getvalue()


def test_infer_missing_bucket_one_error_line(assets, gs_dir, monkeypatch):
    requests = storage.join(gs_dir, "requests.jsonl")
    storage.write_text(requests, json.dumps({"request": "text|music|jazz"}) + "\n")
    monkeypatch.setattr(session, "load_model", lambda ckpt, **_: pytest.fail("loaded"))
    for argv, bad in ((_argv(assets, requests, f"{NO_BUCKET}/out"), f"{NO_BUCKET}/out"),
                      (_argv(assets, f"{NO_BUCKET}/r.jsonl", storage.join(gs_dir, "o")),
                       f"{NO_BUCKET}/r.jsonl")):
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            assert infer.main(argv, stdout=stdout, stderr=stderr) == 1
        finally:
            gin.clear_config()
        [line] = stderr.getvalue().splitlines()
        assert line.startswith(f"error: {bad}: bucket gs://no-such-bucket-anygpt does not exist")
        assert stdout.getvalue() == ""
    assert not storage.exists(storage.join(gs_dir, "o"))
