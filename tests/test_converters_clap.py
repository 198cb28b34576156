"""laion_clap checkpoints -> transformers CLAP (converters.laion_clap), checked against
laion_clap's own CLAP model: a random HTSAT-tiny + RoBERTa CLAP saved as a training checkpoint
embeds texts and 10 s clips as laion_clap does (its torchlibrosa front end against the
feature extractor we configure); bad checkpoints and outputs are refused by name."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("torchlibrosa")

from test_metrics_models import _bpe_files  # noqa: E402
from torchvision_free import import_model_code  # noqa: E402

from anygpt_jax.evaluation import models  # noqa: E402
from converters import laion_clap as convert_clap  # noqa: E402
from converters.laion_clap import LaionClap  # noqa: E402

# laion_clap's model_configs/HTSAT-tiny.json audio_cfg (its dataclass defaults differ: hop 1024).
HTSAT_TINY = dict(audio_length=1024, clip_samples=480000, mel_bins=64, sample_rate=48000,
                  window_size=1024, hop_size=480, fmin=50, fmax=14000, class_num=527,
                  model_type="HTSAT", model_name="tiny")  # fmt: skip


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("roberta"))
    n = _bpe_files(d, ["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"])
    transformers.RobertaTokenizer(os.path.join(d, "vocab.json"),
                                  os.path.join(d, "merges.txt")).save_pretrained(d)  # fmt: skip
    with open(os.path.join(d, "size"), "w") as f:
        f.write(str(n))
    return d


@pytest.fixture(scope="module")
def reference(roberta_dir):
    """laion_clap's CLAP (HTSAT-tiny audio tower, 1-layer RoBERTa) with random weights."""
    (model_module,) = import_model_code("laion_clap", ["model"], subdir="clap_module")
    vocab = int(open(os.path.join(roberta_dir, "size")).read())
    # laion_clap downloads roberta-base here; its projection expects RoBERTa's width of 768.
    text_tower = transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=vocab, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
        intermediate_size=256, max_position_embeddings=80, type_vocab_size=1, pad_token_id=1,
    ))  # fmt: skip
    real = model_module.RobertaModel.from_pretrained
    model_module.RobertaModel.from_pretrained = lambda *a, **k: text_tower
    torch.manual_seed(0)
    try:
        model = model_module.CLAP(
            embed_dim=768, enable_fusion=False,  # HTSAT-tiny.json: its latent width
            audio_cfg=model_module.CLAPAudioCfp(**HTSAT_TINY),
            text_cfg=model_module.CLAPTextCfg(context_length=77, vocab_size=vocab, width=512,
                                              heads=8, layers=12, model_type="roberta"),
        )  # fmt: skip
    finally:
        model_module.RobertaModel.from_pretrained = real
    with torch.no_grad():  # trained-looking norms, biases and batch-norm statistics
        for name, p in model.named_parameters():
            if "norm" in name or "bn0" in name or name.endswith("bias") or "logit" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.audio_branch.bn0.running_mean.normal_(-20.0, 2.0)
        model.audio_branch.bn0.running_var.uniform_(50.0, 150.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory) -> str:
    # laion_clap's training script saves {"epoch", "name", "state_dict": DDP's "module." keys}.
    path = str(tmp_path_factory.mktemp("ckpt") / "epoch_1.pt")
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 1, "name": "tiny", "state_dict": state}, path)
    return path


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(convert_clap.CLIP_SAMPLES) / convert_clap.SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * rng.standard_normal(t.size)
    noise = 0.2 * rng.standard_normal(t.size)
    return [tone.astype(np.float32), noise.astype(np.float32)]


def test_text_and_audio_embeddings_equal_laion_claps(reference, checkpoint, roberta_dir):
    texts = ["a calm piano melody", "loud drums and bass, fast"]
    clips = _clips()
    embedder = LaionClap(checkpoint, roberta_dir=roberta_dir)
    tokenizer = transformers.RobertaTokenizer.from_pretrained(roberta_dir)
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=77,
                       return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        want_text = reference.get_text_embedding(dict(tokens))
        # Full 10 s clips: no padding or cropping, so laion_clap's own loader is not needed.
        want_audio = reference.get_audio_embedding(
            [{"waveform": torch.from_numpy(c), "longer": torch.tensor([False])} for c in clips]
        )
    np.testing.assert_allclose(embedder.embed_texts(texts), want_text.numpy(), atol=1e-5)
    got_audio = embedder.embed_audio(clips, convert_clap.SAMPLE_RATE)
    np.testing.assert_allclose(got_audio, want_audio.numpy(), atol=1e-6)  # seen: 5e-8


