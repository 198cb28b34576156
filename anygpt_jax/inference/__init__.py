"""Any-to-any generation: settings, logits processors, span constraints, greedy/sampling/beams."""

from anygpt_jax.inference.generate import default_stop_ids, generate
from anygpt_jax.inference.settings import RELEASE_DEFAULTS, GenerationSettings

__all__ = ["RELEASE_DEFAULTS", "GenerationSettings", "default_stop_ids", "generate"]
