"""Generation prompts: the base model's stage-1 template and multi-turn chat in either template.

Base prompts are AnyGPT's pre-training samples cut where the answer starts (text->modality
prompts end with the modality's start marker, so decoding starts inside the span). Chat
prompts are the instruction-tuning template (prompts.render_dialogue) of the history so far,
ending with the assistant's role marker; the style (`[AnyGPT]:`/`<eom>` or the release's
`[MMGPT]:`/`<eos>`) comes from gin through `chat_style`.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence

import gin
import numpy as np

from anygpt_jax import prompts
from anygpt_jax.vocab import MergedVocabulary, ModalitySpan, Segment

CHAT_TEMPLATES = ("anygpt", "mmgpt")


@gin.configurable
def chat_style(template: str = "anygpt") -> prompts.ChatStyle:
    """The chat markers: 'anygpt' (`[AnyGPT]:`/`<eom>`, the paper) or 'mmgpt' (the release)."""
    if template == "anygpt":
        return prompts.ChatStyle()
    if template == "mmgpt":
        return prompts.release_chat_style()
    raise ValueError(f"chat_style.template={template!r}; expected one of {CHAT_TEMPLATES}")


@gin.configurable
def base_instruction(direction: str, key: str, seed: int = 0,
                     fixed: dict[str, str] | None = None) -> str:
    """The instruction of a base prompt: `fixed[direction]` if given, else one drawn from the
    direction's pool by a generator seeded with (`seed`, `key`), so a request gets the same
    instruction alone or in any batch."""
    if fixed and direction in fixed:
        return fixed[direction]
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
    return prompts.pick_instruction(direction, rng)


def base_prompt_ids(vocab: MergedVocabulary, direction: str, instruction: str, text: str = "",
                    span: ModalitySpan | None = None) -> list[int]:
    """Ids of a base prompt: `<s>` + the stage-1 template up to the answer (see module doc)."""
    segments = list(prompts.render_pretrain_prompt(direction, instruction, text, span))
    if direction.startswith("text_to_"):
        # As a token string the start marker tokenizes as it does before a span in training.
        segments.append(vocab.modality(direction[len("text_to_"):]).start_token)
    ids, _ = prompts.tokenize_pieces([prompts.Piece(tuple(segments), 1.0)], vocab,
                                     add_bos=True, add_eos=False)
    return ids.tolist()


def base_stop_ids(vocab: MergedVocabulary, target: str) -> list[int]:
    """Where a base answer ends: `<eos>` and `</s>`, and a media span's end marker."""
    stops = [vocab.token_to_id("<eos>"), vocab.eos_id]
    if target != "text":
        stops.insert(0, vocab.modality(target).end_id)
    return stops


