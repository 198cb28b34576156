"""SEED image tokenizer in JAX against a PyTorch assembly of its reference parts (tiny random
model, fp32): ViT vs timm's EVA, Q-Former vs transformers' Blip2QFormerModel (causal), codes,
the decode head, the converter and its CLI, image input handling, unCLIP rendering."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_task import noisy_lines, user_env

from anygpt_jax.modalities.image import (
    ImageError,
    ImageTokenizer,
    image_codes_from_ids,
    image_ids,
    preprocess,
)
from anygpt_jax.modalities.image_model import (
    CLIP_MEAN,
    CLIP_STD,
    PARAMS_FILE,
    SeedConfig,
    SeedTokenizerModel,
    load_seed,
)
from anygpt_jax.modalities.image_qformer import QFormer
from anygpt_jax.modalities.image_vit import EvaViT
from anygpt_jax.testing.seed_reference import (
    ReferenceSeed,
    fill_codebook,
    randomize,
    seed_state_dict,
    to_nchw,
    vit_state_dict,
)
from converters.common import ConversionError
from converters.seed import convert, params_from_state_dicts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Real SEED v2: 224 px, ViT 1408 x 39 (16 heads, MLP 6144), Q-Former 768 x 12, 8192 x 32 codes,
# 4 decoder blocks, 1024-d embedding. Tiny here; 32 queries kept (SEED's causal mask is 32).
CONFIG = SeedConfig(
    image_size=42,
    patch_size=14,
    vit_width=32,
    vit_depth=2,
    vit_heads=4,
    vit_mlp=40,
    num_queries=32,
    qformer_width=24,
    qformer_depth=3,
    qformer_heads=4,
    qformer_mlp=48,
    codebook_size=64,
    code_dim=8,
    decoder_depth=2,
    decoder_heads=4,
    decoder_mlp=40,
    down_dims=(16, 12, 4),
    embed_dim=20,
)
HEADS = dict(vit_depth=2, vit_heads=4, qformer_heads=4, decoder_heads=4)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _images(n, seed):
    """RGB uint8 images of assorted sizes (none the model's): coarse random color layouts plus
    noise, so that images differ in content rather than only in pixel noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(x) for x in rng.integers(20, 90, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), np.float32)
        out.append(np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    model = ReferenceSeed(CONFIG)
    randomize(model)
    fill_codebook(model, to_nchw(preprocess(_images(8, seed=1), CONFIG.image_size)))
    return model


@pytest.fixture(scope="module")
def converted(ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("seed")
    torch.save(seed_state_dict(ref, with_vit=False), d / "seed_quantizer.pt")
    torch.save(vit_state_dict(ref), d / "eva_vit_g.pth")
    convert(str(d / "seed_quantizer.pt"), str(d / "out"), vit=str(d / "eva_vit_g.pth"), **HEADS)
    return d


@pytest.fixture(scope="module")
def tok(converted):
    return ImageTokenizer.load(str(converted / "out"), max_batch=4)


def _sub(params, name):
    return {"params": params[name]}


def test_vit_matches_timm_eva(ref, converted, tok):
    pixels = preprocess(_images(3, seed=2), CONFIG.image_size)
    with torch.no_grad():
        want = ref.visual_encoder.forward_features(to_nchw(pixels)).numpy()
    geometry = (CONFIG.image_size, CONFIG.patch_size, CONFIG.vit_width, CONFIG.vit_depth,
                CONFIG.vit_heads, CONFIG.vit_mlp, CONFIG.vit_eps)
    # The stored (scanned) layout, and the tokenizer's unrolled blocks.
    stored = load_seed(str(converted / "out"))[1]["vit"]
    assert "blocks" in stored and "blocks_0" in tok.params["vit"]
    for params, scan in ((stored, True), (tok.params["vit"], False)):
        vit = EvaViT(*geometry, scan_blocks=scan)
        got = np.asarray(jax.jit(vit.apply)({"params": params}, pixels))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5, err_msg=f"scan={scan}")


def test_qformer_matches_hf_with_causal_mask(ref, tok):
    features = (
        np.random.default_rng(3).standard_normal((2, 10, CONFIG.vit_width)).astype(np.float32)
    )
    with torch.no_grad():
        want = ref.qformer_states(torch.from_numpy(features)).numpy()
        unmasked = ref.qformer(
            query_embeds=ref.query_tokens.expand(2, -1, -1),
            encoder_hidden_states=torch.from_numpy(features),
        ).last_hidden_state.numpy()
    c = CONFIG
    qformer = QFormer(
        c.num_queries,
        c.qformer_width,
        c.qformer_depth,
        c.qformer_heads,
        c.qformer_mlp,
        c.cross_attention_freq,
        c.qformer_eps,
        causal=True,
    )
    apply = jax.jit(qformer.apply)
    params = tok.params["qformer"]
    got = np.asarray(apply({"params": params}, features))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    assert np.abs(unmasked - want).max() > 1e-2  # the mask matters for these weights
    # causal: changing the later queries leaves the earlier outputs as they were
    rng = np.random.default_rng(4)
    queries = np.asarray(params["query_tokens"]).copy()
    queries[:, 20:] = rng.standard_normal(queries[:, 20:].shape)
    changed = np.asarray(apply({"params": {**params, "query_tokens": queries}}, features))
    np.testing.assert_allclose(changed[:, :20], got[:, :20], atol=1e-6)
    assert np.abs(changed[:, 20:] - got[:, 20:]).max() > 1e-2


def _assert_codes_match(got, want, z, codebook):
    """Equal codes, except where the best two distances are within float error."""
    mismatch = got != want
    if mismatch.any():
        zz = z[mismatch]
        d = ((zz[:, None] - codebook[None]) ** 2).sum(-1)
        gap = np.abs(d[np.arange(len(zz)), got[mismatch]] - d[np.arange(len(zz)), want[mismatch]])
        assert np.all(gap < 1e-4 * np.abs(d).max()), f"codes differ: {gap}"
    assert mismatch.mean() < 0.02


def test_encode_matches_reference_assembly(ref, tok):
    images = _images(6, seed=4)
    pixels = preprocess(images, CONFIG.image_size)
    with torch.no_grad():
        want = ref.encode(to_nchw(pixels)).numpy()
        want_z = ref.vectors(to_nchw(pixels)).numpy()
    got = tok.encode(images)
    got_codes, got_z = tok.encode_vectors(pixels)
    assert got.shape == (6, 32) and got.dtype == np.int32
    np.testing.assert_array_equal(got, got_codes)
    np.testing.assert_allclose(got_z, want_z, rtol=1e-4, atol=1e-5)
    codebook = ref.quantize.embedding.weight.detach().numpy()
    _assert_codes_match(got, want, got_z, codebook)
    # a parity test on one repeated code would prove nothing
    assert len(np.unique(want)) >= 20, np.unique(want)
    assert len({tuple(row) for row in want}) == 6


def test_batches_match_single_images(tok):
    images = _images(6, seed=5)  # 6 > max_batch 4: two chunks, the second padded to 2
    batch = tok.encode(images)
    alone = np.concatenate([tok.encode([im]) for im in images[:2]])
    np.testing.assert_array_equal(batch[:2], alone)
    np.testing.assert_array_equal(tok.encode(images[4:]), batch[4:])


def test_data_parallel_over_devices(converted, tok):
    assert len(jax.local_devices()) == 8  # conftest's forced host devices
    wide = ImageTokenizer.load(str(converted / "out"), max_batch=8, devices=jax.local_devices()[:4])
    images = _images(5, seed=12)  # padded to 8 = 2 per device
    np.testing.assert_array_equal(wide.encode(images), tok.encode(images))
    codes = tok.encode(images[:1])
    np.testing.assert_allclose(wide.embed(codes), tok.embed(codes), rtol=1e-5, atol=1e-6)


def test_embed_matches_reference_decode_head(ref, tok):
    codes = np.random.default_rng(6).integers(0, CONFIG.codebook_size, (5, 32))
    with torch.no_grad():
        want = ref.embed(torch.from_numpy(codes)).numpy()
    got = tok.embed(codes)
    assert got.shape == (5, CONFIG.embed_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(tok.embed(codes[0]), want[:1], rtol=1e-5, atol=2e-5)


def test_bfloat16_mostly_agrees(converted, tok):
    images = _images(4, seed=7)
    fast = ImageTokenizer.load(
        str(converted / "out"), dtype="bfloat16", precision="default", max_batch=4
    )
    assert (fast.encode(images) == tok.encode(images)).mean() > 0.5
    np.testing.assert_allclose(
        fast.embed(tok.encode(images)), tok.embed(tok.encode(images)), rtol=0.1, atol=0.1
    )


def test_converter_with_vit_inside_checkpoint(ref, tok, tmp_path):
    torch.save(seed_state_dict(ref, with_vit=True), tmp_path / "seed_quantizer.pt")
    convert(str(tmp_path / "seed_quantizer.pt"), str(tmp_path / "out"), **HEADS)
    other = ImageTokenizer.load(str(tmp_path / "out"))
    assert other.config == CONFIG
    flat_a = jax.tree_util.tree_leaves_with_path(other.params)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(tok.params))
    for path, leaf in flat_a:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_b[path]))


