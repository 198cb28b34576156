"""anygpt-jax: AnyGPT (any-to-any multimodal LLaMA) training and inference in JAX."""

from anygpt_jax.api import AnyGPT

__all__ = ["AnyGPT"]
__version__ = "0.1.0"
