"""The device mesh and the one table that maps logical axis names to mesh axes.

Every parameter and main activation in the model carries logical axis names (MaxText style);
this module alone knows mesh axes. Changing how the model shards means changing the rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis, mesh axis or axes or None). The first rule whose mesh axes are all free in
# a given array wins, so the order matters only where a name appears twice.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    # Activations.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # KV cache.
    ("cache_layers", None),
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("cache_kv_heads", "tensor"),
    ("cache_head_dim", None),
)


@gin.configurable
def logical_axis_rules(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> tuple:
    """The logical->mesh rules in force (gin may replace the default table)."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


@gin.configurable
def make_mesh(
    mesh_shape: dict[str, int] | None = None,
    devices: Sequence[jax.Device] | None = None,
    num_devices: int | None = None,
    num_slices: int = 1,
) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices.

    The default puts every device on fsdp, the usual choice for a single host or slice.
    `num_devices` keeps only the first N devices (tests, debugging). With `num_slices` > 1
    (multi-slice TPU) the data axis spans the slices over DCN; fsdp and tensor stay in a slice.
    """
    devices = list(devices) if devices is not None else jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices}; {len(devices)} devices are available")
        devices = devices[:num_devices]
    shape = dict(mesh_shape or {"fsdp": -1})
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh_shape has unknown axes {unknown}; known axes are {MESH_AXES}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh_shape {shape}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if free:
        if len(devices) % known:
            raise ValueError(f"mesh_shape {shape} does not divide {len(devices)} devices")
        sizes[free[0]] = len(devices) // known
    if math.prod(sizes) != len(devices):
        resolved = dict(zip(MESH_AXES, sizes, strict=True))
        raise ValueError(
            f"mesh_shape {resolved} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} are available"
        )
    ici, dcn = hybrid_mesh_shapes(sizes, num_slices)
    try:
        if num_slices > 1:
            device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
        else:
            device_array = mesh_utils.create_device_mesh(sizes, devices=devices)
    except (AssertionError, ValueError, NotImplementedError, AttributeError):
        # Physical-topology aware placement is unavailable (e.g. forced host devices, which
        # have no slice_index either: then process order stands in for slice order).
        device_array = np.asarray(devices).reshape(sizes)
    return Mesh(device_array, MESH_AXES)


@gin.configurable
class Partitioner:
    """How a run is laid out: the logical-axis rules, and a device mesh built on demand.

    The mesh is built when asked for (by `make_mesh`, gin-configured), so the same object
    serves training on this host's devices and ahead-of-time compiles for a TPU topology.
    """

    def __init__(self, rules: Sequence[tuple[str, Any]] | None = None):
        self.rules = logical_axis_rules() if rules is None else logical_axis_rules(rules)

    def mesh(self, devices: Sequence[jax.Device] | None = None,
             num_slices: int | None = None) -> Mesh:
        """The mesh over `devices` (default: this process's view of every device)."""
        kwargs: dict[str, Any] = {} if devices is None else {"devices": devices}
        if num_slices is not None:
            kwargs["num_slices"] = num_slices
        return make_mesh(**kwargs)


def hybrid_mesh_shapes(
    sizes: Sequence[int], num_slices: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(per-slice ICI shape, DCN shape) of a (data, fsdp, tensor) mesh over `num_slices` slices.

    Only the data axis crosses slices: its gradient all-reduce is the one collective per step
    that the slow DCN links can afford.
    """
    data, *rest = (int(s) for s in sizes)
    if num_slices < 1 or data % num_slices:
        raise ValueError(
            f"the data axis ({data}) must be a multiple of num_slices ({num_slices}): "
            "it is the axis laid across slices"
        )
    return (data // num_slices, *rest), (num_slices,) + (1,) * len(rest)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: Sequence | None = None) -> Any:
    """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
    rules = logical_axis_rules() if rules is None else rules
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def logical_sharding(
    axes: Sequence[str | None], mesh: Mesh, rules: Sequence | None = None
) -> NamedSharding:
    """The NamedSharding of one array whose dimensions have the given logical names."""
    return logical_to_sharding(PartitionSpec(*axes), mesh, rules)


def batch_sharding(mesh: Mesh, rules: Sequence | None = None) -> NamedSharding:
    """Sharding of [batch, length] input arrays (ids, segment ids, positions, weights)."""
    return logical_sharding(("activation_batch", "activation_length"), mesh, rules)


def batch_shards(mesh: Mesh, rules: Sequence | None = None) -> int:
    """How many ways the batch axis is split: the global batch must be a multiple of it."""
    return _row_shards(batch_sharding(mesh, rules))


def _row_shards(sharding: NamedSharding) -> int:
    spec = sharding.spec
    axes = spec[0] if len(spec) else None
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(sharding.mesh.shape[a] for a in axes)


def process_row_block(
    sharding: NamedSharding, batch_size: int, process_index: int | None = None
) -> tuple[int, int]:
    """(index, count): this process feeds block `index` of `count` equal row blocks of a batch.

    Processes whose devices hold the same rows (tensor parallelism spanning hosts, as on a
    v5e-256 with 8-way tensor over 4-chip hosts) get the same block and must load the same
    data; so `count` can be smaller than the process count. Raises when a process's rows
    are not one contiguous block of the same size as every other process's.
    """
    process_index = jax.process_index() if process_index is None else process_index
    shards = _row_shards(sharding)
    if batch_size % shards:
        raise ValueError(
            f"batch size {batch_size} does not split over the {shards} batch shards of mesh "
            f"{dict(sharding.mesh.shape)}"
        )
    rows_spec = PartitionSpec(*sharding.spec[:1])
    rows_sharding = NamedSharding(sharding.mesh, rows_spec)
    blocks: dict[int, set[tuple[int, int]]] = {}
    for device, (rows,) in rows_sharding.devices_indices_map((batch_size,)).items():
        start, stop, _ = rows.indices(batch_size)
        blocks.setdefault(device.process_index, set()).add((start, stop))
    spans = {}
    for process, slices in blocks.items():
        ordered = sorted(slices)
        if any(a[1] != b[0] for a, b in zip(ordered[:-1], ordered[1:], strict=True)):
            raise ValueError(
                f"process {process} holds rows {ordered} of the batch of {batch_size}: not one "
                f"contiguous block (mesh {dict(sharding.mesh.shape)}, batch spec {rows_spec})"
            )
        spans[process] = (ordered[0][0], ordered[-1][1])
    sizes = {stop - start for start, stop in spans.values()}
    if len(sizes) != 1:
        raise ValueError(
            f"processes hold row blocks of different sizes {sorted(spans.values())} of the "
            f"batch of {batch_size} (mesh {dict(sharding.mesh.shape)})"
        )
    (size,) = sizes
    start, _ = spans[process_index]
    return start // size, batch_size // size
