"""The training loop: sharded state, resumable input, async checkpoints, metrics, preemption.

Everything is configured through gin (see tpu_configs/); `anygpt_jax.train` only parses flags.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio

from anygpt_jax import checkpointing, partitioning, storage, tasks
from anygpt_jax.data.features import MODEL_FEATURES
from anygpt_jax.data.pipeline import InputIterator, get_dataset, host_shard_info
from anygpt_jax.model import ModelConfig, Transformer
from anygpt_jax.training import metrics as metrics_lib
from anygpt_jax.training.checkpoints import CheckpointHook, TrainCheckpointer
from anygpt_jax.training.hooks import TrainHook, TrainRun
from anygpt_jax.training.optimizer import build_optimizer
from anygpt_jax.training.step import (
    LossConfig,
    ShardedTrainStep,
    init_train_state,
    sharded_train_step,
)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


class Preempted(Exception):  # noqa: N818 - not an error: the run checkpointed and stopped
    """SIGTERM arrived; the step named in the message was checkpointed, the run is unfinished
    (`python -m anygpt_jax.train` exits with EXIT_PREEMPTED)."""


ON_DIVERGENCE = ("stop", "rollback")


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (all hosts agree on it)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self.requested))
        return bool(np.any(flags))

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _training_rng(seed: int) -> jax.Array:
    """The base key of the train state's RNG streams (apart from the parameter init's key)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


def _vocabulary(mixture_or_task_name: str):
    try:
        provider = seqio.get_mixture_or_task(mixture_or_task_name)
    except ValueError as e:
        known = sorted(seqio.MixtureRegistry.names()) + sorted(seqio.TaskRegistry.names())
        raise ValueError(
            f"MIXTURE_OR_TASK_NAME {mixture_or_task_name!r} is not registered "
            f"(registered: {known}); are its shard directories set in gin?"
        ) from e
    return provider.output_features["targets"].vocabulary


def _prepare_model_dir(model_dir: str, cfg: ModelConfig, vocab) -> None:
    """Writes model_config.json and vocab/ once; a resumed run must agree with them.

    Process 0 writes (each file whole, vocab/ under a commit marker) while the others wait at
    a barrier, so no process ever reads a half-written file; then every process checks what is
    there. MODEL_DIR may be local or gs://, shared by every host of a slice.
    """
    storage.makedirs(model_dir)
    config_path = storage.join(model_dir, checkpointing.CONFIG_FILE)
    vocab_dir = storage.join(model_dir, checkpointing.VOCAB_DIR)
    if jax.process_index() == 0:
        if not storage.exists(config_path):
            cfg.save(config_path)
        if storage.dir_state(vocab_dir) in ("missing", "empty", "incomplete"):
            with storage.output_dir(vocab_dir) as tmp:
                vocab.save(tmp)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("anygpt_model_dir_ready")
    saved = checkpointing.load_config(model_dir)
    if saved.replace(**_layout(cfg)) != cfg:
        raise ValueError(
            f"{config_path} describes another model than this run's config; "
            "use a new MODEL_DIR or the same architecture"
        )
    if checkpointing.load_vocab(model_dir).fingerprint != vocab.fingerprint:
        raise ValueError(f"{vocab_dir} holds another vocabulary than the task's")


def _layout(cfg: ModelConfig) -> dict:
    keys = (
        "vocab_pad_multiple",
        "param_dtype",
        "dtype",
        "scan_layers",
        "scan_unroll",
        "remat_policy",
        "attention_kernel",
    )
    return {k: getattr(cfg, k) for k in keys}


def write_operative_config(model_dir: str) -> None:
    """Saves the gin bindings actually used, as t5x does."""
    if jax.process_index() == 0:
        storage.write_text(storage.join(model_dir, "operative_config.gin"),
                           gin.operative_config_str())


@dataclasses.dataclass(frozen=True)
class TrainComponents:
    """The objects a run compiles from; `train` and `aot` build them with one function."""

    model_config: ModelConfig
    partitioner: partitioning.Partitioner
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    loss_config: LossConfig


