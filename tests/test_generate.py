"""generate() on a tiny random AnyGPT imported from transformers: greedy equals transformers'
greedy token for token (batched, left-padded, with penalties and with span constraints), batches
equal one-by-one runs, sampling is seeded, and every constrained span parses."""

import os

import numpy as np
import pytest
import torch
from conftest import make_hf_anygpt_dir

from anygpt_jax import AnyGPT
from anygpt_jax.inference import GenerationSettings, default_stop_ids, generate
from anygpt_jax.modalities import image_codes_from_ids, music_codes_from_ids, speech_units_from_ids
from anygpt_jax.vocab import ModalitySpan
from converters.llama import import_checkpoint

IMAGE_CODES = 32  # SEED codes per image: the constraint's default fixed length


def load_tiny(root, tokenizer_dir, variant="gqa_untied", scan_layers=True, mesh=None):
    """(transformers model, our AnyGPT) of the same random weights."""
    import transformers

    hf_dir = os.path.join(root, f"hf_{variant}")
    ours = os.path.join(root, f"ours_{variant}_{scan_layers}")
    if not os.path.isdir(hf_dir):
        make_hf_anygpt_dir(hf_dir, tokenizer_dir, variant)
    if not os.path.isdir(ours):
        import_checkpoint(hf_dir, ours, scan_layers=scan_layers)
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
    return hf, AnyGPT.load(ours, mesh=mesh)


@pytest.fixture(scope="module")
def models(anygpt_tokenizer_dir, tmp_path_factory):
    return load_tiny(str(tmp_path_factory.mktemp("gen")), anygpt_tokenizer_dir)


def left_pad(prompts):
    n = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), n), dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, n - len(p) :] = torch.tensor(p)
        mask[r, n - len(p) :] = 1
    return ids, mask


def hf_generate(hf, prompts, stop_ids, **kwargs):
    """transformers' new tokens per prompt, cut after the first stop id."""
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        out = hf.generate(
            ids, attention_mask=mask, eos_token_id=list(stop_ids), pad_token_id=0, **kwargs
        )
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
        rows.append(row[:cut])
    return rows


def text_prompts(vocab, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab.text_vocab_size, k).tolist() for k in (5, 11, 3, 8)[:n]]


def test_greedy_equals_transformers(models):
    hf, m = models
    prompts = text_prompts(m.vocab)
    # Stop ids that greedy decoding meets early, so rows stop at different steps.
    free = hf_generate(hf, prompts, [2], max_new_tokens=12, do_sample=False)
    stops = [2, free[0][4], free[1][7]]
    want = hf_generate(hf, prompts, stops, max_new_tokens=12, do_sample=False)
    got = generate(
        m,
        prompts,
        GenerationSettings(do_sample=False, max_new_tokens=12),
        stop_ids=stops,
        constrain=False,
    )
    assert got == want
    assert [len(r) for r in got][:2] == [5, 8] and len(got[2]) <= 12


def test_greedy_tied_unrolled_equals_transformers(anygpt_tokenizer_dir, tmp_path):
    """The other layout: tied embedding as the head, unrolled layers, plain multi-head."""
    hf, m = load_tiny(str(tmp_path), anygpt_tokenizer_dir, "mha_tied", scan_layers=False)
    prompts = text_prompts(m.vocab, 2, seed=2)
    want = hf_generate(hf, prompts, [2], max_new_tokens=10, do_sample=False)
    settings = GenerationSettings(do_sample=False, max_new_tokens=10)
    assert m.generate(prompts, settings, stop_ids=[2], constrain=False) == want


