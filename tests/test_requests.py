"""Inference request parsing: every base form, chat messages with media, JSONL batch lines."""

from __future__ import annotations

import json

import pytest

from anygpt_jax.inference.requests import (
    BaseRequest,
    ChatRequest,
    MediaRef,
    RequestError,
    parse_base,
    parse_chat_message,
    read_jsonl,
)


@pytest.fixture()
def files(tmp_path):
    for name in ("cat.png", "hello.wav", "song.wav", "voice.wav", "a b.png"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_every_base_form(files):
    d = str(files)
    cases = {
        "text|image|a red bus": BaseRequest("text", "image", text="a red bus"),
        f"image|text|{d}/cat.png": BaseRequest(
            "image", "text", media=MediaRef("image", f"{d}/cat.png")),
        "text|speech|Hello there": BaseRequest("text", "speech", text="Hello there"),
        f"text|speech|Hello there|{d}/voice.wav": BaseRequest(
            "text", "speech", text="Hello there", voice=f"{d}/voice.wav"),
        f"speech|text|{d}/hello.wav": BaseRequest(
            "speech", "text", media=MediaRef("speech", f"{d}/hello.wav")),
        "text|music|calm piano, slow": BaseRequest("text", "music", text="calm piano, slow"),
        f"music|text|{d}/song.wav": BaseRequest(
            "music", "text", media=MediaRef("music", f"{d}/song.wav")),
    }
    for line, want in cases.items():
        assert parse_base(line) == want, line
    # whitespace around fields, upper-case modality words; a caption may hold '|'
    assert parse_base("  Text | IMAGE |  a|b  ") == BaseRequest("text", "image", text="a|b")
    assert parse_base(f"text|speech|hi|{d}/voice.wav").direction == "text_to_speech"
    assert parse_base("text|speech|hi|").voice is None  # an empty voice field is no voice
    # relative paths resolve against base_dir
    assert parse_base("image|text|a b.png", base_dir=d).media.path == f"{d}/a b.png"


@pytest.mark.parametrize(
    "line, match",
    [
        ("video|text|clip.mp4", r"unknown modality 'video'; expected one of text, image"),
        ("text|smell|roses", r"\(output modality\): unknown modality 'smell'"),
        ("image|music|x.png", r"image\|music is not a base-model direction"),
        ("text|text|hi", r"text\|text is not a base-model direction"),
        ("text|image", r"is not a base request; expected one of text\|image\|\{caption\}"),
        ("text|image|   ", r"empty input for text\|image"),
        ("image|text|missing.png", r"image file not found: missing.png"),
        ("text|speech|hi|nope.wav", r"voice prompt file not found: nope.wav"),
    ],
)
def test_bad_base_requests_name_the_fault(line, match):
    with pytest.raises(RequestError, match=match):
        parse_base(line, where="line 7")
    with pytest.raises(RequestError, match="^line 7"):
        parse_base(line, where="line 7")


def test_chat_messages_interleave_text_and_media(files):
    d = str(files)
    m = parse_chat_message("Compare [image: cat.png] with [IMAGE:a b.png ], then sing "
                           "[speech: hello.wav][music: song.wav].", base_dir=d)
    assert m.parts == (
        "Compare ", MediaRef("image", f"{d}/cat.png"), " with ", MediaRef("image", f"{d}/a b.png"),
        ", then sing ", MediaRef("speech", f"{d}/hello.wav"), MediaRef("music", f"{d}/song.wav"),
        ".",
    )
    assert m.to is None
    assert parse_chat_message("[image: cat.png]", base_dir=d).parts == (
        MediaRef("image", f"{d}/cat.png"),)
    # ordinary bracketed text stays text; the output hint is checked
    m = parse_chat_message("[note: see above] hi", to="Music")
    assert m.parts == ("[note: see above] hi",) and m.to == "music"


@pytest.mark.parametrize(
    "text, match",
    [
        ("look [video: clip.mp4]", r"unknown modality 'video' in '\[video: clip.mp4\]'"),
        ("look [image: gone.png]", r"image file not found: .*gone.png"),
        ("look [image: ]", r"empty image file path"),
        ("what is [bogus: x]?", r"unknown modality 'bogus' in '\[bogus: x\]'"),
        ("see [image: cat.png and more", r"unclosed media tag '\[image: cat.png and more'"),
        ("hear [Speech:a.wav", r"unclosed media tag .*write \[speech: PATH\]"),
        ("   ", r"empty message"),
    ],
)
def test_bad_chat_messages(files, text, match):
    with pytest.raises(RequestError, match=match):
        parse_chat_message(text, base_dir=str(files), where="msg")
    with pytest.raises(RequestError, match=r"\('to'\): unknown modality 'smell'"):
        parse_chat_message("hi", to="smell")


def _jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_jsonl_base_lines_and_their_errors(files):
    path = _jsonl(files / "in.jsonl", [
        {"id": "a", "request": "text|image|a red bus"},
        {"id": 7, "from": "speech", "to": "text", "input": "hello.wav", "instruction": "Say."},
        "",
        '{"id": "broken", "request": ',
        {"id": "b", "request": "text|image|x", "to": "text"},
        {"id": "c", "request": "image|text|missing.png"},
        {"id": "d", "requets": "text|image|x"},
        ["not", "an", "object"],
        {"id": "e", "from": "text", "to": "music"},
    ])
    got = dict(read_jsonl(path, "base"))
    assert sorted(got) == [1, 2, 4, 5, 6, 7, 8, 9]  # blank line 3 skipped
    assert got[1] == BaseRequest("text", "image", text="a red bus", id="a")
    assert got[2] == BaseRequest("speech", "text", media=MediaRef("speech", f"{files}/hello.wav"),
                                 instruction="Say.", id="7")
    errors = {n: str(e) for n, e in got.items() if isinstance(e, Exception)}
    assert errors[4].startswith(f"{path}:4: not valid JSON")
    assert "give either 'request' or 'from'/'to'/'input'" in errors[5]
    assert f"{path}:6: image file not found: {files}/missing.png" == errors[6]
    assert "unknown keys ['requets']" in errors[7]
    assert "expected a JSON object, got list" in errors[8]
    assert "missing key 'input'" in errors[9]
    with pytest.raises(FileNotFoundError, match="requests file not found: .*nope.jsonl"):
        list(read_jsonl(str(files / "nope.jsonl"), "base"))


def test_jsonl_chat_lines(files):
    path = _jsonl(files / "chat.jsonl", [
        {"id": "d1", "messages": ["Hi [image: cat.png]", {"content": "Now a song", "to": "music"}]},
        {"id": "d2", "messages": []},
        {"id": "d3", "messages": [{"content": "x", "to": "smell"}]},
        {"id": "d4", "messages": [3]},
    ])
    got = dict(read_jsonl(path, "chat"))
    assert got[1] == ChatRequest((
        parse_chat_message("Hi [image: cat.png]", base_dir=str(files)),
        parse_chat_message("Now a song", to="music"),
    ), id="d1")
    assert "'messages' must be a non-empty list" in str(got[2])
    assert "message 0 ('to'): unknown modality 'smell'" in str(got[3])
    assert "message 0: expected a string or {'content', 'to'} object" in str(got[4])
