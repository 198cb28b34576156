"""The LLaMA decoder in Flax linen, with logical axis names on every parameter and activation.

Parameter names follow transformers' LLaMA (q_proj, gate_proj, ...) so the converter is a
table of renames and transposes; kernels keep heads as their own axis so that the tensor
axis shards them without reshapes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from anygpt_jax.model.attention import apply_rotary, attention_mask, dot_product_attention
from anygpt_jax.model.cache import KVCache
from anygpt_jax.model.config import ModelConfig
from anygpt_jax.model.mixed_dot import dots_saveable, mixed_dot
from anygpt_jax.model.tpu_attention import splash_attention

constrain = nn.with_logical_constraint

# Remat policies by name; the names tag activations with `checkpoint_name` below.
_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "minimal": dots_saveable,  # matmul outputs (a mixed dot's in the compute dtype)
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj"
    ),
    "save_dot_except_mlp": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "attention_out", "out_proj"
    ),
}


def _init(config: ModelConfig, axes: tuple[str, ...], int8: bool = False):
    # int8 weights are converted from trained ones (model/quantize.py), never initialized.
    init = nn.initializers.zeros if int8 else nn.initializers.normal(config.initializer_range)
    return nn.with_logical_partitioning(init, axes)


class Int8Embed(nn.Module):
    """The embedding table as int8 rows with an fp32 scale each (ModelConfig.int8_weights
    "embed"); looks up like nn.Embed."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        shape = (cfg.padded_vocab_size, cfg.hidden_size)
        self.embedding = self.param("embedding", _init(cfg, ("vocab", "embed"), True), shape,
                                    jnp.int8)
        self.scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("vocab", None)),
            (cfg.padded_vocab_size, 1), jnp.float32)

    def __call__(self, ids: jax.Array) -> jax.Array:
        rows = jnp.take(self.embedding, ids, axis=0).astype(jnp.float32)
        return (rows * jnp.take(self.scale, ids, axis=0)).astype(self.config.dtype)


