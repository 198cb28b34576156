"""Ahead-of-time compilation of the train and decode steps for a TPU slice, on any host.

`compile_train` lowers and compiles the trainer's own sharded, donated step
(`training.step.sharded_train_step`) for the compile-only devices of a named slice;
`compile_decode` does the same for one KV-cache decode step of the model. Each returns a
`StepReport`: per-chip memory against HBM, FLOPs per step against model FLOPs, and the
custom kernels that were lowered. `python -m anygpt_jax.aot` is the command line.

FLOPs: XLA's cost analysis counts a while loop's body once, and the layer scan, the
micro-batch loop and the vocabulary-tile loop are all while loops; Pallas kernels count
nothing. So compiled FLOPs come from loop-free probes of the same step (layers unrolled at
depth 1 and 2, one micro-batch, one vocabulary tile, two batch sizes) plus the kernels'
executed FLOPs, fitted as (a + b x layers) + rows x (c + d x layers) and evaluated at the
real depth and batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from anygpt_jax import partitioning
from anygpt_jax.array_ops import argmax
from anygpt_jax.model import KVCache, ModelConfig, Transformer, param_logical_axes
from anygpt_jax.model.cache import CACHE_AXES, CACHE_SEGMENT_AXES
from anygpt_jax.model.tpu_attention import SplashConfig, kernel_calls, kernel_flops_from_hlo
from anygpt_jax.training.metrics import model_flops_per_token
from anygpt_jax.training.step import LossConfig, sharded_train_step
from anygpt_jax.vocab import MarkerBlock, ModalitySpec, anygpt_base_layout, anygpt_layout


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Per-chip bytes of one compiled step (compiled.memory_analysis())."""

    arguments: int
    outputs: int
    aliased: int  # outputs that reuse donated argument buffers
    temporaries: int
    code: int
    hbm: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @property
    def headroom(self) -> float:
        """Fraction of HBM left free."""
        return 1.0 - self.total / self.hbm

    @classmethod
    def of(cls, compiled: Any, hbm: int) -> MemoryReport:
        stats = compiled.memory_analysis()
        return cls(
            arguments=int(stats.argument_size_in_bytes),
            outputs=int(stats.output_size_in_bytes),
            aliased=int(stats.alias_size_in_bytes),
            temporaries=int(stats.temp_size_in_bytes),
            code=int(stats.generated_code_size_in_bytes),
            hbm=hbm,
        )


@dataclasses.dataclass(frozen=True)
class StepReport:
    """What one AOT compile says about a step, per chip."""

    name: str
    memory: MemoryReport | None  # None when XLA refused to compile: out of HBM
    raw_flops: float  # cost_analysis() of the real step: loop bodies counted once
    model_flops: float  # the model's useful FLOPs per step, per chip
    compiled_flops: float | None = None  # loop-free probes + kernels; None when not counted
    kernels: tuple[str, ...] = ()  # custom kernels in the compiled step (e.g. splash_mha_fwd)
    compile_seconds: float = 0.0
    out_of_memory: str = ""  # XLA's message when the step does not fit at all
    notes: tuple[str, ...] = ()  # why compiled FLOPs are missing, if they are
    hlo: str = dataclasses.field(default="", repr=False)

    def fits(self, min_headroom: float = 0.0) -> bool:
        """Compiled, and leaves at least `min_headroom` of HBM free."""
        return self.memory is not None and self.memory.headroom >= min_headroom

    @property
    def flops_ratio(self) -> float | None:
        if self.compiled_flops is None or not self.model_flops:
            return None
        return self.compiled_flops / self.model_flops