def build_components(
    train_steps: int,
    model_config: ModelConfig | None = None,
    partitioner: partitioning.Partitioner | None = None,
    optimizer: Callable[[int], tuple[optax.GradientTransformation, optax.Schedule]] | None = None,
    loss_config: LossConfig | None = None,
) -> TrainComponents:
    """The components given, the rest as gin configures their defaults."""
    tx, schedule = (optimizer or build_optimizer)(train_steps)
    return TrainComponents(
        model_config=model_config or ModelConfig(),
        partitioner=partitioner or partitioning.Partitioner(),
        tx=tx,
        schedule=schedule,
        loss_config=loss_config or LossConfig(),
    )


@dataclasses.dataclass
class TrainSetup:
    """A run ready to loop: checked, MODEL_DIR written, state restored or initialized."""

    model_dir: str
    train_steps: int
    batch_size: int
    seq_len: int
    components: TrainComponents
    mesh: Any
    vocab: Any
    step: ShardedTrainStep
    inputs: InputIterator
    checkpointer: TrainCheckpointer
    state: Any
    start: int


@gin.configurable
def train(
    model_dir: str = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    seq_len: int = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    checkpoint_every: int = gin.REQUIRED,
    model_config: ModelConfig | None = None,
    partitioner: partitioning.Partitioner | None = None,
    optimizer: Callable[[int], tuple[optax.GradientTransformation, optax.Schedule]] | None = None,
    loss_config: LossConfig | None = None,
    checkpointer: Callable[[str], TrainCheckpointer] | None = None,
    hooks: Sequence[TrainHook] = (),
    init_from: str | None = None,
    seed: int = 0,
    log_every: int = 10,
    peak_flops_per_device: float | None = None,
    register_tasks: bool | Callable[[], Any] = True,
    stop_after_steps: int | None = None,
    on_divergence: str = "stop",
    max_rollbacks: int = 3,
) -> dict[str, float]:
    """Trains to `train_steps`, resuming from MODEL_DIR's latest checkpoint; returns last metrics.

    The components are gin references, built by gin's defaults when unset: `model_config`
    (@ModelConfig()), `partitioner` (@Partitioner(): mesh and logical-axis rules),
    `optimizer` (@build_optimizer: train_steps -> (tx, schedule)), `loss_config`
    (@LossConfig()), `checkpointer` (@TrainCheckpointer: model_dir -> checkpointer).
    `hooks` run around the steps (training/hooks.py): e.g. [@EvalHook(), @StepProfiler(),
    @BatchDigests()].
    `init_from` is a model directory (e.g. from `converters.llama import`) to fine-tune from
    when MODEL_DIR holds no checkpoint yet. `register_tasks` registers the seqio tasks
    over the shard directories gin names (tasks.register) before looking the mixture up;
    a callable registers them instead (e.g. a test's synthetic task). `stop_after_steps`
    ends this invocation (with a checkpoint) after that many steps, for time-sliced jobs;
    the schedule still runs to `train_steps`.
    A step whose loss, parameters or optimizer state holds inf/NaN is never checkpointed.
    `on_divergence` says what follows: 'stop' raises TrainingError naming the last good
    checkpoint; 'rollback' restores that checkpoint and skips the batch of the step that
    diverged (at most `max_rollbacks` times in one invocation, then stops).
    Every configuration error is raised before MODEL_DIR is written.
    """
    _check_arguments(train_steps=train_steps, batch_size=batch_size, seq_len=seq_len,
                     checkpoint_every=checkpoint_every, log_every=log_every,
                     stop_after_steps=stop_after_steps, max_rollbacks=max_rollbacks)
    if on_divergence not in ON_DIVERGENCE:
        raise ValueError(f"train.on_divergence={on_divergence!r}; expected one of {ON_DIVERGENCE}")
    components = build_components(train_steps, model_config, partitioner, optimizer, loss_config)
    hooks = list(hooks)
    setup = setup_training(model_dir, train_steps, batch_size, seq_len, mixture_or_task_name,
                           components, hooks, checkpointer or TrainCheckpointer, init_from,
                           seed, register_tasks)
    return train_loop(setup, hooks, checkpoint_every, log_every, peak_flops_per_device,
                      stop_after_steps, on_divergence, max_rollbacks)


