"""Model hyper-parameters: one frozen dataclass shared by the model, converters and checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Any

import gin

from anygpt_jax.io_utils import read_json, write_json

REMAT_POLICIES = ("none", "full", "minimal", "save_dot_except_mlp", "save_qkv_proj")
# "splash": the Pallas TPU kernel for the cache-free call (model/tpu_attention.py).
ATTENTION_KERNELS = ("xla", "splash")


INT8_GROUPS = ("layers", "lm_head", "embed")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """LLaMA decoder hyper-parameters plus how it is laid out and computed.

    `vocab_size` is the real (tokenizer) vocabulary; the embedding and LM head hold
    `padded_vocab_size` rows so the vocabulary axis shards evenly over the mesh.
    """

    vocab_size: int = 53516
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # Layout and numerics: not part of the architecture, free to change between runs.
    vocab_pad_multiple: int = 128
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool = True
    # Layers per iteration of the layer scan (stacked parameters either way); num_layers runs
    # them as straight-line code. On XLA:CPU that skips the loop's stores into stacked
    # residual buffers (a ~100M train step: ~9% faster in fp32, ~25% with bf16 compute); on
    # TPU it mostly costs compile time. For training: KV-cache decoding ran slower this way
    # on CPU (~58M, batch 1: 78 vs 130 tok/s looped; every layer's weights sliced out at
    # once), so inference (AnyGPT.inference_config) runs the loop.
    scan_unroll: int = 1
    remat_policy: str = "none"
    attention_kernel: str = "xla"
    # Weight groups stored as int8 with one fp32 scale per output channel (inference only):
    # "layers" (every projection of the decoder layers), "lm_head", "embed" (the embedding
    # table, a scale per vocabulary row). model/quantize.py converts float parameters.
    int8_weights: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "int8_weights", tuple(self.int8_weights))
        unknown = sorted(set(self.int8_weights) - set(INT8_GROUPS))
        if unknown:
            raise ValueError(f"int8_weights names {unknown}; the groups are {INT8_GROUPS}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}"
            )
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(
                f"attention_kernel={self.attention_kernel!r}; expected one of {ATTENTION_KERNELS}"
            )
        if not 1 <= self.scan_unroll <= self.num_layers:
            raise ValueError(
                f"scan_unroll={self.scan_unroll} must be between 1 and num_layers={self.num_layers}"
            )
        if self.vocab_pad_multiple < 1:
            raise ValueError(f"vocab_pad_multiple={self.vocab_pad_multiple} must be >= 1")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_pad_multiple
        return -(-self.vocab_size // m) * m

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> ModelConfig:
        """Builds a config from a dict, refusing keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model config keys {unknown}")
        return cls(**values)

    def save(self, path: str) -> None:
        """Writes the config as JSON, whole, to a local or gs:// path."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> ModelConfig:
        """Reads a saved config (local or gs://), naming the file in any error."""
        return cls.from_dict(read_json(path), source=path)
