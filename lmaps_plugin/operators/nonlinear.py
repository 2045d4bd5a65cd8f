"""Differentiable nonlinear image operators (docs/operators.md): phase retrieval, nonlinear blur.

Both take images ``(B, C, r, r)`` in ``[-1, 1]`` and are differentiated by autograd through
:meth:`Operator.gradient`. ``resolution=None`` lets the first input fix the resolution.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import Operator
from .image_conventions import check_image_batch, check_positive_int, seeded_generator

__all__ = ["PhaseRetrieval", "NonlinearBlur", "BlurKernelNetwork", "load_blur_network",
           "centred_fft2", "centred_ifft2"]


def centred_fft2(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D DFT over the last two dimensions (``fftshift∘fft2∘ifftshift``).

    Orthonormal, so ``‖centred_fft2(x)‖ = ‖x‖`` (Parseval).
    """
    shifted = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(shifted, norm="ortho"), dim=(-2, -1))


def centred_ifft2(z: torch.Tensor) -> torch.Tensor:
    """Inverse (and adjoint, the transform being unitary) of :func:`centred_fft2`."""
    shifted = torch.fft.ifftshift(z, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(shifted, norm="ortho"), dim=(-2, -1))


class PhaseRetrieval(Operator):
    """Fourier phase retrieval: ``y = |F(pad((x + 1)/2))|`` per channel.

    The image is mapped to ``[0, 1]``, zero-padded by ``p = round(oversampling/8 · r)`` pixels
    per side (64 at 256² with oversampling 2.0, i.e. the padded image is ``1.5 r``; the
    oversampling ratio of the peers' convention), transformed by the centred orthonormal 2-D
    DFT, and its magnitude is observed: shape ``(B, C, r + 2p, r + 2p)``.

    The magnitude's gradient at a zero Fourier coefficient is taken as 0 (``torch.abs`` of a
    complex tensor back-propagates through ``sgn(z)``, and ``sgn(0) = 0``), so gradients stay
    finite everywhere.
    """

    def __init__(self, oversampling: float = 2.0, resolution: int | None = None,
                 channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        if not oversampling >= 0:
            raise ValueError(f"oversampling must be >= 0, got {oversampling}")
        self.oversampling = float(oversampling)
        self.channels = check_positive_int(channels, "channels")
        self.resolution = None if resolution is None else check_positive_int(
            resolution, "resolution")

    def padding(self, resolution: int) -> int:
        """Zero padding per side for ``resolution``: ``round(oversampling/8 · resolution)``."""
        return int(math.floor(self.oversampling / 8.0 * resolution + 0.5))

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        size = check_image_batch(x, self.channels, self.resolution, "PhaseRetrieval", "x")
        if self.resolution is None:
            self.resolution = size
        pad = self.padding(size)
        padded = F.pad((x + 1.0) / 2.0, (pad, pad, pad, pad))
        return centred_fft2(padded).abs()

    def gradient(self, pred: torch.Tensor, observation: torch.Tensor, return_loss: bool = False):
        """∇ Σ(|F pad u| − y)², u = (x + 1)/2, by the adjoint FFT instead of autograd:
        ``½·crop(Re F⁻¹[2(|z| − y)·sgn z])`` (sgn 0 = 0, as autograd's ``abs``). A subclass
        that overrides ``loss`` falls back to autograd."""
        if type(self).loss is not Operator.loss:
            return super().gradient(pred, observation, return_loss=return_loss)
        with torch.no_grad():
            pred = pred.detach()
            size = check_image_batch(pred, self.channels, self.resolution, "PhaseRetrieval", "x")
            if self.resolution is None:
                self.resolution = size
            pad = self.padding(size)
            spectrum = centred_fft2(F.pad((pred + 1.0) / 2.0, (pad, pad, pad, pad)))
            residual = spectrum.abs() - observation
            back = centred_ifft2(torch.sgn(spectrum) * residual).real
            grad = back[..., pad:pad + size, pad:pad + size]  # 2·½: the loss's 2, u's ½
        if return_loss:
            return grad, residual.square().flatten(start_dim=1).sum(dim=1)
        return grad

    def __repr__(self) -> str:
        return (f"PhaseRetrieval(oversampling={self.oversampling}, resolution={self.resolution}, "
                f"channels={self.channels}, sigma_noise={self.sigma_noise})")


# ---------------------------------------------------------------------------------------
# Nonlinear blur: a user-supplied blur network
# ---------------------------------------------------------------------------------------
#: The format tag stored in (and required of) blur-network weight files.
BLUR_NETWORK_FORMAT = "lmaps_plugin.blur_network/1"


class BlurKernelNetwork(nn.Module):
    """A small kernel network: (sharp image in [0, 1], latent blur code) → blurred image.

    Architecture (the interface a weight file must match):

    * ``kernel_head``: ``Linear(latent_dim, hidden) → SiLU → Linear(hidden, kernel_size²)``,
      then a softmax over the ``kernel_size²`` taps: a non-negative kernel summing to 1;
    * the image is blurred with that kernel (per-channel cross-correlation, reflection
      padding, output the size of the input);
    * ``refine``: ``Conv3×3(2·channels → hidden) → SiLU → Conv3×3(hidden → channels)`` on
      ``[image, blurred]``, added to the blurred image (the nonlinear part: saturation,
      spatially-varying residual blur).

    ``forward(x, code)`` takes ``x`` of shape ``(B, channels, H, W)`` and ``code`` of shape
    ``(latent_dim,)`` or ``(B, latent_dim)``. This stands in for the peers' bkse network
    (Tran et al., CVPR 2021, GOPRO weights), which is larger and cannot be downloaded here.
    """

    def __init__(self, channels: int = 3, latent_dim: int = 16, kernel_size: int = 7,
                 hidden: int = 16):
        super().__init__()
        self.config = {"channels": check_positive_int(channels, "channels"),
                       "latent_dim": check_positive_int(latent_dim, "latent_dim"),
                       "kernel_size": check_positive_int(kernel_size, "kernel_size"),
                       "hidden": check_positive_int(hidden, "hidden")}
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_head = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(),
                                         nn.Linear(hidden, kernel_size * kernel_size))
        self.refine = nn.Sequential(nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(hidden, channels, 3, padding=1))

    def kernels(self, code: torch.Tensor) -> torch.Tensor:
        """Blur kernels ``(B, k, k)`` (non-negative, each summing to 1) for codes ``(B, L)``."""
        k = self.config["kernel_size"]
        return torch.softmax(self.kernel_head(code), dim=-1).reshape(-1, k, k)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        if code.ndim == 1:
            code = code.expand(batch, -1)
        kernels = self.kernels(code)
        k = kernels.shape[-1]
        pad = k // 2
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
        # grouped convolution: one kernel per image, shared by its channels
        weight = kernels[:, None].repeat_interleave(channels, dim=0)
        blurred = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight,
                           groups=batch * channels).reshape_as(x)
        return blurred + self.refine(torch.cat([x, blurred], dim=1))

    def save(self, path: str | os.PathLike) -> None:
        """Write a weight file readable by :func:`load_blur_network` (tensors and ints only)."""
        torch.save({"format": BLUR_NETWORK_FORMAT, "config": dict(self.config),
                    "state_dict": self.state_dict()}, os.fspath(path))


