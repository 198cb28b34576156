"""Tiny tokenizer directories made the way AnyGPT makes its own, for tests and benchmarks."""

from __future__ import annotations

import os
import random
import shutil

from anygpt_jax.vocab import AUDIO, IMAGE, MUSIC, SFT_MARKERS, SPEECH, TEXT_MARKERS
from anygpt_jax.vocab.spm_training import train_llama_like_spm

WORDS = (
    "the a cat dog image speech music sings draws picture of sunny beach hello world please "
    "generate describe given text Übung naïve café 日本語 テスト 42 2024 3.14"
).split()


def train_spm(path: str) -> None:
    """A small LLaMA-like SentencePiece model (400 pieces, seeded) written to `path`."""
    rng = random.Random(0)

    def sentence():
        out = []
        for _ in range(rng.randint(3, 12)):
            out += [rng.choice(WORDS), rng.choice([" "] * 8 + ["  ", "   ", "\n", "\t"])]
        return "".join(out).strip()

    model = train_llama_like_spm(
        [sentence() for _ in range(600)], vocab_size=400, character_coverage=0.9995
    )
    with open(path, "wb") as f:
        f.write(model)


def build_anygpt_dir(
    root: str,
    spm_path: str,
    audio: bool = True,
    sft: bool = False,
    modalities=(IMAGE, SPEECH, MUSIC),
) -> str:
    """A tokenizer dir made like stage1_pretrain.py / stage2_sft.py make theirs."""
    from transformers import LlamaTokenizer

    base = os.path.join(root, "llama")
    os.makedirs(base, exist_ok=True)
    shutil.copy(spm_path, os.path.join(base, "tokenizer.model"))
    tok = LlamaTokenizer.from_pretrained(base)
    for t in TEXT_MARKERS:  # one add_tokens call per marker
        if t not in tok.get_vocab():
            tok.add_tokens([t])
    for m in modalities + ((AUDIO,) if audio else ()):  # codes, start, end in one call
        if m.start not in tok.get_vocab():
            tok.add_tokens([f"<{m.glyph}{i}>" for i in range(m.count)] + [m.start, m.end])
    if sft:  # stage 2 starts from the stage-1 tokenizer, so these land last
        for t in SFT_MARKERS:
            if t not in tok.get_vocab():
                tok.add_tokens([t])
    out = os.path.join(root, "anygpt")
    tok.save_pretrained(out)
    # transformers 5 writes tokenizer.json only; released AnyGPT dirs carry tokenizer.model.
    shutil.copy(spm_path, os.path.join(out, "tokenizer.model"))
    return out
