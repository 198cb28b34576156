"""The LLaMA decoder of AnyGPT: config, Flax modules, KV cache and parameter utilities."""

from anygpt_jax.model.cache import KVCache
from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.llama import Transformer, mask_padded_vocab
from anygpt_jax.model.params import (
    init_params,
    match_layers,
    match_layout,
    param_logical_axes,
    param_shapes,
    param_shardings,
    stack_layers,
    unstack_layers,
)

__all__ = [
    "KVCache",
    "ModelConfig",
    "Transformer",
    "init_params",
    "mask_padded_vocab",
    "match_layers",
    "match_layout",
    "param_logical_axes",
    "param_shapes",
    "param_shardings",
    "stack_layers",
    "unstack_layers",
]
