"""An exact prior: a Gaussian mixture whose EDM denoiser has a closed form (paper App. A).

Each component has a low-rank-plus-isotropic covariance Σ_k = U_k diag(s_k) U_kᵀ + τ_k² I
(U_k with orthonormal columns), so images of 64×64×3 are cheap: nothing of size d×d is formed.
In the EDM convention (α = 1) the noisy marginal is Σ_k w_k N(x; μ_k, Σ_k + σ²I) and

    E[x0 | x_σ] = Σ_k r_k(x) · (μ_k + Σ_k (Σ_k + σ²I)⁻¹ (x − μ_k))          (App. A, Eqs. 24–27)

with r_k the responsibilities. Along U_k the gain is (s + τ²)/(s + τ² + σ²), off it τ²/(τ² + σ²).

:meth:`GaussianMixturePrior.posterior` gives the exact posterior under a linear Gaussian likelihood
(:class:`GaussianMixturePosterior`: mean, per-pixel variance, draws; dense, for small d), the truth
against which posterior ensembles are checked (``docs/ensembles.md``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..operators.matrix import operator_matrix

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
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        return self._draw(comp, generator).reshape(n, *self.img_shape)

    def _draw(self, comp: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One flat draw (len(comp), d) from component ``comp[i]`` for each i."""
        device = self.means.device
        n, q = len(comp), self.basis.shape[2]
        z_span = torch.randn(n, q, generator=generator, dtype=torch.float64).to(device)
        z_iso = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64).to(device)
        span = torch.einsum("nq,ndq->nd", z_span * self.spectrum[comp].sqrt(), self.basis[comp])
        iso = z_iso * self.noise_var[comp].sqrt()[:, None]
        return self.means[comp] + span + iso

    def covariances(self) -> Tensor:
        """The dense component covariances Σ_k = U_k diag(s_k) U_kᵀ + τ_k² I, (K, d, d) float64 (small d)."""
        d = self.means.shape[1]
        eye = torch.eye(d, dtype=torch.float64, device=self.means.device)
        return (self.basis * self.spectrum[:, None, :]) @ self.basis.transpose(1, 2) \
            + self.noise_var[:, None, None] * eye

    def posterior(self, matrix, y, sigma_y: float) -> "GaussianMixturePosterior":
        """The exact posterior p(x | y) under y = A x + N(0, σ_y² I): a Gaussian mixture.

        Args:
            matrix: the (m, d) real matrix A (e.g. ``operators.operator_matrix(op, prior.img_shape)``),
                or a linear operator, turned into its matrix that way.
            y: the observation, m values in any shape (e.g. the operator's (1, ...) output).
            sigma_y: the noise standard deviation, > 0.

        Dense float64 algebra with Cholesky solves, in the smaller of the m×m (gain form) or d×d
        (precision form) systems; meant for d up to a few thousand (see ``docs/ensembles.md``).
        """
        a, yv, sigma_y = self._check_likelihood(matrix, y, sigma_y)
        solve = _gain_form if a.shape[0] <= a.shape[1] else _precision_form
        log_ev, means, covs, gains = solve(self, a, yv, sigma_y)
        return GaussianMixturePosterior(log_ev, means, covs, gains, self, a, yv, sigma_y)

    def _check_likelihood(self, matrix, y, sigma_y):
        device, d = self.means.device, self.means.shape[1]
        if not isinstance(matrix, Tensor) and hasattr(matrix, "forward"):
            matrix = operator_matrix(matrix, self.img_shape, device=device)
        a, yv = torch.as_tensor(matrix), torch.as_tensor(y)
        if a.is_complex() or yv.is_complex():
            raise ValueError("GaussianMixturePrior.posterior handles real A and y only; got a complex "
                             f"{'matrix' if a.is_complex() else 'observation y'} (split complex data into "
                             "real and imaginary parts as a real system of twice the size)")
        if a.ndim != 2 or a.shape[1] != d:
            raise ValueError(f"matrix must have shape (m, d={d}) for img_shape {self.img_shape}; got {tuple(a.shape)}")
        if yv.numel() != a.shape[0]:
            raise ValueError(f"y must hold m={a.shape[0]} values (one per matrix row); got shape {tuple(yv.shape)} "
                             f"({yv.numel()} values)")
        if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float, Tensor)) \
                or not math.isfinite(float(sigma_y)) or float(sigma_y) <= 0:
            raise ValueError(f"sigma_y must be a finite number > 0 (the noise std); got {sigma_y!r}")
        f64 = dict(dtype=torch.float64, device=device)
        return a.to(**f64), yv.reshape(-1).to(**f64), float(sigma_y)


def _gain_form(prior: GaussianMixturePrior, a: Tensor, y: Tensor, sigma_y: float):
    """Posterior pieces through the m×m systems S_k = A Σ_k Aᵀ + σ_y² I (m ≤ d)."""
    m = a.shape[0]
    cov = prior.covariances()                                                  # (K, d, d)
    cross = cov @ a.T                                                         # Σ_k Aᵀ, (K, d, m)
    s = a @ cross + sigma_y ** 2 * torch.eye(m, dtype=a.dtype, device=a.device)
    chol = torch.linalg.cholesky(s)
    resid = y - prior.means @ a.T                                             # (K, m)
    alpha = torch.cholesky_solve(resid[..., None], chol)[..., 0]              # S_k⁻¹ r_k
    gains = torch.cholesky_solve(cross.transpose(1, 2), chol).transpose(1, 2)  # Σ_k Aᵀ S_k⁻¹, (K, d, m)
    means = prior.means + torch.einsum("kdm,km->kd", cross, alpha)
    covs = cov - gains @ cross.transpose(1, 2)
    logdet = 2 * chol.diagonal(dim1=1, dim2=2).log().sum(-1)
    log_ev = prior.log_weights - 0.5 * ((resid * alpha).sum(-1) + logdet + m * math.log(2 * math.pi))
    return log_ev, means, 0.5 * (covs + covs.transpose(1, 2)), gains


