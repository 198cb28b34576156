"""open_clip weights -> transformers CLIP (converters.open_clip), checked against open_clip's own
CLIP model and tokenizer: a tiny random ViT CLIP with the real 49,408-token BPE, converted from
a training-checkpoint file and from a hub directory, embeds texts and images as open_clip does;
bad weights, settings and output directories are refused by name."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torchvision_free import import_model_code  # noqa: E402

from anygpt_jax.evaluation import models, scoring  # noqa: E402
from converters import open_clip as convert_clip  # noqa: E402
from converters.open_clip import OpenClip  # noqa: E402

CONTEXT = 20
TEXTS = ["a photo of a Cat!", "Two  dogs &amp; a ball", "ÉCOLE café — naïve résumé",
         "emoji 🙂 and numbers 12345", " ".join(["a very long caption"] * 12)]  # fmt: skip


@pytest.fixture(scope="module")
def reference():
    model_module, tokenizer_module = import_model_code("open_clip", ["model", "tokenizer"])
    return model_module, tokenizer_module


# Without a hub config, head counts are open_clip's default 64-wide heads; the hub test uses
# other head counts, given by its open_clip_config.json.
PLAIN = dict(vision_cfg=dict(layers=2, width=128, head_width=64, patch_size=8, image_size=32),
             text_cfg=dict(context_length=CONTEXT, vocab_size=49408, width=128, heads=2,
                           layers=2))  # fmt: skip
NARROW = dict(vision_cfg=dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
              text_cfg=dict(context_length=CONTEXT, vocab_size=49408, width=48, heads=3,
                            layers=2))  # fmt: skip


def _reference_clip(reference, quick_gelu: bool, seed: int = 0, cfg: dict = PLAIN):
    model_module, _ = reference
    torch.manual_seed(seed)
    model = model_module.CLIP(embed_dim=24, quick_gelu=quick_gelu, **cfg).eval()
    with torch.no_grad():  # non-trivial norms, biases and scale
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias") or "logit_scale" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _images(n: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(41, 50), (64, 33), (32, 32)]
    return [Image.fromarray(rng.integers(0, 255, (*sizes[i % 3], 3), dtype=np.uint8))
            for i in range(n)]  # fmt: skip


def _checkpoint(tmp_path, model) -> str:
    # open_clip's training script saves {"epoch", "name", "state_dict": DDP's "module." keys}.
    path = str(tmp_path / "epoch_1.pt")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 1, "name": "tiny", "state_dict": state}, path)
    return path


def test_tokenizer_gives_open_clips_ids(reference, tmp_path):
    _, tokenizer_module = reference
    theirs = tokenizer_module.SimpleTokenizer(context_length=CONTEXT)(TEXTS)
    convert_clip.write_tokenizer_files(convert_clip.find_bpe_vocab(), str(tmp_path))
    tokenizer = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"),
                                           str(tmp_path / "merges.txt"),
                                           model_max_length=CONTEXT)  # fmt: skip
    ours = tokenizer([models.clip_clean_text(t) for t in TEXTS], padding="max_length",
                     truncation=True, return_tensors="pt")  # fmt: skip
    assert len(tokenizer) == 49408
    for i in range(len(TEXTS)):  # open_clip pads with 0 after <|endoftext|>; transformers masks
        n = int(ours.attention_mask[i].sum())
        assert ours.input_ids[i, :n].tolist() == theirs[i, :n].tolist(), TEXTS[i]
        assert theirs[i, n:].eq(0).all()


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_converted_clip_embeds_as_open_clip(reference, tmp_path, quick_gelu):
    _, tokenizer_module = reference
    clip = _reference_clip(reference, quick_gelu)
    checkpoint = _checkpoint(tmp_path, clip)
    model, proc = convert_clip.convert(checkpoint, quick_gelu=quick_gelu)
    images = _images(3)
    pixels = torch.from_numpy(convert_clip.eval_pixels(images, 32, convert_clip.OPENAI_MEAN,
                                                       convert_clip.OPENAI_STD))  # fmt: skip
    tokens = tokenizer_module.SimpleTokenizer(context_length=CONTEXT)(TEXTS)
    with torch.no_grad():
        want_text, want_image = clip.encode_text(tokens), clip.encode_image(pixels)
    embedder = OpenClip(checkpoint, quick_gelu=quick_gelu)
    got_text, got_image = embedder.embed_texts(TEXTS), embedder.embed_images(images)
    np.testing.assert_allclose(got_text, want_text.numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(got_image, want_image.numpy(), atol=2e-5, rtol=1e-5)
    assert float(model.logit_scale.detach()) == pytest.approx(float(clip.logit_scale.detach()))
    del proc


def test_preprocessing_is_open_clips_eval_transform():
    """Shortest side to the model size (bicubic), centre crop, CLIP mean/std, as open_clip's
    image_transform(is_train=False) does it; restated here with PIL (the original is torchvision
    code, which wraps the same PIL resize)."""
    from PIL import Image

    for image in _images(3):
        w, h = image.size
        scale = 32 / min(w, h)
        size = (32, int(h * scale)) if w <= h else (int(w * scale), 32)
        resized = np.asarray(image.resize(size, Image.BICUBIC), np.float32) / 255.0
        top = int(round((resized.shape[0] - 32) / 2.0))
        left = int(round((resized.shape[1] - 32) / 2.0))
        crop = resized[top : top + 32, left : left + 32]
        want = (crop - np.array(convert_clip.OPENAI_MEAN)) / np.array(convert_clip.OPENAI_STD)
        got = convert_clip.eval_pixels([image], 32, convert_clip.OPENAI_MEAN,
                                       convert_clip.OPENAI_STD)[0].transpose(1, 2, 0)  # fmt: skip
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_hub_directory_converts_to_a_transformers_directory(reference, tmp_path):
    from safetensors.torch import save_file

    clip = _reference_clip(reference, quick_gelu=False, seed=1, cfg=NARROW)
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file(clip.state_dict(), str(hub / "open_clip_model.safetensors"))
    (hub / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 24, "quick_gelu": False, **NARROW},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }))  # fmt: skip
    out = tmp_path / "hf"
    assert convert_clip.main(["--weights", str(hub), "--out", str(out)]) == 0
    texts, images = TEXTS[:2], _images(2)
    score = scoring.ClipScore(models.HFClip(str(out)))(
        [{"text": t} for t in texts], images
    )  # the transformers directory needs nothing of open_clip
    _, tokenizer_module = reference
    tokens = tokenizer_module.SimpleTokenizer(context_length=CONTEXT)(texts)
    proc = transformers.CLIPProcessor.from_pretrained(str(out))
    pixels = proc(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        t = torch.nn.functional.normalize(clip.encode_text(tokens), dim=-1)
        i = torch.nn.functional.normalize(clip.encode_image(pixels), dim=-1)
    assert score["clip_score"] == pytest.approx(float((t * i).sum(-1).mean()), abs=1e-5)
    assert list(proc.image_processor.image_mean) == [0.5, 0.5, 0.5]  # the hub's preprocess_cfg


def test_bad_weights_settings_and_outputs_are_refused_by_name(reference, tmp_path):
    clip = _reference_clip(reference, quick_gelu=True)
    good = clip.state_dict()

    def convert(state: dict, name: str, **kwargs):
        path = tmp_path / f"{name}.pt"
        torch.save(state, path)
        return convert_clip.convert(str(path), **kwargs)

    with pytest.raises(convert_clip.ConversionError, match="quick_gelu=True for OpenAI"):
        convert(good, "no_activation")
    with pytest.raises(convert_clip.ConversionError, match=r"unknown tensors \['visual.extra'\]"):
        convert(good | {"visual.extra": torch.zeros(2)}, "unknown", quick_gelu=True)
    partial = {k: v for k, v in good.items() if k != "ln_final.bias"}
    with pytest.raises(convert_clip.ConversionError, match=r"missing \['ln_final.bias'\]"):
        convert(partial, "missing", quick_gelu=True)
    wrong = good | {"visual.ln_post.weight": torch.zeros(7)}
    with pytest.raises(convert_clip.ConversionError, match=r"mis-shaped.*visual.ln_post.weight"):
        convert(wrong, "wrong", quick_gelu=True)
    with pytest.raises(convert_clip.ConversionError, match=r"not a square grid"):
        convert(good | {"visual.positional_embedding": torch.zeros(18, 128)}, "grid",
                quick_gelu=True)  # fmt: skip
    bad_bpe = tmp_path / "bpe.txt.gz"
    bad_bpe.write_bytes(b"not gzip")
    with pytest.raises(convert_clip.ConversionError, match=r"bpe.txt.gz: not CLIP's"):
        convert(good, "bpe", quick_gelu=True, bpe_vocab=str(bad_bpe))
    # Settings that change the network without changing tensor names.
    hub = tmp_path / "hub"
    hub.mkdir()
    torch.save(good, hub / "open_clip_pytorch_model.bin")
    (hub / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"quick_gelu": True, "text_cfg": {"pool_type": "last"}}}))  # fmt: skip
    with pytest.raises(convert_clip.ConversionError, match=r"text_cfg.pool_type='last'"):
        convert_clip.convert(str(hub))
    with pytest.raises(convert_clip.ConversionError, match=r"no open_clip_config.json"):
        convert_clip.convert(str(tmp_path))
    # The CLI: one line naming the problem, exit 1, an existing output left as it was.
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    weights = str(tmp_path / "no_activation.pt")
    assert convert_clip.main(["--weights", weights, "--out", str(out), "--quick_gelu"]) == 1
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert convert_clip.main(["--weights", str(tmp_path / "nothing.pt"), "--out",
                              str(tmp_path / "new")]) == 1  # fmt: skip
    assert not (tmp_path / "new").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_openai_torchscript_archive_converts(reference, tmp_path):
    """OpenAI's released CLIPs are traced TorchScript archives, not torch.save files."""
    clip = _reference_clip(reference, quick_gelu=True)
    _, tokenizer_module = reference
    tokens = tokenizer_module.SimpleTokenizer(context_length=CONTEXT)(TEXTS[:2])
    pixels = torch.zeros(1, 3, 32, 32)
    path = str(tmp_path / "ViT-tiny.pt")
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(clip, (pixels, tokens), check_trace=False), path)
    model, _ = convert_clip.convert(path, quick_gelu=True)
    with torch.no_grad():
        got = model.get_text_features(input_ids=tokens)
        want = clip.encode_text(tokens)
    got = got if hasattr(got, "norm") else got.pooler_output
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-5)
