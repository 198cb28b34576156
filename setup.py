"""anygpt-jax: any-to-any multimodal LLaMA (AnyGPT) in JAX for TPU pods."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "seqio>=0.0.20,<0.1",
    "tensorflow-datasets>=4.9,<5",
    # 0.2.3's generated protos need protobuf >= 7.36, which apache-beam (the beam extra, <7)
    # excludes; 0.2.1-0.2.2 carry protos that any protobuf runtime >= 3.20 loads.
    "sentencepiece>=0.2,<0.2.3",
    "numpy>=2.0,<3",
    "librosa>=0.11,<0.12",
    "soundfile>=0.13,<1",
    "gin-config>=0.5,<0.6",
    # gs:// for every path (anygpt_jax/storage.py): etils.epath over gcsfs, which honours
    # STORAGE_EMULATOR_HOST where TensorFlow's gs:// client does not.
    "etils[epath]>=1.7",
    "gcsfs>=2024.2",
    "safetensors>=0.5,<1",
    "tensorboard>=2.19,<3",
    # The shard builder and the demo corpus.
    "Pillow>=10",
    "scikit-learn>=1.3",
    "tqdm>=4.60",
]

# Reference PyTorch packages installed by scripts/setup.sh with --no-deps: speechtokenizer
# declares torchaudio and timm torchvision, which would replace the pinned CPU torch with
# another build; none of the code we use needs them. diffusers renders SEED images (unCLIP).
NO_DEPS_REQUIRE = [
    "speechtokenizer==1.0.1", "timm>=1.0,<2", "diffusers>=0.30,<1",
    # SoundStorm's parity reference: it declares audiolm-pytorch, which pulls torchaudio.
    "soundstorm-pytorch==0.6.1", "hyper-connections==0.1.15",
    # CLIP / CLAP score references: open_clip and laion_clap declare torchvision. We run their
    # weights through transformers (converters.open_clip, converters.laion_clap); the tests
    # build the reference models from these packages' model modules.
    "open_clip_torch==3.3.0", "laion_clap==1.1.7",
]

# Evaluation metrics: caption scorers (only their Python BLEU/CIDEr, no Java), WER with
# Whisper's English normalization; ftfy cleans text as CLIP's tokenizer does.
EVAL_REQUIRE = [
    "jiwer>=3.0,<5", "whisper-normalizer>=0.1.12,<0.2", "pycocoevalcap>=1.2,<2", "ftfy>=6,<7",
]

# libtpu compiles for TPU slices on any host (python -m anygpt_jax.aot); the version jax's own
# `tpu` extra pins for this jax.
TPU_REQUIRE = ["libtpu==0.0.42.1"]

# Pre-tokenization on a cluster: data.build --runner runs as an Apache Beam pipeline
# (data/beam_build.py); `apache-beam[gcp]` adds Dataflow's client for DataflowRunner jobs.
# apitools, which [gcp] pins too: without it every Beam process logs at import that its
# BigQuery client is missing, and that first log line sends a worker's INFO lines to stderr.
BEAM_REQUIRE = [
    "apache-beam>=2.70,<3",
    'google-apitools>=0.5.31,<0.5.32; python_version < "3.13"',
    'google-apitools>=0.5.35; python_version >= "3.13"',
]

# `python -m anygpt_jax.serve`: an ASGI app on uvicorn, multipart uploads, Prometheus metrics.
SERVE_REQUIRE = ["fastapi>=0.110,<1", "uvicorn>=0.30,<1", "python-multipart>=0.0.9",
                 "prometheus-client>=0.20,<1"]

EXTRAS_REQUIRE = {
    "eval": EVAL_REQUIRE,
    "beam": BEAM_REQUIRE,
    "serve": SERVE_REQUIRE,
    "tpu": TPU_REQUIRE,
    # The reference PyTorch stack: converters' tests and parity checks run against it.
    # torch 2.13.0 is pinned because that CPU build is the one these machines install offline.
    "test": [
        "torch==2.13.0",
        "transformers>=5.0,<6",
        "einops>=0.7",  # speechtokenizer's model imports it
        "beartype>=0.18",  # soundstorm-pytorch's model code
        "torchlibrosa>=0.1,<0.2",  # laion_clap's HTSAT computes its mel spectrogram with it
        "pytest>=8",
        "pytest-xdist>=3",
        "gcp-storage-emulator>=2024.8",  # a real GCS JSON API on 127.0.0.1 for gs:// tests
        "selenium>=4.20,<5",  # drives Debian's chromium through chromium-driver (test_serve)
        "requests>=2.28",  # multipart uploads in test_serve
        "aiohttp>=3.9",  # bench_serve's concurrent clients (gcsfs brings it too)
        "ruff>=0.6",
        *EVAL_REQUIRE,
        *BEAM_REQUIRE,
        *SERVE_REQUIRE,
        *TPU_REQUIRE,  # the AOT tests compile for v4-8 and v5e-16
    ],
}

# Checkout folder -> installed package name.
INSTALLED_AS = {"data": "anygpt_jax.recipes", "converters": "anygpt_jax.converters"}

setup(
    name="anygpt-jax",
    version="0.1.0",
    description="AnyGPT (any-to-any multimodal LLaMA) training and inference in JAX",
    # The checkout's data/ and converters/ (run there as `python -m data.build`,
    # `python -m converters.llama`) install inside the package, never as top-level `data`:
    # `python -m anygpt_jax.recipes.build`, `python -m anygpt_jax.converters.llama`.
    packages=[*find_packages(include=["anygpt_jax", "anygpt_jax.*"]),
              *INSTALLED_AS.values()],
    package_dir=dict(zip(INSTALLED_AS.values(), INSTALLED_AS, strict=True)),
    package_data={"anygpt_jax": ["py.typed"], "anygpt_jax.serving": ["static/*"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
