"""GenerationSettings: the release's per-output defaults, gin overrides, validation, dicts."""

import gin
import pytest

from anygpt_jax.inference import RELEASE_DEFAULTS, GenerationSettings
from anygpt_jax.inference.decoding import Plan, bucket


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_release_rows():
    """The release's inference settings: all sampling, min_new_tokens 10."""
    rows = {name: GenerationSettings.for_output(name) for name in RELEASE_DEFAULTS}
    assert set(rows) == {"text", "image", "speech", "music", "chat"}
    for s in rows.values():
        assert s.do_sample and s.temperature == 1.0 and s.top_p == 1.0 and s.min_new_tokens == 10
    assert [rows[n].max_new_tokens for n in ("text", "image", "speech", "music", "chat")] == [
        100,
        200,
        1500,
        2000,
        500,
    ]
    assert rows["speech"].repetition_penalty == 1.05 and rows["speech"].top_k == 0
    assert rows["music"].repetition_penalty == 1.15 and rows["music"].top_k == 200
    assert rows["chat"].num_beams == 5 and rows["text"].num_beams == 1
    assert rows["text"].repetition_penalty == 1.0 and rows["image"].top_k == 0


def test_gin_overrides_scoped_then_global():
    gin.parse_config(
        [
            "music/GenerationSettings.top_k = 250",
            "GenerationSettings.max_new_tokens = 300",
            "image/GenerationSettings.top_p = 0.7",
        ]
    )
    music = GenerationSettings.for_output("music")
    assert music.top_k == 250 and music.max_new_tokens == 300 and music.repetition_penalty == 1.15
    image = GenerationSettings.for_output("image")
    assert image.top_p == 0.7 and image.top_k == 0 and image.max_new_tokens == 300
    assert GenerationSettings().max_new_tokens == 300 and GenerationSettings().top_p == 1.0


def test_unknown_output_and_bad_values_are_named():
    with pytest.raises(ValueError, match=r"no generation settings for output 'video'; known: "):
        GenerationSettings.for_output("video")
    bad = {
        "temperature": 0.0,
        "top_k": -1,
        "top_p": 0.0,
        "repetition_penalty": 0.0,
        "max_new_tokens": 0,
        "num_beams": 0,
        "early_stopping": "sometimes",
        "do_sample": "yes",
    }
    for field, value in bad.items():
        with pytest.raises(ValueError, match=rf"GenerationSettings\.{field}={value!r}"):
            GenerationSettings(**{field: value})
    with pytest.raises(ValueError, match=r"min_new_tokens=20: must be an int in \[0, max_new"):
        GenerationSettings(min_new_tokens=20, max_new_tokens=10)
    with pytest.raises(ValueError, match="GenerationSettings.top_k=1.5"):
        GenerationSettings(top_k=1.5)


def test_from_dict():
    base = GenerationSettings.for_output("speech")
    s = GenerationSettings.from_dict({"top_p": 0.7, "max_new_tokens": 50}, "request 3", base)
    assert s.top_p == 0.7 and s.max_new_tokens == 50 and s.repetition_penalty == 1.05
    with pytest.raises(ValueError, match=r"request 3: unknown generation settings \['topp'\]"):
        GenerationSettings.from_dict({"topp": 0.7}, "request 3")
    with pytest.raises(ValueError, match=r"request 3: GenerationSettings.top_p=2"):
        GenerationSettings.from_dict({"top_p": 2}, "request 3")
    assert GenerationSettings.from_dict(s.to_dict()) == s


def test_plans_leave_out_filters_that_do_nothing():
    """Value-only changes reuse one compiled program; only filters in use are traced."""
    a = Plan.of(GenerationSettings(temperature=0.7, top_p=0.9, max_new_tokens=40), True, 2)
    b = Plan.of(GenerationSettings(temperature=1.3, top_p=0.5, max_new_tokens=90), True, 3)
    assert a == b and a.use_top_p and not a.use_penalty and a.num_stop == 0
    greedy = Plan.of(GenerationSettings(do_sample=False, top_k=5, top_p=0.5), False, 1)
    assert greedy.top_k == 0 and not greedy.use_top_p
    beams = Plan.of(GenerationSettings(num_beams=4, early_stopping=True), False, 3)
    assert beams.num_stop == 3 and beams.min_tokens_to_keep == 4
    assert [bucket(n) for n in (1, 16, 17, 100, 129)] == [16, 16, 32, 128, 256]
    # Prompt lengths: two sizes per octave, never below the minimum, each n fits its bucket.
    halves = [bucket(n, per_octave=2) for n in (1, 16, 17, 25, 33, 49, 65, 79, 97, 129, 4000)]
    assert halves == [16, 16, 24, 32, 48, 64, 96, 96, 128, 192, 4096]
    assert all(n <= bucket(n, per_octave=p) < 2 * n + 16 for n in range(1, 600) for p in (1, 2, 4))
