"""EDM preconditioning (Karras et al. 2022, "Elucidating the design space ...", Table 1) around a raw network,
the EDM training loss, and a small deterministic Heun sampler for sanity checks.

The preconditioned denoiser is ``D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ))`` with

    c_skip = σ_d² / (σ² + σ_d²)      c_out = σ·σ_d / √(σ² + σ_d²)
    c_in   = 1 / √(σ² + σ_d²)        c_noise = ln(σ) / 4

so ``D(x; 0) = x`` exactly and an untrained (zero-output) ``F`` gives the Wiener-like shrinkage ``c_skip·x``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..schedules import poly_sigmas
from .unet import SmallUNet

_TINY_SIGMA = 1e-20  # c_noise uses ln(max(σ, tiny)) so σ = 0 stays finite (c_out = 0 there anyway)


class EDMCoefficients(NamedTuple):
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = 0.5) -> EDMCoefficients:
    """The four EDM preconditioning coefficients for noise level(s) ``sigma`` (any shape, broadcast as given)."""
    var = sigma ** 2 + sigma_data ** 2
    return EDMCoefficients(c_skip=sigma_data ** 2 / var,
                           c_out=sigma * sigma_data / var.sqrt(),
                           c_in=1 / var.sqrt(),
                           c_noise=sigma.clamp_min(_TINY_SIGMA).log() / 4)


def batch_sigma(sigma, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Turn a python float, a 0-d / one-element tensor or a per-sample tensor into shape (batch, 1, 1, 1)."""
    sigma = torch.as_tensor(sigma, device=device).to(dtype)
    if (sigma < 0).any():
        raise ValueError(f"sigma must be >= 0, got {sigma.flatten()[:4].tolist()}")
    if sigma.numel() == 1:
        return sigma.reshape(1, 1, 1, 1).expand(batch, 1, 1, 1)
    if sigma.numel() != batch:
        raise ValueError(f"sigma must be a scalar or hold one value per batch element ({batch}); "
                         f"got shape {tuple(sigma.shape)}")
    return sigma.reshape(batch, 1, 1, 1)


class EDMPrecond(nn.Module):
    """EDM-preconditioned denoiser ``net(x, sigma) -> x0_hat`` (the interface InverseBench's algorithms call).

    Args:
        model: raw network ``F(x_in, c_noise)`` with ``c_noise`` of shape (B,), e.g.
            :class:`lmaps_plugin.priors.unet.SmallUNet`.
        img_resolution: square image side the model was trained at.
        img_channels: image channels.
        sigma_data: expected standard deviation of the training data.

    ``sigma`` may be a python float, a 0-d or one-element tensor, or one value per batch element. Computation runs in
    the model's dtype (float32); the output has ``x``'s dtype.
    """

    def __init__(self, model: nn.Module, img_resolution: int, img_channels: int, sigma_data: float = 0.5):
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.model = model
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.sigma_data = float(sigma_data)
        self.sigma_min = 0.0
        self.sigma_max = float("inf")

    def coefficients(self, sigma: torch.Tensor) -> EDMCoefficients:
        return edm_coefficients(sigma, self.sigma_data)

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        if class_labels is not None:
            raise ValueError("this prior is unconditional: class_labels must be None")
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}) for this prior "
                             f"(img_channels={self.img_channels}, img_resolution={self.img_resolution}); "
                             f"got {tuple(x.shape)}")
        dtype = next(self.model.parameters()).dtype
        x_in = x.to(dtype)
        sigma = batch_sigma(sigma, x.shape[0], device=x.device, dtype=dtype)
        c = self.coefficients(sigma)
        f_x = self.model(c.c_in * x_in, c.c_noise.reshape(-1))
        return (c.c_skip * x_in + c.c_out * f_x).to(x.dtype)

    @staticmethod
    def round_sigma(sigma):
        """Identity, as in EDM (samplers such as InverseBench's EnKG call it)."""
        return torch.as_tensor(sigma)


def edm_loss(net: EDMPrecond, images: torch.Tensor, P_mean: float = -1.2, P_std: float = 1.2,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """EDM denoising loss (mean over batch and pixels): ln σ ~ N(P_mean, P_std²), weight
    λ(σ) = (σ² + σ_d²)/(σ·σ_d)²."""
    b = images.shape[0]
    log_sigma = P_mean + P_std * torch.randn(b, 1, 1, 1, generator=generator, device=images.device)
    sigma = log_sigma.exp()
    noise = torch.randn(images.shape, generator=generator, device=images.device) * sigma
    weight = (sigma ** 2 + net.sigma_data ** 2) / (sigma * net.sigma_data) ** 2
    denoised = net(images + noise, sigma.reshape(-1))
    return (weight * (denoised - images) ** 2).mean()


@torch.no_grad()
def heun_sample(net: nn.Module, num_images: int, num_steps: int = 32, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0, generator: torch.Generator | None = None,
                device=None) -> torch.Tensor:
    """Unconditional samples from ``net(x, sigma)`` with EDM's deterministic 2nd-order Heun sampler
    (2·num_steps − 1 network evaluations). The initial noise is drawn on the CPU (``generator``), then moved to
    ``device`` (default: the device of the net's first parameter or buffer, else the CPU)."""
    if device is None:
        tensors = [*net.parameters(), *net.buffers()]
        device = tensors[0].device if tensors else torch.device("cpu")
    shape = (num_images, net.img_channels, net.img_resolution, net.img_resolution)
    sigmas = poly_sigmas(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, dtype=torch.float32,
                         device=device)
    x = (torch.randn(shape, generator=generator) * sigmas[0].cpu()).to(device)
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        d_cur = (x - net(x, s_cur)) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if s_next > 0:
            d_next = (x_next - net(x_next, s_next)) / s_next
            x_next = x + (s_next - s_cur) * 0.5 * (d_cur + d_next)
        x = x_next
    return x


def default_unet_config(img_channels: int = 1, img_resolution: int = 64) -> dict:
    """Architecture of the shipped priors (≈0.6 M parameters; about 0.4 s per batch-16 training step on one core)."""
    return dict(img_channels=img_channels, img_resolution=img_resolution, model_channels=32,
                channel_mult=[1, 1, 2], num_blocks=1, attn_resolutions=[8], patch_size=2)


def build_edm_unet(unet_config: dict, sigma_data: float = 0.5) -> EDMPrecond:
    """An :class:`EDMPrecond` around a :class:`SmallUNet` built from a JSON-able config dict."""

    unet = SmallUNet(**unet_config)
    return EDMPrecond(unet, img_resolution=unet.img_resolution, img_channels=unet.img_channels,
                      sigma_data=sigma_data)


__all__ = ["EDMPrecond", "EDMCoefficients", "edm_coefficients", "edm_loss", "heun_sample",
           "build_edm_unet", "default_unet_config", "batch_sigma"]
