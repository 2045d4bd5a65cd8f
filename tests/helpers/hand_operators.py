"""Hand-written InverseBench-style operators shared by the tests (not a test module).

``Affine`` is H(x) = A x + c (or (A x + c)² with ``square``) with no base class, a plain or weighted
least-squares loss and an autograd gradient. Which attributes an operator has matters to the solver's
probe and calibration paths, so ``sigma_noise``, ``is_linear`` and ``img_shape`` are set only when given,
and ``adjoint`` / ``gram_eigenbasis`` exist only on the subclasses that offer them.
"""
from __future__ import annotations

import torch

from lmaps_plugin.operators.base import GramEigenbasis


def eigh_basis(a, img_shape):
    """The eigenbasis of AᵀA (eigenvalues clamped at 0) for images of ``img_shape``, in the input's dtype."""
    values, vectors = torch.linalg.eigh(a.T @ a)
    return GramEigenbasis(values.clamp_min(0.0), to_basis=lambda x: x.flatten(1) @ vectors.to(x.dtype),
                          from_basis=lambda c: (c @ vectors.T.to(c.dtype)).reshape(c.shape[0], *img_shape))


class Affine:
    """H(x) = A x + c, InverseBench style (no base class); ``square`` makes it (A x + c)² (not linear), ``weight``
    a weighted (not plain) sum of squares. ``gradient_calls`` counts the gradient evaluations."""

    def __init__(self, a, c=0.0, square=False, weight=None, sigma_noise=None, is_linear=None, img_shape=None):
        self.a, self.c, self.square, self.weight = a, c, square, weight
        if sigma_noise is not None:
            self.sigma_noise = sigma_noise
        if is_linear is not None:
            self.is_linear = is_linear
        if img_shape is not None:
            self.img_shape = tuple(img_shape)
        self.gradient_calls = 0

    def forward(self, x, **kwargs):
        z = x.flatten(1) @ self.a.T + self.c
        return z ** 2 if self.square else z

    def loss(self, pred, observation, **kwargs):
        w = 1.0 if self.weight is None else self.weight
        return (w * (self.forward(pred) - observation) ** 2).sum(1)

    def gradient(self, pred, observation, return_loss=False):
        """The gradient of ``loss.sum()``; with ``return_loss`` also the per-sample loss, as InverseBench's."""
        self.gradient_calls += 1
        with torch.enable_grad():
            x = pred.detach().clone().requires_grad_(True)
            loss = self.loss(x, observation)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return (grad, loss.detach()) if return_loss else grad


class AffineWithAdjoint(Affine):
    """InverseBench's scattering operator in miniature: ``adjoint`` is the transpose of A, reshaped to
    ``img_shape`` (given to the constructor or set as a class attribute by a subclass)."""

    img_shape = None

    def __init__(self, a, c=0.0, **kwargs):
        super().__init__(a, c, **kwargs)
        if self.img_shape is None:
            raise ValueError(f"{type(self).__name__} needs img_shape (the image shape the adjoint returns), got None")

    def adjoint(self, y):
        return (y @ self.a).reshape(y.shape[0], *self.img_shape)


class AffineWithBasis(AffineWithAdjoint):
    """With an adjoint and the Gram eigenbasis of AᵀA."""

    def gram_eigenbasis(self, like):
        return eigh_basis(self.a, self.img_shape)
