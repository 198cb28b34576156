"""AdamW with linear warmup and cosine decay, global-norm clipping: AnyGPT's recipe in optax."""

from __future__ import annotations

import gin
import optax


@gin.configurable
def build_optimizer(train_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, learning-rate schedule) of a run of `train_steps` steps: the
    default `train.optimizer`; another is any function of train_steps returning the same."""
    schedule = learning_rate_schedule(train_steps)
    return make_optimizer(schedule), schedule


@gin.configurable
def learning_rate_schedule(
    total_steps: int,
    peak_learning_rate: float = 6e-5,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.03,
    end_learning_rate_ratio: float = 0.0,
) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to `end_learning_rate_ratio` x peak.

    Warmup is `warmup_steps` when given, else `warmup_fraction` of `total_steps` (AnyGPT: 3%).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if warmup_steps is None:
        warmup_steps = int(round(warmup_fraction * total_steps))
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]")
    decay_steps = max(total_steps - warmup_steps, 1)
    cosine = optax.cosine_decay_schedule(
        peak_learning_rate, decay_steps, alpha=end_learning_rate_ratio
    )
    if warmup_steps == 0:
        return cosine
    warmup = optax.linear_schedule(0.0, peak_learning_rate, warmup_steps)
    return optax.join_schedules([warmup, cosine], [warmup_steps])


@gin.configurable
def make_optimizer(
    schedule: optax.Schedule,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    clip_global_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW (decay on matrices only, never on norm scales) behind global-norm clipping."""
    chain = []
    if clip_global_norm is not None:
        chain.append(optax.clip_by_global_norm(clip_global_norm))
    chain.append(
        optax.adamw(
            schedule,
            b1=b1,
            b2=b2,
            eps=eps,
            weight_decay=weight_decay,
            mask=lambda params: _decay_mask(params),
        )
    )
    return optax.chain(*chain)


def _decay_mask(params):
    import jax

    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(getattr(k, "key", None) == "scale" for k in path), params
    )
