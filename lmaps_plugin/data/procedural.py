"""Procedural test images, drawn from a seeded ``torch.Generator`` (one per image, see ``base.image_generator``).

Each function maps ``(generator, resolution) -> (1, H, W)`` in [-1, 1]. Coordinates are normalised to [-1, 1]
across the field of view, so the same generator gives the same picture at any resolution. Shapes are rendered at
2× and average-pooled (anti-aliased edges).

- ``cells``: fluorescence-microscopy-like cells: 2–7 wobbly ellipses (cytoplasm) with a brighter nucleus, a smooth
  multiplicative texture, summed and clipped on a dark background.
- ``rings``: black-hole-like images (as in EHT pictures of M87*): a Gaussian-profile ring of radius 0.3–0.5,
  slightly elliptical and off-centre, with an azimuthal brightness asymmetry (a crescent) and faint inner emission.
- ``phantoms``: random Shepp–Logan-like head phantoms: a bright skull ellipse, a darker brain ellipse inside it,
  and 4–8 smaller additive ellipses of random contrast.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_SUPERSAMPLE = 2


def _uniform(gen: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _grid(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (y, x) in [-1, 1] of a ``resolution``² grid, each (H, W)."""
    t = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    return torch.meshgrid(t, t, indexing="ij")


def _downsample(image: torch.Tensor) -> torch.Tensor:
    """Average-pool a (H·s, W·s) supersampled render to (1, H, W)."""
    return F.avg_pool2d(image[None, None], _SUPERSAMPLE)[0]


def _ellipse_radius(y, x, cy, cx, a, b, theta):
    """Normalised elliptical radius (1 on the boundary) of points (y, x) for K ellipses; returns (K, H, W)."""
    dy, dx = y - cy[:, None, None], x - cx[:, None, None]
    c, s = theta.cos()[:, None, None], theta.sin()[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    return torch.sqrt((u / a[:, None, None]) ** 2 + (v / b[:, None, None]) ** 2), torch.atan2(v, u)


def _smooth_field(gen: torch.Generator, resolution: int, cells: int = 6) -> torch.Tensor:
    """A smooth random field (H, W), about unit variance, from bicubically upsampled white noise."""
    coarse = torch.randn(1, 1, cells, cells, generator=gen)
    return F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)[0, 0]


def cells(gen: torch.Generator, resolution: int) -> torch.Tensor:
    """A fluorescence-like cell image (1, H, W) in [-1, 1]; see the module docstring."""
    res = resolution * _SUPERSAMPLE
    y, x = _grid(res)
    k = _randint(gen, 2, 7)
    cy, cx = _uniform(gen, -0.75, 0.75, k), _uniform(gen, -0.75, 0.75, k)
    a = _uniform(gen, 0.2, 0.4, k)
    b = a * _uniform(gen, 0.55, 1.0, k)
    theta = _uniform(gen, 0, math.pi, k)
    rho, phi = _ellipse_radius(y, x, cy, cx, a, b, theta)
    # boundary wobble: harmonics 2..4 of the polar angle
    wobble = torch.ones_like(rho)
    for harmonic in (2, 3, 4):
        amp, phase = _uniform(gen, 0, 0.1, k), _uniform(gen, 0, 2 * math.pi, k)
        wobble = wobble + amp[:, None, None] * torch.cos(harmonic * phi + phase[:, None, None])
    edge = 0.06
    cytoplasm = torch.sigmoid((wobble - rho) / edge) * _uniform(gen, 0.3, 0.55, k)[:, None, None]
    # nucleus: a smaller, brighter ellipse offset inside the cell
    scale = _uniform(gen, 0.35, 0.55, k)
    offset = _uniform(gen, 0, 0.3, k) * a
    direction = _uniform(gen, 0, 2 * math.pi, k)
    ny, nx = cy + offset * direction.sin(), cx + offset * direction.cos()
    nrho, _ = _ellipse_radius(y, x, ny, nx, a * scale, b * scale * _uniform(gen, 0.8, 1.2, k), theta)
    nucleus = torch.sigmoid((1 - nrho) / (edge * 1.5)) * _uniform(gen, 0.35, 0.6, k)[:, None, None]
    texture = 1 + 0.15 * _smooth_field(gen, res)
    image = ((cytoplasm + nucleus).sum(0) * texture).clamp(0, 1) + 0.03
    return _downsample(image).clamp(0, 1) * 2 - 1


