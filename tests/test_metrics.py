"""Metric functions against hand-computed values and the reference scorers on tiny inputs."""

import math
import os
import shutil
import subprocess

import numpy as np
import pytest

from anygpt_jax.evaluation import metrics
from anygpt_jax.evaluation.normalization import PTB_REMOVED, coco_tokenize, normalize_english

CAPTIONS = [
    "A man's dog doesn't like the cat's toy.",
    'Two people (a man and a woman) are "walking" on the beach!',
    "It cannot be, gonna wanna gotta... yes; no: maybe?",
    "The 1,000 birds flew 3.5 miles at 5:30 p.m. near Mr. Smith's U.S. house.",
    "A black-and-white photo of a train/bus & a dog -- running - fast.",
    "there are 2 dogs' bowls 'here' and `there' ok",
    "A cafe with crème brûlée, naïve café's menu.",
    "i'm sure they'll & we've & you'd",
    "A pizza with $5 price, 50% off, #1 item @ home.",
    'He said "hi."  Then left.',
    'A sign that reads "STOP" on a pole.',
    "an old-fashioned clock,which hangs on the wall .",
    "some wierd    spacing\ttab and the end.",
    "a man on his skateboard in mid-air.   ",
    "A {curly} [square] thing",
    "A young boy is holding a baseball bat in front of a fence.",
    "Two giraffes standing next to each other in a field.",
    "A bathroom with a toilet, sink, and shower.",
    "People are standing around a table with food on it",
    "A plate of food with broccoli, carrots and rice!",
    "An airplane flying over a city's skyline at dusk.",
    "A woman's hand holding a smart-phone; she's smiling.",
    "The kitchen isn't clean: dishes everywhere...",
    "A cat laying on a laptop keyboard",
    "A group of zebras (and one horse) graze.",
]


def test_coco_tokenize_by_hand():
    assert coco_tokenize("A man's dog doesn't like it.") == "a man 's dog does n't like it"
    assert coco_tokenize('Two (big) "dogs", running!') == "two -lrb- big -rrb- dogs running"
    assert coco_tokenize("1,000 birds at 5:30 p.m. near Mr. Smith") == (
        "1,000 birds at 5:30 p.m. near mr. smith"
    )
    assert coco_tokenize("cannot -- gonna") == "can not gon na"
    assert coco_tokenize("") == ""


def _java_ptb(lines: list[str]) -> list[str]:
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar = os.path.join(os.path.dirname(ptb.__file__), ptb.STANFORD_CORENLP_3_4_1_JAR)
    out = subprocess.run(
        ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
         "-lowerCase"],
        input="\n".join(lines).encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [" ".join(w for w in line.split(" ") if w not in PTB_REMOVED)
            for line in out.rstrip("\n").split("\n")]  # fmt: skip


@pytest.mark.skipif(shutil.which("java") is None, reason="the reference PTBTokenizer needs Java")
def test_coco_tokenize_matches_java_ptb_tokenizer():
    pytest.importorskip("pycocoevalcap")
    want = _java_ptb(CAPTIONS)
    got = [coco_tokenize(c) for c in CAPTIONS]
    assert got == want


def test_bleu_by_hand():
    out = metrics.caption_metrics(["the cat sat on a mat"], ["The cat sat on the mat."])
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    assert out["bleu1"] == pytest.approx(100 * 5 / 6, rel=1e-6)
    assert out["bleu2"] == pytest.approx(100 * (5 / 6 * 3 / 5) ** 0.5, rel=1e-6)
    assert out["bleu4"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-6)


def test_bleu_brevity_penalty_closest_reference():
    # Hypothesis of 3 words, closest reference 4 words: BP = exp(1 - 4/3).
    out = metrics.caption_metrics([["a dog runs fast", "a big brown dog runs"]], ["a dog runs"])
    assert out["bleu1"] == pytest.approx(100 * math.exp(1 - 4 / 3), rel=1e-6)


