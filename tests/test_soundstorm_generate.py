"""SoundStorm decoding (tiny random model): the fork's loop (restated in torch) step for step,
seeded sampling, one step = argmax passes, the voice prompt kept, padded batches, a device mesh;
speak() with voice prompts, and bad input."""

import dataclasses
import math

import flax
import jax
import numpy as np
import pytest
import soundfile as sf
import torch

from anygpt_jax.modalities import AudioError, SpeechTokenizer
from anygpt_jax.modalities.audio_layers import SEANetConfig
from anygpt_jax.modalities.codec import expected_param_shapes
from anygpt_jax.modalities.soundstorm import SoundStorm, speak
from anygpt_jax.modalities.soundstorm_generate import (
    cosine_schedule,
    remask_counts,
    top_k_threshold,
)
from anygpt_jax.modalities.soundstorm_model import SoundStormConfig
from anygpt_jax.testing.soundstorm_reference import (
    anygpt_state_dict,
    build_reference,
    fork_generate,
)
from converters.soundstorm import convert

# Real model: dim 1024, depth 12, 8 heads x 128, kernel 31, 7 x 1024 codes, 1024 semantic.
CFG = SoundStormConfig(dim=32, depth=2, heads=4, dim_head=8, ff_mult=2, conv_kernel=5,
                       codebook_size=16, num_quantizers=3, num_semantic=20)
BUCKET = 16  # the decodes below pad to 16 or 32 frames, so few programs compile
N, PROMPT = 11, 5


@pytest.fixture(scope="module")
def reference():
    return build_reference(CFG, seed=0)


@pytest.fixture(scope="module")
def model_dir(reference, tmp_path_factory):
    d = tmp_path_factory.mktemp("soundstorm")
    torch.save(anygpt_state_dict(reference), d / "ss.pt")
    return convert(str(d / "ss.pt"), str(d / "out"), heads=CFG.heads)


@pytest.fixture(scope="module")
def exact(model_dir):
    """The reference's algorithm exactly (prompt overwrite included), without Gumbel noise."""
    return SoundStorm.load(model_dir, keep_prompt=False, sample=False, bucket_frames=BUCKET)


@pytest.fixture(scope="module")
def model(model_dir):
    """Default settings: sampling, the voice prompt kept."""
    return SoundStorm.load(model_dir, bucket_frames=BUCKET)


def _units(seed=0, batch=2, n=N):
    return np.random.default_rng(seed).integers(0, CFG.num_semantic, (batch, n))


def _prompt(seed=1, frames=PROMPT):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, CFG.codebook_size, (1 + CFG.num_quantizers, frames))
    prompt[0] = rng.integers(0, CFG.num_semantic, frames)
    return prompt


def _fork(reference, units, prompt, steps, noise):
    prompt_t = None if prompt is None else torch.from_numpy(prompt.T[None]).expand(
        len(units), -1, -1)
    out = fork_generate(reference, torch.from_numpy(units), prompt_t, steps=steps, noise=noise)
    return out.permute(0, 2, 1).numpy()


def test_remask_counts_match_reference():
    """The schedule is torch's float32 values bit for bit, so every length's counts agree."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("torch's plain-C kernels round differently (cosine_schedule follows AVX2)")
    lengths = np.arange(1, 4097)
    for steps in range(1, 17):  # AnyGPT uses 3-4
        fraction = torch.cos(torch.linspace(0.0, 1.0, steps + 1) * math.pi / 2)
        np.testing.assert_array_equal(cosine_schedule(steps).view(np.uint32),
                                      fraction.numpy().view(np.uint32), err_msg=f"{steps=}")
        want = (fraction[:, None] * torch.from_numpy(lengths)[None]).long().numpy()
        np.testing.assert_array_equal(remask_counts(steps, lengths), want, err_msg=f"{steps=}")


def test_remask_counts_pinned():
    """torch's counts where a last-bit slip shows, pinned for machines without AVX2."""
    for steps, length, want in [
        # t_6 = 1 - 3 * (1/9) rounded once (FMA): cos 0.49999997; rounded twice 0.50000006 (21).
        (9, 42, [42, 41, 39, 36, 32, 26, 20, 14, 7, 0]),
        # 3 steps: t_2 = 1 - 1/3, cos 0.50000006, so an even length's half is not rounded down.
        (3, 2, [2, 1, 1, 0]),
        # torch's cos is one ulp off the correctly rounded value at these two points.
        (8, 3591, [3591, 3522, 3317, 2985, 2539, 1995, 1374, 700, 0]),
        (7, 6481, [6481, 6318, 5839, 5067, 4040, 2812, 1442, 0]),
    ]:
        assert remask_counts(steps, np.array([length]))[:, 0].tolist() == want, (steps, length)
    with pytest.raises(ValueError, match="steps"):
        remask_counts(0, np.array([1]))


