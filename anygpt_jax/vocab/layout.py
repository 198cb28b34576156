"""Declarative layout of the merged vocabulary: which tokens follow the text model's, in order.

Token strings and their order follow the released AnyGPT code (OpenMOSS/AnyGPT):
`anygpt/src/m_utils/anything2token.py` (modality glyphs, markers, codebook sizes) and
`anygpt/src/train/stage1_pretrain.py` / `stage2_sft.py` (the order of `add_tokens` calls).
A real tokenizer directory is always authoritative; layouts describe new models.
"""

from __future__ import annotations

import dataclasses

import gin

# Modality glyphs as written in the released code. The speech glyph is two code points:
# U+1F5E3 (speaking head) followed by U+FE0F (emoji variation selector).
IMAGE_GLYPH = "\U0001f440"  # 👀
SPEECH_GLYPH = "\U0001f5e3\ufe0f"  # 🗣️
MUSIC_GLYPH = "\U0001f3b6"  # 🎶
AUDIO_GLYPH = "\U0001f442"  # 👂

# Chat markers added first, one add_tokens call each; `[MMGPT]` is the role name the
# released checkpoints were trained with (`[AnyGPT]`/`<eom>` are never added as tokens).
TEXT_MARKERS = ("[Human]", "[MMGPT]", "<eoh>", "<eos>")
# Instruction-tuning separators; SFT starts from the stage-1 tokenizer, so they land last.
SFT_MARKERS = ("<-Res->", "<-Ins->")


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """A modality block: `count` code tokens `<{glyph}{i}>`, then its start and end markers.

    Codes of `num_codebooks` > 1 are flattened frame-major with per-codebook offsets
    (`code[q][t] + codebook_size * q`), as AnyGPT does for music.
    """

    name: str
    glyph: str
    start: str
    end: str
    codebook_size: int
    num_codebooks: int = 1
    # Name of the media tokenizer that produces these codes (they live in modalities/).
    tokenizer: str = ""

    def __post_init__(self):
        if not self.name.isidentifier() or self.name == "text":
            raise ValueError(f"modality name {self.name!r} must be an identifier other than 'text'")
        if self.codebook_size < 1 or self.num_codebooks < 1:
            raise ValueError(
                f"modality {self.name!r}: codebook_size={self.codebook_size} and "
                f"num_codebooks={self.num_codebooks} must be >= 1"
            )

    @property
    def count(self) -> int:
        """Number of code tokens (codebook_size x num_codebooks)."""
        return self.codebook_size * self.num_codebooks

    def code_token(self, value: int) -> str:
        """The token string of flattened code `value` (0 <= value < count)."""
        return f"<{self.glyph}{value}>"

    def tokens(self) -> list[str]:
        """All token strings of the block in id order: codes, start, end."""
        return [self.code_token(i) for i in range(self.count)] + [self.start, self.end]


@dataclasses.dataclass(frozen=True)
class MarkerBlock:
    """Plain added tokens (chat markers, SFT separators), in id order."""

    name: str
    tokens: tuple[str, ...]


Block = ModalitySpec | MarkerBlock


@dataclasses.dataclass(frozen=True)
class Layout:
    """Ordered blocks appended after the SentencePiece pieces."""

    blocks: tuple[Block, ...]
    name: str = "custom"

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))
        names = [b.name for b in self.blocks]
        if len(set(names)) != len(names):
            raise ValueError(f"layout {self.name!r} repeats a block name: {names}")
        seen: set[str] = set()
        for tok in self.added_tokens():
            if tok in seen:
                raise ValueError(f"layout {self.name!r} adds token {tok!r} twice")
            seen.add(tok)

    @property
    def modalities(self) -> tuple[ModalitySpec, ...]:
        """The modality blocks, in order."""
        return tuple(b for b in self.blocks if isinstance(b, ModalitySpec))

    def added_tokens(self) -> list[str]:
        """Every added token string, in id order."""
        out: list[str] = []
        for b in self.blocks:
            out.extend(b.tokens() if isinstance(b, ModalitySpec) else b.tokens)
        return out

    def num_added(self) -> int:
        """How many ids the layout adds to the SentencePiece model."""
        return len(self.added_tokens())


IMAGE = ModalitySpec("image", IMAGE_GLYPH, "<soim>", "<eoim>", 8192, 1, "seed_tokenizer_v2")
SPEECH = ModalitySpec("speech", SPEECH_GLYPH, "<sosp>", "<eosp>", 1024, 1, "speechtokenizer_rvq1")
MUSIC = ModalitySpec("music", MUSIC_GLYPH, "<somu>", "<eomu>", 2048, 4, "encodec_32khz")
AUDIO = ModalitySpec("audio", AUDIO_GLYPH, "<soau>", "<eoau>", 1024, 4, "encodec_24khz")
KNOWN_MODALITIES: tuple[ModalitySpec, ...] = (IMAGE, SPEECH, MUSIC, AUDIO)


@gin.configurable
def anygpt_layout(include_audio: bool = False, include_sft: bool = False) -> Layout:
    """AnyGPT's order: markers, image, speech, music[, audio][, SFT]: 49,418 ids with LLaMA-2.

    The audio block's place (after music) is a guess: the released code has it commented
    out; load the checkpoint's tokenizer directory to get the real ids.
    """
    blocks: list[Block] = [MarkerBlock("chat", TEXT_MARKERS), IMAGE, SPEECH, MUSIC]
    if include_audio:
        blocks.append(AUDIO)
    if include_sft:
        blocks.append(MarkerBlock("sft", SFT_MARKERS))
    name = "anygpt" + ("_audio" if include_audio else "") + ("_sft" if include_sft else "")
    return Layout(tuple(blocks), name=name)


@gin.configurable
def anygpt_base_layout() -> Layout:
    """Most likely layout of the released checkpoints (53,516 ids); audio position unverified."""
    return dataclasses.replace(anygpt_layout(include_audio=True), name="anygpt_base")
