"""The KV cache for decoding: static shapes, one slot per generated or prompt position."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from anygpt_jax.model.config import ModelConfig

CACHE_AXES = ("cache_layers", "cache_batch", "cache_kv_heads", "cache_length", "cache_head_dim")
CACHE_SEGMENT_AXES = ("cache_batch", "cache_length")


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, [layers, batch, kv_heads, max_length, head_dim].

    Heads before slots is the layout the attention dots read directly (batch and kv_heads as
    their batch dimensions, head_dim contracted): a decode step then copies nothing but the
    new slot, where [.., length, kv_heads, ..] would be transposed whole at every token.

    `segment_ids` [batch, max_length] marks which slots hold real tokens (0 = empty or
    padding), so left-padded prompts and not-yet-written slots are never attended to.
    `index` is the next slot to write, shared by the batch.
    """

    keys: jax.Array
    values: jax.Array
    segment_ids: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, config: ModelConfig, batch_size: int, max_length: int) -> KVCache:
        """An empty cache for `batch_size` sequences of up to `max_length` tokens."""
        shape = (
            config.num_layers,
            batch_size,
            config.num_kv_heads,
            max_length,
            config.resolved_head_dim,
        )
        dtype = jnp.dtype(config.dtype)
        return cls(
            keys=jnp.zeros(shape, dtype),
            values=jnp.zeros(shape, dtype),
            segment_ids=jnp.zeros((batch_size, max_length), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]