def test_converter_cli(converted, tmp_path):
    env = user_env({**os.environ, "PYTHONPATH": REPO})  # as a user's shell has it
    help_out = subprocess.run(
        [sys.executable, "-m", "converters.seed", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_out.returncode == 0 and "--vit" in help_out.stdout
    args = [
        sys.executable,
        "-m",
        "converters.seed",
        "--ckpt",
        str(converted / "seed_quantizer.pt"),
        "--vit",
        str(converted / "eva_vit_g.pth"),
        "--vit_depth",
        "2",
        "--vit_heads",
        "4",
        "--qformer_heads",
        "4",
        "--decoder_heads",
        "4",
    ]
    ok = subprocess.run(
        args + ["--out", str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert noisy_lines(ok.stdout + ok.stderr) == [], ok.stderr[-3000:]
    assert os.path.isfile(tmp_path / "out" / PARAMS_FILE)
    bad = subprocess.run(
        args[:5] + ["--out", str(tmp_path / "bad")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1
    assert "no visual_encoder" in bad.stderr and "--vit" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not os.path.exists(tmp_path / "bad")


def _convert_state(state, vit=None):
    return params_from_state_dicts(state, vit, ckpt_name="ckpt.pt", vit_name="vit.pth", **HEADS)


def test_converter_refuses_bad_checkpoints(ref, tmp_path):
    good = seed_state_dict(ref)
    missing = dict(good)
    del missing["Qformer.bert.encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(ConversionError, match=r"layer\.1\.attention\.self\.key\.bias"):
        _convert_state(missing)
    shaped = dict(good)
    shaped["blocks_image.1.attn.proj.weight"] = torch.zeros(24, 23)
    with pytest.raises(ConversionError, match=r"blocks_image\.1\.attn\.proj\.weight \(24, 23\)"):
        _convert_state(shaped)
    unknown = {**good, "Reverse_Qformer.x": torch.zeros(1)}
    with pytest.raises(ConversionError, match="unexpected tensors.*Reverse_Qformer"):
        _convert_state(unknown)
    no_codebook = {k: v for k, v in good.items() if not k.startswith("quantize.")}
    with pytest.raises(ConversionError, match="quantize.embedding.weight"):
        _convert_state(no_codebook)
    with pytest.raises(ConversionError, match=r"ViT blocks 0\.\.4"):
        params_from_state_dicts(good, ckpt_name="ckpt.pt", **{**HEADS, "vit_depth": 5})
    with pytest.raises(ConversionError, match="vit_heads must be >= 1"):
        params_from_state_dicts(good, ckpt_name="ckpt.pt", **{**HEADS, "vit_heads": 0})
    # files: unreadable checkpoint, existing output; nothing partial left behind
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="junk.pt: cannot read"):
        convert(str(tmp_path / "junk.pt"), str(tmp_path / "o1"))
    with pytest.raises(ConversionError, match="missing file"):
        convert(str(tmp_path / "nope.pt"), str(tmp_path / "o2"))
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ConversionError):
        convert(str(tmp_path / "missing.pt"), str(tmp_path / "o3"), **HEADS)
    assert sorted(os.listdir(tmp_path)) == ["junk.pt", "missing.pt"]


def test_load_refuses_broken_directories(converted, tmp_path):
    with pytest.raises(FileNotFoundError, match="converters.seed"):
        ImageTokenizer.load(str(tmp_path))
    (tmp_path / "config.json").write_text('{"format": "something else"}')
    (tmp_path / PARAMS_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="expected format"):
        ImageTokenizer.load(str(tmp_path))


def test_preprocessing_is_seeds(tmp_path):
    rng = np.random.default_rng(8)
    rgb = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)
    # SEED: Resize((224, 224), bicubic) on the PIL image, ToTensor, Normalize(CLIP mean/std)
    want = np.asarray(Image.fromarray(rgb).resize((42, 42), Image.BICUBIC), np.float32) / 255
    want = (want - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    np.testing.assert_allclose(preprocess([rgb], 42)[0], want, atol=1e-6)
    # the same image from a file, a PIL image and a float array
    Image.fromarray(rgb).save(tmp_path / "a.png")
    for source in (
        str(tmp_path / "a.png"),
        tmp_path / "a.png",
        Image.fromarray(rgb),
        rgb.astype(np.float32) / 255,
    ):
        np.testing.assert_allclose(preprocess([source], 42)[0], want, atol=1e-6)
    # grayscale -> three equal channels; RGBA -> alpha dropped (PIL convert, as SEED)
    gray = rng.integers(0, 256, (30, 30), dtype=np.uint8)
    as_rgb = preprocess([np.repeat(gray[..., None], 3, -1)], 42)
    for g in (gray, gray[..., None], Image.fromarray(gray)):
        np.testing.assert_allclose(preprocess([g], 42), as_rgb, atol=1e-6)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (37, 61, 1), dtype=np.uint8)], -1)
    np.testing.assert_allclose(preprocess([rgba], 42), preprocess([rgb], 42), atol=1e-6)
    gray16 = Image.fromarray(gray.astype(np.uint16) * 257)
    assert gray16.mode.startswith("I;16")
    np.testing.assert_allclose(preprocess([gray16], 42), as_rgb, atol=0.02)
    palette = Image.fromarray(rgb).convert("P")
    assert preprocess([palette], 42).shape == (1, 42, 42, 3)


def test_bad_image_input(tok, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ImageError, match="broken.jpg: cannot read image"):
        tok.encode([str(tmp_path / "broken.jpg")])
    with pytest.raises(FileNotFoundError, match=r"images\[1\].*missing.png"):
        tok.encode([_images(1, 0)[0], str(tmp_path / "missing.png")])
    with pytest.raises(ImageError, match=r"images\[0\].*shape \(5, 5, 2\)"):
        tok.encode([np.zeros((5, 5, 2), np.uint8)])
    with pytest.raises(ImageError, match=r"in \[0, 1\]"):
        tok.encode([np.full((5, 5, 3), 2.0, np.float32)])
    with pytest.raises(ImageError, match="empty image"):
        tok.encode([np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ImageError, match="expected a path"):
        tok.encode([12])
    with pytest.raises(ValueError, match="no images"):
        tok.encode([])
    with pytest.raises(ValueError, match=r"expected \(batch, 42, 42, 3\)"):
        tok.encode_pixels(np.zeros((1, 3, 42, 42), np.float32))
    with pytest.raises(ValueError, match="code 64 outside 0..63"):
        tok.embed(np.full((1, 32), 64))
    with pytest.raises(ValueError, match=r"shape \(batch, 32\)"):
        tok.embed(np.zeros((2, 31), np.int32))
    assert tok.encode(_images(1, 9)[0]).shape == (1, 32)  # a bare image


def test_vocabulary_mapping():
    class FakeImageModality:  # the vocab registry's interface: offset 1000
        def codes_to_ids(self, codes):
            return np.asarray(codes) + 1000

        def ids_to_codes(self, ids):
            return np.asarray(ids) - 1000

    class FakeVocab:
        def modality(self, name):
            assert name == "image"
            return FakeImageModality()

    codes = np.arange(64).reshape(2, 32)
    ids = image_ids(codes, FakeVocab())
    assert ids.shape == (2, 32) and ids[1, 0] == 1032
    np.testing.assert_array_equal(image_codes_from_ids(ids[0], FakeVocab()), codes[0])


def test_model_entry_points_agree(tok):
    module = SeedTokenizerModel(CONFIG, scan_blocks=False)
    pixels = preprocess(_images(2, seed=10), CONFIG.image_size)
    codes, z = module.apply({"params": tok.params}, jnp.asarray(pixels))
    np.testing.assert_array_equal(np.asarray(codes), tok.encode_pixels(pixels))
    direct = module.apply(
        {"params": tok.params}, tok.params["codebook"][codes], method=SeedTokenizerModel.decode_head
    )
    np.testing.assert_allclose(np.asarray(direct), tok.embed(np.asarray(codes)), atol=1e-6)


def _tiny_unclip_pipeline(embed_dim: int):
    """A tiny random StableUnCLIPImg2ImgPipeline built offline (16 px images)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    text = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=1,
        projection_dim=32,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=embed_dim,
        projection_dim=embed_dim,
        image_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        patch_size=16,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        use_linear_projection=True,
        # unCLIP: the image embedding and its noise-level embedding, concatenated
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * embed_dim,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=CLIPVisionModelWithProjection(vision).eval(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=CLIPTokenizer(model_max_length=77),
        text_encoder=CLIPTextModel(text).eval(),
        unet=unet.eval(),
        vae=vae.eval(),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_render_through_unclip(tok):
    pytest.importorskip("diffusers")
    pipe = _tiny_unclip_pipeline(CONFIG.embed_dim)
    codes = tok.encode(_images(2, seed=11))
    images = tok.render(codes, seed=5, pipeline=pipe, num_inference_steps=2)
    assert len(images) == 2 and all(im.size == (16, 16) and im.mode == "RGB" for im in images)
    # image i uses seed 5 + i, whatever the batch: the second alone with seed 6 is the same
    again = tok.render(codes[1], seed=[6], pipeline=pipe, num_inference_steps=2)
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(images[1]))
    # and it is the pipeline run on our embedding with SEED's settings (noise level 0)
    direct = pipe(
        image_embeds=torch.from_numpy(tok.embed(codes[:1])),
        prompt="",
        noise_level=0,
        guidance_scale=10.0,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(5),
    ).images[0]
    np.testing.assert_array_equal(np.asarray(direct), np.asarray(images[0]))
    assert np.abs(np.asarray(images[0], float) - np.asarray(images[1], float)).max() > 0
    with pytest.raises(ValueError, match="2 images but 1 seeds"):
        tok.render(codes, seed=[1], pipeline=pipe)


def test_render_without_diffusers_says_what_to_install(tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(ImportError, match=r"pip install 'anygpt-jax\[render\]'"):
        tok.render(np.zeros((1, 32), np.int32))


def test_shard_builder_encodes_with_a_converted_directory(converted, tok, tmp_path):
    from data.media import make_encoder

    paths = []
    for i, img in enumerate(_images(3, seed=4)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    paths.insert(1, str(tmp_path / "missing.png"))
    encoder = make_encoder("image", str(converted / "out"))
    assert encoder.info.name == "seed_tokenizer_v2"
    out = encoder.encode(paths)
    assert isinstance(out[1], FileNotFoundError) and "missing.png" in str(out[1])
    good = [paths[i] for i in (0, 2, 3)]
    np.testing.assert_array_equal(np.stack([out[i] for i in (0, 2, 3)]), tok.encode(good))