def test_top_k_threshold_cuts_where_top_k_does():
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((16, 1024)) * 5,  # both signs, many exponents
            rng.integers(-3, 4, (16, 1024)),  # ties straddling the cut
            np.concatenate([np.full((16, 1000), -1e30), rng.standard_normal((16, 24))], 1)]
    threshold = jax.jit(top_k_threshold)  # k traced: one program per shape
    for x in rows:
        x = np.asarray(x, np.float32)
        for k in (1, 5, 308, 1024):
            t = np.asarray(threshold(x, k))[:, None]
            kth = np.sort(x, axis=-1)[:, ::-1][:, k - 1 : k]
            # Exactly k entries at or above t, or t is the k-th largest (ties at the cut).
            ok = ((x >= t).sum(-1) == k) | (t[:, 0] == kth[:, 0])
            assert ok.all() and ((x > t).sum(-1) < k + 1).all() and (t <= kth).all()


@pytest.mark.parametrize("steps", [1, 3, 4])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_decoding_matches_the_fork(reference, exact, steps, with_prompt):
    units, prompt = _units(steps), _prompt() if with_prompt else None
    got = exact.generate(units, prompt, steps=steps)
    want = _fork(reference, units, prompt, steps, noise=False)
    assert got.shape == (2, 1 + CFG.num_quantizers, N) and got.dtype == np.int32
    np.testing.assert_array_equal(got[:, 0], units)
    assert len(np.unique(got[:, 1:])) >= 8, "degenerate codes: the test would prove nothing"
    np.testing.assert_array_equal(got, want)


def test_one_step_is_argmax_passes(reference, model, exact):
    """One step samples nothing: the first layer is filled by argmax, its least confident
    slots are masked again and refilled by argmax; every other layer is one argmax pass."""
    units = _units(7)
    got = model.generate(units, steps=1, seed=0)
    np.testing.assert_array_equal(model.generate(units, steps=1, seed=123), got)
    np.testing.assert_array_equal(exact.generate(units, steps=1), got)
    np.testing.assert_array_equal(_fork(reference, units, None, 1, noise=True), got)

    q_all, mask_id = CFG.num_quantizers, CFG.mask_id
    codes = np.full((2, N, q_all), mask_id)
    logits = exact.logits(codes, units)
    codes = logits.argmax(-1)
    top = np.sort(logits, axis=-1)[..., ::-1][..., :5]  # ceil(0.3 * 16) codes kept
    confidence = np.exp(top[..., 0]) / np.exp(top).sum(-1)
    order = np.argsort(-(1 - confidence).reshape(2, -1), axis=-1, kind="stable")
    again = np.zeros((2, N * q_all), bool)
    np.put_along_axis(again, order[:, :N], True, axis=-1)  # cos(0) * N slots of all layers
    again = again.reshape(2, N, q_all)
    again[:, :, 1:] = True
    codes = np.where(again, mask_id, codes)
    codes = np.where(again, exact.logits(codes, units).argmax(-1), codes)
    for q in range(1, q_all):
        codes[:, :, q:] = exact.logits(codes, units).argmax(-1)[:, :, q:]
    np.testing.assert_array_equal(got[:, 1:], codes.transpose(0, 2, 1))


def test_sampling_is_seeded(model, exact):
    units, prompt = _units(3), _prompt()
    first = model.generate(units, prompt, steps=3, seed=0)
    np.testing.assert_array_equal(model.generate(units, prompt, steps=3, seed=0), first)
    others = [model.generate(units, prompt, steps=3, seed=s) for s in (1, 2)]
    assert any((o != first).any() for o in others), "the seed changes nothing"
    # The middle steps do sample: not the noise-free decode.
    greedy = exact.generate(units, prompt, steps=3)
    assert any((o != greedy).any() for o in [first, *others])


