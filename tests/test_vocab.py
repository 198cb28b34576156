"""MergedVocabulary against real transformers tokenizers built the way AnyGPT builds its own."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import seqio

from anygpt_jax.testing.tokenizers import build_anygpt_dir, train_spm
from anygpt_jax.vocab import (
    AUDIO,
    IMAGE,
    MUSIC,
    SFT_MARKERS,
    SPEECH,
    TEXT_MARKERS,
    MarkerBlock,
    MergedVocabulary,
    ModalitySpan,
    anygpt_base_layout,
    anygpt_layout,
)
from anygpt_jax.vocab.layout import Layout

TEXT_POOL = (
    "hello world",
    " the cat",
    "日本語",
    "🙂 emoji",
    "a\nb",
    "  two  spaces ",
    "\t",
    "naïve café",
    "42",
    " ",
    "x",
    "▁odd",
    "Ω≈ç",
    "\n\n",
    "end.",
    "<not a token>",
    "<👀99999>",
    "<🗣5>",
    "[Human",
    "<eoh",
    "🎶",
)


def _write_old_style_dir(root: str, spm_path: str, strip: bool, legacy: bool) -> str:
    """Files as transformers 4.34 slow LlamaTokenizer saved them (no tokenizer.json)."""
    import sentencepiece as spm

    os.makedirs(root, exist_ok=True)
    shutil.copy(spm_path, os.path.join(root, "tokenizer.model"))
    n = spm.SentencePieceProcessor(model_file=spm_path).get_piece_size()
    added = {t: n + i for i, t in enumerate(anygpt_base_layout().added_tokens())}
    flags = {"single_word": False}
    decoder = {
        str(i): {
            "content": c,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "special": True,
            **flags,
        }
        for i, c in enumerate(["<unk>", "<s>", "</s>"])
    }
    decoder.update(
        {
            str(i): {
                "content": c,
                "lstrip": strip,
                "normalized": True,
                "rstrip": strip,
                "special": False,
                **flags,
            }
            for c, i in added.items()
        }
    )
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "legacy": legacy,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "added_tokens_decoder": decoder,
    }
    for name, obj in (("added_tokens.json", added), ("tokenizer_config.json", config)):
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import LlamaTokenizer

    root = str(tmp_path_factory.mktemp("vocab"))
    spm_path = os.path.join(root, "llama.model")
    train_spm(spm_path)
    dirs = {
        "hf5": build_anygpt_dir(os.path.join(root, "hf5"), spm_path),
        "hf5_sft": build_anygpt_dir(os.path.join(root, "sft"), spm_path, audio=False, sft=True),
        "old_strip": _write_old_style_dir(os.path.join(root, "old"), spm_path, True, False),
        "old_legacy": _write_old_style_dir(os.path.join(root, "leg"), spm_path, False, True),
    }
    refs = {k: LlamaTokenizer.from_pretrained(d) for k, d in dirs.items()}
    vocabs = {k: MergedVocabulary.from_tokenizer_dir(d) for k, d in dirs.items()}
    return {"root": root, "spm": spm_path, "dirs": dirs, "refs": refs, "vocabs": vocabs}


def _random_string(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 9)):
        r = rng.random()
        if r < 0.35:
            parts.append(rng.choice(TEXT_POOL))
        elif r < 0.5:
            parts.append(rng.choice(TEXT_MARKERS + SFT_MARKERS + ("<s>", "</s>", "<unk>")))
        elif r < 0.6:
            parts.append(rng.choice([" ", "  ", "\n", " \n "]))
        else:
            m = rng.choice([IMAGE, SPEECH, MUSIC, AUDIO])
            n = rng.randint(0, 6)
            codes = "".join(f"<{m.glyph}{rng.randrange(m.count)}>" for _ in range(n))
            parts.append(m.start + codes + m.end)
    return "".join(parts)


FIXED_STRINGS = [
    "",
    " ",
    "hello",
    " hello",
    "[Human]: Please draw. <soim><👀1><👀8191><eoim><eoh> [MMGPT]: ok<eos>",
    "[Human]: <sosp><🗣️0><🗣️1023><eosp> Please transcribe.<eoh> [MMGPT]: a cat sings<eos>",
    "<somu><🎶0><🎶2048><🎶4096><🎶6144><eomu>",
    "<👀8191><👀8192>",
    "<🗣️12><🗣12>",
    " <eoh>  x",
    "<eoh>x",
    "a <s> b </s> c",
    "<-Ins-> do it\n <-Res-> done",
    "日本語<soim><eoim>🙂",
]


# ----- ids read from the files --------------------------------------------------------------


@pytest.mark.parametrize("name", ["hf5", "hf5_sft", "old_strip", "old_legacy"])
def test_every_added_token_id_equals_the_tokenizer_files(env, name):
    vocab, ref = env["vocabs"][name], env["refs"][name]
    added = ref.get_added_vocab()
    assert len(added) > 17000
    assert vocab.vocab_size == len(ref)
    for content, tid in added.items():
        assert vocab.token_to_id(content) == tid, content
        assert vocab.id_to_token(tid) == content
    for m in vocab.modalities.values():
        assert ref.convert_tokens_to_ids(m.code_token(0)) == m.first_id
        assert ref.convert_tokens_to_ids(m.code_token(m.count - 1)) == m.stop_id - 1
        assert ref.convert_tokens_to_ids([m.start_token, m.end_token]) == [m.start_id, m.end_id]
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id) == (1, 2, 0, 0)
    assert (ref.bos_token_id, ref.eos_token_id, ref.unk_token_id) == (1, 2, 0)


def test_layout_sizes_with_llama_vocab():
    assert 32000 + anygpt_layout().num_added() == 49418
    assert 32000 + anygpt_layout(include_sft=True).num_added() == 49420
    assert 32000 + anygpt_base_layout().num_added() == 53516
    assert anygpt_base_layout().added_tokens()[-2:] == ["<soau>", "<eoau>"]
    # The speech glyph carries the emoji variation selector, as in the released code.
    assert SPEECH.code_token(7) == "<\U0001f5e3\ufe0f7>"


def test_declared_layout_equals_tokenizer_dir(env):
    declared = MergedVocabulary.from_layout(env["spm"], anygpt_base_layout())
    real = env["vocabs"]["hf5"]
    assert {t.content: t.id for t in declared.added_tokens} == {
        t.content: t.id for t in real.added_tokens
    }
    assert declared.fingerprint == real.fingerprint and declared == real
    assert real.layout.blocks == anygpt_base_layout().blocks
    sft = env["vocabs"]["hf5_sft"]
    assert sft.layout.blocks == anygpt_layout(include_sft=True).blocks
    assert sft == MergedVocabulary.from_layout(env["spm"], anygpt_layout(include_sft=True))
    assert sft.marker_ids == {t: sft.token_to_id(t) for t in TEXT_MARKERS + SFT_MARKERS}


def test_gin_configures_the_named_layout():
    import gin

    with gin.unlock_config():
        gin.parse_config("anygpt_layout.include_audio = True")
    try:
        assert anygpt_layout().num_added() == anygpt_base_layout().num_added()
    finally:
        gin.clear_config()


# ----- strings: same ids and text as transformers -------------------------------------------


@pytest.mark.parametrize("name", ["hf5", "hf5_sft", "old_strip", "old_legacy"])
def test_encode_decode_match_transformers(env, name):
    vocab, ref = env["vocabs"][name], env["refs"][name]
    rng = random.Random(len(name))
    strings = FIXED_STRINGS + [_random_string(rng) for _ in range(200)]
    for s in strings:
        ids = vocab.encode(s)
        assert ids == ref(s, add_special_tokens=False).input_ids, s
        assert vocab._decode(ids) == ref.decode(ids, skip_special_tokens=True), s
        assert vocab.decode_with_special(ids) == ref.decode(ids, skip_special_tokens=False), s
        assert vocab.encode(s, add_bos=True, add_eos=True) == [1, *ids, 2]
    assert env["vocabs"]["old_strip"].encode("<eoh> [MMGPT]") == [
        vocab.token_to_id("<eoh>"),
        vocab.token_to_id("[MMGPT]"),
    ]


def test_decode_round_trips(env):
    vocab = env["vocabs"]["hf5"]
    rng = random.Random(5)
    for _ in range(200):
        s = _random_string(rng).lstrip()
        s = s.replace("<s>", "").replace("</s>", "").replace("<unk>", "")
        if s.startswith(" ") or s.startswith("\u2581"):
            continue  # a leading space is the prefix the decoder strips, as in transformers
        ids = vocab.encode(s)
        assert vocab.decode(ids) == s.replace("\u2581", " ")
        assert vocab.encode(vocab.decode(ids)) == ids
    assert vocab.decode([1, *vocab.encode("hi"), 2, *vocab.encode("cut")]) == "hi"  # seqio: EOS


# ----- structured form -----------------------------------------------------------------------


def _random_segments(rng: random.Random, vocab: MergedVocabulary):
    segs = []
    for k in range(rng.randint(1, 6)):
        if rng.random() < 0.5:
            text = rng.choice(TEXT_POOL + TEXT_MARKERS)
            segs.append(text.lstrip() if k == 0 else text)
        else:
            m = vocab.modality(rng.choice(list(vocab.modalities)))
            t = rng.randint(0, 5)
            shape = (t,) if m.num_codebooks == 1 else (m.num_codebooks, t)
            segs.append(
                ModalitySpan(
                    m.name,
                    np.asarray(
                        [rng.randrange(m.codebook_size) for _ in range(int(np.prod(shape)))]
                    ).reshape(shape),
                )
            )
    return segs


def _merge_text(segs):
    out = []
    for s in segs:
        if isinstance(s, str) and out and isinstance(out[-1], str):
            out[-1] += s
        elif s != "":
            out.append(s)
    return out


@pytest.mark.parametrize("name", ["hf5", "old_strip"])
def test_segments_round_trip(env, name):
    vocab, ref = env["vocabs"][name], env["refs"][name]
    rng = random.Random(7)
    decoded = 0
    for _ in range(100):
        segs = _random_segments(rng, vocab)
        text = vocab.format_segments(segs)
        ids = vocab.encode_segments(segs)
        assert ids == vocab.encode(text) == ref(text, add_special_tokens=False).input_ids
        assert vocab.parse_segments(text) == _merge_text(segs)
        if name == "hf5" and not text[:1].isspace() and "\u2581" not in text:
            assert vocab.decode_segments(ids) == _merge_text(segs)
            decoded += 1
    assert decoded > 30 or name != "hf5"
    segs = ["[Human]: hi ", ModalitySpan("image", np.arange(32)), "<eoh>"]
    ids = vocab.encode_segments(segs, add_bos=True, add_eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert vocab.decode_segments(ids)[1] == segs[1]


def test_music_is_frame_major_with_codebook_offsets(env):
    vocab, ref = env["vocabs"]["hf5"], env["refs"]["hf5"]
    music = vocab.modality("music")
    assert (music.codebook_size, music.num_codebooks, music.count) == (2048, 4, 8192)
    codes = np.random.default_rng(0).integers(0, 2048, size=(4, 250))
    ids = music.codes_to_ids(codes)
    assert ids.shape == (1000,)
    for t in range(250):
        for q in range(4):
            assert ids[t * 4 + q] == music.first_id + codes[q, t] + 2048 * q
    # The released code's string form of the same span, tokenized by transformers.
    text = (
        "<somu>"
        + "".join(f"<🎶{codes[q][t] + 2048 * q}>" for t in range(250) for q in range(4))
        + "<eomu>"
    )
    assert ref(text, add_special_tokens=False).input_ids == vocab.span_to_ids(
        ModalitySpan("music", codes)
    )
    np.testing.assert_array_equal(music.ids_to_codes(ids), codes)
    rule = ((ids - music.first_id) % 2048).reshape(-1, 4).T  # id % 2048, (T, 4) -> (4, T)
    np.testing.assert_array_equal(rule, codes)
    with pytest.raises(ValueError, match="codebook 0, expected 1"):
        music.ids_to_codes(ids[[0, 0, 2, 3]])
    with pytest.raises(ValueError, match="not a multiple of 4"):
        music.ids_to_codes(ids[:6])
    assert music.ids_to_codes(ids[:6], strict=False).shape == (4, 1)
    assert music.allowed_range(5) == (music.first_id + 2048, music.first_id + 4096)


def test_speech_and_image_codes(env):
    vocab = env["vocabs"]["hf5"]
    speech, image = vocab.modality("speech"), vocab.modality("image")
    assert (speech.count, image.count) == (1024, 8192)
    sc = np.array([0, 5, 1023, 7])
    np.testing.assert_array_equal(speech.codes_to_ids(sc), speech.first_id + sc)
    np.testing.assert_array_equal(speech.ids_to_codes(speech.codes_to_ids(sc)), sc)
    ic = np.arange(32) * 255
    assert vocab.format_span(ModalitySpan("image", ic)).startswith("<soim><👀0><👀255>")
    np.testing.assert_array_equal(image.ids_to_codes(image.codes_to_ids(ic)), ic)
    assert {m.tokenizer for m in vocab.modalities.values()} == {
        "seed_tokenizer_v2",
        "speechtokenizer_rvq1",
        "encodec_32khz",
        "encodec_24khz",
    }


def test_per_id_tables(env):
    import jax.numpy as jnp

    vocab = env["vocabs"]["hf5"]
    assert vocab.modality_names == ("text", "image", "speech", "music", "audio")
    index = vocab.id_modality_index()
    assert index.shape == (vocab.vocab_size,) and index.dtype == np.int32
    for m in vocab.modalities.values():
        assert (index[m.first_id : m.stop_id] == m.index).all()
        assert index[m.start_id] == index[m.end_id] == m.index
        assert vocab.id_modality_index(include_markers=False)[m.start_id] == 0
    assert (index[: vocab.text_vocab_size] == 0).all()
    assert index[vocab.token_to_id("[Human]")] == 0
    ids = np.array([1, vocab.modality("speech").first_id, vocab.modality("music").stop_id - 1])
    assert vocab.is_modality_id(ids).tolist() == [False, True, True]
    assert vocab.is_modality_id(jnp.asarray(ids), "music").tolist() == [False, False, True]
    mask = vocab.allowed_ids_mask("speech")
    sp = vocab.modality("speech")
    assert mask.sum() == 1025 and mask[sp.end_id] and not mask[sp.start_id]
    text = vocab.allowed_ids_mask("text")
    assert text[vocab.token_to_id("<soim>")] and not text[vocab.token_to_id("<eoim>")]
    assert not text[sp.first_id] and text[5]


# ----- seqio and tf.data ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hf5", "old_strip", "old_legacy"])
def test_tf_data_path_equals_python(env, name):
    import tensorflow as tf

    import anygpt_jax.tasks  # noqa: F401 - the data path: registers it as a seqio.Vocabulary

    vocab = env["vocabs"][name]
    assert isinstance(vocab, seqio.Vocabulary)
    rng = random.Random(11)
    strings = FIXED_STRINGS + [_random_string(rng) for _ in range(60)]
    ds = tf.data.Dataset.from_tensor_slices(strings).map(vocab.encode_tf)
    for s, ids in zip(strings, ds.as_numpy_iterator(), strict=True):
        assert ids.tolist() == vocab.encode(s), s
    batch = vocab.encode_tf(tf.constant(strings[:4]))
    assert batch.to_list() == [vocab.encode(s) for s in strings[:4]]
    ids = [vocab.encode(s) + [2, 7, 7] for s in strings[1:40]]
    width = max(map(len, ids))
    dense = tf.constant([i + [0] * (width - len(i)) for i in ids], tf.int32)
    decoded = vocab.decode_tf(dense).numpy()
    assert [d.decode() for d in decoded] == [vocab.decode(i) for i in ids]


def test_tf_python_fallback_for_prefix_tokens(env):
    import tensorflow as tf

    layout = Layout((MarkerBlock("chat", ("<a>", "<a>b")), IMAGE, SPEECH, MUSIC), name="odd")
    vocab = MergedVocabulary.from_layout(env["spm"], layout)
    for s in ["x<a>b<a>", "<a>bb<a>"]:
        assert vocab.encode_tf(tf.constant(s)).numpy().tolist() == vocab.encode(s)
    assert vocab.encode("<a>b") == [vocab.token_to_id("<a>b")]  # longest match wins


# ----- files and identity --------------------------------------------------------------------


def test_save_load_and_fingerprint(env, tmp_path):
    from transformers import LlamaTokenizer

    vocab = env["vocabs"]["old_strip"]
    out = str(tmp_path / "vocab")
    vocab.save(out)
    loaded = MergedVocabulary.load(out)
    assert loaded == vocab and loaded.fingerprint == vocab.fingerprint
    assert loaded.encode(FIXED_STRINGS[4]) == vocab.encode(FIXED_STRINGS[4])
    assert loaded.layout.blocks == vocab.layout.blocks
    ref = LlamaTokenizer.from_pretrained(out)  # checkpoints stay loadable by transformers
    for s in FIXED_STRINGS:
        assert ref(s, add_special_tokens=False).input_ids == vocab.encode(s)
    hf_only = str(tmp_path / "hf")
    vocab.save_hf_tokenizer(hf_only)
    assert "anygpt_vocab.json" not in os.listdir(hf_only)
    assert MergedVocabulary.load(hf_only) == vocab
    assert len(vocab.fingerprint) == 64
    assert pickle.loads(pickle.dumps(vocab)) == vocab  # tf.data / multiprocessing workers
    assert vocab.fingerprint != env["vocabs"]["hf5"].fingerprint  # whitespace flags differ
    assert env["vocabs"]["hf5"].fingerprint != env["vocabs"]["hf5_sft"].fingerprint
    with open(os.path.join(out, "added_tokens.json"), encoding="utf-8") as f:
        table = json.load(f)
    meta = json.load(open(os.path.join(out, "anygpt_vocab.json"), encoding="utf-8"))
    assert meta["vocab_size"] == vocab.vocab_size
    cfg_path = os.path.join(out, "tokenizer_config.json")
    cfg = json.load(open(cfg_path, encoding="utf-8"))
    cfg["added_tokens_decoder"][str(table["<eoh>"])]["rstrip"] = False
    json.dump(cfg, open(cfg_path, "w", encoding="utf-8"))
    with pytest.raises(ValueError, match="fingerprint .* does not match"):
        MergedVocabulary.load(out)


# ----- clear errors --------------------------------------------------------------------------


def _copy_dir(env, tmp_path, name="hf5"):
    out = str(tmp_path / name)
    shutil.copytree(env["dirs"][name], out)
    return out


def test_missing_tokenizer_model(env, tmp_path):
    d = _copy_dir(env, tmp_path)
    os.remove(os.path.join(d, "tokenizer.model"))
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        MergedVocabulary.from_tokenizer_dir(d)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MergedVocabulary.from_tokenizer_dir(str(tmp_path / "nowhere"))


def test_non_consecutive_added_tokens(env, tmp_path):
    d = _copy_dir(env, tmp_path, "old_strip")
    for name in ("added_tokens.json", "tokenizer_config.json"):
        path = os.path.join(d, name)
        obj = json.load(open(path, encoding="utf-8"))
        if name == "added_tokens.json":
            obj["<eosp>"] += 100000
        else:
            dec = obj["added_tokens_decoder"]
            key = next(k for k, v in dec.items() if v["content"] == "<eosp>")
            dec[str(int(key) + 100000)] = dec.pop(key)
        json.dump(obj, open(path, "w", encoding="utf-8"), ensure_ascii=False)
    msg = r"not consecutive: no token has id \d+ \(after '<sosp>'\)"
    with pytest.raises(ValueError, match=msg):
        MergedVocabulary.from_tokenizer_dir(d)


def test_codes_out_of_order_in_files(env, tmp_path):
    d = _copy_dir(env, tmp_path, "old_strip")
    path = os.path.join(d, "added_tokens.json")
    table = json.load(open(path, encoding="utf-8"))
    cfg_path = os.path.join(d, "tokenizer_config.json")
    os.remove(cfg_path)
    table["<👀3>"], table["<👀4>"] = table["<👀4>"], table["<👀3>"]
    json.dump(table, open(path, "w", encoding="utf-8"), ensure_ascii=False)
    with pytest.raises(ValueError, match="image code tokens are not consecutive: '<👀3>'"):
        MergedVocabulary.from_tokenizer_dir(d)


def test_conflicting_files(env, tmp_path):
    d = _copy_dir(env, tmp_path, "old_strip")
    path = os.path.join(d, "added_tokens.json")
    table = json.load(open(path, encoding="utf-8"))
    table["<eoh>"], table["<eos>"] = table["<eos>"], table["<eoh>"]
    json.dump(table, open(path, "w", encoding="utf-8"), ensure_ascii=False)
    with pytest.raises(ValueError, match="tokenizer_config.json gives id .*added_tokens.json"):
        MergedVocabulary.from_tokenizer_dir(d)
    with open(path, "w") as f:
        f.write("{broken")
    with pytest.raises(ValueError, match="added_tokens.json is not valid JSON"):
        MergedVocabulary.from_tokenizer_dir(d)


def test_missing_modality_block(env, tmp_path):
    d = build_anygpt_dir(str(tmp_path), env["spm"], audio=False, modalities=(IMAGE, SPEECH))
    with pytest.raises(ValueError, match="the music block is missing"):
        MergedVocabulary.from_tokenizer_dir(d)
    vocab = MergedVocabulary.from_tokenizer_dir(d, required_modalities=("image", "speech"))
    assert list(vocab.modalities) == ["image", "speech"]
    with pytest.raises(ValueError, match="marker token '<-Res->' is missing"):
        MergedVocabulary.from_tokenizer_dir(d, required_modalities=(), required_markers=SFT_MARKERS)


def test_bad_codes_and_spans(env):
    vocab = env["vocabs"]["hf5"]
    with pytest.raises(ValueError, match="image code 8192 at position 3 is out of range"):
        vocab.encode_segments([ModalitySpan("image", np.array([0, 1, 2, 8192]))])
    with pytest.raises(ValueError, match="music code -1 at codebook 2, frame 0"):
        vocab.modality("music").codes_to_ids(np.array([[0], [0], [-1], [0]]))
    with pytest.raises(ValueError, match=r"shape \[4, T\]"):
        vocab.modality("music").codes_to_ids(np.zeros((3, 5), int))
    with pytest.raises(ValueError, match="must be integers"):
        vocab.modality("speech").codes_to_ids(np.array([0.5]))
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        vocab.encode_segments(["hi", ModalitySpan("video", np.array([1]))])
    with pytest.raises(ValueError, match="malformed image span: <soim> .* not closed by <eoim>"):
        vocab.decode_segments(vocab.encode("a <soim><👀1><👀2> b"))
    with pytest.raises(ValueError, match="malformed speech span: .* outside <sosp>...<eosp>"):
        vocab.parse_segments("x <🗣️3><eosp>")
    with pytest.raises(ValueError, match="not closed by <eomu> before the end"):
        vocab.parse_segments("<somu><🎶1>")
    loose = vocab.decode_segments(vocab.encode("a <soim><👀1><👀2>"), strict=False)
    assert loose == ["a ", ModalitySpan("image", np.array([1, 2]))]
    with pytest.raises(ValueError, match=r"id 999999 at position 0 is outside \[0, \d+\)"):
        vocab.decode_with_special([999999, 1])
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        MergedVocabulary.from_tokenizer_dir(env["dirs"]["hf5"], required_modalities=("video",))


def test_inference_imports_neither_seqio_nor_tensorflow(anygpt_tokenizer_dir):
    """The facade and a loaded vocabulary encode and decode without seqio or TF; the data
    path registers the vocabulary as a seqio.Vocabulary."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from anygpt_jax import AnyGPT\n"
        "from anygpt_jax.inference import generate\n"
        "from anygpt_jax.vocab import MergedVocabulary\n"
        f"v = MergedVocabulary.from_tokenizer_dir({anygpt_tokenizer_dir!r})\n"
        "assert v.decode(v.encode('hello world')) == 'hello world'\n"
        "print(sorted(m for m in ('seqio', 'tensorflow') if m in sys.modules))\n"
        "import seqio, anygpt_jax.tasks\n"
        "print(isinstance(v, seqio.Vocabulary))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:2] == ["[]", "True"]