class Conversation:
    """A chat history (user messages and model replies as segments) and its next prompt."""

    def __init__(self, vocab: MergedVocabulary, style: prompts.ChatStyle | None = None):
        self.vocab = vocab
        self.style = style if style is not None else chat_style()
        self.turns: list[dict] = []
        self.spans: list[ModalitySpan] = []

    def clear(self) -> None:
        """Forgets the history."""
        self.turns, self.spans = [], []

    def prompt_ids(self, message: Sequence[Segment]) -> list[int]:
        """Ids of the history plus `message`, ending with the assistant's role marker."""
        turns, spans = self._with("human", message)
        # An empty assistant turn renders as [role marker, message + end, newline]: keep the
        # role marker only, which is where the reply starts.
        turns.append({"role": "assistant", "content": []})
        pieces = prompts.render_dialogue(turns, spans, self.style)[:-2]
        ids, _ = prompts.tokenize_pieces(pieces, self.vocab, add_bos=True, add_eos=False)
        return ids.tolist()

    def add_exchange(self, message: Sequence[Segment], reply: Sequence[Segment]) -> None:
        """Appends a user message and the model's reply to the history."""
        turns, spans = self._with("human", message)
        self.turns, self.spans = turns, spans
        self.turns, self.spans = self._with("assistant", reply)

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a reply: `</s>`, the user's role marker (a new turn) and the
        assistant's end marker when it is one token (`<eos>`; `<eom>` is plain text)."""
        return list(self._stops)

    @functools.cached_property
    def _stops(self) -> tuple[int, ...]:  # a server asks per request and per batch group
        stops = [self.vocab.eos_id]
        for marker in (self.style.user, self.style.assistant_end):
            ids = self.vocab.encode(marker)
            if len(ids) == 1 and self.vocab.id_to_token(ids[0]) == marker:
                stops.append(ids[0])
        return tuple(stops)

    @property
    def end_text(self) -> str | None:
        """The assistant's end marker when it is text, cut from replies (see reply_segments)."""
        ids = self.vocab.encode(self.style.assistant_end)
        single = len(ids) == 1 and self.vocab.id_to_token(ids[0]) == self.style.assistant_end
        return None if single else self.style.assistant_end

    def reply(self, ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[Segment], bool]:
        """Generated ids -> (the reply as the user sees it, whether it ended properly).

        Only the reply: a leading assistant role marker the model repeats (`[MMGPT]: `) is
        dropped, and the reply ends at the first turn or end marker of either chat style
        (`<eos>`, `<eom>`, `<eoh>`, `[Human]`, another role marker), so no template marker
        shows.
        """
        # The cut below covers a text end marker too (one cut, one trim of the reply's end).
        segments, finished = reply_segments(self.vocab, ids, stop_ids)
        styles = (self.style, prompts.ChatStyle(), prompts.release_chat_style())
        roles = {s.assistant for s in styles}
        ends = {m for s in styles for m in (s.user, s.user_end, s.assistant_end)}
        role = "|".join(map(re.escape, sorted(roles)))
        lead = re.compile(rf"^\s*(?:(?:{role})\s*:?\s*)+")
        cut = re.compile("|".join(map(re.escape, sorted(ends | roles))))
        out: list[Segment] = []
        for seg in segments:
            if not isinstance(seg, str):
                out.append(seg)
                continue
            if not out:
                seg = lead.sub("", seg)
            hit = cut.search(seg)
            if hit is None:
                if seg:
                    out.append(seg)
                continue
            head = seg[: hit.start()].rstrip()
            return [*out, *([head] if head else [])], True
        return out, finished

    def _with(self, role: str, segments: Sequence[Segment]) -> tuple[list[dict], list]:
        turns, spans = list(self.turns), list(self.spans)
        content: list = []
        for s in segments:
            if isinstance(s, ModalitySpan):
                content.append({"span": len(spans)})
                spans.append(s)
            else:
                content.append(s)
        turns.append({"role": role, "content": content})
        return turns, spans


def reply_segments(vocab: MergedVocabulary, ids: Sequence[int], stop_ids: Sequence[int],
                   open_span: str | None = None,
                   end_text: str | None = None) -> tuple[list[Segment], bool]:
    """Generated ids -> (text and spans, whether the reply ended properly).

    A trailing stop id is dropped (an open span's end marker is kept: it closes the span); an
    unfinished span is kept as far as it got. `open_span`: the modality whose start marker
    ended the prompt. `end_text`: an end marker that is plain text (`<eom>`): the reply is cut
    where it first appears.
    """
    ids = [int(i) for i in ids]
    finished = bool(ids) and ids[-1] in stop_ids
    if finished and not (open_span is not None and ids[-1] == vocab.modality(open_span).end_id):
        ids = ids[:-1]
    if open_span is not None:
        ids = [vocab.modality(open_span).start_id, *ids]
    segments = vocab.decode_segments(ids, strict=False)
    if end_text is None:
        return segments, finished
    for k, s in enumerate(segments):
        if isinstance(s, str) and end_text in s:
            head = s[: s.index(end_text)]
            return [*segments[:k], *([head] if head else [])], True
    return segments, finished
