"""Next-token cross-entropy in fp32, optional z-loss, and a tiled form for huge vocabularies.

The tiled loss never materializes [batch, length, vocab] fp32 logits: it walks vocabulary
tiles of the LM head (and sequence chunks) with a running log-sum-exp, rematerializing each
tile in the backward pass, as MaxText does for large vocabularies.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from anygpt_jax.array_ops import argmax
from anygpt_jax.model.llama import mask_padded_vocab
from anygpt_jax.model.mixed_dot import mixed_dot


def cross_entropy(
    logits: jax.Array, targets: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Per-token (loss, log_z) for fp32 logits [..., vocab] and int targets [...].

    loss = logsumexp - target logit, plus `z_loss` x log_z^2 (PaLM's stabilizer).
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss = log_z - target_logit
    if z_loss:
        loss = loss + z_loss * jnp.square(log_z)
    return loss, log_z


def tiled_cross_entropy(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    vocab_size: int,
    vocab_tile: int,
    z_loss: float = 0.0,
    compute_dtype: jnp.dtype = jnp.float32,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token (loss, log_z, argmax) from hidden [b, t, e] and LM head kernel [e, vocab].

    Vocabulary tiles of width `vocab_tile` are scanned with a running max/sum; each tile's
    logits are recomputed in the backward pass instead of being stored.
    """
    embed, padded_vocab = kernel.shape
    if padded_vocab % vocab_tile:
        raise ValueError(f"vocab_tile={vocab_tile} does not divide the padded vocab {padded_vocab}")
    n_tiles = padded_vocab // vocab_tile
    tiles = kernel.reshape(embed, n_tiles, vocab_tile).transpose(1, 0, 2)
    hidden = hidden.astype(compute_dtype)

    @jax.checkpoint
    def tile_logits(tile, index):
        logits = mixed_dot(hidden, tile, ((2,), (0,)), compute_dtype, jnp.float32)
        return mask_padded_vocab(logits, vocab_size, index * vocab_tile)

    def body(carry, xs):
        running_max, running_sum, target_logit, best, best_id = carry
        tile, index = xs
        logits = tile_logits(tile, index)
        tile_max = logits.max(-1)
        new_max = jnp.maximum(running_max, tile_max)
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(
            logits - new_max[..., None]
        ).sum(-1)
        local = targets - index * vocab_tile
        in_tile = (local >= 0) & (local < vocab_tile)
        picked = jnp.take_along_axis(logits, jnp.clip(local, 0, vocab_tile - 1)[..., None], -1)
        target_logit = jnp.where(in_tile, picked[..., 0], target_logit)
        tile_best = argmax(logits) + index * vocab_tile
        best_id = jnp.where(tile_max > best, tile_best, best_id)
        best = jnp.maximum(best, tile_max)
        return (new_max, running_sum, target_logit, best, best_id), None

    shape = targets.shape
    neg_inf = jnp.full(shape, -jnp.inf, jnp.float32)
    init = (
        neg_inf,
        jnp.zeros(shape, jnp.float32),
        jnp.zeros(shape, jnp.float32),
        neg_inf,
        jnp.zeros(shape, jnp.int32),
    )
    (running_max, running_sum, target_logit, _, best_id), _ = jax.lax.scan(
        body, init, (tiles, jnp.arange(n_tiles))
    )
    log_z = running_max + jnp.log(running_sum)
    loss = log_z - target_logit
    if z_loss:
        loss = loss + z_loss * jnp.square(log_z)
    return loss, log_z, best_id


LossFn = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


def per_token_loss(model, cfg, params, batch: dict, z_loss: float = 0.0,
                   vocab_tile: int | None = None, rngs=None) -> tuple[jax.Array, jax.Array]:
    """(loss, argmax) per token, fp32, of `model` (a Transformer of `cfg`) on a feature
    converter batch: from full logits, or from the tiled head when `vocab_tile` is set."""
    args = (batch["decoder_input_tokens"], batch["decoder_positions"], batch["decoder_segment_ids"])
    targets = batch["decoder_target_tokens"]
    if vocab_tile is None:
        logits = model.apply({"params": params}, *args, rngs=rngs)
        loss, _ = cross_entropy(logits, targets, z_loss)
        return loss, argmax(logits)
    hidden = model.apply({"params": params}, *args, return_hidden=True, rngs=rngs)
    if cfg.tie_word_embeddings:
        kernel = params["embed_tokens"]["embedding"].T
    else:
        kernel = params["lm_head"]["kernel"]
    loss, _, best = tiled_cross_entropy(
        hidden, kernel, targets, cfg.vocab_size, vocab_tile, z_loss, jnp.dtype(cfg.dtype)
    )
    return loss, best


def modality_sums(loss: jax.Array, best: jax.Array, batch: dict, modality_index: jax.Array,
                  num_modalities: int) -> dict[str, jax.Array]:
    """Loss-weighted sums per modality of the target token: loss, correct argmax, tokens."""
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    targets = batch["decoder_target_tokens"]
    which = modality_index[targets]
    one_hot = jax.nn.one_hot(which, num_modalities, dtype=jnp.float32) * weights[..., None]
    correct = (best == targets).astype(jnp.float32)
    return {
        "loss": jnp.einsum("bt,btm->m", loss, one_hot),
        "correct": jnp.einsum("bt,btm->m", correct, one_hot),
        "tokens": one_hot.sum((0, 1)),
    }
