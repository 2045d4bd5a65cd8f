"""The exact Gaussian-mixture prior against dense, independent closed forms (paper App. A)."""
import math

import pytest
import torch

from lmaps_plugin.priors.gmm import GaussianMixturePrior

DT = torch.float64


def random_mixture(d=6, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=gen, dtype=DT) + 0.2
    means = 2 * torch.randn(k, d, generator=gen, dtype=DT)
    factors = torch.randn(k, d, d, generator=gen, dtype=DT) / math.sqrt(d)
    covs = factors @ factors.transpose(1, 2) + 0.1 * torch.eye(d, dtype=DT)
    return weights / weights.sum(), means, covs


def dense_denoiser(x, sigma, weights, means, covs):
    """E[x0 | x] for a full-covariance mixture, by Bayes with dense matrices (Eqs. 22–27)."""
    d = means.shape[1]
    logs, posts = [], []
    for w, m, c in zip(weights, means, covs):
        noisy = torch.distributions.MultivariateNormal(m, c + sigma ** 2 * torch.eye(d, dtype=DT))
        logs.append(noisy.log_prob(x) + w.log())
        gain = c @ torch.linalg.inv(c + sigma ** 2 * torch.eye(d, dtype=DT))
        posts.append(m + (x - m) @ gain.T)
    resp = torch.softmax(torch.stack(logs, 1), 1)
    return (resp[..., None] * torch.stack(posts, 1)).sum(1), resp


# Float64 throughout: the closed form and dense Bayes agree to ~1e-14 here; 1e-11 leaves room for the
# conditioning of the dense inverses. Running σ through float32 (0.7 -> 0.69999999) costs ~5e-8.
TIGHT = dict(atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 5.0])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "float64-tensor"])
def test_denoiser_matches_dense_bayes(sigma, as_tensor):
    weights, means, covs = random_mixture()
    prior = GaussianMixturePrior.from_covariances(weights, means, covs)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=DT) * 2
    expected, resp = dense_denoiser(x, sigma, weights, means, covs)
    s = torch.tensor(sigma, dtype=DT) if as_tensor else sigma
    got = prior(x.reshape(16, 6, 1, 1), s).reshape(16, 6)
    torch.testing.assert_close(got, expected, **TIGHT)
    torch.testing.assert_close(prior.responsibilities(x.reshape(16, 6, 1, 1), s), resp, **TIGHT)