def setup_training(
    model_dir: str,
    train_steps: int,
    batch_size: int,
    seq_len: int,
    mixture_or_task_name: str,
    components: TrainComponents,
    hooks: Sequence[TrainHook],
    make_checkpointer: Callable[[str], TrainCheckpointer],
    init_from: str | None,
    seed: int,
    register_tasks: bool | Callable[[], Any],
) -> TrainSetup:
    """Checks everything, then writes MODEL_DIR and restores (or initializes) the state."""
    if storage.isfile(model_dir):
        raise ValueError(f"MODEL_DIR {model_dir} is a file; it must be a directory (or absent)")
    storage.check_access(model_dir, write=True)
    if init_from is not None:
        storage.check_access(init_from)
    cfg = components.model_config
    mesh = components.partitioner.mesh()
    rules = components.partitioner.rules
    if callable(register_tasks):
        register_tasks()
    elif register_tasks:
        tasks.register()
    vocab = _vocabulary(mixture_or_task_name)
    if vocab.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"ModelConfig.vocab_size={cfg.vocab_size} but the task {mixture_or_task_name!r} "
            f"uses a vocabulary of {vocab.vocab_size} ids"
        )
    run = TrainRun(model_dir, train_steps, cfg, vocab, mesh)
    for hook in hooks:
        hook.setup(run)
    tx = components.tx
    sharded = sharded_train_step(cfg, tx, components.schedule, vocab.id_modality_index(),
                                 components.loss_config, mesh, rules)
    shard_info = host_shard_info(sharded.batch_sharding, batch_size)
    inputs = InputIterator(
        get_dataset(mixture_or_task_name, seq_len, batch_size, seed=seed, shard_info=shard_info)
    )
    _prepare_model_dir(model_dir, cfg, vocab)  # configuration and data checked: now write
    checkpointer = make_checkpointer(model_dir)
    with jax.set_mesh(mesh):
        state, latest = _restore_newest_usable(checkpointer, sharded.abstract_state, inputs)
        if latest is not None:
            print(f"resumed from step {latest} of {model_dir}", flush=True)
        elif init_from is not None:
            params, _ = checkpointing.load_params(init_from, cfg, mesh=mesh, rules=rules)
            state = jax.jit(
                lambda p: init_train_state(p, tx, _training_rng(seed)),
                out_shardings=sharded.state_shardings,
            )(params)
        else:

            def init(rng):
                params = Transformer(cfg).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]
                return nn.meta.unbox(init_train_state(params, tx, _training_rng(seed)))

            state = jax.jit(init, out_shardings=sharded.state_shardings)(
                jax.random.PRNGKey(seed))
    write_operative_config(model_dir)
    return TrainSetup(model_dir, train_steps, batch_size, seq_len, components, mesh, vocab,
                      sharded, inputs, checkpointer, state, int(latest or 0))