def test_cider_by_hand():
    refs = [["a dog runs"], ["a cat sleeps"]]
    # "a" is in both images' references: idf log(2/2) = 0; every other n-gram log(2/1).
    # Exact hypotheses: cosine 1 for n = 1..3, no 4-grams (0): mean 3/4, x10 -> 7.5.
    assert metrics.caption_metrics(refs, ["a dog runs", "a cat sleeps"])["cider"] == (
        pytest.approx(750.0, rel=1e-6)
    )
    # "a dog": n=1 and n=2 cosines 1/sqrt(2), nothing for n=3, 4; CIDEr-D's length penalty
    # (lengths counted as bigrams: 1 vs 2) exp(-1/72). The second image scores 0.
    got = metrics.caption_metrics(refs, ["a dog", "something else entirely"])["cider"]
    want = 100 * (10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72)) / 2
    assert got == pytest.approx(want, rel=1e-6)


def test_caption_metrics_equal_reference_pipeline_on_pretokenized_text():
    """Same numbers as pycocoevalcap's own scorers fed the same (tokenized) captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    refs = [[CAPTIONS[i], CAPTIONS[i + 1]] for i in range(0, 20, 2)]
    preds = [CAPTIONS[(i * 7) % len(CAPTIONS)] for i in range(10)]
    gts = {i: [coco_tokenize(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [coco_tokenize(p)] for i, p in enumerate(preds)}
    out = metrics.caption_metrics(refs, preds)
    assert out["cider"] == pytest.approx(100 * Cider().compute_score(gts, res)[0])
    assert out["bleu4"] == pytest.approx(100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3])


def test_caption_metrics_errors():
    with pytest.raises(metrics.MetricError, match="2 references but 1 predictions"):
        metrics.caption_metrics(["a", "b"], ["a"])
    with pytest.raises(metrics.MetricError, match="example 0 has no reference"):
        metrics.caption_metrics([[]], ["a"])
    with pytest.raises(metrics.MetricError, match="0 examples"):
        metrics.caption_metrics([], [])


def test_wer_by_hand():
    out = metrics.wer(["the cat sat", "hello world"], ["the cat sit", "hello big world"])
    # One substitution, one insertion over five reference words.
    assert out["wer"] == pytest.approx(40.0)
    assert (out["substitutions"], out["insertions"], out["deletions"]) == (1, 1, 0)
    # Missing hypothesis: every reference word deleted.
    assert metrics.wer(["one two three"], [""])["wer"] == pytest.approx(100.0)


def test_wer_whisper_normalization():
    assert normalize_english("Mr. Smith paid twenty five dollars!") == "mister smith paid $25"
    assert metrics.wer(["Hello, World! Mr. Smith"], ["hello world mister smith"])["wer"] == 0.0
    raw = metrics.wer(["Hello, World!"], ["hello world"], normalize=False)["wer"]
    assert raw == pytest.approx(100.0)
    with pytest.raises(metrics.MetricError, match=r"references \[1\] are empty"):
        metrics.wer(["fine", "uh, um"], ["fine", "x"])


def test_embedding_score_by_hand():
    a = [np.array([1.0, 0.0]), np.array([1.0, 1.0]), np.array([0.0, 1.0])]
    b = [np.array([2.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, -3.0])]
    out = metrics.embedding_score("clip_score", a, b)
    assert out["clip_score"] == pytest.approx((1 + 1 / math.sqrt(2) - 1) / 3)
    assert out["clip_score_missing"] == 0
    clipped = metrics.embedding_score("s", a, b, weight=2.5, clip_negative=True)["s"]
    assert clipped == pytest.approx(2.5 * (1 + 1 / math.sqrt(2)) / 3)
    # A missing generation scores 0 and is counted.
    out = metrics.embedding_score("clap_score", [a[0], None], [b[0], b[1]])
    assert out == {"clap_score": pytest.approx(0.5), "clap_score_missing": 1.0}
    with pytest.raises(metrics.MetricError, match="all zeros"):
        metrics.embedding_score("x", [np.zeros(2)], [np.ones(2)])
