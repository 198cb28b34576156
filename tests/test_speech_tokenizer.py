"""SpeechTokenizer in JAX against the reference `speechtokenizer` package (tiny random model):
codes, reconstructions, padded batches, the converter and its CLI, bad audio input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from synthetic_task import noisy_lines, user_env
from test_audio_layers import assert_codes_match, fill_codebooks, reference_speechtokenizer

from anygpt_jax.modalities import AudioError, SpeechTokenizer, speech_ids, speech_units_from_ids
from anygpt_jax.modalities.codec import PARAMS_FILE
from anygpt_jax.vocab import SPEECH, Modality
from converters.common import ConversionError, torch_to_numpy
from converters.speechtokenizer import convert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated"),
              pytest.mark.filterwarnings("ignore:.*torch.jit.script.*is deprecated")]

# Real model: n_filters 64, strides [8, 5, 4, 2], dimension 1024, codebook 1024, n_q 8.
CONFIG = dict(n_filters=4, strides=[5, 2], dimension=16, semantic_dimension=12,
              bidirectional=True, dilation_base=2, residual_kernel_size=3, n_residual_layers=1,
              lstm_layers=2, activation="ELU", sample_rate=16000, codebook_size=64, n_q=3,
              learning_rate=1e-4)  # a training field, ignored
HOP = 10
LENGTHS = (2997, 1234, 2000)  # none a multiple of the hop


@pytest.fixture(scope="module")
def ref():
    st = reference_speechtokenizer()
    torch.manual_seed(0)
    model = st.SpeechTokenizer(CONFIG).eval()
    with torch.no_grad():
        latents = model.encoder(torch.randn(4, 1, 3000))
    fill_codebooks([layer._codebook for layer in model.quantizer.vq.layers],
                   latents.permute(0, 2, 1).reshape(-1, CONFIG["dimension"]))
    return model


@pytest.fixture(scope="module")
def ckpt(ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("st")
    with open(d / "config.json", "w") as f:
        json.dump(CONFIG, f)
    torch.save(ref.state_dict(), d / "ckpt.dev")
    return d


@pytest.fixture(scope="module")
def tok(ckpt):
    convert(str(ckpt / "config.json"), str(ckpt / "ckpt.dev"), str(ckpt / "out"))
    return SpeechTokenizer.load(str(ckpt / "out"), bucket_seconds=0.05)


def _audio(n, seed):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _ref_encode(ref, wav):
    x = torch.from_numpy(wav)[None, None]
    with torch.no_grad():
        codes = ref.encode(x)[:, 0].numpy()
        latents = ref.encoder(x)[0].T.numpy()
    return codes, latents


def _codebooks(ref):
    return np.stack([torch_to_numpy(layer._codebook.embed) for layer in ref.quantizer.vq.layers])


def _ref_decode(ref, codes):
    with torch.no_grad():
        return ref.decode(torch.from_numpy(codes.astype(np.int64))[:, None])[0, 0].numpy()


def test_codes_and_reconstruction_match_reference(ref, tok):
    wav = _audio(LENGTHS[0], 1)
    want, latents = _ref_encode(ref, wav)
    got = tok.encode(wav, 16000)
    assert got.shape == (3, -(-LENGTHS[0] // HOP)) and got.dtype == np.int32
    assert len(np.unique(want[0])) >= 30, "degenerate codebooks: the test would prove nothing"
    assert_codes_match(got, want, latents, _codebooks(ref))
    rec = tok.decode(want)
    expected = _ref_decode(ref, want)
    assert rec.shape == expected.shape == (want.shape[1] * HOP,)
    np.testing.assert_allclose(rec, expected, atol=1e-4, rtol=0)
    # Fewer layers: the first n of the full encoding; units are layer 1.
    np.testing.assert_array_equal(tok.encode(wav, 16000, n_q=2), got[:2])
    np.testing.assert_array_equal(tok.units(wav, 16000), got[0])
    # The LLM sees layer 1 only, as merged-vocabulary ids.
    speech = Modality.place(SPEECH, index=3, first_id=40000, start_id=41024, end_id=41025)
    vocab = type("Vocab", (), {"modality": lambda self, name: {"speech": speech}[name]})()
    ids = speech_ids(got, vocab)
    np.testing.assert_array_equal(ids, 40000 + got[0])
    np.testing.assert_array_equal(speech_units_from_ids(ids, vocab), got[0])
    np.testing.assert_allclose(tok.decode(want[:1]), _ref_decode(ref, want[:1]), atol=1e-4)


def test_padded_batch_equals_each_item_alone(ref, tok):
    wavs = [_audio(n, 10 + i) for i, n in enumerate(LENGTHS)]
    got = tok.encode_batch(wavs, 16000)
    refs = [_ref_encode(ref, w) for w in wavs]
    for (want, latents), codes in zip(refs, got, strict=True):
        assert_codes_match(codes, want, latents, _codebooks(ref))
    decoded = tok.decode_batch([want for want, _ in refs])
    for (want, _), rec in zip(refs, decoded, strict=True):
        np.testing.assert_allclose(rec, _ref_decode(ref, want), atol=1e-4, rtol=0)


def test_audio_files_and_bad_input(tok, tmp_path):
    # A stereo 8 kHz file: downmixed and resampled to 16 kHz, as the array path does.
    stereo = np.stack([_audio(800, 3), _audio(800, 4)], axis=1) * 0.1
    sf.write(tmp_path / "a.wav", stereo, 8000)
    from_file = tok.encode_file(str(tmp_path / "a.wav"))
    from_array = tok.encode(sf.read(tmp_path / "a.wav", dtype="float32")[0].T, 8000)
    np.testing.assert_array_equal(from_file, from_array)
    assert from_file.shape == (3, 160)

    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="bad.wav: cannot read audio"):
        tok.encode_file(str(tmp_path / "bad.wav"))
    with pytest.raises(AudioError, match="no such audio file"):
        tok.encode_file(str(tmp_path / "missing.wav"))
    with pytest.raises(AudioError, match="empty audio"):
        tok.encode(np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"1 to 2 channels, got shape \(3, 100\)"):
        tok.encode(np.zeros((3, 100), np.float32), 16000)
    with pytest.raises(AudioError, match="samples first"):
        tok.encode(np.zeros((100, 2), np.float32), 16000)
    with pytest.raises(AudioError, match="NaN"):
        tok.encode(np.full(100, np.nan, np.float32), 16000)
    with pytest.raises(ValueError, match="code 64 outside 0..63"):
        tok.decode(np.full((1, 5), 64))
    with pytest.raises(ValueError, match="n_q must be in 1..3"):
        tok.encode(_audio(100, 0), 16000, n_q=4)


def _state_variant(ref, edit):
    state = dict(ref.state_dict())
    edit(state)
    return state


def _convert_state(tmp_path, state, name):
    torch.save(state, tmp_path / f"{name}.dev")
    out = tmp_path / name
    convert(str(tmp_path / "config.json"), str(tmp_path / f"{name}.dev"), str(out))
    return out


def test_converter_key_styles_and_refusals(ref, ckpt, tok, tmp_path):  # tok converts ckpt/out
    (tmp_path / "config.json").write_text((ckpt / "config.json").read_text())
    from safetensors.numpy import load_file

    base = load_file(str(ckpt / "out" / PARAMS_FILE))

    def new_style(state):  # torch's parametrizations API names weight norm differently
        for key in [k for k in state if k.endswith(("weight_g", "weight_v"))]:
            stem, kind = key.rsplit(".", 1)
            state[f"{stem}.parametrizations.weight.original{0 if kind == 'weight_g' else 1}"] = (
                state.pop(key))

    out = _convert_state(tmp_path, _state_variant(ref, new_style), "new_style")
    converted = load_file(str(out / PARAMS_FILE))
    assert converted.keys() == base.keys()
    for k in base:
        np.testing.assert_array_equal(converted[k], base[k], err_msg=k)

    missing = "encoder.model.3.conv.conv.weight_v"
    with pytest.raises(ConversionError, match=f"missing tensor '{missing}'"):
        _convert_state(tmp_path, _state_variant(ref, lambda s: s.pop(missing)), "missing")
    wrong = "decoder.model.1.lstm.weight_hh_l0"
    shape_error = r"decoder/layers_1/w_hh_l0: shape \(64, 8\), expected \(64, 16\)"
    with pytest.raises(ConversionError, match=shape_error):
        _convert_state(tmp_path, _state_variant(
            ref, lambda s: s.__setitem__(wrong, torch.zeros(64, 8))), "wrong")
    with pytest.raises(ConversionError, match="unexpected tensors.*extra.weight"):
        _convert_state(tmp_path, _state_variant(
            ref, lambda s: s.__setitem__("extra.weight", torch.zeros(1))), "extra")
    # Nothing partial is left behind by the refused conversions.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["new_style"]


def test_converter_cli(ckpt, tok, tmp_path):  # tok converts ckpt/out
    def run(*args):
        return subprocess.run([sys.executable, "-m", "converters.speechtokenizer", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=user_env(dict(os.environ)))  # as a user's shell has it

    assert run("--help").returncode == 0
    out = tmp_path / "cli"
    result = run("--config", str(ckpt / "config.json"), "--ckpt", str(ckpt / "ckpt.dev"),
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert noisy_lines(result.stdout + result.stderr) == [], result.stderr[-3000:]
    from safetensors.numpy import load_file

    got, want = load_file(str(out / PARAMS_FILE)), load_file(str(ckpt / "out" / PARAMS_FILE))
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    # A second run refuses to overwrite; a missing checkpoint names the file.
    again = run("--config", str(ckpt / "config.json"), "--ckpt", str(ckpt / "ckpt.dev"),
                "--out", str(out))
    assert again.returncode != 0 and "already exists" in again.stderr
    bad = run("--config", str(ckpt / "config.json"), "--ckpt", str(tmp_path / "nope.dev"),
              "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "nope.dev" in bad.stderr and not (tmp_path / "x").exists()


def test_load_refuses_an_older_format_or_another_kind(ckpt, tok, tmp_path):  # tok converts
    import shutil

    from anygpt_jax.modalities import MusicTokenizer
    from anygpt_jax.modalities.codec import CONFIG_FILE

    old = tmp_path / "old"
    shutil.copytree(ckpt / "out", old)
    meta = json.loads((old / CONFIG_FILE).read_text())
    (old / CONFIG_FILE).write_text(json.dumps({**meta, "format": "anygpt_jax.seanet_codec/1"}))
    with pytest.raises(ValueError, match=r"seanet_codec/1.*convert the checkpoint again"):
        SpeechTokenizer.load(str(old))
    with pytest.raises(ValueError, match=r"kind 'encodec', got .* kind 'speechtokenizer'$"):
        MusicTokenizer.load(str(ckpt / "out"))
