"""Cloud TPU slice names (v4-64, v5e-256, v5p-128, ...) -> chips, HBM, peak FLOP/s and devices.

Names follow Cloud TPU's (and MaxText's) convention: v4 and v5p count TensorCores (two per
chip, one JAX device per chip in megacore mode), v5e and v6e count chips. The devices come
from libtpu's compile-only topology, so a CPU host can compile for any slice without one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax

from anygpt_jax import runtime
from anygpt_jax.training.metrics import TPU_PEAK_FLOPS

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class _Generation:
    libtpu_prefix: str  # libtpu's topology name prefix ("v5" is v5p)
    cores_per_chip: int  # how many of the name's count make one chip
    dims: int  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
    chip_config: str
    hbm_gib: float
    device_kind: str  # key of training.metrics.TPU_PEAK_FLOPS


GENERATIONS = {
    "v4": _Generation("v4", 2, 3, "megacore", 32, "TPU v4"),
    "v5p": _Generation("v5", 2, 3, "megacore", 95, "TPU v5p"),
    "v5e": _Generation("v5e", 1, 2, "default", 16, "TPU v5e"),
    "v6e": _Generation("v6e", 1, 2, "default", 32, "TPU v6e"),
}
CHIPS_PER_HOST = 4  # every generation above: 2x2 chips per host (the largest VM shape)
_NAME = re.compile(r"^(v4|v5p|v5e|v6e)-(\d+)(?::(\d+(?:x\d+)*))?$")


@dataclasses.dataclass(frozen=True)
class TpuTopology:
    """One TPU slice: its generation and the chip grid."""

    name: str
    generation: str
    shape: tuple[int, ...]

    @property
    def spec(self) -> _Generation:
        return GENERATIONS[self.generation]

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def hosts(self) -> int:
        return max(1, self.chips // CHIPS_PER_HOST)

    @property
    def libtpu_name(self) -> str:
        return f"{self.spec.libtpu_prefix}:{'x'.join(map(str, self.shape))}"

    @property
    def hbm_bytes(self) -> int:
        return int(self.spec.hbm_gib * GIB)

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s of one chip."""
        return TPU_PEAK_FLOPS[self.spec.device_kind]

    @property
    def wraparound(self) -> tuple[bool, bool, bool]:
        """Torus links per dimension, as Cloud TPU wires full cubes (3-D) or 16-chip rows (2-D)."""
        if self.spec.dims == 3:
            return (min(self.shape) >= 4,) * 3
        return (self.shape[0] >= 16, self.shape[1] >= 16, False)


def _default_shape(chips: int, dims: int) -> tuple[int, ...]:
    """Cloud TPU's grid for a power-of-two chip count: grow the smallest (last such) axis."""
    shape = [1] * dims if dims == 2 else [2, 2, 1]
    if chips < math.prod(shape):
        shape = [1] * dims
    while math.prod(shape) < chips:
        smallest = min(shape)
        i = max(j for j, s in enumerate(shape) if s == smallest)
        shape[i] *= 2
    return tuple(shape)


def parse_topology(name: str) -> TpuTopology:
    """`v5p-128`, `v4-64`, `v5e-256` (or `v5p-384:4x4x12` to give the chip grid explicitly)."""
    match = _NAME.match(name.strip())
    if not match:
        raise ValueError(
            f"unknown TPU topology {name!r}; expected <generation>-<count>[:<grid>] with a "
            f"generation in {sorted(GENERATIONS)}, e.g. v4-8, v5e-256, v5p-128, v5p-384:4x4x12"
        )
    generation, count, grid = match.group(1), int(match.group(2)), match.group(3)
    spec = GENERATIONS[generation]
    if count % spec.cores_per_chip:
        raise ValueError(f"{name}: {generation} names count {spec.cores_per_chip} cores per chip")
    chips = count // spec.cores_per_chip
    if grid is not None:
        shape = tuple(int(s) for s in grid.split("x"))
        if len(shape) != spec.dims or math.prod(shape) != chips:
            raise ValueError(f"{name}: grid {grid} is not a {spec.dims}-D grid of {chips} chips")
    elif chips & (chips - 1):
        raise ValueError(
            f"{name}: {chips} chips is not a power of two; give the grid, e.g. {name}:AxBxC"
        )
    else:
        shape = _default_shape(chips, spec.dims)
    return TpuTopology(name, generation, shape)


def topology_devices(topology: TpuTopology, num_slices: int = 1) -> list[jax.Device]:
    """Compile-only devices of `num_slices` slices of `topology` (needs libtpu installed)."""
    if num_slices < 1:
        raise ValueError(f"num_slices={num_slices} must be >= 1")
    # libtpu otherwise takes a host-wide lock that any other process which loaded it holds.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    # A host holds a 2x2 block of chips (fewer in a smaller slice).
    bounds = (min(2, topology.shape[0]), min(2, topology.shape[1]), 1)
    try:
        with runtime.dropping_stderr_lines(runtime.LIBTPU_COMPILE_ONLY_NOISE):
            desc = topologies.get_topology_desc(
                platform="tpu",
                topology_name=topology.libtpu_name,
                chip_config_name=topology.spec.chip_config,
                chips_per_host_bounds=bounds,
                num_slices=num_slices,
                wrap=topology.wraparound,
            )
    except Exception as e:  # noqa: BLE001 - libtpu missing or refusing the topology
        raise RuntimeError(
            f"cannot describe TPU topology {topology.name} ({topology.libtpu_name}): {e}; "
            "is libtpu installed (pip install 'jax[tpu]' pins the matching version)?"
        ) from e
    return list(desc.devices)
