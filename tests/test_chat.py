"""Generation prompts token for token against the training templates; replies back to spans."""

from __future__ import annotations

import gin
import numpy as np
import pytest

from anygpt_jax import prompts
from anygpt_jax.inference.chat import (
    Conversation,
    base_instruction,
    base_prompt_ids,
    base_stop_ids,
    chat_style,
    reply_segments,
)
from anygpt_jax.vocab import ModalitySpan


def _span(modality: str, seed: int = 0) -> ModalitySpan:
    rng = np.random.default_rng(seed)
    if modality == "music":
        return ModalitySpan("music", rng.integers(0, 2048, (4, 3)))
    return ModalitySpan(modality, rng.integers(0, 1024, 5))


@pytest.mark.parametrize("direction", prompts.DIRECTIONS)
@pytest.mark.parametrize("text", ["a cat sings", "  Two  spaces, then\ttab."])
def test_base_prompt_is_the_training_sample_up_to_the_answer(merged_vocab, direction, text):
    modality = direction.replace("_to_text", "").replace("text_to_", "")
    span = _span(modality)
    instruction = prompts.INSTRUCTION_POOLS[direction][3]
    ids = base_prompt_ids(merged_vocab, direction, instruction, text, span)
    full, _ = prompts.tokenize_pieces(
        prompts.render_pretrain(direction, text, span, instruction), merged_vocab)
    full = full.tolist()
    assert ids == full[: len(ids)]
    answer = full[len(ids):]
    mod = merged_vocab.modality(modality)
    if direction.startswith("text_to_"):
        # the prompt opens the span: what follows is exactly the codes, the end marker, <eos>
        assert ids[-1] == mod.start_id
        assert answer == [*mod.codes_to_ids(span.codes).tolist(), mod.end_id,
                          merged_vocab.token_to_id("<eos>"), merged_vocab.eos_id]
        assert merged_vocab.decode_with_special(ids).endswith(
            f"This is input: {text}<eoh> [MMGPT]: {mod.start_token}")
    else:
        # the prompt ends at `[MMGPT]:`; the answer is the text (with its space), then <eos>
        assert merged_vocab.decode_with_special(ids).endswith("<eoh> [MMGPT]:")
        assert merged_vocab.decode(answer[:-2]).strip() == text.strip()
        assert answer[-2:] == [merged_vocab.token_to_id("<eos>"), merged_vocab.eos_id]
        assert [s for s in merged_vocab.decode_segments(ids) if not isinstance(s, str)] == [span]
    assert ids[0] == merged_vocab.bos_id and ids.count(merged_vocab.bos_id) == 1


def test_base_stop_ids(merged_vocab):
    eos_marker = merged_vocab.token_to_id("<eos>")
    assert base_stop_ids(merged_vocab, "text") == [eos_marker, merged_vocab.eos_id]
    assert base_stop_ids(merged_vocab, "music") == [
        merged_vocab.modality("music").end_id, eos_marker, merged_vocab.eos_id]


def test_instructions_are_seeded_by_request_and_fixable():
    pool = prompts.INSTRUCTION_POOLS["text_to_image"]
    a = base_instruction("text_to_image", "text_to_image|a cat", seed=0)
    assert a in pool
    assert a == base_instruction("text_to_image", "text_to_image|a cat", seed=0)
    drawn = {base_instruction("text_to_image", f"text_to_image|cat {k}", seed=0)
             for k in range(60)}
    assert len(drawn) > 15  # the pool is used, not one phrasing
    assert base_instruction("text_to_image", "k", fixed={"text_to_image": "Draw."}) == "Draw."
    assert base_instruction("image_to_text", "k", fixed={"text_to_image": "Draw."}) in (
        prompts.INSTRUCTION_POOLS["image_to_text"])
    with gin.unlock_config():
        gin.bind_parameter("base_instruction.fixed", {"music_to_text": "Describe it."})
    try:
        assert base_instruction("music_to_text", "k") == "Describe it."
    finally:
        gin.clear_config()


