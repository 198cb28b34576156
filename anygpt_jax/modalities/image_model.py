"""The SEED tokenizer v2 as one Flax module, its config, and its converted-directory format.

encode: pixels -> EVA ViT -> LayerNorm -> causal Q-Former -> Linear, Tanh, Linear (768 -> 32)
-> nearest codebook entry (8192 x 32) -> 32 ids per image.
embed (SEED's decode head): ids -> codebook -> Linear, Tanh, Linear (32 -> 768) -> + position
embedding -> 4 ViT blocks -> 768 -> 256 -> 128 -> 32 (ReLU, no biases) -> flatten -> Linear to
a 1024-d Stable unCLIP image embedding.

A converted directory holds `config.json` ({"format", "seed": SeedConfig fields,
"source": notes on the conversion}) and `params.safetensors`: float32 arrays under flat names
like `vit/blocks/attn/qkv/kernel` (scanned ViT blocks carry a leading depth axis).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from anygpt_jax.io_utils import check_param_shapes
from anygpt_jax.modalities.image_qformer import QFormer
from anygpt_jax.modalities.image_vit import Block, EvaViT
from anygpt_jax.modalities.weights import load_params_file, read_weights_config, save_weights_dir

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
FORMAT = "anygpt_jax.seed_tokenizer/1"

# CLIP's normalization, as SEED's preprocessing uses it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class SeedConfig:
    """Shapes of a SEED tokenizer; the defaults are SEED tokenizer v2 (AnyGPT's)."""

    image_size: int = 224
    patch_size: int = 14
    vit_width: int = 1408
    vit_depth: int = 39
    vit_heads: int = 16
    vit_mlp: int = 6144
    vit_eps: float = 1e-6
    ln_vision_eps: float = 1e-5  # BLIP-2's ln_vision is a default nn.LayerNorm
    num_queries: int = 32
    qformer_width: int = 768
    qformer_depth: int = 12
    qformer_heads: int = 12
    qformer_mlp: int = 3072
    cross_attention_freq: int = 2
    qformer_eps: float = 1e-12
    causal: bool = True
    codebook_size: int = 8192
    code_dim: int = 32
    decoder_depth: int = 4
    decoder_heads: int = 12
    decoder_mlp: int = 3072
    decoder_eps: float = 1e-6
    down_dims: tuple[int, ...] = (256, 128, 32)
    embed_dim: int = 1024

    def __post_init__(self):
        problems = []
        if self.image_size % self.patch_size:
            problems.append(
                f"image_size {self.image_size} not a multiple of patch_size {self.patch_size}"
            )
        for width, heads, name in (
            (self.vit_width, self.vit_heads, "vit"),
            (self.qformer_width, self.qformer_heads, "qformer"),
            (self.qformer_width, self.decoder_heads, "decoder"),
        ):
            if width % heads:
                problems.append(f"{name} width {width} not divisible by {heads} heads")
        if problems:
            raise ValueError("SeedConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["down_dims"] = list(self.down_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SeedConfig:
        """Builds a config from `to_dict()` output; unknown fields are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"SeedConfig: unknown fields {unknown}")
        d = dict(d)
        if "down_dims" in d:
            d["down_dims"] = tuple(int(x) for x in d["down_dims"])
        return cls(**d)


class SeedDecodeHead(nn.Module):
    """Code vectors (batch, queries, code_dim) -> unCLIP image embeddings (batch, embed_dim)."""

    config: SeedConfig
    dtype: Any = jnp.float32
    precision: lax.Precision | None = None

    @nn.compact
    def __call__(self, codes: jnp.ndarray) -> jnp.ndarray:
        c = self.config
        dense = dict(dtype=self.dtype, precision=self.precision)
        x = nn.Dense(c.code_dim, name="decode_fc1", **dense)(codes)
        x = nn.Dense(c.qformer_width, name="decode_fc2", **dense)(jnp.tanh(x))
        pos = self.param(
            "pos_embed", nn.initializers.normal(0.02), (1, c.num_queries, c.qformer_width)
        )
        x = x + pos.astype(x.dtype)
        for i in range(c.decoder_depth):
            x = Block(
                c.qformer_width,
                c.decoder_heads,
                c.decoder_mlp,
                c.decoder_eps,
                "qkv",
                self.dtype,
                self.precision,
                name=f"block_{i}",
            )(x)
        for i, dim in enumerate(c.down_dims):
            if i:
                x = nn.relu(x)
            x = nn.Dense(dim, use_bias=False, name=f"down_{i}", **dense)(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(c.embed_dim, name="proj", **dense)(x)


class SeedTokenizerModel(nn.Module):
    """The whole tokenizer; `__call__` (encode) and `embed` are the entry points."""

    config: SeedConfig
    dtype: Any = jnp.float32
    precision: lax.Precision | None = None
    scan_blocks: bool = True  # the stored layout; see EvaViT

    def setup(self):
        c = self.config
        self.vit = EvaViT(
            c.image_size,
            c.patch_size,
            c.vit_width,
            c.vit_depth,
            c.vit_heads,
            c.vit_mlp,
            c.vit_eps,
            self.dtype,
            self.precision,
            self.scan_blocks,
        )
        self.ln_vision = nn.LayerNorm(epsilon=c.ln_vision_eps, dtype=self.dtype)
        self.qformer = QFormer(
            c.num_queries,
            c.qformer_width,
            c.qformer_depth,
            c.qformer_heads,
            c.qformer_mlp,
            c.cross_attention_freq,
            c.qformer_eps,
            c.causal,
            self.dtype,
            self.precision,
        )
        dense = dict(dtype=self.dtype, precision=self.precision)
        self.encode_fc1 = nn.Dense(c.qformer_width, **dense)
        self.encode_fc2 = nn.Dense(c.code_dim, **dense)
        self.codebook = self.param(
            "codebook", nn.initializers.normal(1.0), (c.codebook_size, c.code_dim)
        )
        self.decoder = SeedDecodeHead(c, self.dtype, self.precision)

    def image_features(self, pixels: jnp.ndarray) -> jnp.ndarray:
        """Normalized pixels (batch, H, W, 3) -> ln_vision(ViT(pixels)) (batch, 1 + N, width)."""
        return self.ln_vision(self.vit(pixels))

    def queries(self, pixels: jnp.ndarray) -> jnp.ndarray:
        """Pixels -> the code-space vectors before quantization (batch, queries, code_dim)."""
        x = self.qformer(self.image_features(pixels))
        return self.encode_fc2(jnp.tanh(self.encode_fc1(x))).astype(jnp.float32)

    def __call__(self, pixels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Pixels -> (int32 ids (batch, queries), pre-quantization vectors)."""
        z = self.queries(pixels)
        return quantize(z, self.codebook), z

    def embed(self, ids: jnp.ndarray) -> jnp.ndarray:
        """Ids (batch, queries) -> unCLIP image embeddings (batch, embed_dim), float32."""
        return self.decoder(self.codebook[ids].astype(self.dtype)).astype(jnp.float32)

    def decode_head(self, codes: jnp.ndarray) -> jnp.ndarray:
        """Code vectors (batch, queries, code_dim) -> embeddings (the head without lookup)."""
        return self.decoder(codes.astype(self.dtype)).astype(jnp.float32)


def quantize(z: jnp.ndarray, codebook: jnp.ndarray) -> jnp.ndarray:
    """Index of the nearest codebook row for each vector (first index wins ties)."""
    z = z.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    # The reference's expansion |z|^2 + |e|^2 - 2 z.e, so near-ties break the same way.
    dist = (
        jnp.sum(z**2, -1, keepdims=True)
        + jnp.sum(codebook**2, -1)
        - 2 * jnp.einsum("...d,nd->...n", z, codebook, precision=lax.Precision.HIGHEST)
    )
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def init_params(config: SeedConfig, seed: int = 0) -> dict:
    """Random parameters of a SEED tokenizer (nested dict of jax arrays)."""
    module = SeedTokenizerModel(config)
    pixels = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    ids = jnp.zeros((1, config.num_queries), jnp.int32)

    def init(rng):
        variables = module.init(rng, pixels)
        embed_vars = module.init(rng, ids, method=SeedTokenizerModel.embed)
        return {**variables["params"], **embed_vars["params"]}

    return init(jax.random.PRNGKey(seed))


def expected_param_shapes(config: SeedConfig) -> dict[str, tuple[int, ...]]:
    """Flat 'a/b/c' parameter names of a tokenizer and their shapes (no computation)."""
    tree = jax.eval_shape(lambda: init_params(config))
    flat = flax.traverse_util.flatten_dict(tree, sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def check_params(config: SeedConfig, params: dict[str, Any], where: str) -> None:
    """Raises ValueError naming every missing, unexpected or wrongly shaped parameter."""
    check_param_shapes(expected_param_shapes(config), params, where)


def save_seed(
    directory: str, config: SeedConfig, params: dict[str, np.ndarray], source: dict | None = None
) -> None:
    """Writes config.json and params.safetensors (flat 'a/b/c' names) into `directory`."""
    check_params(config, params, where=directory)
    meta = {"format": FORMAT, "seed": config.to_dict(), "source": source or {}}
    save_weights_dir(directory, meta, params)


def load_seed(directory: str) -> tuple[SeedConfig, dict]:
    """Reads a converted directory -> (config, nested numpy params)."""
    meta, config_path, params_path = read_weights_config(
        directory, "SEED directory", "convert a checkpoint with `python -m converters.seed` first"
    )
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise ValueError(f"{config_path}: expected format {FORMAT!r}, got {got!r}")
    config = SeedConfig.from_dict(meta.get("seed", {}))
    flat = load_params_file(params_path)
    check_params(config, flat, where=params_path)
    return config, flax.traverse_util.unflatten_dict(flat, sep="/")
