"""Shared test set-up: 8 forced CPU devices, exact fp32 numerics, tiny reference models."""

import os

# Must precede the first jax import: multi-device tests run on 8 host "devices".
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="session")
def _torch_exact():
    """Parity tests compare against PyTorch in true fp32: no TF32, fixed seeds."""
    try:
        import torch
    except ImportError:
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    yield


# Tiny LLaMA variants covering what the converter and model must get right.
LLAMA_VARIANTS = {
    # GQA, vocab not a multiple of 128, non-default rope_theta, untied head.
    "gqa_untied": dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    ),
    # Plain multi-head attention with a tied head.
    "mha_tied": dict(
        vocab_size=250,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    ),
}


def make_hf_llama(variant: str, seed: int = 0, dtype=None, **overrides):
    """A randomly initialized transformers LlamaForCausalLM of one tiny variant."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**LLAMA_VARIANTS[variant], **overrides})
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # Non-trivial norm scales, so a missed or transposed norm weight shows in the logits.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    if dtype is not None:
        model = model.to(dtype)
    return model


@pytest.fixture(scope="session")
def anygpt_tokenizer_dir(tmp_path_factory) -> str:
    """A tokenizer directory made the way AnyGPT makes its own (tiny SentencePiece base)."""
    from anygpt_jax.testing.tokenizers import build_anygpt_dir, train_spm

    root = str(tmp_path_factory.mktemp("anygpt_tokenizer"))
    spm_path = os.path.join(root, "llama.model")
    train_spm(spm_path)
    return build_anygpt_dir(os.path.join(root, "tok"), spm_path)


def make_hf_anygpt_dir(root: str, tokenizer_dir: str, variant: str, dtype=None, **overrides) -> str:
    """A transformers AnyGPT directory: tiny random LLaMA + the AnyGPT tokenizer files."""
    import shutil

    from anygpt_jax.vocab import MergedVocabulary

    vocab = MergedVocabulary.from_tokenizer_dir(tokenizer_dir)
    model = make_hf_llama(variant, dtype=dtype, vocab_size=vocab.vocab_size, **overrides)
    model.save_pretrained(root)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(root, name))
    return root


# ----- data pipeline fixtures (shards, tasks, packing, builder) ------------------------------


@pytest.fixture(scope="session")
def merged_vocab(anygpt_tokenizer_dir):
    """The MergedVocabulary of `anygpt_tokenizer_dir`."""
    from anygpt_jax.vocab import MergedVocabulary

    return MergedVocabulary.from_tokenizer_dir(anygpt_tokenizer_dir)


def random_examples(kind: str, n: int, seed: int = 0, prefix: str = "") -> list:
    """`n` ShardExamples of `kind` with random codes of typical AnyGPT sizes (small)."""
    import numpy as np

    from anygpt_jax.data.shards import ShardExample
    from anygpt_jax.vocab import ModalitySpan

    rng = np.random.default_rng(seed)
    words = "a cat dog sings draws picture of sunny beach hello world music speech".split()

    def text():
        return " ".join(rng.choice(words, rng.integers(2, 9)))

    def span(modality):
        if modality == "image":
            return ModalitySpan("image", rng.integers(0, 8192, 32))
        if modality == "speech":
            return ModalitySpan("speech", rng.integers(0, 1024, rng.integers(20, 120)))
        return ModalitySpan("music", rng.integers(0, 2048, (4, rng.integers(10, 60))))

    out = []
    for i in range(n):
        ex_id = f"{prefix}{kind}-{i}"
        if kind == "dialogue":
            mods = rng.choice(["image", "speech", "music"], 2)
            turns = [
                {"role": "human", "content": [text() + " ", {"span": 0}, " " + text()]},
                {"role": "assistant", "content": [text()]},
                {"role": "human", "content": [text()]},
                {"role": "assistant", "content": [text() + " ", {"span": 1}]},
            ]
            out.append(ShardExample(ex_id, kind, spans=[span(m) for m in mods], turns=turns))
        else:
            mod = kind.split("_")[0]
            out.append(ShardExample(ex_id, kind, text(), [span(mod)], meta={"i": i}))
    return out


def make_shard_dir(path: str, kind: str, examples: list, vocab, num_shards: int = 2) -> str:
    """A finished shard directory of `examples` split over `num_shards` files."""
    import os

    from anygpt_jax.data import shards as shards_lib

    os.makedirs(path, exist_ok=True)
    entries = [
        shards_lib.write_shard(
            os.path.join(path, shards_lib.shard_name(s, num_shards)), examples[s::num_shards], vocab
        )
        for s in range(num_shards)
    ]
    mods = {sp.modality for ex in examples for sp in ex.spans}
    tokenizers = {
        m: shards_lib.TokenizerInfo(vocab.modality(m).tokenizer, "test-codes") for m in mods
    }
    shards_lib.write_manifest(path, shards_lib.make_manifest(kind, entries, vocab, tokenizers))
    return path


@pytest.fixture(scope="session")
def shard_corpus(tmp_path_factory, merged_vocab) -> dict:
    """kind -> (shard dir, its examples) for all four kinds."""
    root = tmp_path_factory.mktemp("shards")
    sizes = {"image_text": 60, "speech_text": 40, "music_text": 30, "dialogue": 20}
    out = {}
    for k, (kind, n) in enumerate(sizes.items()):
        exs = random_examples(kind, n, seed=k)
        out[kind] = (make_shard_dir(str(root / kind), kind, exs, merged_vocab), exs)
    return out


# ----- gs:// on a real GCS API emulator ------------------------------------------------------


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator on 127.0.0.1 that every gs:// access of this process (and of the CLIs it
    starts, which inherit the environment) goes to; yields the GcsEmulator."""
    from anygpt_jax.storage_emulator import GcsEmulator

    emulator = GcsEmulator()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    try:
        yield emulator
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        emulator.stop()


@pytest.fixture
def gs_dir(gcs, request):
    """A fresh gs:// prefix for one test."""
    import re
    import uuid

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:40]
    return gcs.uri(f"{name}-{uuid.uuid4().hex[:8]}")
