"""Media metrics through their scoring models: tiny random transformers CLIP, CLAP and WavLM
x-vector models built offline, checked against the same models called directly; pluggable
ASR / speaker protocols; missing weights and unbound models are errors or skips, never zeros.

OpenClip and LaionClap (open_clip / laion_clap weights through converters.open_clip and
converters.laion_clap) are checked against those packages' own models in
test_converters_clip.py and test_converters_clap.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from anygpt_jax.evaluation import metrics, models, scoring
from converters.laion_clap import LaionClap
from converters.open_clip import OpenClip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _byte_chars() -> list[str]:
    # GPT-2's byte -> printable-character table: every byte is one BPE symbol.
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _bpe_files(d: str, specials_first: list[str], specials_last: list[str], suffix: str = ""):
    vocab = {}
    for s in specials_first:
        vocab[s] = len(vocab)
    for c in _byte_chars():
        vocab[c] = len(vocab)
        if suffix:
            vocab[c + suffix] = len(vocab)
    for s in specials_last:
        vocab[s] = len(vocab)
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return len(vocab)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("clip"))
    n = _bpe_files(d, [], ["<|startoftext|>", "<|endoftext|>"], suffix="</w>")
    tok = transformers.CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=n - 2, eos_token_id=n - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    transformers.CLIPModel(cfg).save_pretrained(d)
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory) -> str:
    return make_tiny_clap(str(tmp_path_factory.mktemp("clap")))


def make_tiny_clap(d: str) -> str:
    """A random transformers CLAP (model + processor files) in directory `d`."""
    os.makedirs(d, exist_ok=True)
    n = _bpe_files(d, ["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"])
    files = (os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
    tok = transformers.RobertaTokenizer(*files)
    torch.manual_seed(0)
    cfg = transformers.ClapConfig(
        text_config=dict(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=80, projection_dim=16),
        audio_config=dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4,
                          patch_stride=(4, 4), hidden_size=32, depths=[1, 1],
                          num_attention_heads=[2, 2], patch_embeds_hidden_size=16,
                          enable_fusion=False, projection_dim=16),
        projection_dim=16,
    )  # fmt: skip
    transformers.ClapModel(cfg).save_pretrained(d)
    fe = transformers.ClapFeatureExtractor(
        feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=2,
        fft_window_size=1024, truncation="rand_trunc", padding="repeatpad",
    )  # fmt: skip
    transformers.ClapProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def xvector_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("wavlm_sv"))
    torch.manual_seed(0)
    cfg = transformers.WavLMConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, tdnn_dim=(8, 8), tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1), xvector_output_dim=8,
    )  # fmt: skip
    transformers.WavLMForXVector(cfg).save_pretrained(d)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(d)
    return d


def _images(n: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def _cos(a, b) -> np.ndarray:
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    return (a * b).sum(-1).numpy()


def test_clip_score_equals_the_model_called_directly(clip_dir, tmp_path):
    texts = ["a red bus", "two cats on a mat", "snow"]
    images = _images(3)
    real = tmp_path / "real.png"
    images[0].save(real)
    targets = [{"text": t, "source": str(real)} for t in texts]
    clip = scoring.ClipScore(models.HFClip(clip_dir))
    out = clip(targets, [images[0], None, images[2]])
    # The same model through transformers' own forward (text_embeds / image_embeds).
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    proc = transformers.CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        o = model(**proc(text=texts, images=[images[0], images[0], images[2]],
                         return_tensors="pt", padding=True))  # fmt: skip
    cos = (o.text_embeds * o.image_embeds).sum(-1).numpy()
    assert out["clip_score"] == pytest.approx((cos[0] + cos[2]) / 3, rel=1e-5, abs=1e-6)
    assert out["clip_score_missing"] == 1.0
    # Generated vs real image: image 0 is the real image itself (cos 1).
    with torch.no_grad():
        emb = model.get_image_features(**proc(images=[images[0], images[2]], return_tensors="pt"))
    emb = emb if hasattr(emb, "norm") else emb.pooler_output
    want = (1.0 + _cos(emb[1:2], emb[0:1])[0]) / 3
    assert out["clip_image_similarity"] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_clap_score_equals_the_model_called_directly(clap_dir):
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(32000).astype(np.float32) * 0.1 for _ in range(2)]
    texts = ["a calm piano", "loud drums"]
    preds = [scoring.Audio(w, 32000) for w in waves]
    embedder = models.HFClap(clap_dir)
    out = scoring.ClapScore(embedder)([{"text": t} for t in texts], preds)
    model = transformers.ClapModel.from_pretrained(clap_dir).eval()
    proc = transformers.ClapProcessor.from_pretrained(clap_dir)
    from anygpt_jax.modalities import audio_io

    at48 = [audio_io.resample(w, 32000, 48000) for w in waves]
    with torch.no_grad():
        o = model(**proc(text=texts, audio=at48, sampling_rate=48000, return_tensors="pt",
                         padding=True))  # fmt: skip
    cos = (o.text_embeds * o.audio_embeds).sum(-1).numpy()
    assert out["clap_score"] == pytest.approx(cos.mean(), rel=1e-5, abs=1e-6)
    assert out["clap_score_missing"] == 0.0


class _FixedAsr:
    """A user-supplied ASR model (the AsrModel protocol) that always hears the same words."""

    def __init__(self, words: str):
        self.words, self.calls = words, []

    def transcribe(self, waveforms, sample_rate):
        self.calls.append((len(waveforms), sample_rate))
        return [self.words] * len(waveforms)


def test_tts_wer_through_a_pluggable_asr_model():
    asr = _FixedAsr("please call stella")
    assert isinstance(asr, models.AsrModel)
    targets = [{"text": "Please call Stella."}, {"text": "Ask her to bring these."}]
    preds = [scoring.Audio(np.zeros(1600, np.float32), 16000), None]
    out = scoring.TtsWer(asr)(targets, preds)
    # First: exact after normalization; second: no audio, all 5 words deleted -> 5 / 8.
    assert out["tts_wer"] == pytest.approx(100 * 5 / 8)
    assert asr.calls == [(1, 16000)]


def test_speaker_similarity_equals_the_model_called_directly(xvector_dir, tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(2)
    prompt = rng.standard_normal(16000).astype(np.float32) * 0.1
    sf.write(tmp_path / "prompt.wav", prompt, 16000, subtype="FLOAT")
    gen = rng.standard_normal(24000).astype(np.float32) * 0.1
    targets = [{"text": "x", "prompt_audio": str(tmp_path / "prompt.wav")}] * 2
    out = scoring.SpeakerSimilarity(models.HFSpeakerEmbedder(xvector_dir))(
        targets, [scoring.Audio(gen, 16000), scoring.Audio(prompt, 16000)]
    )
    model = transformers.WavLMForXVector.from_pretrained(xvector_dir).eval()
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(xvector_dir)
    with torch.no_grad():
        e = [model(**fe([w], sampling_rate=16000, return_tensors="pt")).embeddings
             for w in (gen, prompt)]  # fmt: skip
    assert out["speaker_similarity"] == pytest.approx((_cos(e[0], e[1])[0] + 1.0) / 2, rel=1e-4)
    missing = [{"text": "x", "prompt_audio": str(tmp_path / "absent.wav")}]
    with pytest.raises(metrics.MetricSkipped, match="'prompt_audio' audio file on disk"):
        scoring.SpeakerSimilarity(object())(missing, [None])


def test_unbound_models_skip_and_missing_weights_fail(tmp_path):
    with pytest.raises(metrics.MetricSkipped, match=r"bind ClipScore.model"):
        scoring.ClipScore()([{"text": "a"}], [None])
    with pytest.raises(metrics.MetricSkipped, match=r"bind TtsWer.model"):
        scoring.TtsWer()([{"text": "a"}], [None])
    for cls, arg, name in [(models.HFClip, "path", "HFClip.path"),
                           (models.HFClap, "path", "HFClap.path"),
                           (models.HFWhisperAsr, "path", "HFWhisperAsr.path"),
                           (models.HFSpeakerEmbedder, "path", "HFSpeakerEmbedder.path"),
                           (OpenClip, "weights", "OpenClip.weights"),
                           (LaionClap, "weights", "LaionClap.weights")]:  # fmt: skip
        with pytest.raises(FileNotFoundError, match=rf"{name} .*: .*nothing does not exist"):
            cls(**{arg: str(tmp_path / "nothing")})
    with pytest.raises(FileNotFoundError, match=r"LaionClap.roberta_dir .*: no path given"):
        LaionClap(str(tmp_path))
