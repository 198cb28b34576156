"""Teacher-forced evaluation: loss, perplexity and next-token accuracy per modality of targets.

Batches are the training contract (packed rows from the task's `targets`/`loss_weights`); the
per-token loss and the per-modality sums are the train step's own (training/step.py), without
z-loss, so an eval loss is the training loss of the same tokens. Every example is used once:
the last batch is padded with empty rows instead of being dropped.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from anygpt_jax import partitioning
from anygpt_jax.data.features import MODEL_FEATURES
from anygpt_jax.data.packing import AnyGPTFeatureConverter
from anygpt_jax.data.pipeline import host_shard_info
from anygpt_jax.model import Transformer
from anygpt_jax.training.loss import modality_sums, per_token_loss


def _batches(task_name: str, seq_len: int, batch_size: int, max_examples: int | None, shard):
    """This process's rows of the task (packed, one pass), in batches padded with empty rows."""
    if batch_size % shard.num_shards:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by {shard.num_shards} input shards"
        )
    local = batch_size // shard.num_shards
    lengths = {"targets": seq_len + 1, "loss_weights": seq_len + 1}
    ds = seqio.get_mixture_or_task(task_name).get_dataset(
        lengths, split="train", shuffle=False, num_epochs=1, shard_info=shard,
        use_cached=False, trim_output_features=True,
        # A pipeline per call: seqio's in-memory cache of small sets would never be reused,
        # and a max_examples prefix of it makes TF warn about a truncated cache.
        try_in_mem_cache=False,
    )  # fmt: skip
    if max_examples is not None:
        ds = ds.take(-(-max_examples // shard.num_shards))
    ds = AnyGPTFeatureConverter(pack=True)(ds, lengths).batch(local)
    for batch in ds.as_numpy_iterator():
        n = len(batch[MODEL_FEATURES[0]])
        yield {k: np.pad(batch[k], ((0, local - n), (0, 0))) for k in MODEL_FEATURES}


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def make_eval_step(model, vocab, vocab_tile: int | None = None):
    """jitted `(params, batch) -> per-modality sums` of `model` (an AnyGPT)."""
    cfg = model.config
    transformer = Transformer(cfg)
    index = np.asarray(vocab.id_modality_index(), np.int32)
    index = jnp.asarray(np.pad(index, (0, cfg.padded_vocab_size - index.shape[0])))
    num_modalities = len(vocab.modality_names)
    rules = partitioning.logical_axis_rules()

    def step(params, batch):
        with nn.logical_axis_rules(rules):
            loss, best = per_token_loss(transformer, cfg, params, batch, vocab_tile=vocab_tile)
        return modality_sums(loss, best, batch, index, num_modalities)

    return jax.jit(step)


def summarize(sums: dict[str, np.ndarray], modality_names: tuple[str, ...]) -> dict[str, float]:
    """loss/perplexity over all target tokens and per modality, accuracy, token counts."""
    tokens = sums["tokens"]
    total = float(tokens.sum())
    if total == 0:
        raise ValueError("teacher-forced eval saw no target tokens (empty eval set?)")
    loss = float(sums["loss"].sum()) / total
    out = {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens": total}
    for i, name in enumerate(modality_names):
        if tokens[i] > 0:
            m_loss = float(sums["loss"][i] / tokens[i])
            out[f"loss/{name}"] = m_loss
            out[f"perplexity/{name}"] = math.exp(min(m_loss, 80.0))
            out[f"accuracy/{name}"] = float(sums["correct"][i] / tokens[i])
            out[f"tokens/{name}"] = float(tokens[i])
    return out


def teacher_forced_eval(
    model: Any,
    task_name: str,
    seq_len: int = 4500,
    batch_size: int = 8,
    max_examples: int | None = None,
    vocab_tile: int | None = None,
    step_fn: Any = None,
) -> dict[str, float]:
    """Loss, perplexity and accuracy (all tokens and per modality) of `model` on a task."""
    vocab = model.vocab
    step_fn = step_fn or make_eval_step(model, vocab, vocab_tile)
    sharding = partitioning.batch_sharding(model.mesh) if model.mesh is not None else None
    totals: dict[str, np.ndarray] | None = None
    shard = host_shard_info(sharding, batch_size)
    batches = _batches(task_name, seq_len, batch_size, max_examples, shard)
    local_rows = batch_size // shard.num_shards
    empty = {k: np.zeros((local_rows, seq_len), np.float32 if k == "decoder_loss_weights"
                         else np.int32) for k in MODEL_FEATURES}  # fmt: skip
    while True:
        batch = next(batches, None)
        # Every process steps until all are done, feeding empty rows once its part is.
        if not _any_process(batch is not None):
            break
        batch = batch if batch is not None else empty
        if sharding is not None:
            shape = (batch_size, seq_len)
            arrays = {k: jax.make_array_from_process_local_data(sharding, v, shape)
                      for k, v in batch.items()}  # fmt: skip
            with jax.set_mesh(model.mesh):
                sums = step_fn(model.params, arrays)
        else:
            sums = step_fn(model.params, {k: jnp.asarray(v) for k, v in batch.items()})
        sums = {k: np.asarray(jax.device_get(v), np.float64) for k, v in sums.items()}
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
    if totals is None:
        raise ValueError(f"{task_name}: no examples to evaluate")
    return summarize(totals, vocab.modality_names)
