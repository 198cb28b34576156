"""The media modality registry: one record per modality; the lists of modalities derive from it."""

import numpy as np
import pytest

# Imported first: prompts' import-time views (DIRECTIONS) hold only the paper's modalities.
from anygpt_jax import prompts
from anygpt_jax.inference.requests import RequestError, check_modality
from anygpt_jax.modalities import registry
from anygpt_jax.modalities.registry import MediaModality, media_modalities, media_modality
from anygpt_jax.vocab import ModalitySpec


class ToyTokenizer:
    """A 'video' tokenizer: frames of 2 codes each from an array, two codebooks of 16."""

    codebook_size = 16
    n_q = 2

    @classmethod
    def load(cls, directory):
        return cls()

    def read(self, path):
        return np.load(path)

    def encode_arrays(self, items, n_q=None):
        return [np.stack([np.asarray(x, np.int32) % 16] * (n_q or self.n_q)) for x in items]


@pytest.fixture
def toy(monkeypatch):
    spec = ModalitySpec("video", "\U0001f39e", "<sovi>", "<eovi>", 16, 2, "toy_video")
    record = MediaModality(spec, f"{__name__}:ToyTokenizer", demo=ToyTokenizer)
    monkeypatch.setitem(registry._REGISTRY, "video", record)
    return record


def test_the_paper_modalities_and_their_tokenizers_share_one_interface():
    assert media_modalities()[:3] == ("image", "speech", "music")
    for name in ("image", "speech", "music"):
        cls = media_modality(name).tokenizer_class()
        for attr in ("load", "read", "encode_arrays", "codebook_size", "n_q"):
            assert hasattr(cls, attr), (name, attr)
    with pytest.raises(ValueError, match=r"unknown media modality 'smell'; known: "):
        media_modality("smell")
    with pytest.raises(ValueError, match="image has no demo tokenizer"):
        media_modality("image").load("demo")


def test_llm_codes_keep_the_codebooks_the_vocabulary_holds():
    speech, music = media_modality("speech").load("demo"), media_modality("music").load("demo")
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    [units] = media_modality("speech").llm_codes(speech, [wave])
    assert units.ndim == 1 and units.shape[0] == speech.num_frames(16000)  # RVQ layer 1
    music_wave = np.random.default_rng(1).uniform(-0.5, 0.5, 32000).astype(np.float32)
    [codes] = media_modality("music").llm_codes(music, [music_wave])
    assert codes.shape == (4, music.num_frames(32000))  # the vocabulary's music block: 4
    [two] = media_modality("music").llm_codes(music, [music_wave], num_codebooks=2)
    np.testing.assert_array_equal(two, codes[:2])


def test_a_registered_modality_reaches_requests_and_the_cli_flags(toy, tmp_path):
    from anygpt_jax import infer

    assert "video" in media_modalities() and check_modality("Video", "where") == "video"
    with pytest.raises(RequestError, match="unknown modality 'smell'"):
        check_modality("smell", "where")
    args, _ = infer.parse_args(["--ckpt", "m", "--video_tokenizer", "demo"])
    assert args.video_tokenizer == "demo"
    np.save(tmp_path / "clip.npy", np.arange(6))
    tok = toy.load("demo")
    [codes] = toy.llm_codes(tok, [tok.read(str(tmp_path / "clip.npy"))])
    assert codes.shape == (2, 6)


def test_a_registered_modality_is_a_shard_kind(toy):
    from anygpt_jax.data import shards
    from anygpt_jax.vocab import ModalitySpan

    assert shards.kinds() == ("image_text", "speech_text", "music_text", "video_text",
                              "dialogue")
    ex = shards.ShardExample("v1", "video_text", "a clip", (ModalitySpan("video", [[1, 2]] * 2),))
    assert shards.pair_modality(ex.kind) == "video"
    with pytest.raises(ValueError, match="video_text needs one video span"):
        shards.ShardExample("v2", "video_text", "a clip", ())


def test_a_registered_modality_brings_its_prompt_directions(toy, monkeypatch):
    record = MediaModality(toy.spec, toy.tokenizer, toy.demo,
                           ("Describe this clip.",), ("Make a clip of this.",))
    monkeypatch.setitem(registry._REGISTRY, "video", record)
    pools = prompts.instruction_pools()
    assert list(pools)[-2:] == ["video_to_text", "text_to_video"]
    assert prompts.direction_of("video", to_text=False) == "text_to_video"
    rng = np.random.default_rng(0)
    assert prompts.pick_instruction("video_to_text", rng) == "Describe this clip."
    assert prompts.DIRECTIONS == tuple(pools)[:6]  # the paper's, as registered at import


def test_a_registered_modality_brings_its_generation_defaults(toy, monkeypatch):
    from anygpt_jax.inference import GenerationSettings

    record = MediaModality(toy.spec, toy.tokenizer, toy.demo,
                           generation_defaults={"do_sample": False, "max_new_tokens": 12})
    monkeypatch.setitem(registry._REGISTRY, "video", record)
    settings = GenerationSettings.for_output("video")
    assert (settings.do_sample, settings.max_new_tokens) == (False, 12)
    assert GenerationSettings.for_output("music").top_k == 200  # the release's row, unchanged


def test_a_registered_modality_brings_its_tasks_requests_and_span_length(toy, monkeypatch):
    from anygpt_jax import tasks
    from anygpt_jax.inference.constraints import registered_fixed_lengths
    from anygpt_jax.inference.requests import base_forms, parse_chat_message
    from anygpt_jax.modalities.registry import PairTasks

    record = MediaModality(toy.spec, toy.tokenizer, toy.demo,
                           tasks=PairTasks("clip_caption", "clip_gen", 0.0, 0.3),
                           fixed_length=6, request_inputs=("{script}", "{clip.npy}"))
    monkeypatch.setitem(registry._REGISTRY, "video", record)
    assert tasks.task_table()["clip_gen"] == ("video_text", "text_to_video")
    assert tasks.task_table()["clip_caption"] == ("video_text", "video_to_text")
    rates = tasks.registered_pretrain_rates()
    assert rates["clip_gen"] == 0.3 and "clip_caption" not in rates  # rate 0: in no mixture
    assert base_forms()[-2:] == ("text|video|{script}", "video|text|{clip.npy}")
    with pytest.raises(RequestError, match=r"\[music: PATH\], \[video: PATH\]"):
        parse_chat_message("see [vidoe: a.npy]")

    class Vocab:
        modalities = ("image", "speech", "video")

    assert registered_fixed_lengths(Vocab()) == {"image": 32, "video": 6}
