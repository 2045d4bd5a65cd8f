"""An exact prior: a Gaussian mixture whose EDM denoiser has a closed form (paper App. A).

Each component has a low-rank-plus-isotropic covariance Σ_k = U_k diag(s_k) U_kᵀ + τ_k² I
(U_k with orthonormal columns), so images of 64×64×3 are cheap: nothing of size d×d is formed.
In the EDM convention (α = 1) the noisy marginal is Σ_k w_k N(x; μ_k, Σ_k + σ²I) and

    E[x0 | x_σ] = Σ_k r_k(x) · (μ_k + Σ_k (Σ_k + σ²I)⁻¹ (x − μ_k))          (App. A, Eqs. 24–27)

with r_k the responsibilities. Along U_k the gain is (s + τ²)/(s + τ² + σ²), off it τ²/(τ² + σ²).
"""
from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


class GaussianMixturePrior(nn.Module):
    """Exact EDM denoiser ``net(x, sigma) -> E[x0 | x]`` of a Gaussian mixture; usable as any ``net``.

    Args:
        weights: (K,) mixture weights (normalized internally).
        means: (K, d) component means, d = C·H·W.
        basis: (K, d, q) orthonormal columns U_k (q may be 0).
        spectrum: (K, q) variances s_k >= 0 added along U_k.
        noise_var: (K,) isotropic variances τ_k² > 0.
        img_shape: (C, H, W) of one image.
    """

    def __init__(self, weights: Tensor, means: Tensor, basis: Tensor, spectrum: Tensor,
                 noise_var: Tensor, img_shape: tuple[int, int, int]):
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if (weights <= 0).any():
            raise ValueError("mixture weights must be positive")
        k, d = means.shape
        if int(torch.tensor(img_shape).prod()) != d:
            raise ValueError(f"img_shape {tuple(img_shape)} has {int(torch.tensor(img_shape).prod())} "
                             f"values but means have d={d}")
        if basis.shape[:2] != (k, d) or spectrum.shape != (k, basis.shape[2]) or noise_var.shape != (k,):
            raise ValueError("basis must be (K, d, q), spectrum (K, q), noise_var (K,)")
        if (torch.as_tensor(noise_var) <= 0).any():
            raise ValueError("noise_var (τ²) must be > 0")
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))
        self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float64))
        self.register_buffer("spectrum", torch.as_tensor(spectrum, dtype=torch.float64).clamp_min(0))
        self.register_buffer("noise_var", torch.as_tensor(noise_var, dtype=torch.float64))
        self.img_shape = tuple(int(s) for s in img_shape)
        self.img_channels = self.img_shape[0]
        self.img_resolution = self.img_shape[1] if self.img_shape[1] == self.img_shape[2] else self.img_shape[1:]

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_covariances(cls, weights, means, covariances, img_shape=None) -> "GaussianMixturePrior":
        """Build from full covariances (small d): eigendecomposition, τ² = half the smallest eigenvalue."""
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covariances, dtype=torch.float64)
        evals, evecs = torch.linalg.eigh(covs)
        tau2 = evals.min(dim=1).values / 2
        if (tau2 <= 0).any():
            raise ValueError("covariances must be positive definite")
        d = means.shape[1]
        return cls(weights, means, evecs, evals - tau2[:, None], tau2, img_shape or (d, 1, 1))

    @classmethod
    def fit(cls, images: Tensor, n_components: int = 8, rank: int = 16, iters: int = 20,
            min_var: float = 1e-4, seed: int = 0) -> "GaussianMixturePrior":
        """Fit to a stack of images (N, C, H, W): k-means++ / Lloyd clustering, then per-cluster PCA.

        Each component keeps the top ``rank`` principal directions of its cluster; τ² is the mean
        residual variance off them (at least ``min_var``).
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        n = images.shape[0]
        if n < n_components:
            raise ValueError(f"need at least n_components={n_components} images, got {n}")
        data = images.detach().to(torch.float64).flatten(start_dim=1)
        labels = _kmeans(data, n_components, iters, seed)
        weights, means, bases, spectra, taus = [], [], [], [], []
        q = max(0, min(rank, int(torch.bincount(labels, minlength=n_components).min()) - 1))
        for k in range(n_components):
            members = data[labels == k]
            mean = members.mean(dim=0)
            centered = members - mean
            _, svals, vh = torch.linalg.svd(centered, full_matrices=False)
            evals = svals ** 2 / max(len(members), 1)
            total = centered.square().sum() / max(len(members), 1)
            top = evals[:q]
            tau2 = max(float((total - top.sum()) / max(data.shape[1] - q, 1)), min_var)
            weights.append(len(members))
            means.append(mean)
            bases.append(vh[:q].T)
            spectra.append((top - tau2).clamp_min(0))
            taus.append(tau2)
        return cls(torch.tensor(weights, dtype=torch.float64), torch.stack(means), torch.stack(bases),
                   torch.stack(spectra), torch.tensor(taus, dtype=torch.float64), tuple(images.shape[1:]))

    # -- the closed forms ----------------------------------------------------------------
    def _components(self, x: Tensor, sigma):
        """Per-component log-evidence (B, K) and posterior means m_k (B, K, d) at noise level σ.

        ``sigma`` (a number, or a tensor with one value or one per sample) goes to float64 in one
        step, so a Python float is never rounded through float32 first."""
        flat = x.to(torch.float64).flatten(start_dim=1)
        var = _per_sample_sigma(sigma, flat.shape[0], flat.device).square()[:, None]       # (B, 1)
        delta = flat[:, None, :] - self.means[None]                                          # (B, K, d)
        coef = torch.einsum("bkd,kdq->bkq", delta, self.basis)                                # (B, K, q)
        tau2 = self.noise_var[None]                                                         # (1, K)
        along = self.spectrum[None] + tau2[..., None] + var[..., None]                      # (B, K, q)
        off = tau2 + var                                                                    # (B, K)
        d, q = flat.shape[1], self.basis.shape[2]
        quad = (coef.square() / along).sum(-1) + (delta.square().sum(-1) - coef.square().sum(-1)) / off
        logdet = along.log().sum(-1) + (d - q) * off.log()
        log_evidence = self.log_weights[None] - 0.5 * (quad + logdet + d * math.log(2 * math.pi))
        gain_along = (self.spectrum[None] + tau2[..., None]) / along                         # (B, K, q)
        gain_off = tau2 / off                                                               # (B, K)
        in_span = torch.einsum("bkq,kdq->bkd", coef, self.basis)
        means = self.means[None] + torch.einsum("bkq,kdq->bkd", coef * gain_along, self.basis) \
            + gain_off[..., None] * (delta - in_span)
        return log_evidence, means

    def responsibilities(self, x: Tensor, sigma) -> Tensor:
        """r_k(x) of Eq. 25, shape (B, K)."""
        log_evidence, _ = self._components(x, sigma)
        return torch.softmax(log_evidence, dim=1)

    def log_prob(self, x: Tensor, sigma=0.0) -> Tensor:
        """log p_σ(x) of the noisy marginal, shape (B,)."""
        log_evidence, _ = self._components(x, sigma)
        return torch.logsumexp(log_evidence, dim=1)

    def forward(self, x: Tensor, sigma, *args, **kwargs) -> Tensor:
        """The exact denoiser E[x0 | x_σ = x] (Eq. 27), in the dtype of ``x``."""
        log_evidence, means = self._components(x, sigma)
        resp = torch.softmax(log_evidence, dim=1)
        out = torch.einsum("bk,bkd->bd", resp, means)
        return out.reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw n images from the mixture (σ = 0)."""
        device = self.means.device
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        q = self.basis.shape[2]
        z_span = torch.randn(n, q, generator=generator, dtype=torch.float64).to(device)
        z_iso = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64).to(device)
        span = torch.einsum("nq,ndq->nd", z_span * self.spectrum[comp].sqrt(), self.basis[comp])
        iso = z_iso * self.noise_var[comp].sqrt()[:, None]
        return (self.means[comp] + span + iso).reshape(n, *self.img_shape)