def test_penalty_and_min_new_tokens_equal_transformers(models):
    hf, m = models
    prompts = text_prompts(m.vocab, 2, seed=1)
    free = hf_generate(hf, prompts, [2], max_new_tokens=10, do_sample=False)
    stops = [free[0][1], free[1][2]]  # suppressed until 6 new tokens exist
    settings = GenerationSettings(
        do_sample=False, repetition_penalty=1.8, min_new_tokens=6, max_new_tokens=14
    )
    want = hf_generate(
        hf,
        prompts,
        stops,
        max_new_tokens=14,
        do_sample=False,
        repetition_penalty=1.8,
        min_new_tokens=6,
    )
    got = m.generate(prompts, settings, stop_ids=stops, constrain=False)
    assert got == want
    assert all(t not in stops for row in got for t in row[:6])


def reference_allowed(vocab, seq, remaining):
    """An independent statement of the span rules, for transformers' prefix_allowed_tokens_fn."""
    mods = list(vocab.modalities.values())
    span, pos = None, 0
    for tid in seq:
        if span is None:
            span = next((m for m in mods if m.start_id == tid), None)
            pos = 0
        elif tid == span.end_id:
            span = None
        else:
            pos += 1

    def to_close(m, p):  # codes still needed, then the end marker
        if m.name == "image":
            return IMAGE_CODES - p + 1
        q = m.num_codebooks
        return max(q, -(-p // q) * q) - p + 1

    allowed = np.zeros(vocab.vocab_size, bool)
    if span is None:
        allowed[:] = True
        for m in mods:
            allowed[m.first_id : m.stop_id] = False
            allowed[m.end_id] = False
            allowed[m.start_id] = to_close(m, 0) <= remaining - 1
    else:
        m, q = span, span.num_codebooks
        if (m.name != "image" or pos < IMAGE_CODES) and to_close(m, pos + 1) <= remaining - 1:
            lo, hi = m.allowed_range(pos)
            allowed[lo:hi] = True
        if pos == IMAGE_CODES if m.name == "image" else pos >= q and pos % q == 0:
            allowed[m.end_id] = True
    return np.flatnonzero(allowed).tolist()


def span_prompts(vocab):
    image, speech, music = (vocab.modality(n) for n in ("image", "speech", "music"))
    text = vocab.encode("[Human]: hello<eoh> [MMGPT]:")
    frame = music.codes_to_ids(np.array([[1], [2], [3], [4]])).tolist()
    return [
        text + [image.start_id],
        text + [music.start_id] + frame + frame[:2],
        text[:4] + [speech.start_id],
        text,
    ]


def test_constrained_greedy_equals_transformers_with_the_rules_as_a_prefix_fn(models):
    hf, m = models
    v = m.vocab
    prompts = span_prompts(v)
    padded = max(len(p) for p in prompts)
    budget = 40
    stops = default_stop_ids(v)

    def prefix_fn(batch_id, ids):
        ids = ids.tolist()
        return reference_allowed(v, ids, budget - (len(ids) - padded))

    want = hf_generate(
        hf,
        prompts,
        stops,
        max_new_tokens=budget,
        do_sample=False,
        prefix_allowed_tokens_fn=prefix_fn,
    )
    got = generate(
        m, prompts, GenerationSettings(do_sample=False, max_new_tokens=budget), stop_ids=stops
    )
    assert got == want
    image = v.modality("image")
    assert got[0][:IMAGE_CODES] and all(image.contains(t) for t in got[0][:IMAGE_CODES])
    assert got[0][IMAGE_CODES] == image.end_id


def check_spans(vocab, prompt, new):
    """Every span of prompt + new parses strictly and has its modality's shape; returns them."""
    spans = [
        s for s in vocab.decode_segments(prompt + new, strict=True) if isinstance(s, ModalitySpan)
    ]
    for s in spans:
        ids = vocab.modality(s.modality).codes_to_ids(s.codes)
        if s.modality == "image":
            assert image_codes_from_ids(ids, vocab).shape == (IMAGE_CODES,)
        elif s.modality == "music":
            assert music_codes_from_ids(ids, vocab, strict=True).shape[1] >= 1
        elif s.modality == "speech":
            assert len(speech_units_from_ids(ids, vocab)) >= 1
    return spans


def test_sampled_spans_always_parse_and_seeds_repeat(models):
    _, m = models
    v = m.vocab
    prompts = span_prompts(v)
    ends = [v.modality(n).end_id for n in ("image", "music", "speech")]
    stops = default_stop_ids(v) + ends
    settings = GenerationSettings(
        do_sample=True,
        temperature=1.3,
        top_k=0,
        top_p=0.95,
        repetition_penalty=1.1,
        min_new_tokens=3,
        max_new_tokens=48,
    )
    runs = [m.generate(prompts, settings, seed=s, stop_ids=stops) for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    for out in runs[0] + runs[2]:
        assert 1 <= len(out) <= 48
    for run in (runs[0], runs[2]):
        image, music, speech, text = run
        assert len(image) == IMAGE_CODES + 1 and image[-1] == ends[0]
        assert music[-1] == ends[1] and (len(music) - 1 + 6) % 4 == 0
        assert speech[-1] == ends[2]  # the budget closes the span at the latest
        for prompt, new in zip(prompts, run, strict=True):
            spans = check_spans(v, prompt, new)
            assert prompt is prompts[3] or spans[-1].modality in ("image", "music", "speech")
    # A row's draws do not depend on the other rows or on the padding.
    alone = m.generate(prompts[:1], settings, seed=0, stop_ids=stops)
    assert alone[0] == runs[0][0]


def test_batched_equals_one_by_one(models):
    _, m = models
    v = m.vocab
    prompts = span_prompts(v) + text_prompts(v, 2, seed=3)
    settings = GenerationSettings(do_sample=False, max_new_tokens=36, repetition_penalty=1.2)
    batched = m.generate(prompts, settings)
    assert batched == [m.generate([p], settings)[0] for p in prompts]


def test_sampled_with_a_seed_per_prompt_equals_one_by_one(models):
    _, m = models
    v = m.vocab
    prompts = span_prompts(v) + text_prompts(v, 2, seed=4)
    settings = GenerationSettings(do_sample=True, top_k=20, top_p=0.9, max_new_tokens=40)
    seeds = [11 + i for i in range(len(prompts))]
    batched = m.generate(prompts, settings, seeds)
    assert batched == [m.generate([p], settings, s)[0] for p, s in zip(prompts, seeds, strict=True)]
    # An int seed gives prompt i stream i: the first prompt alone draws as in the batch.
    assert m.generate(prompts, settings, 7)[0] == m.generate(prompts[:1], settings, 7)[0]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        m.generate(prompts[:3], settings, [1, 2])


def test_bad_requests_are_refused(models, tmp_path):
    _, m = models
    s = GenerationSettings(max_new_tokens=8)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(m, [[5], []], s)
    with pytest.raises(ValueError, match=rf"prompt 0: id {m.config.vocab_size} at position 1"):
        generate(m, [[5, m.config.vocab_size]], s)
    with pytest.raises(TypeError, match="wrap a single prompt in a list"):
        generate(m, [5, 6], s)
    with pytest.raises(ValueError, match="no prompts"):
        generate(m, [], s)
    with pytest.raises(ValueError, match=r"stop_ids \[-1\] are outside"):
        generate(m, [[5]], s, stop_ids=[-1])
    image = m.vocab.modality("image")
    with pytest.raises(
        ValueError,
        match="prompt 0 ends inside an open image span that needs 33 more "
        "tokens to close, but max_new_tokens=8",
    ):
        generate(m, [[5, image.start_id]], s)
    with pytest.raises(ValueError, match="prompt 0: the open image span"):
        generate(m, [[image.start_id, 7]], s)
    with pytest.raises(TypeError, match="GenerationSettings"):
        generate(m, [[5]], {"max_new_tokens": 3})
    bare = AnyGPT(m.params, m.config, vocab=None)
    with pytest.raises(ValueError, match="no vocabulary .* pass stop_ids"):
        generate(bare, [[5]], s)
    with pytest.raises(ValueError, match="constrain=True needs the model's vocabulary"):
        generate(bare, [[5]], s, stop_ids=[2])
    assert (
        len(generate(bare, [[5]], s.replace(do_sample=False), stop_ids=[2], constrain=False)[0])
        >= 1
    )


def test_requests_in_one_bucket_reuse_one_program(models):
    """Prompt lengths, batch sizes and values (temperature, top-p, budgets, stop ids) that
    fall in the same buckets run the program compiled for the first request."""
    from anygpt_jax.inference import decoding
    from anygpt_jax.inference.generate import _programs

    _, m = models
    v = m.vocab
    base = GenerationSettings(do_sample=True, top_p=0.9, max_new_tokens=20)
    requests = [
        (text_prompts(v, 3, seed=7), base, [2]),
        (text_prompts(v, 4, seed=8)[1:], base.replace(temperature=0.5, top_p=0.6), [2, 5]),
        ([[9] * 16, [4], [5, 6]], base.replace(max_new_tokens=32, min_new_tokens=4), [3]),
    ]
    for prompts, settings, stops in requests:
        m.generate(prompts, settings, seed=1, stop_ids=stops)
    program = _programs(m)[decoding.Plan.of(base, True, 1)]
    assert program._cache_size() == 1


def test_the_facade_takes_what_vocab_encode_returns(models):
    """AnyGPT.logits and generate take one id list or a list of id lists of any lengths."""
    _, m = models
    a = m.vocab.encode("[Human]: hello<eoh> [MMGPT]:")
    b = m.vocab.encode("hi")
    one = m.logits(a)
    assert one.shape == (len(a), m.config.vocab_size)
    np.testing.assert_array_equal(one, m.logits(np.array([a]))[0])
    both = m.logits([a, b])  # ragged: right-padded, each row as if alone
    assert both.shape == (2, len(a), m.config.vocab_size)
    np.testing.assert_allclose(both[0], one, atol=1e-5)
    np.testing.assert_allclose(both[1, : len(b)], m.logits(b), atol=1e-5)
    s = GenerationSettings(max_new_tokens=6, do_sample=False)
    new = m.generate(a, s)
    assert isinstance(new[0], int) and new == m.generate([a], s)[0]
    with pytest.raises(ValueError, match="ids must be int ids"):
        m.logits([[0.5, 1.5]])


@pytest.mark.parametrize("chunk", [1, 5])
def test_streaming_hands_out_the_same_tokens_in_order(models, chunk):
    """on_tokens sees each prompt's new ids as they are decoded (every `chunk` steps); their
    concatenation is what generate returns, which is what it returns without streaming, for
    constrained sampling with a penalty and for greedy decoding."""
    _, m = models
    v = m.vocab
    prompts = span_prompts(v) + text_prompts(v, 2, seed=5)
    stops = default_stop_ids(v) + [v.modality(n).end_id for n in ("image", "music", "speech")]
    for settings in (GenerationSettings(do_sample=True, top_p=0.9, repetition_penalty=1.1,
                                        max_new_tokens=40),
                     GenerationSettings(do_sample=False, max_new_tokens=36)):
        calls: list[list[list[int]]] = []
        streamed = generate(m, prompts, settings, seed=3, stop_ids=stops,
                            on_tokens=calls.append, chunk=chunk)
        assert streamed == generate(m, prompts, settings, seed=3, stop_ids=stops)
        assert [sum((c[r] for c in calls), []) for r in range(len(prompts))] == streamed
        assert len(calls) > 1 and all(len(c) == len(prompts) for c in calls)
        assert max(len(c[r]) for c in calls for r in range(len(prompts))) <= chunk
    with pytest.raises(ValueError, match="num_beams == 1"):
        generate(m, prompts[:1], GenerationSettings(num_beams=2, do_sample=False),
                 on_tokens=print)
