"""seqio tasks and mixtures over shards: round trips, masks, rates, determinism, resume, hosts."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import seqio

from anygpt_jax import tasks
from anygpt_jax.data import pipeline
from anygpt_jax.data.shards import ShardError
from anygpt_jax.vocab import MergedVocabulary, ModalitySpan, anygpt_layout


@pytest.fixture(scope="module")
def registered(shard_corpus, merged_vocab):
    names = tasks.register(
        merged_vocab,
        shard_dirs={kind: [dirs[0]] for kind, dirs in shard_corpus.items()},
    )
    assert set(names) == set(tasks.TASKS) | {tasks.PRETRAIN, tasks.SFT}
    return shard_corpus


def _rows(name, **kw):
    args = dict(sequence_length=2048, batch_size=None, shuffle=False, pack=False, num_epochs=1)
    return list(pipeline.get_dataset(name, **(args | kw)).as_numpy_iterator())


@pytest.mark.parametrize("task", list(tasks.TASKS))
def test_shard_to_ids_round_trip(registered, merged_vocab, task):
    kind, direction = tasks.TASKS[task]
    examples = registered[kind][1]
    rows = _rows(task)
    assert len(rows) == len(examples)
    want = sorted(tuple(s.codes.reshape(-1).tolist()) for e in examples for s in e.spans)
    got = []
    for r in rows:
        seg = r["decoder_segment_ids"] > 0
        ids = np.append(r["decoder_input_tokens"][seg], r["decoder_target_tokens"][seg][-1])
        segments = merged_vocab.decode_segments(ids)
        spans = [s for s in segments if isinstance(s, ModalitySpan)]
        got += [tuple(s.codes.reshape(-1).tolist()) for s in spans]
        text = "".join(s for s in segments if isinstance(s, str))
        w = r["decoder_loss_weights"][seg]
        if kind == "dialogue":
            assert text.startswith("You are an AI assistant named AnyGPT")
            assert 0 < w.mean() < 1  # assistant turns only
        else:
            assert np.all(w == 1)  # all tokens in pre-training
            assert any(e.text in text for e in examples)
            assert ("This is input:" in text) == direction.startswith("text_to")
    assert sorted(got) == want  # the exact codes of every span, nothing lost or altered


def _task_of(ids, vocab):
    mods = [m for m in vocab.modalities.values() if np.any(ids == m.start_id)]
    if len(mods) != 1 or ids.tolist().count(vocab.token_to_id("<eoh>")) != 1:
        return "dialogue"
    eoh = ids.tolist().index(vocab.token_to_id("<eoh>"))
    to_text = ids.tolist().index(mods[0].start_id) < eoh
    return f"{mods[0].name}_to_text" if to_text else f"text_to_{mods[0].name}"


def test_mixture_rates(registered, merged_vocab):
    provider = seqio.get_mixture_or_task(tasks.PRETRAIN)
    ds = provider.get_dataset(
        {"targets": 4096, "loss_weights": 4096},
        shuffle=True,
        seed=3,
        num_epochs=None,
        try_in_mem_cache=False,
        log_mixing_proportions=False,
    )
    n = 3000
    counts = collections.Counter(
        _task_of(ex["targets"], merged_vocab) for ex in ds.take(n).as_numpy_iterator()
    )
    by_direction = {
        d: tasks.PRETRAIN_RATES[t] for t, (_, d) in tasks.TASKS.items() if t in tasks.PRETRAIN_RATES
    }
    for d, rate in by_direction.items():
        assert abs(counts[d] / n - rate) < 0.03, (d, counts[d] / n, rate)


def _take(it, k):
    return [next(it) for _ in range(k)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_determinism_and_resume(registered, tmp_path):
    def make(seed=5):
        return pipeline.InputIterator(
            pipeline.get_dataset(tasks.PRETRAIN, sequence_length=1024, batch_size=2, seed=seed)
        )

    a = _take(make(), 6)
    assert not _same(a, _take(make(seed=6), 6))
    it = make()
    _take(it, 3)
    path = it.save(str(tmp_path / "input" / "process_0"))
    rest = _take(it, 3)
    assert _same(a[3:], rest)  # a second run with the same seed gives the same batches
    fresh = make()
    fresh.restore(path)
    assert _same(_take(fresh, 3), rest)
    with pytest.raises(FileNotFoundError, match="no input position"):
        fresh.restore(str(tmp_path / "nowhere"))


def test_hosts_read_disjoint_parts(registered):
    ids = []
    for i in range(2):
        rows = _rows("anygpt_asr", shard_info=seqio.ShardInfo(i, 2))
        ids.append({tuple(r["decoder_input_tokens"].tolist()) for r in rows})
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) == len(registered["speech_text"][1])
    # More hosts than files: records are dealt out instead.
    parts = [_rows("anygpt_asr", shard_info=seqio.ShardInfo(i, 3)) for i in range(3)]
    assert sum(len(p) for p in parts) == len(registered["speech_text"][1])


def test_task_refuses_other_vocabulary(shard_corpus, anygpt_tokenizer_dir, merged_vocab):
    import os

    spm = os.path.join(anygpt_tokenizer_dir, "tokenizer.model")
    other = MergedVocabulary.from_layout(spm, anygpt_layout(include_sft=True))
    try:
        tasks.register(other, shard_dirs={"music_text": [shard_corpus["music_text"][0]]})
        with pytest.raises(ShardError, match="music_text.*manifest.json: made with vocabulary"):
            _rows("anygpt_music_caption")
        with pytest.raises(ValueError, match="unknown tasks"):
            tasks.register(other, pretrain_rates={"anygpt_video": 1.0})
    finally:
        tasks.register(
            merged_vocab,
            shard_dirs={kind: [dirs[0]] for kind, dirs in shard_corpus.items()},
        )