def test_voice_prompt_is_kept_and_used(model, exact):
    units, prompt = _units(4), _prompt()
    frames = PROMPT + N  # = BUCKET: the programs generate() compiled serve here too
    semantic = np.concatenate([np.repeat(prompt[:1], 2, 0), units], axis=1)
    codes = np.full((2, frames, CFG.num_quantizers), CFG.mask_id, np.int32)
    codes[:, :PROMPT] = prompt[1:].T
    valid = np.ones((2, frames), bool)
    generate = valid & (np.arange(frames) >= PROMPT)
    kept = model.decode_frames(semantic, codes, generate, valid, steps=3)
    np.testing.assert_array_equal(kept[:, :PROMPT], codes[:, :PROMPT])
    np.testing.assert_array_equal(kept[:, PROMPT:].transpose(0, 2, 1),
                                  model.generate(units, prompt, steps=3)[:, 1:])
    # The reference writes its guesses over the prompt's upper layers: the check can fail.
    overwritten = exact.decode_frames(semantic, codes, generate, valid, steps=3)
    assert (overwritten[:, :PROMPT] != codes[:, :PROMPT]).any()
    # The prompt changes the result (it is the voice being continued).
    assert (model.generate(units, prompt, steps=3) != model.generate(units, steps=3)).any()


def test_padded_batch_items_decode_as_alone(model, exact):
    prompt = _prompt()
    long, short = _units(5)[0], _units(6, n=4)[0]
    for m, kwargs in ((exact, {}), (model, {"seed": 3})):
        batch = m.generate_batch([long, short], prompt, steps=3, **kwargs)
        assert [b.shape for b in batch] == [(4, N), (4, 4)]
        for slot, units in enumerate((long, short)):
            alone = m.generate(np.stack([units, units]), prompt, steps=3, **kwargs)[slot]
            np.testing.assert_array_equal(batch[slot], alone)


def test_batches_split_over_a_mesh(model_dir, exact):
    from anygpt_jax import partitioning

    mesh = partitioning.make_mesh({"data": 2}, num_devices=2)
    sharded = SoundStorm.load(model_dir, keep_prompt=False, sample=False, bucket_frames=BUCKET,
                              mesh=mesh)
    units, prompt = _units(11), _prompt()
    want = exact.generate(units, prompt, steps=3)
    np.testing.assert_array_equal(sharded.generate(units, prompt, steps=3), want)
    # One item: the batch is filled up with an empty row, which changes nothing.
    np.testing.assert_array_equal(sharded.generate(units[:1], prompt, steps=3), want[:1])


def test_bad_input(model):
    units = _units()
    for bad, match in [(units[0], r"\(batch, frames"), (units.astype(float), "integer"),
                       (units + CFG.num_semantic, "outside 0..19"), (units[:, :0], "frames")]:
        with pytest.raises(ValueError, match=match):
            model.generate(bad)
    with pytest.raises(ValueError, match=r"prompt_codes: expected \(4 RVQ"):
        model.generate(units, _prompt()[:3])
    with pytest.raises(ValueError, match=r"prompt_codes\[1:\]: code \d+ outside 0..15"):
        model.generate(units, _prompt() + 16 * (np.arange(4) > 0)[:, None])
    with pytest.raises(ValueError, match="steps"):
        model.generate(units, steps=0)
    with pytest.raises(ValueError, match="no sequences"):
        model.generate_batch([])
    with pytest.raises(ValueError, match="full_levels"):
        SoundStorm(CFG, model.params, full_levels=4)
    with pytest.raises(ValueError, match="top_k_thres"):
        SoundStorm(CFG, model.params, top_k_thres=1.0)
    with pytest.raises(ValueError, match="precision"):
        SoundStorm(CFG, model.params, precision="fast")


# ----- speak(): SoundStorm + SpeechTokenizer, voice prompts --------------------------------


ST_CONFIG = SEANetConfig(sample_rate=16000, dimension=16, n_filters=2, ratios=(8, 5, 4, 2),
                         n_q=1 + CFG.num_quantizers, codebook_size=CFG.codebook_size,
                         lstm_layers=1, encoder_bidirectional=True)


