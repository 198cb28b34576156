"""Continuous batching (inference/continuous.py): prompts that join a running generation at
different steps, leave it, and outlive a shift of the cache decode exactly what generate()
decodes for each alone, with the stacked (scanned) and the per-layer (unrolled) cache."""

import numpy as np
import pytest
from test_generate import load_tiny, span_prompts, text_prompts

from anygpt_jax.inference import GenerationSettings
from anygpt_jax.inference.continuous import DecodeSlots


@pytest.fixture(scope="module", params=[True, False], ids=["scanned", "unrolled"])
def model(request, anygpt_tokenizer_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("continuous"))
    return load_tiny(root, anygpt_tokenizer_dir, scan_layers=request.param)[1]


def run_staggered(slots: DecodeSlots, prompts, seeds, chunks=(3, 5, 2)):
    """Feeds `prompts` into `slots` as rows free up, advancing in uneven chunks; returns each
    prompt's ids and the streamed pieces, by prompt."""
    waiting = list(range(len(prompts)))
    done, streamed = {}, {i: [] for i in range(len(prompts))}
    owner_of_row = {}
    k = 0
    while len(done) < len(prompts):
        free = slots.free_rows()
        take = waiting[: min(len(free), 1 + k % 2)]  # one or two joiners at a time
        if take:
            rows = slots.admit([prompts[i] for i in take], take, [seeds[i] for i in take])
            owner_of_row.update(zip(rows, take, strict=True))
            del waiting[: len(take)]
        for row, ids in slots.advance(chunks[k % len(chunks)]).items():
            streamed[owner_of_row[row]].extend(ids)
        for finished in slots.harvest():
            done[finished.owner] = finished.ids
        k += 1
    return [done[i] for i in range(len(prompts))], [streamed[i] for i in range(len(prompts))]


def test_staggered_greedy_equals_each_prompt_alone(model):
    v = model.vocab
    prompts = (span_prompts(v) + text_prompts(v, 3, seed=7)) * 2
    settings = GenerationSettings(do_sample=False, max_new_tokens=40, repetition_penalty=1.2)
    slots = DecodeSlots(model, settings, rows=3, prompt_capacity=max(map(len, prompts)))
    got, streamed = run_staggered(slots, prompts, [0] * len(prompts))
    assert slots.shifts > 0  # the cache was shifted under running rows
    assert got == streamed == [model.generate([p], settings)[0] for p in prompts]
    assert slots.busy == 0 and len(slots.free_rows()) == slots.rows


def test_staggered_sampling_equals_each_prompt_alone_with_its_seed(model):
    v = model.vocab
    prompts = span_prompts(v) + text_prompts(v, 2, seed=8)
    settings = GenerationSettings(do_sample=True, top_k=20, top_p=0.9, max_new_tokens=40)
    seeds = [31 + i for i in range(len(prompts))]
    slots = DecodeSlots(model, settings, rows=2, prompt_capacity=16)
    got, _ = run_staggered(slots, prompts, seeds, chunks=(4, 1))
    alone = [model.generate([p], settings, [s])[0] for p, s in zip(prompts, seeds, strict=True)]
    assert got == alone


def test_each_row_keeps_its_own_budget_of_new_tokens(model):
    """Requests differing only in min/max new tokens share a batch; each decodes what it
    decodes alone with its own settings, and one past the rows' size cannot join."""
    import dataclasses

    v = model.vocab
    prompts = span_prompts(v) + text_prompts(v, 2, seed=9)
    base = GenerationSettings(do_sample=False, max_new_tokens=40, repetition_penalty=1.1)
    budgets = [(0, 40), (12, 34), (0, 6), (20, 20), (5, 9), (0, 1)]
    own = [dataclasses.replace(base, min_new_tokens=lo, max_new_tokens=hi) for lo, hi in budgets]
    slots = DecodeSlots(model, base, rows=4, prompt_capacity=16)
    assert slots.takes(own[1]) and not slots.takes(dataclasses.replace(base, max_new_tokens=65))
    assert not slots.takes(dataclasses.replace(base, repetition_penalty=1.3))
    done, waiting = {}, list(range(len(prompts)))
    while len(done) < len(prompts):
        take = waiting[: len(slots.free_rows())]
        if take:
            slots.admit([prompts[i] for i in take], take, [0] * len(take), [own[i] for i in take])
            del waiting[: len(take)]
        slots.advance(3)
        done.update((f.owner, f.ids) for f in slots.harvest())
    alone = [model.generate([p], s)[0] for p, s in zip(prompts, own, strict=True)]
    assert [done[i] for i in range(len(prompts))] == alone
    assert [len(x) for x in alone][2] <= 6 and len(alone[5]) == 1
    with pytest.raises(ValueError, match="cannot take"):
        slots.admit(prompts[:1], ["x"], [0], [dataclasses.replace(base, max_new_tokens=65)])


def test_a_batch_grows_under_its_running_rows(model):
    v = model.vocab
    prompts = span_prompts(v)[:3]
    settings = GenerationSettings(do_sample=False, max_new_tokens=40)
    slots = DecodeSlots(model, settings, rows=1, prompt_capacity=16)
    assert slots.rows == 1
    slots.admit(prompts[:1], [0], [0])
    slots.advance(3)
    slots.grow(3)  # the first row decodes on in a batch of 4
    assert slots.rows == 4 and slots.free_rows() == [1, 2, 3]
    slots.admit(prompts[1:], [1, 2], [0, 0])
    done = {}
    while slots.busy:
        slots.advance(5)
        done.update((f.owner, f.ids) for f in slots.harvest())
    assert [done[i] for i in range(3)] == [model.generate([p], settings)[0] for p in prompts]


def test_refusals(model):
    v = model.vocab
    greedy = GenerationSettings(do_sample=False, max_new_tokens=8)
    with pytest.raises(ValueError, match="num_beams == 1"):
        DecodeSlots(model, GenerationSettings(num_beams=2, do_sample=False), 2, 16)
    slots = DecodeSlots(model, greedy, rows=2, prompt_capacity=16)
    with pytest.raises(ValueError, match="prompt 0: the prompt has 40 tokens; this batch's "
                       "rows take 16"):
        slots.admit([list(range(3, 43))], ["a"], [0])
    with pytest.raises(ValueError, match="2 prompts for 1 free rows"):
        slots.admit([[5, 6]], ["a"], [0])
        slots.admit([[5, 6], [7, 8]], ["b", "c"], [0, 0])
    music = v.modality("music")
    broken = v.encode("hi") + [music.start_id, 5]  # a text id where a music code must be
    with pytest.raises(ValueError, match="prompt 0"):
        DecodeSlots(model, greedy, rows=2, prompt_capacity=16).admit([broken], ["x"], [0])
    assert np.all(np.asarray(slots.state["done"])[1:])  # the refused joiners took no row
