"""AnyGPT's prompt templates, instruction pools and chat format (REFERENCE.md §3).

Templates render to `Piece`s: runs of text and ModalitySpans with one loss weight each.
Pre-training samples are one piece of weight 1 (loss on every token):

    modality->text: [Human]: {instruction} {span}<eoh> [MMGPT]: {text}<eos>
    text->modality: [Human]: {instruction} This is input: {text}<eoh> [MMGPT]: {span}<eos>

Dialogues put the loss on assistant messages and their end marker only. Each media modality's
record in the registry holds its instruction pools (modalities/instructions.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import gin
import numpy as np

from anygpt_jax.modalities.registry import media_modalities, media_modality
from anygpt_jax.vocab import ModalitySpan, Segment


def instruction_pools() -> dict[str, tuple[str, ...]]:
    """Direction -> its instruction pool, from the modality registry's records, in order:
    '<modality>_to_text' then 'text_to_<modality>' per registered media modality."""
    pools = {}
    for name in media_modalities():
        record = media_modality(name)
        pools[f"{name}_to_text"] = record.to_text_instructions
        pools[f"text_to_{name}"] = record.from_text_instructions
    return pools


# The directions and pools of the modalities registered at import (the paper's); the
# functions below look the registry up on every call, so later registrations count.
INSTRUCTION_POOLS: dict[str, tuple[str, ...]] = instruction_pools()
DIRECTIONS = tuple(INSTRUCTION_POOLS)

SYSTEM_PROMPT = (
    "You are an AI assistant named AnyGPT who can understand and generate multimodal content, "
    "including text, speech, images and audio."
)


@dataclasses.dataclass(frozen=True)
class Piece:
    """Segments tokenized together, with one loss weight for all their tokens."""

    segments: tuple[Segment, ...]
    weight: float


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ChatStyle:
    """Chat markers: the paper's `[AnyGPT]`/`<eom>` (default) or the release's `[MMGPT]`/`<eos>`."""

    system: str = SYSTEM_PROMPT
    user: str = "[Human]"
    assistant: str = "[AnyGPT]"
    user_end: str = "<eoh>"
    assistant_end: str = "<eom>"


@gin.configurable
def release_chat_style() -> ChatStyle:
    """The released chat CLI's markers."""
    return ChatStyle(assistant="[MMGPT]", assistant_end="<eos>")


def direction_of(modality: str, to_text: bool) -> str:
    """'image', True -> 'image_to_text'; 'music', False -> 'text_to_music'."""
    d = f"{modality}_to_text" if to_text else f"text_to_{modality}"
    pools = instruction_pools()
    if d not in pools:
        raise ValueError(f"no direction {d!r}; known: {tuple(pools)}")
    return d


def pick_instruction(direction: str, rng: np.random.Generator) -> str:
    """A phrasing drawn uniformly from `direction`'s pool."""
    pool = instruction_pools()[direction]
    return pool[int(rng.integers(len(pool)))]


def render_pretrain_prompt(
    direction: str, instruction: str, text: str = "", span: ModalitySpan | None = None
) -> tuple[Segment, ...]:
    """The stage-1 template up to where the answer starts: a base model's generation prompt.

    modality->text ends at `[MMGPT]:` (the answer brings its leading space); text->modality
    ends at `[MMGPT]: `, where the answer's span opens with its start marker.
    """
    if direction.endswith("_to_text"):
        if span is None:
            raise ValueError(f"{direction}: the prompt needs the input span")
        return (f"[Human]: {instruction} ", span, "<eoh> [MMGPT]:")
    if direction.startswith("text_to_"):
        return (f"[Human]: {instruction} This is input: {text}<eoh> [MMGPT]: ",)
    raise ValueError(f"direction {direction!r}; expected one of {tuple(instruction_pools())}")


def render_pretrain(direction: str, text: str, span: ModalitySpan, instruction: str) -> list[Piece]:
    """One pre-training sample (loss on all tokens) in AnyGPT's stage-1 template."""
    prompt = render_pretrain_prompt(direction, instruction, text, span)
    if direction.endswith("_to_text"):
        segs = (*prompt[:-1], f"{prompt[-1]} {text}<eos>")
    else:
        segs = (*prompt, span, "<eos>")
    return [Piece(segs, 1.0)]


def render_dialogue(
    turns: Sequence[dict], spans: Sequence[ModalitySpan], style: ChatStyle | None = None
) -> list[Piece]:
    """A dialogue in the chat template; weight 1 on assistant messages and their end marker.

    turns: `{"role": "human"|"assistant", "content": [str | {"span": k}, ...]}` (shard form).
    """
    style = style or ChatStyle()
    pieces = [Piece((style.system + "\n",), 0.0)] if style.system else []
    for t, turn in enumerate(turns):
        content = tuple(
            spans[item["span"]] if isinstance(item, dict) else item for item in turn["content"]
        )
        if turn["role"] == "human":
            pieces.append(Piece((f"{style.user}: ", *content, f"{style.user_end}\n"), 0.0))
        elif turn["role"] == "assistant":
            # The space after the role belongs to the message, as a generated reply starts it.
            pieces.append(Piece((f"{style.assistant}:",), 0.0))
            pieces.append(Piece((" ", *content, style.assistant_end), 1.0))
            pieces.append(Piece(("\n",), 0.0))
        else:
            raise ValueError(f"turn {t}: role {turn['role']!r}, expected 'human' or 'assistant'")
    return pieces


def tokenize_pieces(
    pieces: Sequence[Piece], vocab, add_bos: bool = True, add_eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Pieces -> (ids int32 [n], per-token loss weights float32 [n]).

    Each piece is tokenized on its own, the later ones as text that does not start the
    sequence; <s> takes weight 0, the closing </s> the weight of the last piece.
    """
    ids: list[int] = [vocab.bos_id] if add_bos else []
    weights: list[float] = [0.0] if add_bos else []
    bos = vocab.id_to_token(vocab.bos_id)
    for k, p in enumerate(pieces):
        if k == 0:
            part = vocab.encode_segments(list(p.segments))
        else:
            # A leading control token makes the text after it a non-initial chunk.
            part = vocab.encode_segments([bos, *p.segments])[1:]
        ids.extend(part)
        weights.extend([p.weight] * len(part))
    if add_eos:
        ids.append(vocab.eos_id)
        weights.append(pieces[-1].weight if pieces else 1.0)
    return np.asarray(ids, np.int32), np.asarray(weights, np.float32)