def modality_index(vocab_size: int) -> np.ndarray:
    """int32 [vocab_size]: AnyGPT's layout placed after the text ids, for per-modality metrics.

    The compiled step only gathers from this table, so any table of the real vocabulary's
    size and modality count compiles to the same program; this one follows
    MergedVocabulary.id_modality_index (markers count with their modality, chat markers as
    text). The base layout (with audio) when the vocabulary is large enough, else without.
    """
    for layout in (anygpt_base_layout(), anygpt_layout()):
        if layout.num_added() < vocab_size:
            break
    else:
        return np.zeros(vocab_size, np.int32)
    out = np.zeros(vocab_size, np.int32)
    offset, modality = vocab_size - layout.num_added(), 0
    for block in layout.blocks:
        size = len(block.tokens) if isinstance(block, MarkerBlock) else len(block.tokens())
        if isinstance(block, ModalitySpec):
            modality += 1
            out[offset : offset + size] = modality
        offset += size
    return out


def _compile(lowerable: Callable[[], Any]) -> tuple[Any | None, float, str]:
    """(compiled or None, seconds, XLA's out-of-memory message or "")."""
    start = time.perf_counter()
    try:
        compiled = lowerable().compile()
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler refuses a program whose buffers exceed HBM: that is a verdict.
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, time.perf_counter() - start, str(e).strip()
    return compiled, time.perf_counter() - start, ""


def _report(name: str, compiled: Any, seconds: float, oom: str, hbm: int, **fields) -> StepReport:
    if compiled is None:
        return StepReport(name, None, 0.0, compile_seconds=seconds, out_of_memory=oom, **fields)
    hlo = compiled.as_text()
    return StepReport(
        name=name,
        memory=MemoryReport.of(compiled, hbm),
        raw_flops=float(compiled.cost_analysis()["flops"]),
        kernels=_kernels(hlo),
        compile_seconds=seconds,
        hlo=hlo,
        **fields,
    )


def _kernels(hlo: str) -> tuple[str, ...]:
    return tuple(sorted({name for name, _ in kernel_calls(hlo)}))


# The TPU compiler turns large FSDP matmuls into loops over weight shards (windowed einsum),
# which cost analysis would count once; probes compile them as plain dots (same FLOPs).
PROBE_COMPILER_OPTIONS = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}


class ProbeError(RuntimeError):
    """A FLOP probe still holds a loop, so its count would be too low."""


def _probe_flops(lowered: Any, splash: SplashConfig) -> float:
    """Per-chip FLOPs of a loop-free compiled probe: XLA's count plus the Pallas kernels'."""
    compiled = lowered.compile(compiler_options=PROBE_COMPILER_OPTIONS)
    hlo = compiled.as_text()
    loops = hlo.count(" while(")
    if loops:
        raise ProbeError(f"a FLOP probe still has {loops} while loop(s); FLOPs not counted")
    return float(compiled.cost_analysis()["flops"]) + kernel_flops_from_hlo(hlo, splash)


def _fit(probe: Callable[[int, int], float], layers: int, rows: tuple[int, int], real_rows: int):
    """Evaluates the bilinear fit of probe(layers, rows) at (layers, real_rows)."""
    (r1, r2), f = rows, {}
    for depth in (1, 2):
        for r in {r1, r2}:
            f[depth, r] = probe(depth, r)
    if r1 == r2:
        return f[1, r1] + (layers - 1) * (f[2, r1] - f[1, r1])

    def at(depth):
        per_row = (f[depth, r2] - f[depth, r1]) / (r2 - r1)
        return f[depth, r1] - r1 * per_row, per_row

    (fixed1, row1), (fixed2, row2) = at(1), at(2)
    fixed = fixed1 + (layers - 1) * (fixed2 - fixed1)
    per_row = row1 + (layers - 1) * (row2 - row1)
    return fixed + real_rows * per_row


def _probe_config(cfg: ModelConfig, depth: int) -> ModelConfig:
    return cfg.replace(num_layers=depth, scan_layers=False, scan_unroll=1)


