"""`python -m anygpt_jax.infer` on a tiny random AnyGPT: batch JSONL -> results.jsonl + media
(PNG through a tiny unCLIP pipeline, WAV through Encodec and SoundStorm), errors naming the
fault, usage errors, and the real command (slow)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
import soundfile as sf
from infer_assets import (
    FAST,
    MUSIC,
    SEED,
    SPEECH,
    build_assets,
    fast_gin_bindings,
    make_engine,
    random_params,
    read_codes,
    read_lines,
)
from PIL import Image
from synthetic_task import noisy_lines, user_env

from anygpt_jax import gin_utils, infer, prompts, storage
from anygpt_jax.inference import session
from anygpt_jax.inference.media import MediaCodecs, MediaSettings
from anygpt_jax.inference.renderers import SPEECH_WAV_UNAVAILABLE
from anygpt_jax.inference.requests import parse_base
from anygpt_jax.inference.session import Engine
from anygpt_jax.modalities import codec
from anygpt_jax.modalities.audio_layers import SEANetConfig
from anygpt_jax.vocab import ModalitySpan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, merged_vocab):
    return build_assets(tmp_path_factory.mktemp("infer"), merged_vocab)


@pytest.fixture(scope="module")
def unclip_dir(assets):
    """A tiny random StableUnCLIPImg2Img pipeline directory (16 px images)."""
    from test_image_tokenizer import _tiny_unclip_pipeline

    _tiny_unclip_pipeline(SEED.embed_dim).save_pretrained(str(assets / "unclip"))
    return assets / "unclip"


@pytest.fixture(scope="module")
def engine(assets):
    return make_engine(assets)


@pytest.fixture()
def fast_gin():
    yield from fast_gin_bindings()


def test_cli_batch_writes_results_and_media(assets, engine, unclip_dir, tmp_path, monkeypatch):
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
            "--unclip_pipeline", str(unclip_dir), "--render_steps", "2",
            "--soundstorm", str(assets / "soundstorm"),
            *[f"--gin.{b.replace(' ', '')}" for b in FAST]]
    # The engine's model: its compiled decoding programs are reused (loading is tested below
    # and by the real command).
    monkeypatch.setattr(session, "load_model", lambda ckpt, **_: engine.model)
    try:
        status = infer.main(argv, stdout=stdout, stderr=stderr)
    finally:
        gin.clear_config()
    assert status == 1, stderr.getvalue()  # some requests failed
    assert "12 requests: 6 done, 6 failed" in stdout.getvalue()
    recs = {r["line"]: r for r in read_lines(out / "results.jsonl")}
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
    assert sorted(os.listdir(out)) == [storage.COMMIT_MARKER, "00001-bus.png", "00003-tts.wav",
                                       "00005-jazz.wav", "results.jsonl"]
    # an existing output is never overwritten; nothing is loaded before that check
    assert infer.main(argv, stdout=io.StringIO(), stderr=stderr) == 1
    assert f"--out {out} already exists and is not empty" in stderr.getvalue()


def test_missing_tokenizer_names_its_flag(assets, engine, tmp_path, fast_gin):
    model = engine.model
    bare = Engine(model, MediaCodecs(model.vocab, MediaSettings({"image": str(assets / "image")})))
    [rec] = bare.run_base([parse_base(f"speech|text|{assets}/media/hello.wav")], str(tmp_path),
                          ["x"])
    assert rec["error"] == "this request needs the speech tokenizer: give --speech_tokenizer DIR"
    # output media without its tokenizer/pipeline: codes written, with the reason
    music = ModalitySpan("music", np.arange(8).reshape(4, 2))
    rec = bare.codecs.write(music, str(tmp_path), "m")
    assert rec["format"] == "codes" and "--music_tokenizer DIR" in rec["note"]
    assert read_codes(str(tmp_path), rec) == music.codes.tolist()
    rec = engine.codecs.write(ModalitySpan("image", np.arange(32)), str(tmp_path), "i")
    assert rec["format"] == "codes" and "--unclip_pipeline DIR" in rec["note"]
    rec = engine.codecs.write(ModalitySpan("image", np.arange(5)), str(tmp_path), "j")
    assert "SEED renders 32 codes, the span has 5" in rec["note"]
    rec = bare.codecs.write(ModalitySpan("speech", np.arange(9)), str(tmp_path), "s")
    assert rec["note"] == SPEECH_WAV_UNAVAILABLE
    assert read_codes(str(tmp_path), rec) == list(range(9))
    with pytest.raises(ValueError, match="--music_tokenizer .*nowhere: not a directory"):
        MediaCodecs(model.vocab, MediaSettings({"music": str(tmp_path / "nowhere")}))
    with pytest.raises(ValueError, match="--music_tokenizer .*speech: .*kind 'encodec'"):
        codecs = MediaCodecs(model.vocab, MediaSettings({"music": str(assets / "speech")}))
        codecs.tokenizer("music")
    # a music codec whose codebooks do not fit the vocabulary's music block
    shapes = {k: jax.ShapeDtypeStruct(s, np.float32)
              for k, s in codec.expected_param_shapes(SPEECH).items()}
    codec.save_codec(str(tmp_path), "encodec", SPEECH, random_params(shapes, 3), {})
    with pytest.raises(ValueError, match=r"4 codebook\(s\) of 1024 codes, but the model's "
                       r"vocabulary needs 4 of 2048"):
        MediaCodecs(model.vocab, MediaSettings({"music": str(tmp_path)})).tokenizer("music")
    # a SoundStorm that completes other layers than the SpeechTokenizer has
    two = SEANetConfig(**{**SPEECH.__dict__, "n_q": 2})
    shapes = {k: jax.ShapeDtypeStruct(s, np.float32)
              for k, s in codec.expected_param_shapes(two).items()}
    os.makedirs(tmp_path / "st2")
    codec.save_codec(str(tmp_path / "st2"), "speechtokenizer", two, random_params(shapes, 4), {})
    codecs = MediaCodecs(model.vocab, MediaSettings({"speech": str(tmp_path / "st2")},
                                                    soundstorm=str(assets / "soundstorm")))
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


def test_inference_gin_configs_parse_and_mean_what_they_say():
    from anygpt_jax.inference import GenerationSettings
    from anygpt_jax.inference.chat import base_instruction, chat_style

    names = sorted(os.listdir(os.path.join(gin_utils.CONFIG_DIR, "inference")))
    assert {"chat_anygpt.gin", "chat_mmgpt.gin", "greedy.gin", "paper_eval.gin",
            "tpu.gin"} <= set(names)
    try:
        for name in names:
            infer.parse_gin([f"inference/{name}"], [])
        infer.parse_gin(["inference/chat_mmgpt.gin"], [])
        assert chat_style() == prompts.release_chat_style()
        infer.parse_gin(["inference/chat_anygpt.gin"], [])
        assert chat_style() == prompts.ChatStyle()
        infer.parse_gin(["inference/greedy.gin"], [])
        music = GenerationSettings.for_output("music")
        assert not music.do_sample and music.top_k == 0 and music.repetition_penalty == 1.0
        assert music.max_new_tokens == 2000  # the release's length stays
        infer.parse_gin(["inference/paper_eval.gin"], [])
        assert GenerationSettings.for_output("text").num_beams == 5
        assert GenerationSettings.for_output("image").top_p == 0.7
        assert base_instruction("speech_to_text", "k") == "Transcribe this speech."
        infer.parse_gin(["inference/tpu.gin"], ["make_mesh.mesh_shape = {'tensor': 2}"])
        assert gin.query_parameter("load_model.use_mesh") is True
        assert gin.query_parameter("make_mesh.mesh_shape") == {"tensor": 2}
    finally:
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
                         capture_output=True, text=True, cwd=REPO, timeout=900,
                         env=user_env(os.environ))
    assert run.returncode == 0, run.stderr
    assert noisy_lines(run.stdout + run.stderr) == [], run.stderr[-3000:]
    recs = read_lines(tmp_path / "out" / "results.jsonl")
    assert [r["media"][0]["format"] for r in recs] == ["codes", "wav"]
    assert "--image_tokenizer DIR" in recs[0]["media"][0]["note"]
    chat = subprocess.run(
        [*base, "--mode", "chat", "--gin_file", "inference/chat_mmgpt.gin", "--out",
         str(tmp_path / "chat")],
        input="hello there\n[image: nowhere.png]\n/clear\nhi\n", capture_output=True, text=True,
        cwd=REPO, timeout=900)
    assert chat.returncode == 1 and "image file not found: nowhere.png" in chat.stderr
    assert "history cleared" in chat.stdout


def test_media_settings_are_one_configurable_that_flags_override(merged_vocab):
    gin.clear_config()
    gin.bind_parameter("MediaSettings.tokenizer_dirs", {"music": "demo", "image": "img"})
    gin.bind_parameter("MediaSettings.render_steps", 5)
    try:
        media = MediaSettings().overridden({"image": None, "speech": "demo"}, soundstorm=None,
                                           render_steps=None, unclip_pipeline="unclip")
    finally:
        gin.clear_config()
    assert media == MediaSettings({"music": "demo", "image": "img", "speech": "demo"},
                                  unclip_pipeline="unclip", render_steps=5)
    with pytest.raises(ValueError, match=r"MediaSettings.render_steps=0"):
        MediaCodecs(merged_vocab, MediaSettings(render_steps=0))
