"""Templates, instruction pools and loss weights of rendered samples."""

from __future__ import annotations

import numpy as np
import pytest

from anygpt_jax import prompts
from anygpt_jax.vocab import ModalitySpan


def test_pools_are_large_distinct_and_clean():
    assert set(prompts.INSTRUCTION_POOLS) == set(prompts.DIRECTIONS)
    for d, pool in prompts.INSTRUCTION_POOLS.items():
        assert len(pool) >= 30, d
        assert len(set(pool)) == len(pool), d
        for p in pool:
            assert p == p.strip() and p and "<" not in p and "[" not in p, (d, p)


def test_pick_instruction_is_seeded():
    a = [prompts.pick_instruction("text_to_music", np.random.default_rng(7)) for _ in range(3)]
    assert len(set(a)) == 1
    many = {
        prompts.pick_instruction("speech_to_text", np.random.default_rng(s)) for s in range(300)
    }
    assert len(many) > 25  # the whole pool gets used


def test_pretrain_templates_match_reference(merged_vocab):
    span = ModalitySpan("image", np.array([5, 6]))
    s = merged_vocab.format_span(span)
    [p] = prompts.render_pretrain("image_to_text", "a cat", span, "Describe.")
    assert merged_vocab.format_segments(p.segments) == (
        f"[Human]: Describe. {s}<eoh> [MMGPT]: a cat<eos>"
    )
    [p] = prompts.render_pretrain("text_to_image", "a cat", span, "Draw.")
    assert merged_vocab.format_segments(p.segments) == (
        f"[Human]: Draw. This is input: a cat<eoh> [MMGPT]: {s}<eos>"
    )
    with pytest.raises(ValueError, match="direction 'sideways'"):
        prompts.render_pretrain("sideways", "x", span, "y")


@pytest.mark.parametrize("direction", prompts.DIRECTIONS)
def test_pretrain_ids_are_the_vocabulary_encoding_with_full_loss(merged_vocab, direction):
    mod = direction.replace("_to_text", "").replace("text_to_", "")
    codes = np.arange(8).reshape(4, 2) if mod == "music" else np.arange(7)
    span = ModalitySpan(mod, codes)
    pieces = prompts.render_pretrain(direction, "hello world", span, "Do it.")
    ids, w = prompts.tokenize_pieces(pieces, merged_vocab)
    want = merged_vocab.encode_segments(list(pieces[0].segments), add_bos=True, add_eos=True)
    assert ids.tolist() == want
    assert w[0] == 0 and np.all(w[1:] == 1)  # <s> is never predicted
    segs = merged_vocab.decode_segments(ids)
    assert [s for s in segs if isinstance(s, ModalitySpan)] == [span]


@pytest.mark.parametrize("style", [prompts.ChatStyle(), prompts.release_chat_style()])
def test_dialogue_loss_on_assistant_turns_only(merged_vocab, style):
    spans = [ModalitySpan("speech", np.arange(5)), ModalitySpan("image", np.arange(3))]
    turns = [
        {"role": "human", "content": ["hello ", {"span": 0}, " please"]},
        {"role": "assistant", "content": ["the cat", {"span": 1}]},
        {"role": "human", "content": ["more"]},
        {"role": "assistant", "content": ["sunny beach"]},
    ]
    pieces = prompts.render_dialogue(turns, spans, style)
    ids, w = prompts.tokenize_pieces(pieces, merged_vocab)
    text = merged_vocab.format_segments([s for p in pieces for s in p.segments])
    assert text.startswith(prompts.SYSTEM_PROMPT + "\n[Human]: hello <sosp>")
    assert f"{style.assistant}: sunny beach{style.assistant_end}\n" in text
    # Pieces tokenize as the whole text would where they meet at added tokens.
    assert merged_vocab.decode_segments(ids) == merged_vocab.parse_segments(text)
    weighted = merged_vocab.decode_with_special(ids[w > 0])
    img = merged_vocab.format_span(spans[1])
    # (decode drops the leading space of a sequence, as for any text start)
    assert weighted == f"the cat{img}{style.assistant_end} sunny beach{style.assistant_end}"
    assert set(np.unique(w)) == {0.0, 1.0}


def test_dialogue_bad_role():
    with pytest.raises(ValueError, match="turn 0: role 'bot'"):
        prompts.render_dialogue([{"role": "bot", "content": []}], [])
