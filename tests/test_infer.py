"""`python -m anygpt_jax.infer` and the inference session on a tiny random AnyGPT: batch JSONL
-> results.jsonl + media (PNG through a tiny unCLIP pipeline, WAV), batched == one by one,
interactive base and chat sessions that survive bad input, clear errors naming the fault."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import flax
import gin
import jax
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from anygpt_jax import AnyGPT, checkpointing, infer, prompts
from anygpt_jax.inference import session
from anygpt_jax.inference.chat import Conversation, chat_style
from anygpt_jax.inference.media import SPEECH_WAV_UNAVAILABLE, MediaCodecs
from anygpt_jax.inference.requests import parse_base, parse_chat_message
from anygpt_jax.inference.session import Engine, run_batch, run_interactive
from anygpt_jax.modalities import codec, image_model
from anygpt_jax.modalities.audio_layers import SEANetConfig
from anygpt_jax.modalities.soundstorm import expected_param_shapes, save_soundstorm
from anygpt_jax.modalities.soundstorm_model import SoundStormConfig
from anygpt_jax.model import ModelConfig, param_shapes
from anygpt_jax.vocab import ModalitySpan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

# Tiny tokenizers with the real codebook sizes (the vocabulary's), random weights. Audio at
# 1 kHz with hop 20 keeps the real 50 frames/s in few samples.
SPEECH = SEANetConfig(sample_rate=1000, dimension=8, n_filters=2, ratios=(5, 4), n_q=4,
                      codebook_size=1024, lstm_layers=1, encoder_bidirectional=True)
# Completes RVQ layers 2-4 of SPEECH (the real one: 2-8).
STORM = SoundStormConfig(dim=16, depth=1, heads=2, dim_head=8, ff_mult=2, conv_kernel=3,
                         codebook_size=1024, num_quantizers=3, num_semantic=1024)
MUSIC = SEANetConfig(sample_rate=1000, dimension=8, n_filters=2, ratios=(5, 4), n_q=4,
                     codebook_size=2048, lstm_layers=1, true_skip=True)
SEED = image_model.SeedConfig(
    image_size=28, patch_size=14, vit_width=16, vit_depth=1, vit_heads=2, vit_mlp=16,
    num_queries=32, qformer_width=16, qformer_depth=2, qformer_heads=2, qformer_mlp=16,
    codebook_size=8192, code_dim=4, decoder_depth=1, decoder_heads=2, decoder_mlp=16,
    down_dims=(8, 8, 4), embed_dim=20)
# One decoding program for every output (greedy, no penalty/top-k), short outputs: few
# compilations. An image span needs 32 codes + its end marker.
FAST = ["GenerationSettings.do_sample = False", "GenerationSettings.repetition_penalty = 1.0",
        "GenerationSettings.top_k = 0", "GenerationSettings.num_beams = 1",
        "GenerationSettings.max_new_tokens = 40"]


def _random(shapes, seed: int, scale: float | None = None) -> dict:
    rng = np.random.default_rng(seed)

    def draw(s):
        std = scale if scale is not None else 1 / np.sqrt(np.prod(s.shape[:-1]) or 1)
        return (rng.standard_normal(s.shape) * std).astype(np.float32)

    return jax.tree_util.tree_map(draw, shapes)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, merged_vocab):
    """Model dir, tokenizer dirs, an unCLIP pipeline dir and media files."""
    root = tmp_path_factory.mktemp("infer")
    cfg = ModelConfig(vocab_size=merged_vocab.vocab_size, hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=1024,
                      scan_layers=False)
    # Values drawn in numpy from the shapes: flax's init would compile for a while.
    checkpointing.save_model(str(root / "model"), _random(param_shapes(cfg), 0, 0.5), cfg,
                             merged_vocab)
    for name, kind, c in (("speech", "speechtokenizer", SPEECH), ("music", "encodec", MUSIC)):
        os.makedirs(root / name)
        shapes = {k: jax.ShapeDtypeStruct(s, np.float32)
                  for k, s in codec.expected_param_shapes(c).items()}
        codec.save_codec(str(root / name), kind, c, _random(shapes, 1), {})
    os.makedirs(root / "image")
    shapes = flax.traverse_util.flatten_dict(
        jax.eval_shape(lambda: image_model.init_params(SEED)), sep="/")
    image_model.save_seed(str(root / "image"), SEED, _random(shapes, 2, 0.2))
    os.makedirs(root / "soundstorm")
    shapes = {k: jax.ShapeDtypeStruct(s, np.float32)
              for k, s in expected_param_shapes(STORM).items()}
    save_soundstorm(str(root / "soundstorm"), STORM, _random(shapes, 3), {})
    from test_image_tokenizer import _tiny_unclip_pipeline

    _tiny_unclip_pipeline(SEED.embed_dim).save_pretrained(str(root / "unclip"))
    rng = np.random.default_rng(0)
    media = root / "media"
    os.makedirs(media)
    sf.write(media / "hello.wav", 0.1 * rng.standard_normal(3000).astype(np.float32), 8000)
    sf.write(media / "song.wav", 0.1 * rng.standard_normal((2400, 2)).astype(np.float32), 8000)
    sf.write(media / "voice.wav", 0.1 * rng.standard_normal(1600).astype(np.float32), 16000)
    sf.write(media / "silent.wav", np.zeros(1600, np.float32), 16000)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 50 + k, 3), dtype=np.uint8)).save(
            media / f"pic{k}.png")
    (media / "notaudio.wav").write_text("this is not audio\n")
    (media / "notimage.png").write_text("this is not an image\n")
    return root


@pytest.fixture(scope="module")
def engine(assets):
    model = AnyGPT.load(str(assets / "model"))
    dirs = {m: str(assets / m) for m in ("image", "speech", "music")}
    codecs = MediaCodecs(model.vocab, dirs, str(assets / "unclip"), render_steps=2,
                         soundstorm=str(assets / "soundstorm"))
    return Engine(model, codecs)


@pytest.fixture()
def fast_gin():
    gin.clear_config()
    with gin.unlock_config():
        gin.parse_config(FAST)
    yield
    gin.clear_config()


def _lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(x) for x in f]


def _codes(out_dir, rec) -> list:
    with open(os.path.join(out_dir, rec["path"])) as f:
        return json.load(f)["codes"]


def test_batched_results_equal_one_by_one(engine, assets, tmp_path, fast_gin):
    m = assets / "media"
    requests = [parse_base(x) for x in (
        "text|image|a red bus", f"image|text|{m}/pic0.png", "text|image|two cats on a beach",
        f"speech|text|{m}/hello.wav", "text|music|jazz", f"text|speech|hi|{m}/voice.wav")]
    names = [f"r{i}" for i in range(len(requests))]
    os.makedirs(tmp_path / "batch")
    pipeline, engine.codecs.unclip_pipeline = engine.codecs.unclip_pipeline, None  # codes only
    try:
        batched = engine.run_base(requests, str(tmp_path / "batch"), names)
        for i, r in enumerate(requests):
            os.makedirs(tmp_path / f"one{i}")
            [alone] = engine.run_base([r], str(tmp_path / f"one{i}"), [names[i]])
            assert alone == batched[i], r
            for rec in alone["media"]:
                a, b = tmp_path / f"one{i}" / rec["path"], tmp_path / "batch" / rec["path"]
                assert a.read_bytes() == b.read_bytes(), rec
    finally:
        engine.codecs.unclip_pipeline = pipeline
    assert all(r["error"] is None for r in batched)
    codes = [_codes(tmp_path / "batch", batched[i]["media"][0]) for i in (0, 2)]
    assert codes[0] != codes[1]  # the prompt matters


def test_cli_batch_writes_results_and_media(assets, engine, tmp_path, monkeypatch):
    m = assets / "media"
    lines = [
        {"id": "bus", "request": "text|image|a red bus"},
        {"id": "cap", "request": f"image|text|{m}/pic0.png"},
        {"id": "tts", "request": "text|speech|hello there|media/voice.wav"},
        {"id": "asr", "request": "speech|text|media/hello.wav"},
        {"id": "jazz", "from": "text", "to": "music", "input": "calm jazz"},
        {"id": "mcap", "request": "music|text|media/song.wav", "instruction": "Describe it."},
        '{"id": "broken", ',
        {"id": "vid", "request": "video|text|clip.mp4"},
        {"id": "gone", "request": "image|text|media/gone.png"},
        {"id": "noise", "request": "speech|text|media/notaudio.wav"},
        {"id": "pic", "request": "image|text|media/notimage.png"},
        {"id": "mute", "request": "text|speech|hush|media/silent.wav"},
    ]
    requests = assets / "requests.jsonl"  # relative paths resolve against its directory
    requests.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    out = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["--ckpt", str(assets / "model"), "--requests", str(requests), "--out", str(out),
            "--image_tokenizer", str(assets / "image"), "--speech_tokenizer",
            str(assets / "speech"), "--music_tokenizer", str(assets / "music"),
            "--unclip_pipeline", str(assets / "unclip"), "--render_steps", "2",
            "--soundstorm", str(assets / "soundstorm"),
            *[f"--gin.{b.replace(' ', '')}" for b in FAST]]
    # The engine's model: its compiled decoding programs are reused (loading is tested below
    # and by the real command).
    monkeypatch.setattr(session, "load_model", lambda ckpt: engine.model)
    try:
        status = infer.main(argv, stdout=stdout, stderr=stderr)
    finally:
        gin.clear_config()
    assert status == 1, stderr.getvalue()  # some requests failed
    assert "12 requests: 6 done, 6 failed" in stdout.getvalue()
    recs = {r["line"]: r for r in _lines(out / "results.jsonl")}
    assert sorted(recs) == list(range(1, 13))
    ok = {r["id"]: r for r in recs.values() if not r["error"]}
    assert sorted(ok) == ["asr", "bus", "cap", "jazz", "mcap", "tts"]
    # text -> image: exactly 32 codes (constrained), rendered to a PNG by the unCLIP pipeline
    [img] = ok["bus"]["media"]
    assert img == {"modality": "image", "path": "00001-bus.png", "format": "png"}
    assert ok["bus"]["finished"] and ok["bus"]["num_new_tokens"] == 33
    assert ok["bus"]["text"] == "[image: 00001-bus.png]"
    with Image.open(out / img["path"]) as im:
        assert im.size == (16, 16) and im.mode == "RGB"
    # text -> music: a WAV at the music tokenizer's rate, one hop of samples per frame
    [wav] = ok["jazz"]["media"]
    assert wav["format"] == "wav" and wav["path"] == "00005-jazz.wav"
    data, rate = sf.read(out / wav["path"])
    assert rate == MUSIC.sample_rate and len(data) >= 20 and len(data) % 20 == 0
    # text -> speech: SoundStorm completes the RVQ layers in the prompt's voice -> WAV
    [sp] = ok["tts"]["media"]
    assert sp == {"modality": "speech", "path": "00003-tts.wav", "format": "wav"}
    data, rate = sf.read(out / sp["path"])
    assert rate == SPEECH.sample_rate and len(data) >= 20 and len(data) % 20 == 0
    assert ok["tts"]["request"] == f"text|speech|hello there|{assets}/media/voice.wav"
    # modality -> text: text replies, no media
    for rid in ("cap", "asr", "mcap"):
        assert ok[rid]["media"] == [] and isinstance(ok[rid]["text"], str)
        assert ok[rid]["num_new_tokens"] <= 40
    assert ok["mcap"]["instruction"] == "Describe it."
    assert ok["cap"]["instruction"] in prompts.INSTRUCTION_POOLS["image_to_text"]
    err = {r["line"]: r["error"] for r in recs.values() if r["error"]}
    assert err[7].startswith(f"{requests}:7: not valid JSON")
    assert "unknown modality 'video'" in err[8]
    assert f"image file not found: {assets}/media/gone.png" in err[9]
    assert f"{assets}/media/notaudio.wav: cannot read audio" in err[10]
    assert f"{assets}/media/notimage.png: cannot read image" in err[11]
    assert f"{assets}/media/silent.wav: the voice prompt is silent" in err[12]
    assert sorted(os.listdir(out)) == ["00001-bus.png", "00003-tts.wav", "00005-jazz.wav",
                                       "results.jsonl"]
    # an existing output is never overwritten; nothing is loaded before that check
    assert infer.main(argv, stdout=io.StringIO(), stderr=stderr) == 1
    assert f"--out {out} already exists and is not empty" in stderr.getvalue()


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
    recs = {r["id"]: r for r in _lines(tmp_path / "out" / "results.jsonl")}
    assert [len(recs[d]["turns"]) for d in ("d1", "d2", "d3")] == [2, 2, 1]
    assert recs["d1"]["error"] is None and recs["d3"]["error"] is None
    assert "cannot read audio" in recs["d2"]["error"]
    assert recs["d2"]["turns"][0]["error"] is None  # the first message was answered
    assert recs["d1"]["turns"][0]["user"] == f"Hi [image: {m}/pic0.png]"


def test_missing_tokenizer_names_its_flag(assets, engine, tmp_path, fast_gin):
    model = engine.model
    bare = Engine(model, MediaCodecs(model.vocab, {"image": str(assets / "image")}))
    [rec] = bare.run_base([parse_base(f"speech|text|{assets}/media/hello.wav")], str(tmp_path),
                          ["x"])
    assert rec["error"] == "this request needs the speech tokenizer: give --speech_tokenizer DIR"
    # output media without its tokenizer/pipeline: codes written, with the reason
    music = ModalitySpan("music", np.arange(8).reshape(4, 2))
    rec = bare.codecs.write(music, str(tmp_path), "m")
    assert rec["format"] == "codes" and "--music_tokenizer DIR" in rec["note"]
    assert _codes(str(tmp_path), rec) == music.codes.tolist()
    rec = bare.codecs.write(ModalitySpan("image", np.arange(32)), str(tmp_path), "i")
    assert rec["format"] == "codes" and "--unclip_pipeline DIR" in rec["note"]
    rec = engine.codecs.write(ModalitySpan("image", np.arange(5)), str(tmp_path), "j")
    assert "SEED renders 32 codes, the span has 5" in rec["note"]
    rec = bare.codecs.write(ModalitySpan("speech", np.arange(9)), str(tmp_path), "s")
    assert rec["note"] == SPEECH_WAV_UNAVAILABLE and _codes(str(tmp_path), rec) == list(range(9))
    with pytest.raises(ValueError, match="--music_tokenizer .*nowhere: not a directory"):
        MediaCodecs(model.vocab, {"music": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="--music_tokenizer .*speech: .*kind 'encodec'"):
        MediaCodecs(model.vocab, {"music": str(assets / "speech")}).tokenizer("music")
    # a music codec whose codebooks do not fit the vocabulary's music block
    shapes = {k: jax.ShapeDtypeStruct(s, np.float32)
              for k, s in codec.expected_param_shapes(SPEECH).items()}
    codec.save_codec(str(tmp_path), "encodec", SPEECH, _random(shapes, 3), {})
    with pytest.raises(ValueError, match=r"4 codebook\(s\) of 1024 codes, but the model's "
                       r"vocabulary needs 4 of 2048"):
        MediaCodecs(model.vocab, {"music": str(tmp_path)}).tokenizer("music")
    # a SoundStorm that completes other layers than the SpeechTokenizer has
    two = SEANetConfig(**{**SPEECH.__dict__, "n_q": 2})
    shapes = {k: jax.ShapeDtypeStruct(s, np.float32)
              for k, s in codec.expected_param_shapes(two).items()}
    os.makedirs(tmp_path / "st2")
    codec.save_codec(str(tmp_path / "st2"), "speechtokenizer", two, _random(shapes, 4), {})
    codecs = MediaCodecs(model.vocab, {"speech": str(tmp_path / "st2")},
                         soundstorm=str(assets / "soundstorm"))
    with pytest.raises(ValueError, match=r"--soundstorm .* completes 3 RVQ layers, but "
                       r"--speech_tokenizer .*st2 has 2 \(needs 4\)"):
        codecs.soundstorm()


def test_cli_usage_errors(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        infer.main(["--help"])
    assert e.value.code == 0 and "text|speech|Hello there[|voice.wav]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        infer.main(["--ckpt", "x", "--requests", "r.jsonl"])
    assert e.value.code == 2 and "--requests needs --out DIR" in capsys.readouterr().err
    err = io.StringIO()
    model = str(assets / "model")
    assert infer.main(["--ckpt", model, "--gin_file", "nope.gin"], stderr=err) == 1
    assert "gin file not found: nope.gin" in err.getvalue()
    err = io.StringIO()
    assert infer.main(["--ckpt", model, "--gin.chat_style.tempate='x'"], stderr=err) == 1
    assert "tempate" in err.getvalue()
    err = io.StringIO()
    assert infer.main(["--ckpt", str(tmp_path / "none"), "--requests", __file__, "--out",
                       str(tmp_path / "o")], stderr=err) == 1
    assert f"model directory not found: {tmp_path / 'none'}" in err.getvalue()
    gin.clear_config()


@pytest.mark.slow
def test_real_command_batch_and_interactive(assets, tmp_path):
    """The installed entry point end to end, with the release's (sampling, beam) settings."""
    requests = tmp_path / "in.jsonl"
    requests.write_text(json.dumps({"id": "a", "request": "text|image|a cat"}) + "\n"
                        + json.dumps({"id": "b", "request": "text|music|jazz"}) + "\n")
    base = [sys.executable, "-m", "anygpt_jax.infer", "--ckpt", str(assets / "model"),
            "--music_tokenizer", str(assets / "music"),
            "--gin.GenerationSettings.max_new_tokens=40"]
    run = subprocess.run([*base, "--requests", str(requests), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stderr
    recs = _lines(tmp_path / "out" / "results.jsonl")
    assert [r["media"][0]["format"] for r in recs] == ["codes", "wav"]
    assert "--image_tokenizer DIR" in recs[0]["media"][0]["note"]
    chat = subprocess.run(
        [*base, "--mode", "chat", "--gin_file", "inference/chat_mmgpt.gin", "--out",
         str(tmp_path / "chat")],
        input="hello there\n[image: nowhere.png]\n/clear\nhi\n", capture_output=True, text=True,
        cwd=REPO, timeout=900)
    assert chat.returncode == 1 and "image file not found: nowhere.png" in chat.stderr
    assert "history cleared" in chat.stdout