def _per_sample_sigma(sigma: Tensor, batch: int, device) -> Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=device).reshape(-1)
    if sigma.numel() == 1:
        return sigma.expand(batch)
    if sigma.numel() != batch:
        raise ValueError(f"sigma must be a scalar or have one value per sample ({batch}), got {sigma.numel()}")
    return sigma


def _kmeans(data: Tensor, k: int, iters: int, seed: int) -> Tensor:
    """Lloyd's k-means with k-means++ seeding; returns labels (every cluster non-empty)."""
    gen = torch.Generator().manual_seed(seed)
    centers = data[torch.randint(len(data), (1,), generator=gen)]
    for _ in range(1, k):
        dist = torch.cdist(data, centers).min(dim=1).values.square()
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1 / len(dist))
        centers = torch.cat([centers, data[torch.multinomial(probs, 1, generator=gen)]])
    labels = torch.cdist(data, centers).argmin(dim=1)
    for _ in range(iters):
        for j in range(k):
            if (labels == j).sum() == 0:   # re-seed an empty cluster at the farthest point
                far = torch.cdist(data, centers).min(dim=1).values.argmax()
                centers[j] = data[far]
                labels[far] = j
        new_centers = torch.stack([data[labels == j].mean(dim=0) for j in range(k)])
        new_labels = torch.cdist(data, new_centers).argmin(dim=1)
        centers = new_centers
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    for j in range(k):   # final guarantee that no cluster is empty
        if (labels == j).sum() == 0:
            far = torch.cdist(data, centers).min(dim=1).values.argmax()
            labels[far] = j
    return labels