def low_rank_mixture(d=7, q=2, k=3, seed=7):
    """Components with Σ_k = U_k diag(s_k) U_kᵀ + τ_k² I, U_k of q < d orthonormal columns."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=gen, dtype=DT) + 0.2
    means = torch.randn(k, d, generator=gen, dtype=DT)
    basis = torch.linalg.qr(torch.randn(k, d, q, generator=gen, dtype=DT)).Q
    spectrum = torch.rand(k, q, generator=gen, dtype=DT) * 3 + 0.5
    tau2 = torch.rand(k, generator=gen, dtype=DT) * 0.2 + 0.05
    return weights / weights.sum(), means, basis, spectrum, tau2


@pytest.mark.parametrize("sigma", [0.1, 0.7, 4.0])
def test_low_rank_path_matches_dense_bayes(sigma):
    """The q < d path (nothing d×d is formed) against Bayes with the dense covariances it stands for."""
    weights, means, basis, spectrum, tau2 = low_rank_mixture()
    k, d, q = basis.shape
    assert q < d
    prior = GaussianMixturePrior(weights, means, basis, spectrum, tau2, (d, 1, 1))
    covs = basis @ torch.diag_embed(spectrum) @ basis.transpose(1, 2) + tau2[:, None, None] * torch.eye(d, dtype=DT)
    x = torch.randn(12, d, generator=torch.Generator().manual_seed(8), dtype=DT) * 1.5
    expected, resp = dense_denoiser(x, sigma, weights, means, covs)
    torch.testing.assert_close(prior(x.reshape(12, d, 1, 1), torch.tensor(sigma, dtype=DT)).reshape(12, d),
                               expected, **TIGHT)
    torch.testing.assert_close(prior.responsibilities(x.reshape(12, d, 1, 1), sigma), resp, **TIGHT)
    # the noisy marginal's density, too
    log_p = torch.logsumexp(torch.stack([
        w.log() + torch.distributions.MultivariateNormal(m, c + sigma ** 2 * torch.eye(d, dtype=DT)).log_prob(x)
        for w, m, c in zip(weights, means, covs)], 1), 1)
    torch.testing.assert_close(prior.log_prob(x.reshape(12, d, 1, 1), sigma), log_p, **TIGHT)
    # and the mixture really is not isotropic (the low-rank part matters at this σ)
    iso = GaussianMixturePrior(weights, means, basis, torch.zeros_like(spectrum), tau2, (d, 1, 1))
    assert (iso(x.reshape(12, d, 1, 1), sigma) - prior(x.reshape(12, d, 1, 1), sigma)).abs().max() > 1e-3


def test_denoiser_obeys_tweedie():
    """E[x0|x] = x + σ²∇log p_σ(x): the denoiser and the density agree."""
    weights, means, covs = random_mixture(d=4, k=2, seed=3)
    prior = GaussianMixturePrior.from_covariances(weights, means, covs)
    x = torch.randn(8, 4, 1, 1, generator=torch.Generator().manual_seed(2), dtype=DT).requires_grad_(True)
    sigma = 0.8
    (score,) = torch.autograd.grad(prior.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(prior(x.detach(), sigma), x.detach() + sigma ** 2 * score, **TIGHT)


def test_per_sample_sigma_matches_scalar_calls():
    weights, means, covs = random_mixture(d=3, k=2, seed=4)
    prior = GaussianMixturePrior.from_covariances(weights, means, covs)
    x = torch.randn(3, 3, 1, 1, generator=torch.Generator().manual_seed(5), dtype=DT)
    sigmas = torch.tensor([0.1, 0.7, 10.0], dtype=DT)
    batched = prior(x, sigmas)
    for i in range(3):
        torch.testing.assert_close(batched[i], prior(x[i:i + 1], float(sigmas[i]))[0], atol=1e-14, rtol=1e-14)


def test_samples_have_the_mixture_moments():
    weights, means, covs = random_mixture(d=2, k=2, seed=6)
    prior = GaussianMixturePrior.from_covariances(weights, means, covs)
    samples = prior.sample(200000, generator=torch.Generator().manual_seed(0)).reshape(-1, 2)
    mean = (weights[:, None] * means).sum(0)
    second = sum(w * (c + torch.outer(m, m)) for w, m, c in zip(weights, means, covs))
    cov = second - torch.outer(mean, mean)
    assert torch.allclose(samples.mean(0), mean, atol=0.03)
    assert torch.allclose(torch.cov(samples.T), cov, atol=0.06)


def test_fit_recovers_separated_clusters_and_denoises_images():
    gen = torch.Generator().manual_seed(0)
    shape = (3, 16, 16)
    d = 3 * 16 * 16
    centers = torch.randn(4, d, generator=gen)
    labels = torch.arange(160) % 4
    images = (centers[labels] + 0.05 * torch.randn(160, d, generator=gen)).reshape(160, *shape)
    prior = GaussianMixturePrior.fit(images, n_components=4, rank=4, seed=0)
    assert prior.img_shape == shape and prior.img_resolution == 16 and prior.img_channels == 3
    found = prior.means.reshape(4, d)
    dist = torch.cdist(found.float(), centers)
    # the mean of 40 samples with noise 0.05 in d=768 lies ≈ 0.05·sqrt(768/40) = 0.22 from its centre;
    # the centres are ≈ 39 apart
    assert bool((dist.min(dim=1).values < 0.3).all())
    assert sorted(dist.argmin(dim=1).tolist()) == [0, 1, 2, 3]
    noisy = images[:8] + 0.5 * torch.randn(8, *shape, generator=gen)
    denoised = prior(noisy, 0.5)
    assert (denoised - images[:8]).square().mean() < 0.1 * (noisy - images[:8]).square().mean()


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="at least n_components"):
        GaussianMixturePrior.fit(torch.zeros(3, 1, 4, 4), n_components=4)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        GaussianMixturePrior.fit(torch.zeros(3, 16))
