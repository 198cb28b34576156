"""Packing: segments never split, never visible to each other, weights carried, efficiency."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from anygpt_jax.data import packing
from anygpt_jax.model.attention import attention_mask


def _examples(lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(lengths):
        ids = rng.integers(3, 1000, n).astype(np.int32)
        ids[0] = 1
        w = (rng.random(n) < 0.5).astype(np.float32)
        out.append({"targets": ids, "loss_weights": w, "k": k})
    return out


def _dataset(examples):
    def gen():
        for e in examples:
            yield {"targets": e["targets"], "loss_weights": e["loss_weights"]}

    return tf.data.Dataset.from_generator(
        gen,
        output_signature={
            "targets": tf.TensorSpec([None], tf.int32),
            "loss_weights": tf.TensorSpec([None], tf.float32),
        },
    )


def _rows(examples, length, pack=True, num_bins=4, **kwargs):
    conv = packing.AnyGPTFeatureConverter(pack=pack, num_bins=num_bins, **kwargs)
    ds = conv(_dataset(examples), {"targets": length + 1, "loss_weights": length + 1})
    return list(ds.as_numpy_iterator())


def test_packing_keeps_every_example_whole_and_apart():
    length = 64
    exs = _examples(np.random.default_rng(1).integers(2, 60, 200))
    rows = _rows(exs, length)
    want = sorted(tuple(e["targets"].tolist()) for e in exs)
    got = []
    for row in rows:
        assert all(row[k].shape == (length,) for k in packing.MODEL_FEATURES)
        seg, pos = row[packing.SEGMENTS], row[packing.POSITIONS]
        n_real = int((seg > 0).sum())
        assert np.all(seg[:n_real] > 0) and np.all(seg[n_real:] == 0)  # padding only at the end
        for k in (packing.INPUTS, packing.TARGETS, packing.WEIGHTS, packing.POSITIONS):
            assert np.all(row[k][n_real:] == 0)
        for s in np.unique(seg[seg > 0]):
            where = np.flatnonzero(seg == s)
            assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
            assert np.array_equal(pos[where], np.arange(where.size))
            inp, tgt = row[packing.INPUTS][where], row[packing.TARGETS][where]
            assert np.array_equal(inp[1:], tgt[:-1])  # next-token shift inside the segment
            full = tuple(inp.tolist()) + (int(tgt[-1]),)
            match = [e for e in exs if tuple(e["targets"].tolist()) == full]
            assert match and np.array_equal(
                row[packing.WEIGHTS][where], match[0]["loss_weights"][1:]
            )
            got.append(full)
        # The model's mask from these segment ids: no query sees another example or padding.
        slots = np.arange(length)
        mask = np.asarray(attention_mask(slots, slots, seg[None], seg[None]))[0, 0, 0]
        q, k = np.nonzero(mask)
        assert np.all(seg[q] == seg[k]) and np.all(seg[k] > 0) and np.all(k <= q)
    assert sorted(got) == want  # each example exactly once, none split


def test_unpacked_rows_are_padded_examples():
    exs = _examples([5, 9])
    rows = _rows(exs, 16, pack=False)
    assert len(rows) == 2
    r = rows[1]
    assert r[packing.SEGMENTS].tolist() == [1] * 8 + [0] * 8
    assert r[packing.POSITIONS][:8].tolist() == list(range(8))
    assert r[packing.INPUTS][:8].tolist() == exs[1]["targets"][:-1].tolist()


def test_overlong_examples_are_truncated():
    exs = _examples([50, 3])
    # (Tasks trim to the length first; the converter's own cut is checked here.)
    rows = _rows(exs, 20, apply_length_check=False)
    lens = sorted(int((r[packing.SEGMENTS] == s).sum()) for r in rows for s in (1, 2))
    assert 20 in lens and 2 in lens
    long_row = next(r for r in rows if r[packing.SEGMENTS][19] == 1)
    assert long_row[packing.INPUTS].tolist() == exs[0]["targets"][:20].tolist()


def test_packing_is_deterministic_and_efficient():
    rng = np.random.default_rng(0)
    # A pre-training-like mix: captions+images (~60), speech (~300-800), music (~1050).
    lengths = np.concatenate(
        [rng.integers(50, 80, 300), rng.integers(250, 800, 120), rng.integers(1020, 1090, 100)]
    )
    rng.shuffle(lengths)
    exs = _examples(lengths)
    a = _rows(exs, 4500, num_bins=8)
    b = _rows(exs, 4500, num_bins=8)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    full = a[:-8]  # the last rows are the flushed leftovers of a finite stream
    eff = np.mean([np.mean(r[packing.SEGMENTS] > 0) for r in full])
    assert eff >= 0.95, eff


def test_bad_num_bins():
    with pytest.raises(ValueError, match="num_bins"):
        packing.pack_dataset(tf.data.Dataset.range(1), 8, num_bins=0)