class RMSNorm(nn.Module):
    """RMSNorm as transformers computes it: statistics in fp32, scale applied in compute dtype."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            (x.shape[-1],),
            jnp.dtype(cfg.param_dtype),
        )
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(variance + cfg.rms_norm_eps)).astype(cfg.dtype)
        return scale.astype(cfg.dtype) * normed


class Projection(nn.Module):
    """A bias-free linear map contracting x's last `len(in_shape)` axes, kernel [*in, *out].

    Written out rather than nn.DenseGeneral so the kernel is created in its final named
    shape (DenseGeneral initializes a flattened 2-D kernel, which breaks logical sharding).
    """

    config: ModelConfig
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    out_dtype: str | None = None  # default: the compute dtype
    group: str = "layers"  # its weight group (ModelConfig.int8_weights)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        int8 = self.group in cfg.int8_weights
        kernel = self.param(
            "kernel",
            _init(cfg, self.kernel_axes, int8),
            (*self.in_shape, *self.out_shape),
            jnp.int8 if int8 else jnp.dtype(cfg.param_dtype),
        )
        n_in = len(self.in_shape)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        if not int8:
            return mixed_dot(x, kernel, contract, cfg.dtype, self.out_dtype)
        # Weight-only int8: the integer kernel in the compute dtype, then each output
        # channel's scale (kept with size-1 input axes: model/quantize.py reads them).
        scale_axes = (None,) * n_in + self.kernel_axes[n_in:]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, scale_axes),
            (*(1,) * n_in, *self.out_shape),
            jnp.float32,
        )
        out = mixed_dot(x, kernel, contract, cfg.dtype, jnp.float32)
        return (out * scale.reshape(self.out_shape)).astype(self.out_dtype or cfg.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE; reads and writes the layer's KV cache."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        layer_cache: tuple[jax.Array, jax.Array] | None,
        cache_segment_ids: jax.Array | None,
        cache_index: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        cfg = self.config
        head_dim = cfg.resolved_head_dim
        embed = (cfg.hidden_size,)
        q_axes = ("embed", "heads", "head_dim")
        kv_axes = ("embed", "kv_heads", "head_dim")
        q = Projection(cfg, embed, (cfg.num_heads, head_dim), q_axes, name="q_proj")(x)
        k = Projection(cfg, embed, (cfg.num_kv_heads, head_dim), kv_axes, name="k_proj")(x)
        v = Projection(cfg, embed, (cfg.num_kv_heads, head_dim), kv_axes, name="v_proj")(x)
        q = constrain(
            q, ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
        )
        kv_act = (
            "activation_batch",
            "activation_length",
            "activation_kv_heads",
            "activation_head_dim",
        )
        k, v = constrain(k, kv_act), constrain(v, kv_act)
        q = checkpoint_name(apply_rotary(q, positions, cfg.rope_theta), "query_proj")
        k = checkpoint_name(apply_rotary(k, positions, cfg.rope_theta), "key_proj")
        v = checkpoint_name(v, "value_proj")

        q_len = x.shape[1]
        dtype = jnp.dtype(cfg.dtype)
        new_cache = None
        if layer_cache is None and cfg.attention_kernel == "splash":
            # The kernel builds the causal/segment mask itself, block by block.
            out = splash_attention(q, k, v, segment_ids, dtype)
        else:
            if layer_cache is None:
                slots = jnp.arange(q_len)
                mask = attention_mask(slots, slots, segment_ids, segment_ids)
            else:
                new_cache, k, v = _write_cache(layer_cache, k, v, cache_index)
                query_slots = cache_index + jnp.arange(q_len)
                key_slots = jnp.arange(k.shape[2])
                mask = attention_mask(query_slots, key_slots, segment_ids, cache_segment_ids)
            out = dot_product_attention(q, k, v, mask, dtype, heads_first=layer_cache is not None)
        out = checkpoint_name(out, "attention_out")
        out = Projection(
            cfg, (cfg.num_heads, head_dim), embed, ("heads", "head_dim", "embed"), name="o_proj"
        )(out)
        return out, new_cache


def _write_cache(layer_cache, k: jax.Array, v: jax.Array, cache_index: jax.Array):
    """Writes the new keys/values [b, q, kv_heads, d] at slot `cache_index`; returns (the
    updated cache, this layer's keys and values [b, kv_heads, slots, d] to attend over).

    `layer_cache` is one layer's (keys, values) [b, kv_heads, slots, d] (unrolled layers), or
    every layer's stacked [layers, ...] plus this layer's index, as the layer scan carries
    them: either way only the new slots are written, in place.
    """
    keys, values, *layer = layer_cache
    new_k = k.swapaxes(1, 2).astype(keys.dtype)
    new_v = v.swapaxes(1, 2).astype(values.dtype)
    if not layer:
        start = (0, 0, cache_index, 0)
        k = jax.lax.dynamic_update_slice(keys, new_k, start)
        v = jax.lax.dynamic_update_slice(values, new_v, start)
        return (k, v), k, v
    (layer,) = layer
    start = (layer, 0, 0, cache_index, 0)
    keys = jax.lax.dynamic_update_slice(keys, new_k[None], start)
    values = jax.lax.dynamic_update_slice(values, new_v[None], start)
    k = jax.lax.dynamic_index_in_dim(keys, layer, keepdims=False)
    v = jax.lax.dynamic_index_in_dim(values, layer, keepdims=False)
    return (keys, values), k, v


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        embed, mlp = (cfg.hidden_size,), (cfg.intermediate_size,)
        gate = Projection(cfg, embed, mlp, ("embed", "mlp"), name="gate_proj")(x)
        up = Projection(cfg, embed, mlp, ("embed", "mlp"), name="up_proj")(x)
        hidden = constrain(
            nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp")
        )
        return Projection(cfg, mlp, embed, ("mlp", "embed"), name="down_proj")(hidden)


class DecoderLayer(nn.Module):
    """Pre-norm transformer block: (x, ..., cache) -> (x, updated cache or None)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, cache_segment_ids, cache_index, layer_cache):
        cfg = self.config
        x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        attn_out, new_cache = Attention(cfg, name="self_attn")(
            RMSNorm(cfg, name="input_layernorm")(x),
            positions,
            segment_ids,
            layer_cache,
            cache_segment_ids,
            cache_index,
        )
        x = x + attn_out
        mlp_out = MLP(cfg, name="mlp")(RMSNorm(cfg, name="post_attention_layernorm")(x))
        x = checkpoint_name(x + mlp_out, "out_proj")
        return constrain(
            x, ("activation_batch", "activation_length", "activation_embed")
        ), new_cache


def _layer_class(config: ModelConfig) -> type[nn.Module]:
    if config.remat_policy == "none":
        return DecoderLayer
    return nn.remat(
        DecoderLayer,
        policy=_REMAT_POLICIES[config.remat_policy],
        prevent_cse=not config.scan_layers,
    )


