"""Weight formats for inference: float parameters as bfloat16, or as int8 with a scale per
output channel (symmetric, weight-only: activations and the sums stay in the compute dtype).

`convert(params, config, "int8")` returns the int8 parameters and the config that reads them
(`ModelConfig.int8_weights`): each kernel of the chosen groups becomes round(w / s) in
[-127, 127] with s = max|w| / 127 over its input axes, and the model multiplies each output
channel of the matmul by s (model/llama.py `Projection`, `Int8Embed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.params import param_shapes

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")
# The embedding table is left in float by default: a decode step reads one row of it.
DEFAULT_INT8_GROUPS = ("layers", "lm_head")


def convert(params: Any, config: ModelConfig, weights: str,
            int8_groups: Sequence[str] = DEFAULT_INT8_GROUPS) -> tuple[Any, ModelConfig]:
    """(parameters, config) of float `params` stored as `weights` (one of WEIGHT_FORMATS)."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights={weights!r}; expected one of {WEIGHT_FORMATS}")
    if config.int8_weights:
        raise ValueError(f"the parameters are int8 already ({config.int8_weights})")
    if weights == "float32":
        return params, config
    if weights == "bfloat16":
        return jax.tree_util.tree_map(_to_bfloat16, params), config
    config = config.replace(int8_weights=tuple(int8_groups))
    return _quantize_tree(params, param_shapes(config)), config


def quantize_channels(w: jax.Array, scale_shape: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """(int8 values, fp32 scales of `scale_shape`) of `w`: one scale per index of the axes
    `scale_shape` keeps (its other axes are 1: the input axes, reduced over)."""
    axes = tuple(i for i, (n, m) in enumerate(zip(w.shape, scale_shape, strict=True))
                 if m == 1 and n != 1)
    w = w.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(w), axis=axes, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
    values = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
    return values, scale.reshape(scale_shape)


_quantize = jax.jit(quantize_channels, static_argnums=1)


def _quantize_tree(params: Any, target: Any) -> Any:
    """`params` with every kernel or embedding whose `target` sibling has a "scale" turned
    into (int8, scale); the rest as is."""
    if not isinstance(target, dict):
        return params
    out = {}
    quantized = "scale" in target and ({"kernel", "embedding"} & set(target))
    for name, sub in target.items():
        if name == "scale" and quantized:
            continue  # written with its kernel (RMSNorm's own "scale" is kept)
        if name in ("kernel", "embedding") and quantized:
            out[name], out["scale"] = _quantize(params[name], tuple(target["scale"].shape))
        else:
            out[name] = _quantize_tree(params[name], sub)
    return out


def _to_bfloat16(x: jax.Array) -> jax.Array:
    return x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x
