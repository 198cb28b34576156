"""Parameter trees: logical axes, (sharded) initialization, and scanned <-> per-layer layouts."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from anygpt_jax import partitioning
from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.llama import Transformer

Params = dict[str, Any]


def _boxed_shapes(config: ModelConfig) -> Any:
    model = Transformer(config)
    dummy = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy))["params"]


def param_logical_axes(config: ModelConfig) -> Any:
    """A pytree of PartitionSpecs of logical axis names, one per parameter."""
    return nn.get_partition_spec(_boxed_shapes(config))


def param_shapes(config: ModelConfig) -> Any:
    """A pytree of jax.ShapeDtypeStruct, one per parameter."""
    return nn.meta.unbox(_boxed_shapes(config))


def param_shardings(config: ModelConfig, mesh: Mesh, rules=None) -> Any:
    """NamedShardings of every parameter under the logical-axis rules."""
    return partitioning.logical_to_sharding(param_logical_axes(config), mesh, rules)


def init_params(
    config: ModelConfig, rng: jax.Array, mesh: Mesh | None = None, rules=None
) -> Params:
    """Randomly initialized parameters, created directly in their sharding when a mesh is given."""
    model = Transformer(config)
    dummy = jnp.zeros((1, 1), jnp.int32)

    def init():
        return nn.meta.unbox(model.init(rng, dummy)["params"])

    if mesh is None:
        return jax.jit(init)()
    return jax.jit(init, out_shardings=param_shardings(config, mesh, rules))()


def stack_layers(params: Params, num_layers: int, name: str = "layers") -> Params:
    """Per-layer params (`{name}_0`, `{name}_1`, ...) -> the scanned layout (`name`, axis 0)."""
    names = [f"{name}_{i}" for i in range(num_layers)]
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"per-layer params lack {missing}")
    rest = {k: v for k, v in params.items() if k not in names}
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[params[n] for n in names])
    return {**rest, name: stacked}


def unstack_layers(params: Params, name: str = "layers") -> Params:
    """The scanned layout (`name`, axis 0) -> per-layer params (`{name}_0`, `{name}_1`, ...)."""
    if name not in params:
        raise KeyError(f"scanned params lack {name!r}")
    stacked = params[name]
    num_layers = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != name}
    for i in range(num_layers):
        rest[f"{name}_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
    return rest


def match_layout(params: Params, config: ModelConfig) -> Params:
    """Returns `params` in the scanned or per-layer layout that `config.scan_layers` asks for."""
    return match_layers(params, config.scan_layers, config.num_layers)


def match_layers(params: Params, scanned: bool, num_layers: int, name: str = "layers") -> Params:
    """Returns `params` with its `name` layers in the layout asked for (scanned: stacked under
    `name`; else `{name}_{i}`), converting only when they are in the other one."""
    if (name in params) == scanned:
        return params
    return stack_layers(params, num_layers, name) if scanned else unstack_layers(params, name)
