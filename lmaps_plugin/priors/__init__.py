"""Diffusion priors usable as ``net(x, sigma) -> x0_hat`` (EDM convention, x_σ = x0 + σ·ε).

- :func:`builtin_prior` loads one of the small EDM UNet priors shipped in ``priors/weights/`` (64×64, trained by
  ``scripts/train_prior.py``; see ``weights/README.md`` for commands, seeds and wall times).
- :class:`~lmaps_plugin.priors.edm.EDMPrecond` / :class:`~lmaps_plugin.priors.unet.SmallUNet`: the architecture.
- :func:`~lmaps_plugin.priors.checkpoint.load_prior` / ``save_prior``: safe (weights-only) checkpoint I/O.
- ``lmaps_plugin.priors.gmm.GaussianMixturePrior``: the exact Gaussian-mixture denoiser.
"""
from __future__ import annotations

from importlib import resources

from torch import nn

from .checkpoint import UntrustedCheckpointError, load_prior, read_meta, save_prior
from .edm import EDMPrecond, build_edm_unet, default_unet_config, edm_coefficients, edm_loss, heun_sample
from .unet import SmallUNet



def _weights_dir():
    return resources.files(__name__) / "weights"


def builtin_prior_names() -> list[str]:
    """Names of the shipped priors (the ``.pt`` files in ``lmaps_plugin/priors/weights``)."""
    folder = _weights_dir()
    if not folder.is_dir():
        return []
    return sorted(entry.name[:-3] for entry in folder.iterdir() if entry.name.endswith(".pt"))


def builtin_prior(name: str, map_location="cpu") -> nn.Module:
    """Load a shipped prior by name (e.g. ``'faces64'``, ``'cells64'``) with ``torch.load(weights_only=True)``.

    The returned :class:`EDMPrecond` is in eval mode, float32, and carries its training metadata as ``net.meta``.
    """
    names = builtin_prior_names()
    if name not in names:
        raise ValueError(f"unknown built-in prior {name!r}; valid names: {', '.join(names) or '(none shipped)'}")
    with resources.as_file(_weights_dir() / f"{name}.pt") as path:
        return load_prior(path, map_location=map_location)


__all__ = ["builtin_prior", "builtin_prior_names", "load_prior", "save_prior", "read_meta",
           "UntrustedCheckpointError", "EDMPrecond", "SmallUNet", "build_edm_unet", "default_unet_config",
           "edm_coefficients", "edm_loss", "heun_sample"]
