"""The train state and the jitted train step: loss, gradient accumulation, update, metrics.

Batches follow the feature converter's contract (data/features.py): int32
[batch, length] arrays `decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`,
`decoder_segment_ids` (0 = padding) and `decoder_positions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from anygpt_jax import partitioning, runtime
from anygpt_jax.data.features import MODEL_FEATURES
from anygpt_jax.model import ModelConfig, Transformer
from anygpt_jax.training.loss import modality_sums, per_token_loss


@flax.struct.dataclass
class TrainState:
    """Everything a step changes or needs to resume: step count, parameters, optimizer state
    and the base RNG key (raw uint32 key data, so checkpoints hold a plain array)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
    """How the loss is computed: z-loss weight, vocabulary tiling, micro-batching."""

    z_loss: float = 0.0
    # Width of the vocabulary tiles of the tiled loss; None computes full logits.
    vocab_tile: int | None = None
    # Micro-batches per step; the update equals the one of the whole batch at once.
    num_microbatches: int = 1


def init_train_state(
    params: Any, tx: optax.GradientTransformation, rng: jax.Array | None = None
) -> TrainState:
    """A step-0 state around existing (possibly sharded) parameters; `rng` defaults to key 0."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng
    )


def step_rngs(state: TrainState, microbatch: jax.Array | int = 0) -> dict[str, jax.Array]:
    """The model's RNG streams for one micro-batch of the state's step: a function of the base
    key, the step and the micro-batch only, so a resumed run draws what the original drew."""
    key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), microbatch)
    return {"dropout": key}


def all_finite(tree: Any) -> jax.Array:
    """A scalar bool: every floating-point leaf of `tree` is free of inf and NaN."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    if not leaves:
        return jnp.array(True)
    return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all()


def make_train_step(
    cfg: ModelConfig,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    modality_index: np.ndarray,
    loss_cfg: LossConfig | None = None,
    rules: Any = None,
):
    """Returns `step(state, batch) -> (state, metrics)`, to be jitted by the caller.

    The loss is the token-weighted mean over the whole (global) batch; micro-batches sum
    their weighted losses and gradients, then divide once, so any split gives the same update.
    Metrics are sums over the batch (per modality) plus grad norm and learning rate.
    `loss_cfg` defaults to LossConfig() as gin configures it when this is called.
    """
    loss_cfg = LossConfig() if loss_cfg is None else loss_cfg
    model = Transformer(cfg)
    modality_index = jnp.asarray(modality_index, jnp.int32)
    pad = cfg.padded_vocab_size - modality_index.shape[0]
    modality_index = jnp.pad(modality_index, (0, pad))  # padded ids never occur as targets
    num_modalities = int(modality_index.max()) + 1

    def microbatch_sums(params, batch, rngs):
        with nn.logical_axis_rules(rules or ()):
            loss, best = per_token_loss(model, cfg, params, batch, loss_cfg.z_loss,
                                        loss_cfg.vocab_tile, rngs)
        sums = modality_sums(loss, best, batch, modality_index, num_modalities)
        return sums["loss"].sum(), sums

    grad_fn = jax.value_and_grad(microbatch_sums, has_aux=True)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        n = loss_cfg.num_microbatches
        if n == 1:
            (_, sums), grads = grad_fn(state.params, batch, step_rngs(state))
        else:
            size = batch["decoder_input_tokens"].shape[0]
            if size % n:
                raise ValueError(f"batch {size} is not divisible by num_microbatches={n}")
            micro = jax.tree_util.tree_map(lambda x: x.reshape(n, size // n, *x.shape[1:]), batch)

            def accumulate(carry, indexed):
                i, mb = indexed
                (_, sums), grads = grad_fn(state.params, mb, step_rngs(state, i))
                return jax.tree_util.tree_map(jnp.add, carry, (sums, grads)), None

            shapes = jax.eval_shape(lambda: grad_fn(state.params, batch, step_rngs(state))[0][1])
            zeros = (
                jax.tree_util.tree_map(jnp.zeros_like, shapes),
                jax.tree_util.tree_map(jnp.zeros_like, state.params),
            )
            (sums, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(n), micro))
        total_tokens = jnp.maximum(sums["tokens"].sum(), 1.0)
        grads = jax.tree_util.tree_map(lambda g: (g / total_tokens).astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": sums["loss"].sum() / total_tokens,
            "loss_sum_per_modality": sums["loss"],
            "correct_per_modality": sums["correct"],
            "tokens_per_modality": sums["tokens"],
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state.step),
            # The trainer commits no state that holds a non-finite value (see trainer.py).
            "state_finite": all_finite((params, opt_state)),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step


@dataclasses.dataclass(frozen=True)
class ShardedTrainStep:
    """The jitted train step (state donated) and the shardings it was built for."""

    fn: Callable[[TrainState, dict], tuple[TrainState, dict]]
    abstract_state: Any  # TrainState of ShapeDtypeStructs carrying their shardings
    state_shardings: Any
    batch_sharding: NamedSharding

    def abstract_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        """ShapeDtypeStructs of one global batch, for lowering without data."""
        shape = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=self.batch_sharding)
        return {k: shape for k in MODEL_FEATURES}


def abstract_train_state(
    cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, rules: Any
) -> tuple[Any, Any]:
    """(TrainState of ShapeDtypeStructs with shardings, its shardings), from logical axes."""
    model = Transformer(cfg)

    def boxed_init():
        params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
        return init_train_state(params, tx)

    boxed = jax.eval_shape(boxed_init)
    shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
    shapes = nn.meta.unbox(boxed)
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return abstract, shardings


def sharded_train_step(
    cfg: ModelConfig,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    modality_index: np.ndarray,
    loss_cfg: LossConfig,
    mesh: Mesh,
    rules: Any,
) -> ShardedTrainStep:
    """The one way to build the step on a mesh: the trainer runs it, `anygpt_jax.aot` compiles it.

    State and batch shardings come from the logical rules; the state is donated so the
    update happens in place. Call `fn` under `jax.set_mesh(mesh)`.
    """
    abstract_state, state_shardings = abstract_train_state(cfg, tx, mesh, rules)
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    fn = jax.jit(
        make_train_step(cfg, tx, schedule, modality_index, loss_cfg, rules),
        in_shardings=(state_shardings, {k: batch_sharding for k in MODEL_FEATURES}),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
        compiler_options=runtime.training_compiler_options(mesh.devices.flat[0], cfg.dtype),
    )
    return ShardedTrainStep(fn, abstract_state, state_shardings, batch_sharding)
