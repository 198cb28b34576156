"""The HTTP server: a real uvicorn on 127.0.0.1 and real HTTP clients; chat with media in and
out, batching of concurrent requests, bad input answered with a 4xx while serving goes on,
the API key, health and metrics."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from infer_assets import build_assets, fast_gin_bindings, make_engine
from PIL import Image

from anygpt_jax.serving.app import make_app
from anygpt_jax.serving.messages import MediaStore
from anygpt_jax.serving.scheduler import BatchScheduler

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
LIMIT = 200_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, merged_vocab):
    """A server over the tiny model with every tokenizer, on its own port; yields its URL."""
    import uvicorn

    gin_state = fast_gin_bindings()
    next(gin_state)
    root = tmp_path_factory.mktemp("serve")
    engine = make_engine(build_assets(root, merged_vocab))
    scheduler = BatchScheduler(engine, str(root / "generated"), max_batch=8)
    (root / "generated").mkdir()
    rounds, joins = [], []  # requests per round; (joiners, rows busy after) per admission
    app = make_app(scheduler, MediaStore(str(root / "uploads"), LIMIT), "tiny",
                   api_key="sekrit")
    original_round, original_admit = scheduler._round, scheduler._admit

    def counting(batch):
        rounds.append(len(batch))
        original_round(batch)

    def admitting(joiners):
        original_admit(joiners)
        joins.append((len(joiners), scheduler._running.busy))

    scheduler._round, scheduler._admit = counting, admitting
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "rounds": rounds, "joins": joins, "root": root,
           "scheduler": scheduler}
    srv.should_exit = True
    thread.join(timeout=10)
    scheduler.close()
    next(gin_state, None)


def call(server, path, body=None, key="sekrit", raw=None, headers=None):
    """(status, decoded JSON or bytes) of one real HTTP request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server["url"] + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            payload, status, kind = r.read(), r.status, r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        payload, status, kind = e.read(), e.code, e.headers.get("content-type", "")
    return status, json.loads(payload) if "json" in kind else payload


def _png() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(
        buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _wav() -> str:
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.random.default_rng(1).standard_normal(4000).astype(np.float32),
             16000, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def test_text_chat_and_health(server):
    status, body = call(server, "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "Hello there"}]})
    assert status == 200, body
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert body["usage"]["completion_tokens"] > 0
    status, health = call(server, "/health", key=None)
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny"


def test_media_in_and_out(server):
    """A PNG and a WAV in a chat; base-mode replies in speech (a WAV this server serves) and
    in an image (its codes: no unCLIP pipeline is given); a chat with history."""
    content = [{"type": "text", "text": "Look and listen: "},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png()}},
               {"type": "input_audio", "input_audio": {"data": _wav(), "format": "wav"}}]
    status, body = call(server, "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": content}], "max_tokens": 16})
    assert status == 200, body
    status, body = call(server, "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "Hello there"}],
                         "mode": "base", "reply_modality": "speech"})
    assert status == 200, body
    (media,) = body["choices"][0]["message"]["media"]
    assert media["modality"] == "speech" and media["format"] == "wav"
    status, wav = call(server, media["url"])
    assert status == 200 and wav[:4] == b"RIFF"
    assert sf.read(io.BytesIO(wav))[0].size > 0
    status, body = call(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": [
            {"type": "media", "modality": "image", "data": _png()}]}],
        "mode": "base", "reply_modality": "text"})
    assert status == 200 and isinstance(body["choices"][0]["message"]["content"], str), body
    status, body = call(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "A red bus"}], "mode": "base",
        "reply_modality": "image"})
    assert status == 200, body
    (media,) = body["choices"][0]["message"]["media"]
    assert media["modality"] == "image" and media["format"] == "codes"
    status, codes = call(server, media["url"])
    assert status == 200 and codes["modality"] == "image" and len(codes["codes"]) > 0
    messages = [{"role": "user", "content": "Draw a cat"},
                {"role": "assistant", "content": "Here it is."},
                {"role": "user", "content": "Another one, please"}]
    status, body = call(server, "/v1/chat/completions",
                        {"messages": messages, "reply_modality": "image", "temperature": 0.7})
    assert status == 200, body
    assert body["reply_modality"] == "image"