def _missing_weights_message(path: str) -> str:
    return (
        f"NonlinearBlur needs a blur-network weight file, but {path!r} does not exist. "
        f"Expected: a file written by lmaps_plugin.operators.nonlinear.BlurKernelNetwork.save() "
        f"(torch.save of {{'format': '{BLUR_NETWORK_FORMAT}', 'config': {{channels, latent_dim, "
        f"kernel_size, hidden}}, 'state_dict': ...}}), passed as weights_path= (config key "
        f"problem.model.weights_path). The paper's network is bkse's GOPRO kernel encoder "
        f"(GOPRO_wVAE.pth from github.com/VinAIResearch/blur-kernel-space-exploring); it is not "
        f"bundled or downloadable here and has a different architecture: train or convert a "
        f"network to this format, or save a BlurKernelNetwork for testing.")


def load_blur_network(path: str | os.PathLike, map_location="cpu") -> BlurKernelNetwork:
    """Load a :class:`BlurKernelNetwork` weight file safely (``weights_only=True``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing_weights_message(path))
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != BLUR_NETWORK_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path!r} is not a blur-network weight file: expected a dict with "
                         f"format={BLUR_NETWORK_FORMAT!r} as written by "
                         f"BlurKernelNetwork.save(), found format {found!r}")
    network = BlurKernelNetwork(**payload["config"])
    network.load_state_dict(payload["state_dict"], strict=True)
    return network.eval().requires_grad_(False)


class NonlinearBlur(Operator):
    """Nonlinear deblurring: ``y = 2·N((x + 1)/2, z) − 1`` with a user-supplied blur network
    ``N`` (:class:`BlurKernelNetwork`, loaded from ``weights_path``) and a latent blur code
    ``z ~ latent_scale · N(0, I)`` drawn once from ``seed`` and shared by the whole batch.

    Raises :class:`FileNotFoundError` at construction, explaining the expected file, when
    ``weights_path`` does not exist. The network's parameters are frozen; it follows the
    input's dtype and device. The network's kernel size is fixed by its weights (it does not
    scale with the resolution).
    """

    def __init__(self, weights_path: str | os.PathLike = "checkpoints/nonlinear_blur.pt",
                 seed: int = 0, latent_scale: float = 1.2, resolution: int | None = None,
                 channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        if weights_path is None:
            raise FileNotFoundError(_missing_weights_message("<weights_path=None>"))
        self.weights_path = os.fspath(weights_path)
        self.channels = check_positive_int(channels, "channels")
        self.resolution = None if resolution is None else check_positive_int(
            resolution, "resolution")
        self.network = load_blur_network(self.weights_path).to(self.device)
        if self.network.config["channels"] != self.channels:
            raise ValueError(f"NonlinearBlur: {self.weights_path!r} holds a network for "
                             f"{self.network.config['channels']} channels, the operator was "
                             f"built for channels={self.channels}")
        self.seed = int(seed)
        self.latent_scale = float(latent_scale)
        self.code = (torch.randn(self.network.config["latent_dim"], dtype=torch.float64,
                                 generator=seeded_generator(self.seed))
                     * self.latent_scale).to(self.device)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        size = check_image_batch(x, self.channels, self.resolution, "NonlinearBlur", "x")
        if self.resolution is None:
            self.resolution = size
        pad = self.network.config["kernel_size"] // 2
        if pad >= size:
            raise ValueError(f"NonlinearBlur: the network's kernel_size "
                             f"{self.network.config['kernel_size']} is too large for "
                             f"resolution={size}")
        first = next(self.network.parameters())
        if first.dtype != x.dtype or first.device != x.device:
            self.network = self.network.to(device=x.device, dtype=x.dtype)
        code = self.code.to(device=x.device, dtype=x.dtype)
        return 2.0 * self.network((x + 1.0) / 2.0, code) - 1.0

    def __repr__(self) -> str:
        return (f"NonlinearBlur(weights_path={self.weights_path!r}, seed={self.seed}, "
                f"resolution={self.resolution}, sigma_noise={self.sigma_noise})")
