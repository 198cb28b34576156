"""anygpt-jax: AnyGPT (any-to-any multimodal LLaMA) training and inference in JAX."""

from typing import TYPE_CHECKING

# Before JAX starts a backend: no libtpu start-up (and its failure lines) without TPU chips.
from anygpt_jax import runtime

runtime.skip_absent_tpu()

# Sets up the gs:// clients before any library resolves a path (see storage.py).
from anygpt_jax import storage  # noqa: E402, F401

__all__ = ["AnyGPT"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from anygpt_jax.api import AnyGPT


def __getattr__(name: str):
    # `AnyGPT` pulls in the inference stack (seqio, TensorFlow); importing it on first use keeps
    # converters and command-line --help from paying for it.
    if name == "AnyGPT":
        from anygpt_jax.api import AnyGPT

        return AnyGPT
    raise AttributeError(f"module 'anygpt_jax' has no attribute {name!r}")