def rings(gen: torch.Generator, resolution: int) -> torch.Tensor:
    """A black-hole-like crescent image (1, H, W) in [-1, 1]; see the module docstring."""
    res = resolution * _SUPERSAMPLE
    y, x = _grid(res)
    cy, cx = _uniform(gen, -0.1, 0.1), _uniform(gen, -0.1, 0.1)
    radius = _uniform(gen, 0.3, 0.5)
    ellipticity = _uniform(gen, 0.9, 1.1)
    theta = _uniform(gen, 0, math.pi)
    rho, phi = (t[0] for t in _ellipse_radius(y, x, cy, cx, radius, radius * ellipticity, theta))
    r = rho * radius  # approximate radial distance
    width = _uniform(gen, 0.04, 0.1)
    ring = torch.exp(-0.5 * ((r - radius) / width) ** 2)
    asym, phase = _uniform(gen, 0.2, 0.9), _uniform(gen, 0, 2 * math.pi)
    asym2, phase2 = _uniform(gen, 0, 0.15), _uniform(gen, 0, 2 * math.pi)
    brightness = 1 + asym * torch.cos(phi - phase) + asym2 * torch.cos(2 * phi - phase2)
    inner = _uniform(gen, 0, 0.15) * torch.exp(-0.5 * (r / (radius * 0.6)) ** 2)
    image = ring * brightness.clamp_min(0) + inner
    image = image / image.max() * _uniform(gen, 0.7, 1.0)
    return _downsample(image).clamp(0, 1) * 2 - 1


def phantoms(gen: torch.Generator, resolution: int) -> torch.Tensor:
    """A random Shepp–Logan-like phantom (1, H, W) in [-1, 1]; see the module docstring."""
    res = resolution * _SUPERSAMPLE
    y, x = _grid(res)
    k = _randint(gen, 4, 8)
    # skull and brain
    oy, ox = _uniform(gen, -0.05, 0.05), _uniform(gen, -0.05, 0.05)
    oa, ob = _uniform(gen, 0.6, 0.75), _uniform(gen, 0.8, 0.92)
    otheta = _uniform(gen, -0.2, 0.2)
    thickness = _uniform(gen, 0.05, 0.09)
    skull = _ellipse_radius(y, x, oy, ox, oa, ob, otheta)[0][0]
    brain = _ellipse_radius(y, x, oy - _uniform(gen, 0, 0.03), ox, oa - thickness, ob - thickness, otheta)[0][0]
    image = (skull <= 1).float() * 1.0 - (brain <= 1).float() * _uniform(gen, 0.7, 0.85)
    # inner features: centres in the brain's disc, random sizes and contrast
    dist, ang = 0.55 * _uniform(gen, 0, 1, k).sqrt(), _uniform(gen, 0, 2 * math.pi, k)
    fy, fx = oy + dist * ang.sin() * ob / 0.9, ox + dist * ang.cos() * oa / 0.9
    fa = _uniform(gen, 0.04, 0.25, k)
    fb = fa * _uniform(gen, 0.3, 1.0, k)
    feat, _ = _ellipse_radius(y, x, fy, fx, fa, fb, _uniform(gen, 0, math.pi, k))
    contrast = _uniform(gen, 0.1, 0.45, k) * torch.where(torch.rand(k, generator=gen) < 0.35, -1.0, 1.0)
    image = image + ((feat <= 1).float() * contrast[:, None, None]).sum(0) * (brain <= 1).float()
    return _downsample(image).clamp(0, 1) * 2 - 1


GENERATORS = {"cells": cells, "rings": rings, "phantoms": phantoms}