def test_bad_requests_get_a_4xx_and_the_server_goes_on(server):
    cases = [
        (None, b"{not json", 400, "malformed JSON"),
        ({"messages": [{"role": "user", "content": "hi"}], "reply_modality": "video"}, None,
         400, "reply_modality 'video'"),
        ({"messages": [{"role": "user", "content": [
            {"type": "media", "modality": "smell", "data": "AAAA"}]}]}, None, 400,
         "modality 'smell'"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                + base64.b64encode(b"not a png").decode()}}]}]},
         None, 400, "cannot read image"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, None, 400,
         "fetches no URL"),
        ({"messages": [{"role": "user", "content": [
            {"type": "media", "modality": "image",
             "data": base64.b64encode(b"x" * (LIMIT + 1)).decode()}]}]}, None, 413,
         "upload limit"),
        ({"messages": [{"role": "user", "content": "word " * 3000}]}, None, 400, "the prompt"),
        ({"messages": [{"role": "user", "content": "[image: /etc/passwd] what is this?"}]}, None,
         200, ""),
    ]
    for body, raw, want, words in cases:
        status, got = call(server, "/v1/chat/completions", body, raw=raw)
        assert status == want, (want, got)
        if want != 200:
            assert words in got["error"]["message"], got
    assert call(server, "/v1/chat/completions", {"messages": []}, key="wrong")[0] == 401
    assert call(server, "/v1/chat/completions", {"messages": []}, key=None)[0] == 401
    assert call(server, "/v1/media/..%2F..%2Fetc%2Fpasswd")[0] == 404
    status, _ = call(server, "/v1/chat/completions",
                     {"messages": [{"role": "user", "content": "still there?"}]})
    assert status == 200


@pytest.mark.parametrize("batching", ["continuous", "rounds"])
def test_concurrent_requests_decode_together_and_none_is_lost(server, batching):
    """32 clients at once, a quarter of them bad: every good one is answered, decoded with
    others (rows of one continuous batch, or rounds); the metrics count them."""
    scheduler = server["scheduler"]
    scheduler.continuous = batching == "continuous"
    before_rounds, before_joins = len(server["rounds"]), len(server["joins"])

    def one(k):
        if k % 4 == 3:
            return call(server, "/v1/chat/completions", {"messages": [{"role": "user"}]})
        return call(server, "/v1/chat/completions",
                    {"messages": [{"role": "user", "content": f"Tell me about {k}"}]})

    try:
        with cf.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(32)))
    finally:
        scheduler.continuous = True
    assert [s for k, (s, _) in enumerate(results) if k % 4 != 3] == [200] * 24
    assert [s for k, (s, _) in enumerate(results) if k % 4 == 3] == [400] * 8
    rounds, joins = server["rounds"][before_rounds:], server["joins"][before_joins:]
    if batching == "rounds":
        assert sum(rounds) == 24 and len(rounds) < 24 and max(rounds) > 1 and not joins
    else:
        assert sum(n for n, _ in joins) == 24 and max(busy for _, busy in joins) > 1
        assert not rounds
    status, text = call(server, "/metrics", key=None)
    text = text.decode()
    assert status == 200 and 'anygpt_requests_total{status="200"}' in text
    assert "anygpt_queue_length" in text
    # The scheduler's observations reach the metrics: tokens generated, latencies counted.
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["anygpt_generated_tokens_total"] > 0
    assert values["anygpt_request_seconds_count"] >= 24


