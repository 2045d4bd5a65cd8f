"""Hydra ``_target_`` factories of the ``prior`` config group (``configs/prior/*.yaml``) of the ``lmaps`` app.

Each returns a denoiser ``net(x, sigma) -> x0_hat`` (EDM convention) with ``img_channels`` and
``img_resolution``, the interface LMAPS and InverseBench's algorithms call:

- :func:`fitted_gmm`: the exact Gaussian-mixture prior fitted on a built-in dataset's *train* split;
- :func:`shipped`: one of the small EDM UNets in ``lmaps_plugin/priors/weights`` (``faces64``, ``cells64``, ...).

A prior from any checkpoint file (``prior=inversebench``) is built by
:func:`lmaps_plugin.inversebench.factories.checkpoint_prior`, which can import the network's class from an
InverseBench checkout.
"""
from __future__ import annotations

from torch import nn

from ..data import builtin_dataset
from ..data.packaged import num_faces
from . import builtin_prior
from .gmm import GaussianMixturePrior


def fitted_gmm(dataset: str = "faces", resolution: int = 64, channels: int | None = None, n_components: int = 4,
               rank: int = 16, num_images: int = 80, seed: int = 0) -> nn.Module:
    """A :class:`~lmaps_plugin.priors.gmm.GaussianMixturePrior` fitted on ``num_images`` train-split images.

    The faces train split has 80 images; procedural sets draw as many as asked. Fitting 80 images of 64×64 takes
    well under a second.
    """
    if dataset == "faces":
        num_images = min(int(num_images), num_faces("train"))
    images = builtin_dataset(dataset, resolution=resolution, num_images=num_images, channels=channels, seed=seed,
                             split="train").images
    return GaussianMixturePrior.fit(images, n_components=n_components, rank=rank, seed=seed).eval()


def shipped(name: str) -> nn.Module:
    """A shipped EDM UNet prior by name (see ``lmaps_plugin.priors.builtin_prior_names()``)."""
    return builtin_prior(name)


__all__ = ["fitted_gmm", "shipped"]