def train_loop(
    setup: TrainSetup,
    hooks: Sequence[TrainHook],
    checkpoint_every: int,
    log_every: int,
    peak_flops_per_device: float | None,
    stop_after_steps: int | None,
    on_divergence: str,
    max_rollbacks: int,
) -> dict[str, float]:
    """Steps `setup` to its train_steps (or a stop): logs, checkpoints, guards divergence."""
    s = setup
    cfg, mesh, checkpointer, inputs = s.components.model_config, s.mesh, s.checkpointer, s.inputs
    batch_size, seq_len, train_steps = s.batch_size, s.seq_len, s.train_steps
    step_fn, batch_sharding = s.step.fn, s.step.batch_sharding
    state, start = s.state, s.start
    peak_per_device = peak_flops_per_device or metrics_lib.device_peak_flops(
        compute_dtype=cfg.dtype
    )
    peak = peak_per_device * jax.device_count()
    flops_per_step = metrics_lib.model_flops_per_token(cfg, seq_len) * batch_size * seq_len
    tensorboard = storage.MirroredDir(storage.join(s.model_dir, "tensorboard"))
    writer = _summary_writer(tensorboard.local)
    preemption = _Preemption()
    # Saving is the last hook: what the others log of a step is written before its save.
    saving = CheckpointHook(checkpointer, inputs, checkpoint_every, train_steps, listeners=hooks)
    hooks = [*hooks, saving]
    last: dict[str, float] = {}
    run_start, steps_timed, window_start = time.perf_counter(), 0, time.perf_counter()
    skip: set[int] = set()  # steps whose (diverging) batch is dropped once, after a rollback
    rollbacks, preempted = 0, False
    try:
        for hook in hooks:
            hook.start(start)
        step, first_step_s = start, None
        if start < train_steps:
            print(f"compiling the train step (the first step, {start + 1}, waits for it)",
                  flush=True)
        while step < train_steps:
            local = _next_batch(inputs, step + 1)
            if step + 1 in skip:
                skip.discard(step + 1)
                local = _next_batch(inputs, step + 1)
                print(f"step {step + 1}: skipped the batch that diverged", flush=True)
            batch = {
                k: jax.make_array_from_process_local_data(
                    batch_sharding, local[k], (batch_size, seq_len)
                )
                for k in MODEL_FEATURES
            }
            for hook in hooks:
                hook.before_step(step + 1)
            with jax.set_mesh(mesh):
                new_state, step_metrics = step_fn(state, batch)
            step_metrics = jax.device_get(step_metrics)
            loss = float(step_metrics["loss"])
            if not math.isfinite(loss) or not bool(step_metrics["state_finite"]):
                what = (f"non-finite loss {loss}" if not math.isfinite(loss)
                        else "non-finite parameters or optimizer state")
                checkpointer.wait()  # the newest save, if in flight, is of a finite state
                good = checkpointer.latest_step()
                if on_divergence == "stop" or good is None or rollbacks >= max_rollbacks:
                    why = "" if on_divergence == "stop" else f" after {rollbacks} rollbacks"
                    raise TrainingError(
                        f"{what} at step {step + 1}{why}; nothing of it was saved; the last "
                        f"good checkpoint is step {good}"
                    )
                rollbacks += 1
                skip.add(step + 1)
                print(f"{what} at step {step + 1}: rolled back to step {good}; its batch "
                      f"will be skipped (rollback {rollbacks} of at most {max_rollbacks})",
                      flush=True)
                with jax.set_mesh(mesh):
                    state, good = _restore_newest_usable(checkpointer, s.step.abstract_state,
                                                         inputs, newest=good)
                if good is None:
                    raise TrainingError(f"{what} at step {step + 1}; no usable checkpoint to "
                                        "roll back to")
                step, steps_timed, window_start = good, 0, time.perf_counter()
                continue
            state, step = new_state, step + 1
            steps_timed += 1
            if first_step_s is None:  # compile time stays out of tok/s, MFU and the ETA
                first_step_s = time.perf_counter() - window_start
                print(f"compiled the train step and ran step {step} in {first_step_s:.1f}s",
                      flush=True)
                steps_timed, window_start = 0, time.perf_counter()
            sliced = stop_after_steps is not None and step - start >= stop_after_steps
            stop = preemption.should_stop() or sliced
            saving.stop_after_this_step = stop
            for hook in hooks:
                hook.after_step(step, state, step_metrics, local)
            if step % log_every == 0 or step == train_steps:
                elapsed = time.perf_counter() - window_start
                last = metrics_lib.summarize(step_metrics, s.vocab.modality_names)
                step_time = elapsed / steps_timed if steps_timed else first_step_s
                last |= {
                    "step_time_s": step_time,
                    "tokens_per_s": batch_size * seq_len / step_time,
                    "mfu": flops_per_step / step_time / peak,
                }
                eta = (train_steps - step) * step_time
                print(
                    f"step {step}/{train_steps} loss {last['loss']:.4f} "
                    f"lr {last['learning_rate']:.2e} gnorm {last['grad_norm']:.3f} "
                    f"{last['tokens_per_s']:.0f} tok/s mfu {last['mfu']:.1%} "
                    f"eta {metrics_lib.format_eta(eta)}",
                    flush=True,
                )
                _write_scalars(writer, step, last)
                if writer is not None:
                    writer.flush()
                    tensorboard.sync()
                steps_timed, window_start = 0, time.perf_counter()
            if stop:
                reason = "time slice done" if sliced else "SIGTERM"
                preempted = not sliced
                print(f"{reason}: saved step {step}, exiting", flush=True)
                break
    finally:
        try:
            for hook in hooks:
                hook.end()
        finally:
            checkpointer.close()
            preemption.restore()
            if writer is not None:
                writer.flush()
            tensorboard.close()
    print(f"trained {step - start} steps in {time.perf_counter() - run_start:.1f}s",
          flush=True)
    if preempted:
        raise Preempted(f"SIGTERM: saved step {step}; run again to continue to {train_steps}")
    return last


