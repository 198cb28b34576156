"""Beam search equals transformers' beam search (num_beams, length_penalty, early_stopping),
batched and left-padded, with and without span constraints; beam sampling is seeded and parses."""

import pytest
from test_generate import (
    check_spans,
    hf_generate,
    load_tiny,
    reference_allowed,
    span_prompts,
    text_prompts,
)

from anygpt_jax.inference import GenerationSettings, default_stop_ids


@pytest.fixture(scope="module")
def models(anygpt_tokenizer_dir, tmp_path_factory):
    return load_tiny(str(tmp_path_factory.mktemp("beam")), anygpt_tokenizer_dir)


@pytest.fixture(scope="module")
def stops(models):
    """Three ids that the beams meet after a few steps, so beams finish at different times."""
    hf, m = models
    free = hf_generate(
        hf, text_prompts(m.vocab), [2], max_new_tokens=10, num_beams=3, do_sample=False
    )
    return sorted({2, free[0][3], free[1][5], free[2][2]})


@pytest.mark.parametrize(
    "early_stopping,length_penalty", [(False, 1.0), (True, 0.5), ("never", 2.0), (False, -1.0)]
)
def test_beam_search_equals_transformers(models, stops, early_stopping, length_penalty):
    hf, m = models
    prompts = text_prompts(m.vocab)
    kwargs = dict(num_beams=3, length_penalty=length_penalty, early_stopping=early_stopping)
    want = hf_generate(hf, prompts, stops, max_new_tokens=10, do_sample=False, **kwargs)
    settings = GenerationSettings(do_sample=False, max_new_tokens=10, **kwargs)
    got = m.generate(prompts, settings, stop_ids=stops, constrain=False)
    assert got == want
    if length_penalty < 1:  # short finished beams win: the finishing logic decided
        assert any(len(r) < 10 for r in got)


def test_beam_with_penalty_and_min_new_tokens_equals_transformers(models, stops):
    hf, m = models
    prompts = text_prompts(m.vocab, 2, seed=5)
    kwargs = dict(num_beams=2, repetition_penalty=1.5, min_new_tokens=4)
    want = hf_generate(hf, prompts, stops, max_new_tokens=9, do_sample=False, **kwargs)
    settings = GenerationSettings(do_sample=False, max_new_tokens=9, **kwargs)
    assert m.generate(prompts, settings, stop_ids=stops, constrain=False) == want


def test_constrained_beam_search_equals_transformers(models):
    hf, m = models
    v = m.vocab
    prompts = span_prompts(v)[:2] + span_prompts(v)[3:]
    padded = max(len(p) for p in prompts)
    budget = 36
    stops = default_stop_ids(v) + [v.modality("image").end_id]

    def prefix_fn(batch_id, ids):
        ids = ids.tolist()
        return reference_allowed(v, ids, budget - (len(ids) - padded))

    want = hf_generate(
        hf,
        prompts,
        stops,
        max_new_tokens=budget,
        do_sample=False,
        num_beams=2,
        prefix_allowed_tokens_fn=prefix_fn,
    )
    settings = GenerationSettings(do_sample=False, max_new_tokens=budget, num_beams=2)
    got = m.generate(prompts, settings, stop_ids=stops)
    assert got == want
    for prompt, new in zip(prompts, got, strict=True):
        check_spans(v, prompt, new)


def test_beam_sampling_is_seeded_and_parses(models):
    _, m = models
    v = m.vocab
    prompts = span_prompts(v)
    stops = default_stop_ids(v) + [v.modality(n).end_id for n in ("image", "music", "speech")]
    settings = GenerationSettings(
        do_sample=True, num_beams=3, top_k=50, temperature=1.2, max_new_tokens=40
    )
    runs = [m.generate(prompts, settings, seed=s, stop_ids=stops) for s in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    for run in (runs[0], runs[2]):
        for prompt, new in zip(prompts, run, strict=True):
            check_spans(v, prompt, new)
        assert len(run[0]) == 33 and run[0][-1] == stops[-3]


def test_beam_search_unrolled_tied_equals_transformers(anygpt_tokenizer_dir, tmp_path):
    """Unrolled models decode over per-layer caches: beams reorder those too."""
    hf, m = load_tiny(str(tmp_path), anygpt_tokenizer_dir, "mha_tied", scan_layers=False)
    prompts = text_prompts(m.vocab, 3, seed=4)
    free = hf_generate(hf, prompts, [2], max_new_tokens=8, num_beams=2, do_sample=False)
    stops = [2, free[0][3], free[2][5]]
    want = hf_generate(
        hf, prompts, stops, max_new_tokens=8, num_beams=2, do_sample=False, length_penalty=0.5
    )
    settings = GenerationSettings(
        do_sample=False, max_new_tokens=8, num_beams=2, length_penalty=0.5
    )
    assert m.generate(prompts, settings, stop_ids=stops, constrain=False) == want