def test_a_request_joins_a_running_generation_and_leaves_before_it_ends(server):
    """Continuous batching: a short request sent while a long one is decoding is answered
    before the long one ends (it joined at a decode step, not after the long one's batch), and
    a beam-search request waits for the batch to drain, then runs in a round."""
    import requests

    headers = {"Authorization": "Bearer sekrit"}
    long_body = {"messages": [{"role": "user", "content": "Tell me a long story"}],
                 "max_tokens": 400, "stream": True, "temperature": 0.9, "do_sample": True}
    times = {}
    with requests.post(server["url"] + "/v1/chat/completions", json=long_body,
                       headers=headers, stream=True, timeout=300) as long_reply:
        lines = long_reply.iter_lines()
        next(line for line in lines if line.startswith(b"data: "))  # it is decoding
        status, short = call(server, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12,
            "temperature": 0.9, "do_sample": True})
        times["short"] = time.perf_counter()
        assert status == 200, short
        rest = [line for line in lines if line.startswith(b"data: ")]
        times["long"] = time.perf_counter()
    assert rest[-1] == b"data: [DONE]"
    final = json.loads(rest[-2][len(b"data: "):])
    assert final["usage"]["completion_tokens"] > 12  # still decoding when the short one ended
    assert times["short"] < times["long"]
    rounds = len(server["rounds"])
    status, body = call(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Hi"}], "num_beams": 2, "max_tokens": 16})
    assert status == 200, body
    assert len(server["rounds"]) == rounds + 1


def test_the_serve_command_starts_answers_and_prints_nothing_alarming(tmp_path, merged_vocab):
    """`python -m anygpt_jax.serve --ckpt DIR --port P` in a user's environment: it says where
    it serves, answers, and its output has no C++ log, CUDA or libtpu lines."""
    import signal
    import subprocess
    import sys

    from synthetic_task import cli_env, noisy_lines, user_env

    root = build_assets(tmp_path, merged_vocab)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "anygpt_jax.serve", "--ckpt", str(root / "model"), "--port",
         str(port), "--gin.GenerationSettings.max_new_tokens=8",
         "--gin.GenerationSettings.min_new_tokens=0"],
        env=user_env(cli_env(1)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    assert json.loads(r.read())["status"] == "ok"
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                time.sleep(0.5)
        status, body = call({"url": url}, "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "Hi"}]}, key=None)
        assert status == 200, body
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert f"serving {root / 'model'} on {url}/" in out
    assert noisy_lines(out + err) == [], err[-3000:]


def test_the_chat_page_in_a_real_browser(server, tmp_path):
    """Headless Chromium (Debian's chromium and chromium-driver) loads the page, sends a text
    message, a PNG and a WAV, asks for speech, and sees each reply rendered; the conversation's
    screenshot goes to test-artifacts/ (or $ANYGPT_TEST_ARTIFACTS)."""
    import os
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, "chromium and chromium-driver: run scripts/setup.sh"
    png, wav = tmp_path / "digit.png", tmp_path / "hello.wav"
    png.write_bytes(base64.b64decode(_png()))
    wav.write_bytes(base64.b64decode(_wav()))
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1000,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(server["url"] + "/")
        wait = WebDriverWait(driver, 240)
        wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny")
        driver.find_element(By.TAG_NAME, "summary").click()
        driver.find_element(By.ID, "api_key").send_keys("sekrit")

        def replies():
            return driver.find_elements(By.CSS_SELECTOR, ".turn.assistant")

        def send(text, count):
            driver.find_element(By.ID, "text").send_keys(text)
            driver.find_element(By.ID, "send").click()
            # A streamed reply's turn appears at once; the send button is back when it is done.
            wait.until(lambda d: len(replies()) >= count
                       and d.find_element(By.ID, "send").is_enabled())
            return replies()[count - 1]

        first = send("Hello there", 1)
        assert "error" not in first.get_attribute("class"), first.text
        for field, path in (("image", png), ("audio", wav)):
            element = driver.find_element(By.ID, field)
            driver.execute_script("arguments[0].hidden = false", element)
            element.send_keys(str(path))
        wait.until(ec.text_to_be_present_in_element((By.ID, "attachments"), "hello.wav"))
        second = send("What do you see and hear?", 2)
        assert "error" not in second.get_attribute("class"), second.text
        user_turns = driver.find_elements(By.CSS_SELECTOR, ".turn.user")
        assert user_turns[-1].find_elements(By.TAG_NAME, "img")
        assert user_turns[-1].find_elements(By.TAG_NAME, "audio")
        Select(driver.find_element(By.ID, "mode")).select_by_visible_text("base")
        Select(driver.find_element(By.ID, "reply_modality")).select_by_visible_text("speech")
        third = send("Hello", 3)
        (player,) = third.find_elements(By.TAG_NAME, "audio")
        assert player.get_attribute("src").startswith(server["url"] + "/v1/media/")
        artifacts = os.environ.get("ANYGPT_TEST_ARTIFACTS",
                                   os.path.join(os.path.dirname(os.path.dirname(
                                       os.path.abspath(__file__))), "test-artifacts"))
        os.makedirs(artifacts, exist_ok=True)
        shot = os.path.join(artifacts, "serve_chat_page.png")
        assert driver.save_screenshot(shot) and os.path.getsize(shot) > 1000
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()


def test_a_multipart_upload_names_its_files(server):
    """Media as form files, the JSON in the `request` field; a part naming no upload is a 400."""
    import requests

    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this? "},
        {"type": "media", "modality": "image", "file": "picture"}]}], "mode": "base"}
    headers = {"Authorization": "Bearer sekrit"}
    ok = requests.post(server["url"] + "/v1/chat/completions", headers=headers, timeout=300,
                       data={"request": json.dumps(body)},
                       files={"picture": ("x.png", base64.b64decode(_png()), "image/png")})
    assert ok.status_code == 200, ok.text
    body["messages"][0]["content"][1]["file"] = "elsewhere"
    bad = requests.post(server["url"] + "/v1/chat/completions", headers=headers, timeout=300,
                        data={"request": json.dumps(body)},
                        files={"picture": ("x.png", base64.b64decode(_png()), "image/png")})
    assert bad.status_code == 400 and "'elsewhere' names no uploaded file" in bad.text