def compile_train(
    cfg: ModelConfig,
    mesh: Mesh,
    batch_size: int,
    seq_len: int,
    hbm_bytes: int,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    loss_cfg: LossConfig | None = None,
    rules: Any = None,
    count_flops: bool = True,
) -> StepReport:
    """Compiles the trainer's sharded, donated train step for `mesh` and reports it."""
    loss_cfg = loss_cfg or LossConfig()
    rules = partitioning.logical_axis_rules() if rules is None else rules
    index = modality_index(cfg.vocab_size)

    def lower(c: ModelConfig, lc: LossConfig, rows: int):
        step = sharded_train_step(c, tx, schedule, index, lc, mesh, rules)
        with jax.set_mesh(mesh):
            return step.fn.lower(step.abstract_state, step.abstract_batch(rows, seq_len))

    shards = partitioning.batch_shards(mesh, rules)
    if batch_size % (shards * loss_cfg.num_microbatches):
        raise ValueError(
            f"batch_size={batch_size} does not split into {loss_cfg.num_microbatches} "
            f"micro-batches over the {shards} batch shards of mesh {dict(mesh.shape)}"
        )
    compiled, seconds, oom = _compile(lambda: lower(cfg, loss_cfg, batch_size))
    model = model_flops_per_token(cfg, seq_len) * batch_size * seq_len / mesh.size
    compiled_flops, notes = None, []
    if count_flops and compiled is not None:
        # One tile: the tile loop runs once and XLA drops it, with the same matmuls.
        tile = None if loss_cfg.vocab_tile is None else cfg.padded_vocab_size
        probe_loss = dataclasses.replace(loss_cfg, num_microbatches=1, vocab_tile=tile)
        splash = SplashConfig()

        def probe(depth: int, rows: int) -> float:
            c = _probe_config(cfg, depth)
            return _probe_flops(lower(c, probe_loss, rows), splash)

        try:
            compiled_flops = _fit(probe, cfg.num_layers, (shards, 2 * shards), batch_size)
        except ProbeError as e:
            notes.append(str(e))
    return _report(
        "train",
        compiled,
        seconds,
        oom,
        hbm_bytes,
        model_flops=model,
        compiled_flops=compiled_flops,
        notes=tuple(notes),
    )


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeShape:
    """The serving shape of the decode step: batch, cache length, weight dtype."""

    batch_size: int | None = None  # None: one sequence per batch shard of the mesh
    max_length: int | None = None  # None: ModelConfig.max_position_embeddings
    param_dtype: str | None = None  # None: the compute dtype (weights cast once for serving)
    # Weight groups held as int8 with a scale per output channel (ModelConfig.int8_weights),
    # e.g. ("layers", "lm_head"): what `AnyGPT.load(d, weights="int8")` serves.
    int8_weights: tuple[str, ...] = ()


def decode_step(cfg: ModelConfig, rules: Any) -> Callable:
    """One greedy KV-cache step: (params, cache, ids [b, 1], positions [b, 1]) -> (ids, cache)."""
    model = Transformer(cfg)

    def step(params, cache: KVCache, ids: jax.Array, positions: jax.Array):
        with nn.logical_axis_rules(rules):
            logits, cache = model.apply(
                {"params": params}, ids, positions, jnp.ones_like(ids), cache=cache
            )
        return argmax(logits[:, -1]), cache

    return step


def _lower_decode(cfg: ModelConfig, mesh: Mesh, rules: Any, batch: int, length: int):
    shard = partitioning.logical_to_sharding
    params_sh = shard(param_logical_axes(cfg), mesh, rules)
    params = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nn.meta.unbox(
            jax.eval_shape(
                lambda: Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
            )["params"]
        ),
        params_sh,
    )
    cache = jax.eval_shape(lambda: KVCache.init(cfg, batch, length))
    kv_sh = partitioning.logical_sharding(CACHE_AXES, mesh, rules)
    cache_sh = KVCache(
        keys=kv_sh,
        values=kv_sh,
        segment_ids=partitioning.logical_sharding(CACHE_SEGMENT_AXES, mesh, rules),
        index=partitioning.logical_sharding((), mesh, rules),
    )
    cache = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), cache, cache_sh
    )
    batch_sh = partitioning.batch_sharding(mesh, rules)
    token = jax.ShapeDtypeStruct((batch, 1), jnp.int32, sharding=batch_sh)
    ids_sh = partitioning.logical_sharding(("activation_batch",), mesh, rules)
    fn = jax.jit(
        decode_step(cfg, rules),
        in_shardings=(params_sh, cache_sh, batch_sh, batch_sh),
        out_shardings=(ids_sh, cache_sh),
        donate_argnums=(1,),
    )
    with jax.set_mesh(mesh):
        return fn.lower(params, cache, token, token)