def _restore_newest_usable(checkpointer: TrainCheckpointer, abstract_state: Any,
                           inputs: InputIterator, newest: int | None = None):
    """(state, step) of the newest committed step (at most `newest`) that restores whole and
    matches its fingerprints, saying in one line why each newer one was passed over;
    (None, None) when there is none. Raises TrainingError when steps exist but none is usable."""
    steps = [s for s in reversed(checkpointer.all_steps()) if newest is None or s <= newest]
    problems = []
    for step in steps:
        try:
            return checkpointer.restore(step, abstract_state, inputs), step
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types; named
            reason = " ".join(str(e).split())[:300]
            problems.append(f"step {step}: {reason}")
            print(f"checkpoint step {step} is unusable ({reason}); trying an older one",
                  flush=True)
    if problems:
        raise TrainingError("no usable checkpoint: " + "; ".join(problems))
    return None, None


def _check_arguments(**values: int | None) -> None:
    """Refuses a non-positive count among train's arguments (None means unset), naming it."""
    for name, value in values.items():
        least = 0 if name == "max_rollbacks" else 1
        if value is not None and (not isinstance(value, int) or value < least):
            raise ValueError(f"train.{name}={value!r}: must be an integer >= {least}")


def _next_batch(inputs: InputIterator, step: int) -> dict[str, np.ndarray]:
    """The next batch, or TrainingError in one line when the input pipeline fails (a corrupt or
    truncated shard names its file and byte offset); the saved data position is untouched."""
    import tensorflow as tf

    try:
        return next(inputs)
    except StopIteration:
        raise TrainingError(f"the input pipeline ran out of data before step {step}") from None
    except tf.errors.OpError as e:
        lines = [ln.strip() for ln in str(e.message).splitlines() if ln.strip()]
        named = [ln for ln in lines if "RecordError:" in ln or "ShardError:" in ln]
        reason = (named[-1].split("Error: ", 1)[-1] if named else lines[0] if lines else
                  type(e).__name__)
        raise TrainingError(f"input pipeline failed before step {step}: {reason}") from None


def _summary_writer(local_dir: str):
    """Process 0's TensorBoard writer into the local side of MODEL_DIR/tensorboard's mirror."""
    if jax.process_index() != 0:
        return None
    import tensorflow as tf

    return tf.summary.create_file_writer(local_dir)


def _write_scalars(writer, step: int, scalars: dict[str, Any]) -> None:
    if writer is None:
        return
    import tensorflow as tf

    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
