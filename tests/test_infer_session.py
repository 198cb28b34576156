"""The inference session on a tiny random AnyGPT: batched == one by one, interactive base and
chat sessions that keep their history and survive bad input, scripted dialogues in batch."""

from __future__ import annotations

import io
import json
import os

import gin
import numpy as np
import pytest
from infer_assets import build_assets, fast_gin_bindings, make_engine, read_codes, read_lines

from anygpt_jax.inference.chat import Conversation, chat_style
from anygpt_jax.inference.requests import parse_base, parse_chat_message
from anygpt_jax.inference.session import Engine, load_model, run_batch, run_interactive

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, merged_vocab):
    return build_assets(tmp_path_factory.mktemp("infer"), merged_vocab)


@pytest.fixture(scope="module")
def engine(assets):
    return make_engine(assets)


@pytest.fixture()
def fast_gin():
    yield from fast_gin_bindings()


def test_batched_results_equal_one_by_one(engine, assets, tmp_path, fast_gin):
    m = assets / "media"
    requests = [parse_base(x) for x in (
        "text|image|a red bus", f"image|text|{m}/pic0.png", "text|image|two cats on a beach",
        f"speech|text|{m}/hello.wav", "text|music|jazz", f"text|speech|hi|{m}/voice.wav")]
    names = [f"r{i}" for i in range(len(requests))]
    os.makedirs(tmp_path / "batch")
    batched = engine.run_base(requests, str(tmp_path / "batch"), names)
    for i, r in enumerate(requests):
        os.makedirs(tmp_path / f"one{i}")
        [alone] = engine.run_base([r], str(tmp_path / f"one{i}"), [names[i]])
        assert alone == batched[i], r
        for rec in alone["media"]:  # image codes, music and speech WAVs
            a, b = tmp_path / f"one{i}" / rec["path"], tmp_path / "batch" / rec["path"]
            assert a.read_bytes() == b.read_bytes(), rec
    assert all(r["error"] is None for r in batched)
    codes = [read_codes(tmp_path / "batch", batched[i]["media"][0]) for i in (0, 2)]
    assert codes[0] != codes[1]  # the prompt matters


