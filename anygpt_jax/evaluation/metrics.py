"""Metric functions of the paper's evaluations (REFERENCE.md §7), on plain Python values.

    caption_metrics(references, predictions)   CIDEr-D and BLEU-1..4 (pycocoevalcap scorers)
    wer(references, hypotheses)                word error rate (jiwer) after Whisper's English
                                               normalization
    embedding_score(a, b)                      mean cosine of paired embeddings: CLIP score
                                               (text, image), CLAP score (text, audio),
                                               speaker similarity (generated, reference voice)

Scores are on the paper's scales: CIDEr and BLEU x 100, WER in percent, cosines as they are.
A prediction the model failed to produce (no image, no speech) counts, never disappears: an
empty caption or transcript is scored as one, and a missing embedding scores 0, reported in
`*_missing`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anygpt_jax.evaluation.normalization import coco_tokenize, normalize_english


class MetricError(ValueError):
    """Inputs a metric cannot score (mismatched lengths, no references); names what is wrong."""


class MetricSkipped(Exception):
    """A metric that cannot run in this configuration (no scoring model, no decoder); the
    message says what to configure. Evaluation records it instead of a score."""


def _check_lengths(name: str, references: Sequence, predictions: Sequence) -> None:
    if len(references) != len(predictions):
        raise MetricError(
            f"{name}: {len(references)} references but {len(predictions)} predictions"
        )
    if not references:
        raise MetricError(f"{name}: nothing to score (0 examples)")


def caption_metrics(
    references: Sequence[Sequence[str] | str], predictions: Sequence[str]
) -> dict[str, float]:
    """CIDEr-D and BLEU-1..4 (x100) of captions against one or more references each.

    Captions are tokenized with `coco_tokenize` (a Python stand-in for the reference's Java
    PTBTokenizer), then scored by pycocoevalcap's Cider (document frequencies from these
    references, as the COCO evaluation does) and Bleu(4) ('closest' reference length).
    """
    _check_lengths("caption_metrics", references, predictions)
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise ImportError("caption metrics need pycocoevalcap: pip install pycocoevalcap") from e
    gts, res = {}, {}
    for i, (refs, pred) in enumerate(zip(references, predictions, strict=True)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise MetricError(f"caption_metrics: example {i} has no reference captions")
        gts[i] = [coco_tokenize(r) for r in refs]
        res[i] = [coco_tokenize(pred or "")]
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    out = {"cider": 100.0 * float(cider)}
    out |= {f"bleu{n + 1}": 100.0 * float(b) for n, b in enumerate(bleu)}
    return out


def wer(
    references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True
) -> dict[str, float]:
    """Corpus WER in percent (errors / reference words) with its error counts.

    normalize: Whisper's English normalizer on both sides first (as Whisper's and most
    LibriSpeech WERs are reported). A reference that normalizes to nothing cannot be scored
    and raises, naming its index.
    """
    _check_lengths("wer", references, hypotheses)
    try:
        import jiwer
    except ImportError as e:
        raise ImportError("WER needs jiwer: pip install jiwer") from e
    norm = normalize_english if normalize else (lambda s: " ".join(s.split()))
    refs = [norm(r) for r in references]
    hyps = [norm(h or "") for h in hypotheses]
    empty = [i for i, r in enumerate(refs) if not r.split()]
    if empty:
        raise MetricError(
            f"wer: references {empty[:10]} are empty after normalization "
            f"(e.g. {references[empty[0]]!r})"
        )
    out = jiwer.process_words(refs, hyps)
    words = out.hits + out.substitutions + out.deletions
    return {
        "wer": 100.0 * (out.substitutions + out.deletions + out.insertions) / words,
        "substitutions": float(out.substitutions),
        "deletions": float(out.deletions),
        "insertions": float(out.insertions),
        "reference_words": float(words),
    }


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays (float64)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise MetricError(f"cosine: need two [n, d] arrays of one shape, got {a.shape}, {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    if np.any(na == 0) or np.any(nb == 0):
        raise MetricError("cosine: an embedding is all zeros")
    return np.einsum("nd,nd->n", a, b) / (na * nb)


def embedding_score(
    name: str,
    first: Sequence[np.ndarray | None],
    second: Sequence[np.ndarray | None],
    weight: float = 1.0,
    clip_negative: bool = False,
) -> dict[str, float]:
    """Mean of weight x cosine(first[i], second[i]) as `name`, plus `name_missing`.

    A pair with a missing side (None: the model produced no image/audio) scores 0 and is
    counted in `{name}_missing`. clip_negative: max(cos, 0) per pair (Hessel et al.'s
    CLIPScore, whose weight is 2.5).
    """
    _check_lengths(name, first, second)
    scores, missing = np.zeros(len(first)), 0
    present = [i for i, (x, y) in enumerate(zip(first, second, strict=True))
               if x is not None and y is not None]  # fmt: skip
    missing = len(first) - len(present)
    if present:
        sims = cosine(np.stack([first[i] for i in present]), np.stack([second[i] for i in present]))
        if clip_negative:
            sims = np.maximum(sims, 0.0)
        scores[present] = weight * sims
    return {name: float(scores.mean()), f"{name}_missing": float(missing)}
