"""lmaps-plugin: Local MAP Sampling (LMAPS) for diffusion-prior inverse problems."""
__version__ = "0.1.0"

from .solver import LMAPS, sample_lmaps  # noqa: E402

__all__ = ["LMAPS", "sample_lmaps", "__version__"]