def test_interactive_base_session_goes_on_after_errors(engine, assets, tmp_path, fast_gin):
    m = assets / "media"
    stdin = io.StringIO("\n".join([
        "text|music|slow piano",
        "video|text|clip.mp4",
        f"speech|text|{m}/gone.wav",
        f"speech|text|{m}/notaudio.wav",
        "",
        f"image|text|{m}/pic0.png",
        "quit",
        "text|image|never read",
    ]) + "\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    failed = run_interactive(engine, "base", str(tmp_path / "o"), stdin, stdout, stderr)
    errors = stderr.getvalue().splitlines()
    assert failed == 3 and len(errors) == 3
    assert errors[0].startswith("error: request (input modality): unknown modality 'video'")
    assert errors[1] == f"error: request: speech file not found: {m}/gone.wav"
    assert errors[2].startswith(f"error: {m}/notaudio.wav: cannot read audio")
    out = stdout.getvalue()
    wavs = [f for f in os.listdir(tmp_path / "o") if f.endswith(".wav")]
    assert len(wavs) == 1 and f"music: {tmp_path / 'o' / wavs[0]}" in out
    assert "never read" not in out and len(os.listdir(tmp_path / "o")) == 1


def test_interactive_chat_keeps_history_and_survives_errors(engine, assets, tmp_path,
                                                            fast_gin):
    m = assets / "media"
    stdin = io.StringIO("\n".join([
        f"What is in [image: {m}/pic0.png]?",
        "/to music",
        f"Continue [music: {m}/song.wav]",
        "/to smell",
        "/bogus",
        f"Look at [video: {m}/clip.mp4]",
        f"And [speech: {m}/notaudio.wav]",
        "/to chat",
        "/clear",
        "Hello again",
    ]) + "\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    failed = run_interactive(engine, "chat", str(tmp_path / "c"), stdin, stdout, stderr)
    errors = stderr.getvalue().splitlines()
    assert failed == 4, errors
    assert "unknown modality 'smell'" in errors[0]
    assert "unknown command '/bogus'" in errors[1]
    assert "unknown modality 'video' in '[video:" in errors[2]
    assert f"{m}/notaudio.wav: cannot read audio" in errors[3]
    out = stdout.getvalue()
    assert "replies use the music generation settings" in out and "history cleared" in out


def test_chat_round_history_and_media(engine, assets, tmp_path, fast_gin):
    m = assets / "media"
    conv = Conversation(engine.vocab, chat_style("mmgpt"))
    first = parse_chat_message(f"Describe [image: {m}/pic1.png] please", to="image")
    [rec] = engine.chat_round([conv], [first], str(tmp_path), ["t0"])
    assert rec["error"] is None and rec["user"] == f"Describe [image: {m}/pic1.png] please"
    assert [t["role"] for t in conv.turns] == ["human", "assistant"]
    [span] = conv.spans[:1]
    want = engine.codecs.tokenizer("image").encode([str(m / "pic1.png")])[0]
    np.testing.assert_array_equal(span.codes, want)  # the message carries the image's codes
    # a failing message leaves the history as it was
    bad = parse_chat_message(f"Hear [speech: {m}/notaudio.wav]")
    [rec2] = engine.chat_round([conv], [bad], str(tmp_path), ["t1"])
    assert "cannot read audio" in rec2["error"] and len(conv.turns) == 2
    [rec3] = engine.chat_round([conv], [parse_chat_message("And now?")], str(tmp_path), ["t2"])
    assert rec3["error"] is None and [t["role"] for t in conv.turns] == [
        "human", "assistant", "human", "assistant"]
    assert conv.turns[2]["content"] == ["And now?"]
    # replies with media are written and referenced in the reply text
    for r in (rec, rec3):
        for media in r["media"]:
            assert f"[{media['modality']}: {media['path']}]" in r["text"]
            assert os.path.isfile(tmp_path / media["path"])


def test_batch_chat_dialogues(engine, assets, tmp_path, fast_gin):
    m = assets / "media"
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"id": "d1",
         "messages": [f"Hi [image: {m}/pic0.png]", {"content": "Song?", "to": "music"}]},
        {"id": "d2", "messages": ["Hello", f"[speech: {m}/notaudio.wav]", "never sent"]},
        {"id": "d3", "messages": ["One message only"]},
    ]) + "\n")
    done, failed = run_batch(engine, str(path), "chat", str(tmp_path / "out"))
    assert (done, failed) == (2, 1)
    recs = {r["id"]: r for r in read_lines(tmp_path / "out" / "results.jsonl")}
    assert [len(recs[d]["turns"]) for d in ("d1", "d2", "d3")] == [2, 2, 1]
    assert recs["d1"]["error"] is None and recs["d3"]["error"] is None
    assert "cannot read audio" in recs["d2"]["error"]
    assert recs["d2"]["turns"][0]["error"] is None  # the first message was answered
    assert recs["d1"]["turns"][0]["user"] == f"Hi [image: {m}/pic0.png]"


@pytest.mark.slow
def test_sharded_model_gives_the_same_results(engine, assets, tmp_path, fast_gin):
    """`load_model` with a mesh (what inference/tpu.gin turns on) answers as one device does."""
    with gin.unlock_config():
        gin.parse_config(["make_mesh.mesh_shape = {'data': 2, 'fsdp': 2}",
                          "make_mesh.num_devices = 4"])
    sharded = Engine(load_model(str(assets / "model"), use_mesh=True), engine.codecs)
    assert sharded.model.mesh is not None and sharded.model.mesh.size == 4
    requests = [parse_base(x) for x in ("text|image|a red bus", "text|music|jazz",
                                        f"image|text|{assets}/media/pic0.png")]
    names = [f"r{i}" for i in range(len(requests))]
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    assert (sharded.run_base(requests, str(tmp_path / "a"), names)
            == engine.run_base(requests, str(tmp_path / "b"), names))


def test_prompts_past_the_context_are_refused_per_request(engine, assets, tmp_path, fast_gin):
    """A prompt that cannot fit the model's context (1024 positions here) fails alone, naming
    its length; the good request of the same batch is answered. So does a configured limit."""
    long_text = " ".join(["cat"] * 1200)
    requests = [parse_base("text|image|a red bus"), parse_base(f"text|image|{long_text}")]
    os.makedirs(tmp_path / "out")
    good, bad = engine.run_base(requests, str(tmp_path / "out"), ["a", "b"])
    assert good["error"] is None and good["media"]
    assert "tokens; with max_new_tokens=40 that is" in bad["error"]
    assert "past the model's context of 1024" in bad["error"]
    limited = Engine(engine.model, engine.codecs, max_prompt_tokens=5)
    [short] = limited.run_base(requests[:1], str(tmp_path / "out"), ["c"])
    assert "more than the limit of 5" in short["error"]