class Transformer(nn.Module):
    """AnyGPT's LLaMA over the merged vocabulary.

    `__call__` returns logits [batch, length, padded_vocab] in fp32 with the padded rows
    masked out; with a `cache` it also returns the updated cache (prefill and decode).
    `return_hidden=True` returns the final normed hidden states instead, for a loss that
    projects to the vocabulary in tiles (see `project`).
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        if "embed" in cfg.int8_weights:
            self.embed_tokens = Int8Embed(cfg)
        else:
            self.embed_tokens = nn.Embed(
                num_embeddings=cfg.padded_vocab_size,
                features=cfg.hidden_size,
                dtype=jnp.dtype(cfg.dtype),
                param_dtype=jnp.dtype(cfg.param_dtype),
                embedding_init=_init(cfg, ("vocab", "embed")),
            )
        layer_cls = _layer_class(cfg)
        if cfg.scan_layers:
            self.layers = layer_cls(cfg)  # its parameters get a leading layers axis: see _scan
        else:
            self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.norm = RMSNorm(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = Projection(
                cfg,
                (cfg.hidden_size,),
                (cfg.padded_vocab_size,),
                ("embed", "vocab"),
                out_dtype="float32",
                group="lm_head",
                name="lm_head",
            )

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> Any:
        cfg = self.config
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(input_ids, dtype=jnp.int32)
        x = self.embed_tokens(input_ids)
        x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))

        if cache is not None:
            cache_segment_ids = jax.lax.dynamic_update_slice(
                cache.segment_ids, segment_ids.astype(jnp.int32), (0, cache.index)
            )
            cache_index = cache.index
            layer_caches = (cache.keys, cache.values)
        else:
            cache_segment_ids = cache_index = layer_caches = None

        if cfg.scan_layers:
            (x, new_layer_caches), _ = self._scan()(
                self.layers,
                (x, layer_caches),
                positions,
                segment_ids,
                cache_segment_ids,
                cache_index,
                jnp.arange(cfg.num_layers),
            )
        else:
            outputs = []
            for i, layer in enumerate(self.layers):
                layer_cache = (
                    None if layer_caches is None else (layer_caches[0][i], layer_caches[1][i])
                )
                x, out_cache = layer(
                    x, positions, segment_ids, cache_segment_ids, cache_index, layer_cache
                )
                outputs.append(out_cache)
            new_layer_caches = (
                None
                if layer_caches is None
                else (jnp.stack([c[0] for c in outputs]), jnp.stack([c[1] for c in outputs]))
            )

        hidden = self.norm(x)
        result = hidden if return_hidden else self.project(hidden)
        if cache is None:
            return result
        new_cache = KVCache(
            keys=new_layer_caches[0],
            values=new_layer_caches[1],
            segment_ids=cache_segment_ids,
            index=cache.index + input_ids.shape[1],
        )
        return result, new_cache

    def _scan(self):
        """The layer loop: one layer module whose parameters are stacked over a `layers` axis.

        The carry holds the hidden states and, when decoding, every layer's stacked KV cache,
        so each layer writes its new slots into the carried cache in place; passing the cache
        as scanned inputs and outputs instead had XLA:CPU rebuild all of it at every step.
        """

        def body(layer, carry, positions, segment_ids, cache_segment_ids, cache_index, index):
            x, caches = carry
            layer_cache = None if caches is None else (*caches, index)
            x, caches = layer(
                x, positions, segment_ids, cache_segment_ids, cache_index, layer_cache
            )
            return (x, caches), None

        return nn.scan(
            body,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
            length=self.config.num_layers,
            unroll=self.config.scan_unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )

    def project(self, hidden: jax.Array) -> jax.Array:
        """Final hidden states -> fp32 logits over the padded vocabulary, padding masked."""
        cfg = self.config
        if cfg.tie_word_embeddings:
            table = self.embed_tokens.embedding
            logits = mixed_dot(hidden, table, ((-1,), (1,)), cfg.dtype, jnp.float32)
            if "embed" in cfg.int8_weights:
                logits = logits * self.embed_tokens.scale[:, 0]
        else:
            logits = self.lm_head(hidden)
        logits = constrain(
            logits.astype(jnp.float32),
            ("activation_batch", "activation_length", "activation_vocab"),
        )
        return mask_padded_vocab(logits, cfg.vocab_size)


def mask_padded_vocab(logits: jax.Array, vocab_size: int, vocab_offset: int = 0) -> jax.Array:
    """Gives the padding rows of the vocabulary (ids >= vocab_size) no probability.

    `vocab_offset` is the id of the first column, for a loss computed over vocabulary tiles.
    """
    ids = vocab_offset + jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.where(ids < vocab_size, logits, jnp.finfo(logits.dtype).min)
