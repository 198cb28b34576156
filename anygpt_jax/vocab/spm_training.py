"""Training a LLaMA-like SentencePiece model, for vocabularies made without a LLaMA download."""

from __future__ import annotations

import io
from collections.abc import Iterable


def train_llama_like_spm(
    sentences: Iterable[str],
    vocab_size: int,
    character_coverage: float = 1.0,
    hard_vocab_limit: bool = True,
) -> bytes:
    """A serialized SentencePiece model with LLaMA's settings that matter for encoding.

    BPE, byte fallback, split digits, identity normalization, whitespace kept, a dummy
    prefix, <unk>=0 <s>=1 </s>=2 and no pad; one thread so the result is deterministic.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=character_coverage,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        hard_vocab_limit=hard_vocab_limit,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()