@pytest.fixture(scope="module")
def tok():
    """A tiny random SpeechTokenizer at the real rate and hop (16 kHz, 320); its weights are
    drawn from the parameter shapes (compiling the initializer would take far longer)."""
    rng = np.random.default_rng(0)
    flat = {}
    for name, shape in expected_param_shapes(ST_CONFIG).items():
        scale = 1.0 if "codebooks" in name else np.prod(shape[:-1]) ** -0.5
        flat[name] = (0.0 if "bias" in name else scale) * rng.standard_normal(shape)
    params = flax.traverse_util.unflatten_dict(flat, sep="/")
    return SpeechTokenizer(ST_CONFIG, params, bucket_seconds=0.2)


def _voice(seconds=0.1, rate=8000, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * noise).astype(np.float32)


def test_speak_clones_a_voice_prompt(model, tok, tmp_path):
    units = _units(8) % CFG.codebook_size  # layer-1 codes of this SpeechTokenizer
    stereo = np.stack([_voice(seed=1), _voice(seed=2)])
    sf.write(tmp_path / "voice.wav", stereo.T, 8000, subtype="FLOAT")
    wav = speak(units, tok, model, str(tmp_path / "voice.wav"), seed=1)
    assert wav.shape == (2, N * 320) and wav.dtype == np.float32 and np.isfinite(wav).all()
    # The same as its parts: prompt codes from the 16 kHz mono prompt, SoundStorm, decode.
    prompt = tok.encode(stereo, 8000)
    assert prompt.shape == (4, PROMPT)  # 0.1 s at 50 frames/s
    codes = model.generate(units, prompt, seed=1)
    np.testing.assert_allclose(wav, np.stack(tok.decode_batch(list(codes))), atol=1e-6)
    np.testing.assert_allclose(speak(units, tok, model, (stereo, 8000), seed=1), wav, atol=1e-6)
    # One sequence in, one waveform out; the prompt is cut to max_prompt_seconds.
    one = speak(units[0], tok, model, (stereo, 8000), max_prompt_seconds=0.06, seed=1)
    codes = model.generate(units[:1], prompt[:, :3], seed=1)
    np.testing.assert_allclose(one, tok.decode(codes[0]), atol=1e-6)
    assert speak(units, tok, model, None).shape == (2, N * 320)


def test_speak_refuses_bad_voice_prompts(model, tok, tmp_path):
    units = _units(9) % CFG.codebook_size
    with pytest.raises(AudioError, match="nowhere.wav"):
        speak(units, tok, model, str(tmp_path / "nowhere.wav"))
    sf.write(tmp_path / "silent.wav", np.zeros(3200, np.float32), 16000)
    with pytest.raises(AudioError, match="silent"):
        speak(units, tok, model, str(tmp_path / "silent.wav"))
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(AudioError, match="text.wav"):
        speak(units, tok, model, str(tmp_path / "text.wav"))
    with pytest.raises(AudioError, match="empty"):
        speak(units, tok, model, (np.zeros(0, np.float32), 16000))
    with pytest.raises(AudioError, match="sample_rate"):
        speak(units, tok, model, (_voice(), 0))
    with pytest.raises(AudioError, match="file path or a"):
        speak(units, tok, model, 16000)
    three = dataclasses.replace(ST_CONFIG, n_q=3)
    params = dict(tok.params, codebooks=tok.params["codebooks"][:3])
    with pytest.raises(ValueError, match="3 RVQ layers"):
        speak(units, SpeechTokenizer(three, params), model)
    with pytest.raises(ValueError, match="code 16 outside 0..15"):
        speak(np.full((2, N), 16), tok, model)


def test_settings_are_gin_configurable(model_dir, tok):
    import gin

    try:
        gin.parse_config("SoundStorm.steps = 4\nSoundStorm.bucket_frames = 16\n"
                         "speak.max_prompt_seconds = 0.06")
        configured = SoundStorm.load(model_dir)
        assert (configured.steps, configured.bucket_frames) == (4, 16)
        units = _units(10) % CFG.codebook_size
        voice = (_voice(), 8000)
        np.testing.assert_allclose(
            speak(units, tok, configured, voice),
            np.stack(tok.decode_batch(list(configured.generate(
                units, tok.encode(*voice)[:, :3], steps=4)))), atol=1e-6)
    finally:
        gin.clear_config()