def _precision_form(prior: GaussianMixturePrior, a: Tensor, y: Tensor, sigma_y: float):
    """Posterior pieces through the d×d precisions P_k = Σ_k⁻¹ + AᵀA/σ_y² (m > d); Σ_k⁻¹ by Woodbury."""
    m, d = a.shape
    var = sigma_y ** 2
    u, s, tau2 = prior.basis, prior.spectrum, prior.noise_var
    eye = torch.eye(d, dtype=a.dtype, device=a.device)
    prior_prec = (eye - (u * (s / (s + tau2[:, None]))[:, None, :]) @ u.transpose(1, 2)) / tau2[:, None, None]
    logdet_prior = (s + tau2[:, None]).log().sum(-1) + (d - u.shape[2]) * tau2.log()
    chol = torch.linalg.cholesky(prior_prec + a.T @ a / var)
    covs = torch.cholesky_inverse(chol)
    rhs = torch.einsum("kde,ke->kd", prior_prec, prior.means) + a.T @ y / var
    means = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
    resid = y - prior.means @ a.T                                             # (K, m)
    b = resid @ a / var                                                       # Aᵀ r_k / σ², (K, d)
    quad = resid.square().sum(-1) / var - (b * torch.cholesky_solve(b[..., None], chol)[..., 0]).sum(-1)
    logdet = m * math.log(var) + logdet_prior + 2 * chol.diagonal(dim1=1, dim2=2).log().sum(-1)
    log_ev = prior.log_weights - 0.5 * (quad + logdet + m * math.log(2 * math.pi))
    return log_ev, means, 0.5 * (covs + covs.transpose(1, 2)), covs @ a.T / var


class GaussianMixturePosterior:
    """The exact posterior of a :class:`GaussianMixturePrior` under y = A x + N(0, σ_y² I).

    p(x | y) = Σ_k w'_k N(x; m_k, C_k) with w'_k ∝ w_k N(y; A μ_k, A Σ_k Aᵀ + σ_y² I),
    m_k = μ_k + G_k (y − A μ_k), C_k = Σ_k − G_k A Σ_k and the gain G_k = Σ_k Aᵀ (A Σ_k Aᵀ + σ_y² I)⁻¹.
    Built by :meth:`GaussianMixturePrior.posterior`; all tensors are float64.

    Attributes: ``weights`` (K,), ``log_evidence`` (log p(y), a float), ``component_means`` (K, d),
    ``component_covariances`` (K, d, d), ``gains`` (K, d, m), ``img_shape``.
    """

    def __init__(self, log_weights: Tensor, means: Tensor, covs: Tensor, gains: Tensor,
                 prior: GaussianMixturePrior, matrix: Tensor, y: Tensor, sigma_y: float):
        self.log_evidence = float(torch.logsumexp(log_weights, 0))
        self.weights = torch.softmax(log_weights, 0)
        self.component_means, self.component_covariances, self.gains = means, covs, gains
        self.img_shape = prior.img_shape
        self._prior, self._matrix, self._y, self._sigma_y = prior, matrix, y, sigma_y

    def mean(self) -> Tensor:
        """The posterior mean E[x | y] (the MMSE estimate), shape ``img_shape``."""
        return (self.weights @ self.component_means).reshape(self.img_shape)

    def variance(self) -> Tensor:
        """The per-pixel posterior variance Σ_k w'_k (diag C_k + m_k²) − E[x | y]², shape ``img_shape``."""
        second = self.weights @ (self.component_covariances.diagonal(dim1=1, dim2=2) + self.component_means.square())
        return (second - self.mean().reshape(-1).square()).clamp_min(0).reshape(self.img_shape)

    def covariance(self) -> Tensor:
        """The full posterior covariance, (d, d)."""
        centred = self.component_means - self.weights @ self.component_means
        return torch.einsum("k,kde->de", self.weights, self.component_covariances)             + torch.einsum("k,kd,ke->de", self.weights, centred, centred)

    def mmse(self) -> float:
        """The expected per-pixel squared error of the posterior mean: the mean posterior variance."""
        return float(self.variance().mean())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact posterior draws, (n, *img_shape), by Matheron's rule: a prior draw x̃ of the chosen
        component and a simulated observation ỹ = A x̃ + σ_y ε give x̃ + G_k (y − ỹ) ~ N(m_k, C_k)."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer; got {n!r}")
        n = int(n)
        comp = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        draws = self._prior._draw(comp, generator)
        noise = torch.randn(n, self._matrix.shape[0], generator=generator, dtype=torch.float64)
        innovation = self._y - draws @ self._matrix.T - self._sigma_y * noise.to(draws.device)
        comp = comp.to(draws.device)
        for k in comp.unique().tolist():
            rows = comp == k
            draws[rows] += innovation[rows] @ self.gains[k].T
        return draws.reshape(n, *self.img_shape)

    def __repr__(self) -> str:
        return (f"GaussianMixturePosterior(K={len(self.weights)}, img_shape={self.img_shape}, "
                f"weights={[round(float(w), 4) for w in self.weights]})")


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
