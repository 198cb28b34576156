"""Fingerprints of saved arrays, so a flipped byte in a checkpoint is caught on restore.

A fingerprint is the sum, modulo 2**32, of each element's raw bits times an odd weight that
depends on its position: any single changed bit changes it, and so does a moved element. The
sum is exact in any order, so a sharded array on a pod (one pass over device memory, inside
jit) and a numpy array on a host (in bounded chunks) give the same number. It is computed
from the arrays before they are saved and checked after they are read back, so it covers the
files, the storage and the reader.

Names are the tree paths joined with '/', e.g. `params/layers/mlp/wi/kernel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "anygpt_jax.fingerprints/1"
_MULTIPLIER = 2654435761  # Knuth's multiplicative hash constant
_CHUNK = 1 << 24  # host elements per step: bounds numpy's temporaries


class IntegrityError(ValueError):
    """Arrays read back do not match the fingerprints saved with them; names them."""


def path_name(key_path) -> str:
    """'a/b/0' for a jax key path (dict keys, attributes, sequence indices)."""
    parts = []
    for k in key_path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _words_np(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x).reshape(-1)
    size = x.dtype.itemsize
    if size == 8:
        return x.view(np.uint32)
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[size]).astype(np.uint32)


def fingerprint_np(x: np.ndarray) -> int:
    """The fingerprint of a host array, in chunks of bounded memory."""
    words = _words_np(np.asarray(x))
    total = 0
    for start in range(0, words.size, _CHUNK):
        chunk = words[start : start + _CHUNK]
        index = np.arange(start, start + chunk.size, dtype=np.uint32)
        weights = index * np.uint32(2 * _MULTIPLIER & 0xFFFFFFFF) + np.uint32(1)
        total = (total + int(np.sum(chunk * weights, dtype=np.uint32))) & 0xFFFFFFFF
    return total


def _fingerprint_jnp(x: jax.Array) -> jax.Array:
    # No reshape: a sharded array stays sharded (each device sums its block, then one
    # all-reduce of a scalar). The flat index is rebuilt from per-axis iotas.
    size = x.dtype.itemsize
    if size == 8:
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)  # a trailing axis of 2
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
        words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    if words.ndim == 0:
        words = words[None]
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(
            stride & 0xFFFFFFFF
        )
        stride *= words.shape[axis]
    weights = index * jnp.uint32(2 * _MULTIPLIER & 0xFFFFFFFF) + jnp.uint32(1)
    # The last axis first, then the rest: ~1.5x faster on XLA:CPU than one flat reduction.
    return jnp.sum(jnp.sum(words * weights, axis=-1, dtype=jnp.uint32), dtype=jnp.uint32)


@jax.jit
def _device_fingerprints(leaves: list[jax.Array]) -> list[jax.Array]:
    return [_fingerprint_jnp(x) for x in leaves]


def fingerprints(tree: Any, prefix: str = "") -> dict[str, int]:
    """name -> fingerprint of every array leaf: jax arrays on their devices (sharded arrays
    stay sharded), numpy arrays on the host."""
    named = [
        (prefix + path_name(p), x)
        for p, x in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(x, "dtype") and hasattr(x, "shape")
    ]
    on_device = [(n, x) for n, x in named if isinstance(x, jax.Array)]
    out = {n: fingerprint_np(x) for n, x in named if not isinstance(x, jax.Array)}
    if on_device:
        values = jax.device_get(_device_fingerprints([x for _, x in on_device]))
        out |= {n: int(v) for (n, _), v in zip(on_device, values, strict=True)}
    return out


def verify(tree: Any, expected: Mapping[str, int] | None, where: str, prefix: str = "") -> None:
    """Raises IntegrityError naming `where` and every array of `tree` whose fingerprint differs
    from `expected` (None: nothing was recorded, nothing to check)."""
    if expected is None:
        return
    got = fingerprints(tree, prefix)
    missing = sorted(n for n in got if n not in expected)
    bad = sorted(n for n, v in got.items() if n in expected and expected[n] != v)
    if bad or missing:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        what = f"{len(bad)} arrays differ from their saved fingerprints ({shown})" if bad else ""
        if missing:
            what += ("; " if what else "") + f"no fingerprint saved for {missing[:3]}"
        raise IntegrityError(f"{where}: corrupted: {what}")


def verify_array(name: str, x: np.ndarray, expected: Mapping[str, int] | None, where: str) -> None:
    """verify() for one host array already read (e.g. while streaming an export)."""
    if expected is None:
        return
    if name not in expected:
        raise IntegrityError(f"{where}: corrupted: no fingerprint saved for {name}")
    if fingerprint_np(x) != expected[name]:
        raise IntegrityError(f"{where}: corrupted: {name} differs from its saved fingerprint")
