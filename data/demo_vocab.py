"""The demo corpus's own merged vocabulary: no LLaMA tokenizer can be downloaded offline.

A small SentencePiece model is trained on the demo's real text (captions, transcripts, music
descriptions, dialogues) and the instruction pools, with LLaMA's trainer settings (BPE, byte
fallback, split digits, <unk>=0 <s>=1 </s>=2), and AnyGPT's declared modality layout is
appended after its pieces. Deterministic for the same corpus.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from anygpt_jax import prompts, storage
from anygpt_jax.vocab import MergedVocabulary, anygpt_layout
from anygpt_jax.vocab.spm_training import train_llama_like_spm

TEXT_PIECES = 1000


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def corpus_text(jsonl_paths: Iterable[str]) -> list[str]:
    """Every human-readable string of the raw corpus files, plus the prompt phrasings."""
    lines = [prompts.SYSTEM_PROMPT]
    for pool in prompts.INSTRUCTION_POOLS.values():
        lines.extend(pool)
    for path in jsonl_paths:
        for row in storage.read_text(path).split("\n"):
            if row.strip():
                lines.extend(
                    s for s in _strings(json.loads(row)) if s and not s.endswith((".wav", ".png"))
                )
    return lines


def build_demo_vocab(out_dir: str, jsonl_paths: Iterable[str]) -> MergedVocabulary:
    """Trains the demo SentencePiece model and saves the merged vocabulary to `out_dir` (local or
    gs://); a finished `out_dir` is loaded instead."""
    state = storage.dir_state(out_dir)
    # A local directory without markers predates them (made by a rename, so it is whole).
    if state == "committed" or (state == "foreign" and not storage.is_remote(out_dir)):
        return MergedVocabulary.load(out_dir)
    spm_model = train_llama_like_spm(
        corpus_text(jsonl_paths), vocab_size=TEXT_PIECES, hard_vocab_limit=False
    )
    vocab = MergedVocabulary.from_layout(spm_model, anygpt_layout())
    with storage.output_dir(out_dir) as tmp:
        vocab.save(os.fspath(tmp))
    return MergedVocabulary.load(out_dir)
