"""Logits processors against transformers' on the same scores, and the samplers' distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf

from anygpt_jax.inference import GenerationSettings, decoding, processors

V = 97


def scores_and_ids(seed=0, rows=4, length=12, with_inf=False):
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 3, (rows, V)).astype(np.float32)
    if with_inf:  # as after a constraint or top-k: some ids already removed
        scores[rng.random((rows, V)) < 0.3] = -np.inf
    ids = rng.integers(0, V, (rows, length))
    return scores, ids


def assert_same(ours, theirs):
    ours, theirs = np.asarray(ours), theirs.numpy()
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6, atol=1e-6)


def seen_mask(ids, ignore=None):
    seen = np.zeros((len(ids), V), bool)
    for r, row in enumerate(ids):
        seen[r, row[(ignore[r] if ignore is not None else 0) :]] = True
    return seen


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty(penalty):
    scores, ids = scores_and_ids()
    pads = np.array([0, 3, 5, 0])  # left padding is ignored, as generate tells transformers
    theirs = hf.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=torch.tensor(pads))(
        torch.tensor(ids), torch.tensor(scores)
    )
    ours = processors.repetition_penalty(jnp.asarray(scores), seen_mask(ids, pads), penalty)
    assert_same(ours, theirs)
    assert not np.allclose(np.asarray(ours), scores)


@pytest.mark.parametrize("k,keep", [(1, 1), (10, 1), (3, 5), (V + 5, 1)])
def test_top_k(k, keep):
    scores, ids = scores_and_ids(1, with_inf=True)
    theirs = hf.TopKLogitsWarper(k, min_tokens_to_keep=keep)(
        torch.tensor(ids), torch.tensor(scores)
    )
    assert_same(processors.top_k(jnp.asarray(scores), k, keep), theirs)


@pytest.mark.parametrize("p,keep", [(0.1, 1), (0.5, 1), (0.9, 1), (0.999, 1), (0.05, 3)])
@pytest.mark.parametrize("with_inf", [False, True])
def test_top_p(p, keep, with_inf):
    scores, ids = scores_and_ids(2, with_inf=with_inf)
    theirs = hf.TopPLogitsWarper(p, min_tokens_to_keep=keep)(
        torch.tensor(ids), torch.tensor(scores)
    )
    ours = processors.top_p(jnp.asarray(scores), p, keep)
    assert_same(ours, theirs)
    kept = np.isfinite(np.asarray(ours)).sum(-1)
    assert (kept >= keep).all() and (kept < V).all()


def test_temperature():
    scores, ids = scores_and_ids(3)
    theirs = hf.TemperatureLogitsWarper(0.6)(torch.tensor(ids), torch.tensor(scores))
    assert_same(processors.temperature(jnp.asarray(scores), 0.6), theirs)


@pytest.mark.parametrize("new_tokens", [0, 4, 5, 9])
def test_pipeline_matches_transformers_list(new_tokens):
    """The whole sampling pipeline in generate's order, min_new_tokens included."""
    scores, ids = scores_and_ids(4, length=7 + new_tokens)
    stop = [5, 17]
    settings = GenerationSettings(
        do_sample=True,
        temperature=0.8,
        top_k=40,
        top_p=0.9,
        repetition_penalty=1.2,
        min_new_tokens=5,
        max_new_tokens=20,
    )
    plan = decoding.Plan.of(settings, constrain=False, num_stop=len(stop))
    knobs = decoding.Knobs.of(settings, stop, V, slots=32)
    theirs = hf.LogitsProcessorList(
        [
            hf.RepetitionPenaltyLogitsProcessor(1.2),
            hf.MinNewTokensLengthLogitsProcessor(7, 5, torch.tensor(stop)),
            hf.TemperatureLogitsWarper(0.8),
            hf.TopKLogitsWarper(40),
            hf.TopPLogitsWarper(0.9),
        ]
    )(torch.tensor(ids), torch.tensor(scores))
    zeros = jnp.zeros(len(ids), jnp.int32)
    ours = decoding.process_scores(
        jnp.asarray(scores),
        jnp.int32(new_tokens),
        plan,
        knobs,
        None,
        zeros,
        zeros,
        jnp.asarray(seen_mask(ids)),
    )
    assert_same(ours, theirs)
    greedy = decoding.Plan.of(settings.replace(do_sample=False), False, len(stop))
    held = decoding.process_scores(
        jnp.asarray(scores),
        jnp.int32(new_tokens),
        greedy,
        knobs,
        None,
        zeros,
        zeros,
        jnp.asarray(seen_mask(ids)),
    )
    assert np.isneginf(np.asarray(held)[:, stop]).all() == (new_tokens < 5)
    assert np.isfinite(np.asarray(held)[:, [s for s in range(V) if s not in stop]]).all()


def test_sample_rows_follows_softmax():
    probs = np.array([0.5, 0.25, 0.15, 0.1, 0.0])
    scores = jnp.log(jnp.asarray(probs, jnp.float32))
    n = 20000
    keys = jax.random.split(jax.random.key(0), n)
    draws = np.asarray(processors.sample_rows(keys, jnp.broadcast_to(scores, (n, 5))))
    freq = np.bincount(draws, minlength=5) / n
    np.testing.assert_allclose(freq, probs, atol=0.015)
    assert freq[4] == 0


def test_sample_without_replacement_follows_sequential_draws():
    """Gumbel top-k = draw, remove, renormalize, draw: check the first two draws' law."""
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    scores = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (1, 4))
    n = 20000
    keys = jax.random.split(jax.random.key(1), n)
    draw = jax.vmap(lambda key: processors.sample_without_replacement(key, scores, 2)[0])
    picks = np.asarray(draw(keys))
    assert (picks[:, 0] != picks[:, 1]).all()
    np.testing.assert_allclose(np.bincount(picks[:, 0], minlength=4) / n, probs, atol=0.015)
    # P(second = j) = sum_i p_i p_j / (1 - p_i)
    second = np.array(
        [sum(probs[i] * probs[j] / (1 - probs[i]) for i in range(4) if i != j) for j in range(4)]
    )
    np.testing.assert_allclose(np.bincount(picks[:, 1], minlength=4) / n, second, atol=0.015)
