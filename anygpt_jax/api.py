"""The user's Python entry: `AnyGPT.load(dir)`, its logits and `generate`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from anygpt_jax import checkpointing, partitioning
from anygpt_jax.inference import GenerationSettings
from anygpt_jax.inference import generate as _generate
from anygpt_jax.model import ModelConfig, Transformer, quantize


class AnyGPT:
    """A loaded AnyGPT model: parameters, config and merged vocabulary, optionally sharded."""

    def __init__(self, params: Any, config: ModelConfig, vocab=None, mesh: Mesh | None = None):
        self.params = params
        self.config = config
        self.vocab = vocab
        self.mesh = mesh
        self.model = Transformer(config)

    @classmethod
    def load(
        cls,
        ckpt_dir: str,
        mesh: Mesh | None = None,
        weights: str = "float32",
        int8_groups: Sequence[str] = quantize.DEFAULT_INT8_GROUPS,
        **config_overrides: Any,
    ) -> AnyGPT:
        """Loads a model directory (imported or trained, local or gs://); overrides change
        layout/numerics only.

        E.g. `AnyGPT.load(d, dtype="bfloat16", scan_layers=False)`; with a mesh the
        parameters restore straight into their shardings. See `inference_config`.
        weights: "float32" as stored, "bfloat16" (half the bytes, computed in `dtype`), or
        "int8": the `int8_groups` of model/quantize.py as int8 with a scale per output
        channel (a quarter of the bytes).
        """
        config = cls.inference_config(checkpointing.load_config(ckpt_dir), **config_overrides)
        params, config = checkpointing.load_params(ckpt_dir, config, mesh=mesh)
        params, config = quantize.convert(params, config, weights, int8_groups)
        if mesh is None:
            params = jax.tree_util.tree_map(jnp.asarray, params)
        try:
            vocab = checkpointing.load_vocab(ckpt_dir)
        except FileNotFoundError:
            vocab = None
        return cls(params, config, vocab, mesh)

    @staticmethod
    def inference_config(config: ModelConfig, **overrides: Any) -> ModelConfig:
        """`config` with `overrides`, and a training run's `scan_unroll` not kept unless asked
        for: fully unrolled, a decode step slices every layer's weights out at once (~3x
        slower on a CPU host)."""
        return config.replace(**({"scan_unroll": 1} | overrides))

    @functools.cached_property
    def _forward(self):
        rules = partitioning.logical_axis_rules()

        def forward(params, ids, positions, segment_ids):
            with nn.logical_axis_rules(rules):
                logits = self.model.apply({"params": params}, ids, positions, segment_ids)
            return logits[..., : self.config.vocab_size]

        return jax.jit(forward)

    def logits(
        self,
        ids: Any,
        segment_ids: Any | None = None,
        positions: Any | None = None,
    ) -> np.ndarray:
        """fp32 logits [batch, length, vocab_size] for int ids [batch, length].

        `ids` may also be what `vocab.encode` returns: one list of ids (logits [length,
        vocab_size]) or a list of such lists of any lengths (right-padded: a row's logits
        past its length are padding). `segment_ids` (0 = padding) and `positions` describe
        packed sequences; by default each row is one sequence starting at position 0.
        """
        single = _is_flat_ids(ids)
        if single:
            ids = [ids]
        if segment_ids is None and positions is None and _is_ragged(ids):
            rows = [np.asarray(r) for r in ids]
            width = max(len(r) for r in rows)
            segment_ids = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            ids = np.stack([np.pad(r, (0, width - len(r))) for r in rows])
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                "ids must be int ids: a list, a list of lists or an array [batch, length]; "
                f"got {ids.dtype} {ids.shape}"
            )
        out = self._logits(ids, segment_ids, positions)
        return out[0] if single else out

    def _logits(self, ids: np.ndarray, segment_ids: Any | None,
                positions: Any | None) -> np.ndarray:
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.size:
            raise ValueError(
                f"ids out of range [0, {self.config.vocab_size}): {sorted(set(bad.tolist()))[:10]}"
            )
        if positions is None:
            positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        if segment_ids is None:
            segment_ids = np.ones_like(ids)
        args = [jnp.asarray(a, jnp.int32) for a in (ids, positions, segment_ids)]
        if self.mesh is not None:
            sharding = partitioning.batch_sharding(self.mesh)
            args = [jax.device_put(a, sharding) for a in args]
            with jax.set_mesh(self.mesh):
                return np.asarray(self._forward(self.params, *args))
        return np.asarray(self._forward(self.params, *args))

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        settings: GenerationSettings | None = None,
        seed: int | Sequence[int] = 0,
        *,
        stop_ids: Sequence[int] | None = None,
        constrain: bool = True,
    ) -> list[list[int]]:
        """New ids for each prompt (ids lists), up to and including the stop id; one prompt
        (a flat list, as `vocab.encode` returns) gets one flat list back.

        See `anygpt_jax.inference.generate`: settings default to GenerationSettings(); e.g.
        `m.generate([ids], GenerationSettings.for_output("image"), stop_ids=[eoim])`.
        """
        if _is_flat_ids(prompts):
            return _generate(self, [prompts], settings, seed=seed, stop_ids=stop_ids,
                             constrain=constrain)[0]
        return _generate(
            self, prompts, settings, seed=seed, stop_ids=stop_ids, constrain=constrain
        )


def _is_flat_ids(ids: Any) -> bool:
    """Whether `ids` is one sequence of ids (a list of ints or a 1-D int array)."""
    if isinstance(ids, np.ndarray | jax.Array):
        return ids.ndim == 1
    return (isinstance(ids, list | tuple) and len(ids) > 0
            and all(isinstance(i, int | np.integer) for i in ids))


def _is_ragged(ids: Any) -> bool:
    """Whether `ids` is a list of id lists of different lengths."""
    return (isinstance(ids, list | tuple) and len(ids) > 1
            and all(isinstance(r, list | tuple | np.ndarray) for r in ids)
            and len({len(r) for r in ids}) > 1)
