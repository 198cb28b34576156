"""Span constraints: masks per state, transitions, budgets, prompt states, and random walks
through the state machine that must always leave strictly parseable sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anygpt_jax.inference import constraints
from anygpt_jax.modalities import image_codes_from_ids, music_codes_from_ids, speech_units_from_ids
from anygpt_jax.vocab import ModalitySpan


@pytest.fixture(scope="module")
def table(merged_vocab):
    return constraints.span_table(merged_vocab, padded_vocab_size=merged_vocab.vocab_size + 36)


_allowed = jax.jit(constraints.allowed_mask)


def mask_of(table, span, pos, remaining):
    rows = lambda x: jnp.asarray([x], jnp.int32)  # noqa: E731
    return np.asarray(_allowed(table, rows(span), rows(pos), rows(remaining)))[0]


def ids_of(mask):
    return set(np.flatnonzero(mask).tolist())


def test_text_state(merged_vocab, table):
    v = merged_vocab
    image, speech, music = (v.modality(n) for n in ("image", "speech", "music"))
    mask = mask_of(table, 0, 0, 1000)
    assert mask.shape == (v.vocab_size + 36,) and not mask[v.vocab_size :].any()
    for m in v.modalities.values():
        assert not mask[m.first_id : m.stop_id].any() and not mask[m.end_id] and mask[m.start_id]
    assert mask[v.eos_id] and mask[v.token_to_id("[Human]")] and mask[5]
    # A span opens only if it can close within the budget: image needs 32 codes + <eoim>.
    assert not mask_of(table, 0, 0, 33)[image.start_id]
    assert mask_of(table, 0, 0, 34)[image.start_id]
    assert not mask_of(table, 0, 0, 2)[speech.start_id] and mask_of(table, 0, 0, 3)[speech.start_id]
    assert not mask_of(table, 0, 0, 5)[music.start_id] and mask_of(table, 0, 0, 6)[music.start_id]


def test_image_span_has_exactly_32_codes(merged_vocab, table):
    image = merged_vocab.modality("image")
    for pos in (0, 1, 31):
        assert ids_of(mask_of(table, image.index, pos, 200)) == set(
            range(image.first_id, image.stop_id)
        )
    assert ids_of(mask_of(table, image.index, 32, 200)) == {image.end_id}


def test_music_span_is_frame_major(merged_vocab, table):
    music = merged_vocab.modality("music")
    for pos in range(10):
        lo = music.first_id + (pos % 4) * 2048
        want = set(range(lo, lo + 2048)) | ({music.end_id} if pos % 4 == 0 and pos >= 4 else set())
        assert ids_of(mask_of(table, music.index, pos, 100)) == want, pos
    # With 3 tokens left at position 6 the frame must finish: codebooks 2, 3, then <eomu>.
    assert ids_of(mask_of(table, music.index, 6, 3)) == set(
        range(music.first_id + 4096, music.first_id + 6144)
    )
    assert ids_of(mask_of(table, music.index, 8, 1)) == {music.end_id}


def test_speech_span(merged_vocab, table):
    speech = merged_vocab.modality("speech")
    codes = set(range(speech.first_id, speech.stop_id))
    assert ids_of(mask_of(table, speech.index, 0, 10)) == codes  # never empty
    assert ids_of(mask_of(table, speech.index, 3, 10)) == codes | {speech.end_id}
    assert ids_of(mask_of(table, speech.index, 3, 1)) == {speech.end_id}


def test_advance(merged_vocab, table):
    image, music = merged_vocab.modality("image"), merged_vocab.modality("music")
    span = jnp.asarray([0, 0, image.index, image.index, music.index], jnp.int32)
    pos = jnp.asarray([0, 0, 5, 32, 7], jnp.int32)
    token = jnp.asarray([music.start_id, 7, image.first_id, image.end_id, music.first_id + 6200])
    new_span, new_pos = constraints.advance(table, span, pos, token)
    assert np.asarray(new_span).tolist() == [music.index, 0, image.index, 0, music.index]
    assert np.asarray(new_pos).tolist() == [0, 0, 6, 0, 8]


def test_fixed_lengths_and_min_frames_are_configurable(merged_vocab):
    image, speech = merged_vocab.modality("image"), merged_vocab.modality("speech")
    t = constraints.span_table(merged_vocab, fixed_lengths={"image": 8, "speech": 3}, min_frames=2)
    assert ids_of(mask_of(t, image.index, 8, 50)) == {image.end_id}
    assert ids_of(mask_of(t, speech.index, 3, 50)) == {speech.end_id}
    music = merged_vocab.modality("music")
    assert music.end_id not in ids_of(mask_of(t, music.index, 4, 50))
    assert music.end_id in ids_of(mask_of(t, music.index, 8, 50))


def test_span_table_refuses_bad_settings(merged_vocab):
    with pytest.raises(ValueError, match=r"fixed_lengths names modalities \['video'\]"):
        constraints.span_table(merged_vocab, fixed_lengths={"video": 4})
    with pytest.raises(
        ValueError, match=r"fixed_lengths\['music'\]=6 must be a positive multiple of 4"
    ):
        constraints.span_table(merged_vocab, fixed_lengths={"music": 6})
    with pytest.raises(ValueError, match="min_frames=0"):
        constraints.span_table(merged_vocab, min_frames=0)
    with pytest.raises(ValueError, match="smaller than the vocabulary"):
        constraints.span_table(merged_vocab, padded_vocab_size=10)


def test_prompt_state(merged_vocab, table):
    v = merged_vocab
    image, music = v.modality("image"), v.modality("music")
    text = v.encode("[Human]: draw a cat<eoh> [MMGPT]:")
    closed = v.span_to_ids(ModalitySpan("image", np.arange(32)))
    assert constraints.prompt_state(v, table, text, "p") == (0, 0)
    assert constraints.prompt_state(v, table, text + closed, "p") == (0, 0)
    assert constraints.prompt_state(v, table, text + closed + [image.start_id], "p") == (
        image.index,
        0,
    )
    codes = music.codes_to_ids(np.zeros((4, 2), int)).tolist()
    assert constraints.prompt_state(v, table, text + [music.start_id] + codes[:6], "p") == (
        music.index,
        6,
    )
    assert constraints.state_need(table, music.index, 6) == 3
    assert constraints.state_need(table, image.index, 0) == 33
    with pytest.raises(
        ValueError,
        match=r"prompt 3: the open music span .* which is not a music code of codebook 1",
    ):
        constraints.prompt_state(
            v, table, text + [music.start_id] + codes[:1] + [codes[0]], "prompt 3"
        )
    with pytest.raises(
        ValueError,
        match="prompt 1: the open image span .* already has 33 codes; image spans have exactly 32",
    ):
        constraints.prompt_state(v, table, [image.start_id] + [image.first_id] * 33, "prompt 1")


def test_random_walks_always_parse(merged_vocab, table):
    """Draws from the allowed sets (span openings and closings made likely) under a budget:
    every finished sequence parses strictly, whatever state it started in."""
    v = merged_vocab
    image, speech, music = (v.modality(n) for n in ("image", "speech", "music"))
    padded = table.opens.shape[0]
    weights = np.ones(padded, np.float32)
    for m in (image, speech, music):
        weights[m.start_id] = 3000.0
        weights[m.end_id] = 300.0
    log_w = jnp.log(jnp.asarray(weights))
    prompts = {
        "text": v.encode("hello"),
        "image": [image.start_id],
        "speech": [speech.start_id, speech.first_id],
        "music": [music.start_id] + music.codes_to_ids(np.zeros((4, 1), int)).tolist()[:3],
    }
    rows, budget = 32, 110

    @jax.jit
    def walk(key, span, pos):
        # One draw of Gumbel noise, rotated each step: fresh-enough noise at a fraction of the
        # cost of drawing rows x vocab numbers per step on a CPU.
        noise = jax.random.gumbel(key, (rows, padded))

        def body(t, c):
            span, pos, out = c
            allowed = constraints.allowed_mask(table, span, pos, jnp.full_like(span, budget - t))
            scores = jnp.where(
                allowed, log_w[None] + jnp.roll(noise, 7919 * t + 13, axis=1), -jnp.inf
            )
            tok = jnp.argmax(scores, axis=-1).astype(jnp.int32)
            span, pos = constraints.advance(table, span, pos, tok)
            return span, pos, out.at[:, t].set(tok)

        out = jnp.zeros((rows, budget), jnp.int32)
        return jax.lax.fori_loop(0, budget, body, (span, pos, out))

    seen = set()
    for k, (name, prompt) in enumerate(prompts.items()):
        state = constraints.prompt_state(v, table, prompt, name)
        span = jnp.full(rows, state[0], jnp.int32)
        pos = jnp.full(rows, state[1], jnp.int32)
        end_span, _, out = walk(jax.random.key(k), span, pos)
        assert (np.asarray(end_span) == 0).all(), name  # the budget closed every span
        for row in np.asarray(out).tolist():
            segments = v.decode_segments(prompt + row, strict=True)
            for seg in segments:
                if isinstance(seg, ModalitySpan):
                    seen.add(seg.modality)
                    ids = v.modality(seg.modality).codes_to_ids(seg.codes)
                    if seg.modality == "image":
                        assert image_codes_from_ids(ids, v).shape == (32,)
                    elif seg.modality == "music":
                        assert music_codes_from_ids(ids, v, strict=True).shape[0] == 4
                    else:
                        assert len(speech_units_from_ids(ids, v)) >= 1
    assert seen >= {"image", "speech", "music"}
