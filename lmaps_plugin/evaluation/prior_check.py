"""Quick, independent checks that a denoiser prior is useful: denoising PSNR against the noisy input and against
the best Gaussian blur (the blur width is picked with the ground truth, so it is an optimistic baseline).

Images are in [-1, 1]; PSNR is :func:`lmaps_plugin.evaluation.metrics.psnr` ((x + 1)/2 clipped to [0, 1], data range
1, per image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..operators.blur import gaussian_kernel
from .metrics import psnr


def gaussian_blur(x: torch.Tensor, std: float) -> torch.Tensor:
    """Blur (B, C, H, W) with an isotropic Gaussian of ``std`` pixels (reflect padding)."""
    size = 2 * int(3 * std + 0.5) + 1
    kernel = gaussian_kernel(size, std).to(x)
    weight = kernel.expand(x.shape[1], 1, size, size)
    padded = F.pad(x, (size // 2,) * 4, mode="reflect")
    return F.conv2d(padded, weight, groups=x.shape[1])


@torch.no_grad()
def denoising_report(net, images: torch.Tensor, sigma: float, seed: int = 0,
                     blur_stds=(0.5, 0.75, 1.0, 1.5, 2.0, 3.0)) -> dict:
    """Mean PSNR of the noisy input, the denoiser ``net(x, sigma)`` and the best Gaussian blur at noise ``sigma``."""
    gen = torch.Generator().manual_seed(seed)
    noisy = images + sigma * torch.randn(images.shape, generator=gen)
    denoised = net(noisy, sigma)
    blur = max(psnr(gaussian_blur(noisy, s), images).mean().item() for s in blur_stds)
    return {"sigma": sigma, "noisy": psnr(noisy, images).mean().item(),
            "denoised": psnr(denoised, images).mean().item(), "best_blur": blur}
