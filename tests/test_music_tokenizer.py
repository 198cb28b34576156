"""Encodec (music) in JAX against transformers' EncodecModel (tiny random 32 kHz-like model):
codes, reconstructions, padded batches, segments, vocabulary glue, the converter and its CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file
from synthetic_task import noisy_lines, user_env
from test_audio_layers import assert_codes_match, fill_codebooks
from transformers import EncodecConfig, EncodecModel

from anygpt_jax.modalities import MusicTokenizer, music_codes_from_ids, music_ids
from anygpt_jax.modalities.codec import PARAMS_FILE
from anygpt_jax.vocab import MUSIC, Modality
from converters.common import ConversionError, torch_to_numpy
from converters.encodec import convert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shaped like facebook/encodec_32khz (non-causal, identity skips, reflect, 4 codebooks, 50 Hz)
# but tiny: 1 kHz, hop 20, codebooks of 64 (1.2 kbps = 4 x 50 Hz x 6 bits).
CONFIG = dict(sampling_rate=1000, num_filters=4, upsampling_ratios=[4, 5], hidden_size=8,
              codebook_size=64, target_bandwidths=[1.2], use_causal_conv=False,
              use_conv_shortcut=False, num_lstm_layers=2, normalize=False)
HOP, RATE = 20, 1000
LENGTHS = (1999, 733, 1500)  # none a multiple of the hop


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(**CONFIG)).eval()
    assert model.config.num_quantizers == 4
    with torch.no_grad():
        latents = model.encoder(torch.randn(4, 1, 2000))
    fill_codebooks([layer.codebook for layer in model.quantizer.layers],
                   latents.permute(0, 2, 1).reshape(-1, CONFIG["hidden_size"]))
    return model


@pytest.fixture(scope="module")
def hf_dir(ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("encodec") / "hf"
    ref.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def tok(hf_dir):
    out = hf_dir.parent / "converted"
    convert(str(out), hf_dir=str(hf_dir))
    return MusicTokenizer.load(str(out), bucket_seconds=0.2)


def _audio(n, seed):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _ref_encode(ref, wav):
    x = torch.from_numpy(wav)[None, None]
    with torch.no_grad():
        codes = ref.encode(x).audio_codes[0, 0].numpy()
        latents = ref.encoder(x)[0].T.numpy()
    return codes, latents


def _ref_decode(ref, codes):
    with torch.no_grad():
        codes = torch.from_numpy(codes.astype(np.int64))[None, None]
        return ref.decode(codes, [None]).audio_values[0, 0].numpy()


def _codebooks(ref):
    return np.stack([torch_to_numpy(layer.codebook.embed) for layer in ref.quantizer.layers])


def test_codes_and_reconstruction_match_reference(ref, tok):
    wav = _audio(LENGTHS[0], 1)
    want, latents = _ref_encode(ref, wav)
    got = tok.encode(wav, RATE)
    assert got.shape == (4, -(-LENGTHS[0] // HOP)) and got.dtype == np.int32
    assert len(np.unique(want[0])) >= 30, "degenerate codebooks: the test would prove nothing"
    assert_codes_match(got, want, latents, _codebooks(ref))
    rec = tok.decode(want)
    expected = _ref_decode(ref, want)
    assert rec.shape == expected.shape == (want.shape[1] * HOP,)
    np.testing.assert_allclose(rec, expected, atol=1e-4, rtol=0)


def test_padded_batch_equals_each_item_alone(ref, tok):
    wavs = [_audio(n, 10 + i) for i, n in enumerate(LENGTHS)]
    refs = [_ref_encode(ref, w) for w in wavs]
    for (want, latents), codes in zip(refs, tok.encode_batch(wavs, RATE), strict=True):
        assert_codes_match(codes, want, latents, _codebooks(ref))
    decoded = tok.decode_batch([want for want, _ in refs])
    for (want, _), rec in zip(refs, decoded, strict=True):
        np.testing.assert_allclose(rec, _ref_decode(ref, want), atol=1e-4, rtol=0)


def test_segments_and_vocabulary_glue(tok, hf_dir):
    wav = _audio(7 * RATE, 5)
    seg = tok.encode_segment(wav, RATE)
    assert tok.segment_seconds == 5.0 and seg.shape == (4, 250)  # AnyGPT: 1000 tokens
    np.testing.assert_array_equal(seg, tok.encode(wav[: 5 * RATE], RATE))
    short = MusicTokenizer.load(str(hf_dir.parent / "converted"), segment_seconds=2.0,
                                bucket_seconds=0.2)
    later = short.encode_segment(wav, RATE, start_seconds=1.5)
    np.testing.assert_array_equal(later, tok.encode(wav[1500:3500], RATE))
    with pytest.raises(ValueError, match="start_seconds 8"):
        tok.encode_segment(wav, RATE, start_seconds=8)

    class Vocab:  # the registry entry a MergedVocabulary would hand out
        music = Modality.place(MUSIC, index=4, first_id=40000, start_id=48192, end_id=48193)

        def modality(self, name):
            assert name == "music"
            return self.music

    ids = music_ids(seg, Vocab())
    assert ids.shape == (1000,)
    # Frame-major: frame t, codebook q -> 40000 + 2048 q + code.
    np.testing.assert_array_equal(ids[:4], 40000 + seg[:, 0] + 2048 * np.arange(4))
    np.testing.assert_array_equal(music_codes_from_ids(ids, Vocab()), seg)


def test_converter_key_styles_prefix_and_refusals(hf_dir, tok, tmp_path):  # tok converts hf_dir
    base = load_file(str(hf_dir.parent / "converted" / PARAMS_FILE))
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    # Old weight-norm names (weight_g / weight_v) under a MusicGen-style prefix.
    state = {}
    for key, value in load_file(str(hf_dir / "model.safetensors")).items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        state["audio_encoder." + key] = torch.from_numpy(value)
    save_file(state, str(tmp_path / "old.safetensors"))
    out = convert(str(tmp_path / "old"), safetensors=str(tmp_path / "old.safetensors"),
                  key_prefix="audio_encoder.")
    got = load_file(os.path.join(out, PARAMS_FILE))
    assert got.keys() == base.keys()
    for k in base:
        np.testing.assert_array_equal(got[k], base[k], err_msg=k)

    def refused(name, config_edit=None, drop=None):
        cfg = json.loads((hf_dir / "config.json").read_text())
        cfg.update(config_edit or {})
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
        tensors = {k: torch.from_numpy(v) for k, v in
                   load_file(str(hf_dir / "model.safetensors")).items() if k != drop}
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(ConversionError) as e:
            convert(str(tmp_path / name), safetensors=str(tmp_path / f"{name}.safetensors"),
                    config=str(tmp_path / f"{name}.json"))
        assert not (tmp_path / name).exists()
        return str(e.value)

    assert "normalize=True" in refused("norm", {"normalize": True})
    assert "encoder/layers_0/kernel: shape (7, 1, 4), expected (7, 1, 5)" in refused(
        "shape", {"num_filters": 5})
    drop = "decoder.layers.9.conv.bias"
    assert f"missing tensor '{drop}'" in refused("drop", drop=drop)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["old"]


def test_converter_cli(hf_dir, tok, tmp_path):  # tok converts hf_dir/out
    def run(*args):
        return subprocess.run([sys.executable, "-m", "converters.encodec", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300,
                              env=user_env(dict(os.environ)))  # as a user's shell has it

    assert run("--help").returncode == 0
    result = run("--hf_dir", str(hf_dir), "--out", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert noisy_lines(result.stdout + result.stderr) == [], result.stderr[-3000:]
    got = load_file(str(tmp_path / "cli" / PARAMS_FILE))
    want = load_file(str(hf_dir.parent / "converted" / PARAMS_FILE))
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    bad = run("--hf_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "nowhere" in bad.stderr and not (tmp_path / "x").exists()
