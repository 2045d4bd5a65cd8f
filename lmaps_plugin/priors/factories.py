"""Hydra ``_target_`` factories of the ``prior`` config group (``configs/prior/*.yaml``) of the ``lmaps`` app.

Each returns a denoiser ``net(x, sigma) -> x0_hat`` (EDM convention) with ``img_channels`` and
``img_resolution``, the interface LMAPS and InverseBench's algorithms call:

- :func:`fitted_gmm`: the exact Gaussian-mixture prior fitted on a built-in dataset's *train* split;
- :func:`shipped`: one of the small EDM UNets in ``lmaps_plugin/priors/weights`` (``faces64``, ``cells64``, ...);
- :func:`checkpoint`: any checkpoint file, loaded with ``torch.load(weights_only=True)`` (InverseBench's state-dict
  checkpoints need the network config to load into, e.g. its ``pretrain.model``).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

from torch import nn


def fitted_gmm(dataset: str = "faces", resolution: int = 64, channels: int | None = None, n_components: int = 4,
               rank: int = 16, num_images: int = 80, seed: int = 0) -> nn.Module:
    """A :class:`~lmaps_plugin.priors.gmm.GaussianMixturePrior` fitted on ``num_images`` train-split images.

    The faces train split has 80 images; procedural sets draw as many as asked. Fitting 80 images of 64×64 takes
    well under a second.
    """
    from ..data import builtin_dataset
    from ..data.packaged import num_faces
    from .gmm import GaussianMixturePrior

    if dataset == "faces":
        num_images = min(int(num_images), num_faces("train"))
    images = builtin_dataset(dataset, resolution=resolution, num_images=num_images, channels=channels, seed=seed,
                             split="train").images
    return GaussianMixturePrior.fit(images, n_components=n_components, rank=rank, seed=seed).eval()


def shipped(name: str) -> nn.Module:
    """A shipped EDM UNet prior by name (see ``lmaps_plugin.priors.builtin_prior_names()``)."""
    from . import builtin_prior

    return builtin_prior(name)


def _import_target_module(target: str) -> None:
    """Make ``target``'s top-level module importable, from an InverseBench checkout if it is one of theirs."""
    top = target.split(".", 1)[0]
    if importlib.util.find_spec(top) is None:
        from ..inversebench import require_inversebench

        require_inversebench(f"the prior network {target!r}")


def checkpoint(path: str | os.PathLike, model: Mapping[str, Any] | None = None, trust_pickle: bool = False,
               map_location: str = "cpu") -> nn.Module:
    """Load a prior from ``path``.

    Args:
        path: an lmaps prior (``save_prior``) or an InverseBench checkpoint (state dict under ``'ema'``/``'net'``).
        model: for state-dict checkpoints, the network to build and load into, as a Hydra config with ``_target_``
            (e.g. InverseBench's ``models.precond.EDMPrecond`` config; its checkout is imported when needed).
        trust_pickle: allow a pickled module (``{'ema': <module>}``); unpickling runs code from the file, so only
            for files whose source you trust.
    """
    from . import load_prior

    if path is None or str(path) in ("", "???"):
        raise ValueError("prior.path must name a checkpoint file, e.g. prior=inversebench prior.path=/ckpt/ffhq.pt")
    module = None
    if model is not None:
        from hydra.utils import instantiate

        target = model.get("_target_") if hasattr(model, "get") else None
        if not target:
            raise ValueError(f"prior.model must be a config with a _target_ (the network class), got {model!r}")
        _import_target_module(str(target))
        module = instantiate(model)
    return load_prior(path, map_location=map_location, trust_pickle=trust_pickle, module=module)


__all__ = ["fitted_gmm", "shipped", "checkpoint"]
