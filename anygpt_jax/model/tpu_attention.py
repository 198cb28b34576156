"""Splash attention: the Pallas TPU kernel path for attention over packed sequences.

Chosen by `ModelConfig.attention_kernel = "splash"` for the cache-free call (training,
scoring). It never materialises the [q, k] score matrix, which is what lets long packed
batches fit in HBM. The causal mask is the kernel's static block mask; packing is honoured
through segment ids. On a backend other than TPU the same call lowers to the XLA path
(`jax.lax.platform_dependent`), unless `SplashConfig.interpret` runs the kernel in Pallas's
interpreter (tests, debugging on CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from anygpt_jax.model.attention import attention_mask, dot_product_attention

# The kernel's lane width: every block must be a multiple of it.
_LANES = 128
# A slot added to reach a whole number of blocks gets this segment id, which no real or
# padding token has, so no real query ever sees it.
_FILL_SEGMENT = -1

_Q_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
_KV_AXES = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")
_SEGMENT_AXES = ("activation_batch", "activation_length")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SplashConfig:
    """Tile sizes of the splash kernel (forward, dK/dV and dQ passes) and interpret mode.

    Blocks are clipped to the (padded) sequence, which is padded up to a whole number of
    the largest block; sizes must be multiples of 128 and divide one another.
    """

    block_q: int = 512
    block_kv: int = 512
    block_kv_compute: int = 512
    block_q_dkv: int = 512
    block_kv_dkv: int = 512
    block_kv_dkv_compute: int = 512
    block_q_dq: int = 512
    block_kv_dq: int = 512
    # Run the kernel in Pallas's interpreter on any backend (slow; for tests on CPU).
    interpret: bool = False

    def blocks(self) -> dict[str, int]:
        fields = dataclasses.fields(self)
        return {f.name: getattr(self, f.name) for f in fields if f.name.startswith("block_")}

    def __post_init__(self):
        for name, size in self.blocks().items():
            if size < _LANES or size % _LANES:
                raise ValueError(f"SplashConfig.{name}={size} must be a positive multiple of 128")


def padded_length(length: int, config: SplashConfig) -> int:
    """The sequence length the kernel runs at: `length` rounded up to whole blocks."""
    lane_rounded = -(-length // _LANES) * _LANES
    step = min(max(config.blocks().values()), lane_rounded)
    return -(-length // step) * step


def _block_sizes(length: int, config: SplashConfig):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    clipped = {name: min(size, length) for name, size in config.blocks().items()}
    for name, size in clipped.items():
        if length % size:
            raise ValueError(
                f"SplashConfig.{name}={getattr(config, name)} does not divide the padded "
                f"sequence length {length}; use block sizes that divide one another"
            )
    return splash.BlockSizes(**clipped)


def _kernel(num_heads: int, length: int, config: SplashConfig):
    """A causal multi-head splash kernel for one sequence [heads, length, head_dim].

    Built anew in every trace, never cached: its block-mask arrays belong to the trace
    that made them.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * num_heads)
    return splash.make_splash_mha(
        mask,
        block_sizes=_block_sizes(length, config),
        head_shards=1,
        q_seq_shards=1,
        interpret=config.interpret,
    )


def _splash_local(query, key, value, segment_ids, config: SplashConfig):
    """The kernel on one device's shard: query [b, t, h, d], key/value [b, t, kv_h, d]."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    batch, length, num_heads, head_dim = query.shape
    padded = padded_length(length, config)
    fill = padded - length
    if fill:
        pad = ((0, 0), (0, fill), (0, 0), (0, 0))
        query, key, value = (jnp.pad(x, pad) for x in (query, key, value))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, fill)), constant_values=_FILL_SEGMENT)
    # The kernel wants heads before the sequence; the scale is folded into the query.
    query = jnp.swapaxes(query * jnp.asarray(head_dim**-0.5, query.dtype), 1, 2)
    key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
    kernel = _kernel(num_heads, padded, config)
    segments = splash.SegmentIds(q=segment_ids, kv=segment_ids)
    out = jax.vmap(kernel)(query, key, value, segments)
    return jnp.swapaxes(out, 1, 2)[:, :length]


def _default_precision(fn):
    """`fn(q, k, v, seg)` traced, forward and backward, at the default matmul precision.

    Mosaic multiplies 16-bit operands at their own precision (fp32 accumulation): a
    process-wide "highest" default asks it for an fp32 pass it cannot lower. The kernel's
    backward is traced with the gradient, outside any scope here, so this custom VJP
    re-derives it inside one (one extra forward kernel: only used under such a default).
    """

    @jax.custom_vjp
    def call(q, k, v, seg):
        with jax.default_matmul_precision("default"):
            return fn(q, k, v, seg)

    def forward(q, k, v, seg):
        return call(q, k, v, seg), (q, k, v, seg)

    def backward(residuals, grad):
        q, k, v, seg = residuals
        with jax.default_matmul_precision("default"):
            _, vjp_fn = jax.vjp(lambda q, k, v: fn(q, k, v, seg), q, k, v)
            return (*vjp_fn(grad), None)

    call.defvjp(forward, backward)
    return call


def _mesh_specs():
    """(mesh, q spec, kv spec, segment spec) under the active mesh and logical rules, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    q_spec, kv_spec, seg_spec = (
        nn.logical_to_mesh_axes(axes) for axes in (_Q_AXES, _KV_AXES, _SEGMENT_AXES)
    )
    if q_spec[1] is not None:
        raise ValueError(
            f"splash attention needs whole sequences per device, but the logical rules map "
            f"activation_length to mesh axes {q_spec[1]!r}"
        )
    return mesh, PartitionSpec(*q_spec), PartitionSpec(*kv_spec), PartitionSpec(*seg_spec)