def test_short_clips_are_repeat_padded_as_laion_clap_does(reference, checkpoint, roberta_dir):
    """laion_clap's 'repeatpad' (training/data.py, a torchvision-importing module): whole
    repeats of the clip, then zeros, to 10 s. Restated here for the reference's input."""
    clip = _clips()[0][: 3 * convert_clap.SAMPLE_RATE + 123]
    repeats = convert_clap.CLIP_SAMPLES // clip.size
    padded = np.pad(np.tile(clip, repeats), (0, convert_clap.CLIP_SAMPLES - repeats * clip.size))
    with torch.no_grad():
        want = reference.get_audio_embedding(
            [{"waveform": torch.from_numpy(padded), "longer": torch.tensor([False])}])
    got = LaionClap(checkpoint, roberta_dir=roberta_dir).embed_audio(
        [clip], convert_clap.SAMPLE_RATE)  # fmt: skip
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


def test_feature_extractor_is_laion_claps_front_end(reference):
    """The mel spectrogram (dB) the feature extractor computes, against torchlibrosa's inside
    laion_clap's HTSAT, on the same clip."""
    branch = reference.audio_branch
    clip = _clips()[0]
    with torch.no_grad():
        x = branch.logmel_extractor(branch.spectrogram_extractor(torch.from_numpy(clip)[None]))
    want = x[0, 0].numpy()  # [frames, mel]
    got = convert_clap.feature_extractor()(clip, sampling_rate=convert_clap.SAMPLE_RATE,
                                           return_tensors="np").input_features[0, 0]  # fmt: skip
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-3)  # dB; float32 STFTs differ by ~2e-4


def test_cli_writes_a_transformers_directory_and_refuses_bad_input(
    reference, checkpoint, roberta_dir, tmp_path
):
    out = tmp_path / "hf"
    assert convert_clap.main(["--ckpt", checkpoint, "--roberta_dir", roberta_dir,
                              "--out", str(out)]) == 0  # fmt: skip
    texts = ["a calm piano melody"]
    with torch.no_grad():
        tokens = transformers.RobertaTokenizer.from_pretrained(roberta_dir)(
            texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        want = reference.get_text_embedding(dict(tokens))
    np.testing.assert_allclose(models.HFClap(str(out)).embed_texts(texts), want.numpy(),
                               atol=1e-5)  # fmt: skip
    # A second run and a missing tokenizer: one line, exit 1, nothing overwritten or written.
    before = sorted(os.listdir(out))
    assert convert_clap.main(["--ckpt", checkpoint, "--roberta_dir", roberta_dir,
                              "--out", str(out)]) == 1  # fmt: skip
    assert sorted(os.listdir(out)) == before
    assert convert_clap.main(["--ckpt", checkpoint, "--roberta_dir", str(tmp_path / "none"),
                              "--out", str(tmp_path / "x")]) == 1  # fmt: skip
    assert not (tmp_path / "x").exists()
    (tmp_path / "empty").mkdir()  # transformers would build a tokenizer of specials alone
    with pytest.raises(convert_clap.ConversionError, match=r"empty: no RoBERTa tokenizer files"):
        LaionClap(checkpoint, roberta_dir=str(tmp_path / "empty"))
    other = tmp_path / "other"  # a bigger vocabulary than the text tower's embeddings
    other.mkdir()
    _bpe_files(str(other), ["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"], suffix="</w>")
    with pytest.raises(convert_clap.ConversionError, match=r"other: \d+ tokens, more than"):
        LaionClap(checkpoint, roberta_dir=str(other))
    state = reference.state_dict()

    def refused(bad: dict, name: str, match: str) -> None:
        path = tmp_path / f"{name}.pt"
        torch.save({"state_dict": bad}, path)
        with pytest.raises(convert_clap.ConversionError, match=match):
            convert_clap.convert(str(path))

    refused(state | {"audio_branch.extra.weight": torch.zeros(2)}, "unknown",
            r"unknown tensors \['audio_branch.extra.weight'\]")  # fmt: skip
    refused({k: v for k, v in state.items() if k != "audio_projection.2.bias"}, "missing",
            r"missing \['audio_projection.linear2.bias'\]")  # fmt: skip
    refused(state | {"text_branch.pooler.dense.bias": torch.zeros(5)}, "wrong",
            r"mis-shaped \['text_branch.pooler.dense.bias \(5,\)'\]")  # fmt: skip
    refused(state | {"audio_branch.fusion_model.local_att.0.weight": torch.zeros(2)}, "fused",
            r"feature-fusion checkpoints are not supported")  # fmt: skip