def test_a_streamed_reply_arrives_in_pieces_as_it_is_decoded(server):
    """`"stream": true`: server-sent events, a role chunk, text pieces, then the whole reply
    with its finish reason, then [DONE]."""
    body = {"messages": [{"role": "user", "content": "Tell me a story"}], "stream": True,
            "max_tokens": 24}
    req = urllib.request.Request(server["url"] + "/v1/chat/completions",
                                 json.dumps(body).encode(),
                                 {"Content-Type": "application/json",
                                  "Authorization": "Bearer sekrit"})
    with urllib.request.urlopen(req, timeout=300) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.read().decode().split("\n\n") if x.strip()]
    assert all(x.startswith("data: ") for x in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(x[6:]) for x in lines[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant"}
    pieces = [e["choices"][0]["delta"].get("content", "") for e in events[1:-1]]
    final = events[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["usage"]["completion_tokens"] > 0 and "media" in final["choices"][0]["delta"]
    assert len(pieces) >= 2, events
    squeeze = lambda text: "".join(text.split())  # noqa: E731
    assert squeeze(final["content"]).startswith(squeeze("".join(pieces)))
    # What the engine refuses is still a 4xx, not an error inside a 200 stream.
    body["messages"][0]["content"] = "word " * 3000
    status, got = call(server, "/v1/chat/completions", body)
    assert status == 400 and "the prompt" in got["error"]["message"], got


def test_uploads_live_as_long_as_their_request(server):
    """Decoded uploads are deleted once the request is answered, refused or failed: a server
    that runs for weeks keeps none (a history carries its media again)."""
    uploads = server["root"] / "uploads"
    png = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png()}}
    wav = {"type": "input_audio", "input_audio": {"data": _wav(), "format": "wav"}}
    cases = [
        ([{"type": "text", "text": "What is this? "}, png, wav], 200),
        # the PNG is saved before the bad part is met: the 400 takes it away too
        ([png, {"type": "media", "modality": "smell", "data": "AAAA"}], 400),
        # saved, then refused by the engine (not an image)
        ([{"type": "media", "modality": "image",
           "data": base64.b64encode(b"not a png").decode()}], 400),
    ]
    for content, want in cases:
        status, body = call(server, "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": content}],
                             "max_tokens": 12})
        assert status == want, body
        assert not list(uploads.iterdir()), (content, list(uploads.iterdir()))
    status, body = call(server, "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": [png]}], "stream": True})
    assert status == 200 and b"[DONE]" in body
    assert not list(uploads.iterdir())


def test_generated_media_expire_and_their_files_go(tmp_path):
    from anygpt_jax.serving.app import GeneratedMedia

    table = GeneratedMedia(ttl_s=0.3)
    first, second = tmp_path / "a.wav", tmp_path / "b.png"
    first.write_bytes(b"RIFF")
    table.add("a", str(first), "audio/wav")
    time.sleep(0.2)
    second.write_bytes(b"PNG")
    table.add("b", str(second), "image/png")
    assert table.get("a") == (str(first), "audio/wav") and len(table) == 2
    time.sleep(0.15)  # a is past its time, b is not
    assert table.get("a") is None and not first.exists()
    assert table.get("b") == (str(second), "image/png") and second.exists()
    time.sleep(0.2)
    assert table.get("b") is None and not second.exists() and len(table) == 0
    assert table.get("never") is None