def compile_decode(
    cfg: ModelConfig,
    mesh: Mesh,
    hbm_bytes: int,
    shape: DecodeShape | None = None,
    rules: Any = None,
    count_flops: bool = True,
) -> StepReport:
    """Compiles one decode step (cache donated, sharded by the CACHE_AXES rules) and reports it."""
    shape = shape or DecodeShape()
    rules = partitioning.logical_axis_rules() if rules is None else rules
    cfg = cfg.replace(param_dtype=shape.param_dtype or cfg.dtype,
                      int8_weights=tuple(shape.int8_weights))
    shards = partitioning.batch_shards(mesh, rules)
    batch = shape.batch_size or shards
    length = shape.max_length or cfg.max_position_embeddings
    if batch % shards:
        raise ValueError(
            f"DecodeShape.batch_size={batch} is not a multiple of the {shards} batch shards "
            f"of mesh {dict(mesh.shape)}"
        )
    compiled, seconds, oom = _compile(lambda: _lower_decode(cfg, mesh, rules, batch, length))
    # Useful FLOPs of one token per sequence: the matmuls, and attention over a full cache.
    per_token = model_flops_per_token(cfg, 0) / 3
    attention = 4 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * length
    model = (per_token + attention) * batch / mesh.size
    flops, notes = None, []
    if count_flops and compiled is not None:

        def probe(depth: int, rows: int) -> float:
            lowered = _lower_decode(_probe_config(cfg, depth), mesh, rules, rows, length)
            return _probe_flops(lowered, SplashConfig())

        try:
            flops = _fit(probe, cfg.num_layers, (batch, batch), batch)
        except ProbeError as e:
            notes.append(str(e))
    return _report(
        "decode",
        compiled,
        seconds,
        oom,
        hbm_bytes,
        model_flops=model,
        compiled_flops=flops,
        notes=tuple(notes),
    )


def parameter_shardings(cfg: ModelConfig, mesh: Mesh, rules: Any = None) -> list[dict[str, Any]]:
    """One row per parameter group (layers collapsed): shape, logical axes, mesh axes, shard."""
    rules = partitioning.logical_axis_rules() if rules is None else rules
    logical = param_logical_axes(cfg)
    shardings = partitioning.logical_to_sharding(logical, mesh, rules)
    shapes = nn.meta.unbox(
        jax.eval_shape(
            lambda: Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
        )["params"]
    )
    rows: dict[str, dict[str, Any]] = {}
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    for (path, leaf), spec, sharding in zip(
        flat,
        jax.tree_util.tree_leaves(logical, is_leaf=lambda x: isinstance(x, PartitionSpec)),
        jax.tree_util.tree_leaves(shardings),
        strict=True,
    ):
        keys = [str(getattr(k, "key", k)) for k in path]
        keys = ["layers_*" if k.startswith("layers_") else k for k in keys]
        name = "/".join(keys)
        row = rows.setdefault(
            name,
            {
                "name": name,
                "shape": tuple(leaf.shape),
                "logical": tuple(spec),
                "mesh": tuple(sharding.spec),
                "shard": tuple(sharding.shard_shape(leaf.shape)),
                "count": 0,
            },
        )
        row["count"] += 1
    return list(rows.values())