def splash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    segment_ids: jax.Array,
    dtype: jnp.dtype,
    config: SplashConfig | None = None,
) -> jax.Array:
    """Causal GQA attention within packed segments: query [b, t, heads, d] -> same shape.

    Under a mesh the kernel runs per shard (shard_map: batch and heads sharded as the
    logical rules say, the sequence whole). Padding tokens (segment 0) attend only to
    padding, so their outputs differ from the XLA path's; real tokens' do not.
    """
    config = config or SplashConfig()
    num_heads, num_kv_heads = query.shape[2], key.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads")

    def kernel_path(q, k, v, seg):
        local = functools.partial(_splash_local, config=config)
        specs = _mesh_specs()
        if specs is not None:
            mesh, q_spec, kv_spec, seg_spec = specs
            local = jax.shard_map(
                local,
                mesh=mesh,
                in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                out_specs=q_spec,
                check_vma=False,
            )
        precision = jax.config.jax_default_matmul_precision
        if jnp.dtype(q.dtype).itemsize < 4 and precision not in (None, "default", "bfloat16"):
            local = _default_precision(local)
        return local(q, k, v, seg).astype(dtype)

    def xla_path(q, k, v, seg):
        slots = jnp.arange(q.shape[1])
        mask = attention_mask(slots, slots, seg, seg)
        return dot_product_attention(q, k, v, mask, dtype)

    segment_ids = segment_ids.astype(jnp.int32)
    if config.interpret:
        return kernel_path(query, key, value, segment_ids)
    return jax.lax.platform_dependent(
        query, key, value, segment_ids, tpu=kernel_path, default=xla_path
    )


# Matmul FLOPs per visited (block_q x block_kv x head_dim) tile, counted as 2 per MAC:
# forward QK^T and PV; dQ recomputes QK^T, then dP = dO V^T and dQ = dS K; dK/dV
# recompute QK^T, then dP, dV = P^T dO and dK = dS^T Q.
_KERNEL_PASSES = {
    "fwd": (4, "block_q", "block_kv"),
    "dq": (6, "block_q_dq", "block_kv_dq"),
    "dkv": (8, "block_q_dkv", "block_kv_dkv"),
}
_KERNEL_CALL = re.compile(
    r"%(splash_mha_(fwd|dq|dkv)\w*?)(?:\.\d+)? = .*?custom_call_target=\"tpu_custom_call\""
    r".*?operand_layout_constraints=(.*)"
)
# The query: the first floating-point operand, [b, heads, length, d] ([heads, length, d] when
# the batch shard is a single row).
_QUERY_SHAPE = re.compile(r"(?:bf16|f16|f32)\[((?:\d+,){2,3}\d+)\]")


def causal_blocks(length: int, block_q: int, block_kv: int) -> int:
    """(q block, kv block) tiles the kernel visits under a causal mask: any key <= any query."""
    num_kv = -(-length // block_kv)
    return sum(
        min(num_kv, ((i + 1) * block_q - 1) // block_kv + 1) for i in range(-(-length // block_q))
    )


def kernel_calls(hlo_text: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Splash kernel calls in compiled HLO text: (pass, query shape [b, heads, length, d])."""
    calls = []
    for match in _KERNEL_CALL.finditer(hlo_text):
        shape = _QUERY_SHAPE.search(match.group(3))
        if shape is None:
            raise ValueError(f"splash kernel call {match.group(1)} has no query operand")
        dims = tuple(int(s) for s in shape.group(1).split(","))
        calls.append((f"splash_mha_{match.group(2)}", (1,) * (4 - len(dims)) + dims))
    return calls


def kernel_flops_from_hlo(hlo_text: str, config: SplashConfig) -> float:
    """Matmul FLOPs the splash kernels of a compiled (loop-free) program execute, per device.

    XLA's cost analysis counts a Pallas call as zero; this counts every visited tile in full,
    masked or not, which is what the kernel computes.
    """
    total = 0.0
    for name, (batch, heads, length, head_dim) in kernel_calls(hlo_text):
        units, q_field, kv_field = _KERNEL_PASSES[name.rsplit("_", 1)[1]]
        block_q = min(getattr(config, q_field), length)
        block_kv = min(getattr(config, kv_field), length)
        tiles = causal_blocks(length, block_q, block_kv)
        total += units * batch * heads * tiles * block_q * block_kv * head_dim
    return total