@pytest.mark.parametrize("template", ["anygpt", "mmgpt"])
def test_chat_prompts_follow_the_dialogue_template(merged_vocab, template):
    style = chat_style(template)
    conv = Conversation(merged_vocab, style)
    m1 = ["Hello, what is ", _span("image", 1), " about?"]
    r1 = ["It is a cat. Listen:", _span("speech", 2)]
    m2 = ["Now play ", _span("music", 3)]
    r2 = ["Sure."]
    p1 = conv.prompt_ids(m1)
    conv.add_exchange(m1, r1)
    p2 = conv.prompt_ids(m2)
    spans = [m1[1], r1[1], m2[1]]
    turns = [
        {"role": "human", "content": [m1[0], {"span": 0}, m1[2]]},
        {"role": "assistant", "content": [r1[0], {"span": 1}]},
        {"role": "human", "content": [m2[0], {"span": 2}]},
        {"role": "assistant", "content": r2},
    ]
    full, weights = prompts.tokenize_pieces(
        prompts.render_dialogue(turns, spans, style), merged_vocab)
    full = full.tolist()
    # each prompt is the training sequence up to where the reply (weighted tokens) starts
    starts = [k for k in range(1, len(full)) if weights[k] > 0 and weights[k - 1] == 0]
    assert p1 == full[: starts[0]] and p2 == full[: starts[1]]
    assert merged_vocab.decode_with_special(p1).endswith(f"<eoh>\n{style.assistant}:")
    assert merged_vocab.decode_with_special(p1).startswith(f"<s> {style.system}\n[Human]: Hello")
    conv.clear()
    assert conv.prompt_ids(m1) == p1


def test_chat_style_from_gin_and_stops(merged_vocab):
    assert chat_style() == prompts.ChatStyle()
    with gin.unlock_config():
        gin.parse_config("chat_style.template = 'mmgpt'")
    try:
        conv = Conversation(merged_vocab)
        assert conv.style == prompts.release_chat_style()
        # <eos> is an added token: a stop id; the user's role marker stops a runaway reply
        human, eos = merged_vocab.token_to_id("[Human]"), merged_vocab.token_to_id("<eos>")
        assert conv.stop_ids == [merged_vocab.eos_id, human, eos] and conv.end_text is None
    finally:
        gin.clear_config()
    conv = Conversation(merged_vocab)
    assert conv.stop_ids == [merged_vocab.eos_id, merged_vocab.token_to_id("[Human]")]
    assert conv.end_text == "<eom>"  # not a token in AnyGPT's vocabularies: cut as text
    with pytest.raises(ValueError, match="chat_style.template='chatml'"):
        chat_style("chatml")


def test_reply_segments(merged_vocab):
    v = merged_vocab
    img = v.modality("image")
    stops = base_stop_ids(v, "image")
    codes = list(range(img.first_id + 5, img.first_id + 9))
    # a prompt ending with <soim>: the reply continues the span; its end marker closes it
    segs, done = reply_segments(v, [*codes, img.end_id], stops, open_span="image")
    assert done and segs == [ModalitySpan("image", np.arange(5, 9))]
    segs, done = reply_segments(v, codes, stops, open_span="image")  # ran out of tokens
    assert not done and segs == [ModalitySpan("image", np.arange(5, 9))]
    # chat: text, a span, more text; the textual end marker cuts the reply
    ids = v.encode_segments([" A cat", ModalitySpan("image", np.arange(3)), " there<eom>\n more"])
    segs, done = reply_segments(v, ids, [v.eos_id], end_text="<eom>")
    assert done and segs == ["A cat", ModalitySpan("image", np.arange(3)), " there"]
    segs, done = reply_segments(v, [*v.encode(" hi"), v.eos_id], [v.eos_id], end_text="<eom>")
    assert done and segs == ["hi"]


@pytest.mark.parametrize("template", ["anygpt", "mmgpt"])
def test_a_chat_reply_shows_no_template_markers(merged_vocab, template):
    """A repeated role marker is dropped and any turn or end marker of either style ends the
    reply; spans before it are kept."""
    v = merged_vocab
    conv = Conversation(v, chat_style(template))
    span = ModalitySpan("image", np.arange(3))
    cases = [
        ("[MMGPT]: [MMGPT]: Hello there<eos><eos>", ["Hello there"], True),
        ("[AnyGPT]: Hi.<eom> [Human]: more", ["Hi."], True),
        (" A picture", ["A picture"], False),
        (" Done. [Human]: and you?", ["Done."], True),
        (" See <eoh> this", ["See"], True),
        (" Fine <eom> more", ["Fine"], True),  # trimmed as at any other end marker
    ]
    for text, want, finished in cases:
        segs, done = conv.reply(v.encode(text), conv.stop_ids)
        assert (segs, done) == (want, finished), text
    ids = v.encode_segments([" [MMGPT]: Look", span, " here<eos>[MMGPT]: again"])
    segs, done = conv.reply(ids, conv.stop_ids)
    assert done and segs == ["Look", span, " here"]
