"""The Gaussian-mixture prior's edges against independent truths: dense Bayes with unnormalised weights and
non-square images, the clean density, a per-cluster eigendecomposition for ``fit`` (the low-rank-plus-isotropic
covariance it must keep), k-means on degenerate data, low-rank sampling moments, and the refused inputs."""
from __future__ import annotations

import math

import pytest
import torch

from lmaps_plugin.priors.gmm import GaussianMixturePrior

DT = torch.float64


def dense_log_density(x, sigma, weights, means, covs):
    d = means.shape[1]
    weights = weights / weights.sum()
    return torch.logsumexp(torch.stack([
        w.log() + torch.distributions.MultivariateNormal(m, c + sigma ** 2 * torch.eye(d, dtype=DT)).log_prob(x)
        for w, m, c in zip(weights, means, covs)], 1), 1)


def dense_denoiser(x, sigma, weights, means, covs):
    d = means.shape[1]
    weights = weights / weights.sum()
    logs, posts = [], []
    for w, m, c in zip(weights, means, covs):
        noisy = c + sigma ** 2 * torch.eye(d, dtype=DT)
        logs.append(torch.distributions.MultivariateNormal(m, noisy).log_prob(x) + w.log())
        posts.append(m + (x - m) @ torch.linalg.solve(noisy, c))
    resp = torch.softmax(torch.stack(logs, 1), 1)
    return (resp[..., None] * torch.stack(posts, 1)).sum(1)


def low_rank(d=6, q=2, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=gen, dtype=DT) * 5 + 1          # not normalised
    means = torch.randn(k, d, generator=gen, dtype=DT)
    basis = torch.linalg.qr(torch.randn(k, d, q, generator=gen, dtype=DT)).Q
    spectrum = torch.rand(k, q, generator=gen, dtype=DT) * 2 + 0.3
    tau2 = torch.rand(k, generator=gen, dtype=DT) * 0.3 + 0.1
    covs = basis @ torch.diag_embed(spectrum) @ basis.transpose(1, 2) + tau2[:, None, None] * torch.eye(d, dtype=DT)
    return weights, means, basis, spectrum, tau2, covs


def test_unnormalised_weights_and_a_non_square_image_match_dense_bayes():
    weights, means, basis, spectrum, tau2, covs = low_rank()
    prior = GaussianMixturePrior(weights, means, basis, spectrum, tau2, (1, 2, 3))
    assert prior.img_channels == 1 and tuple(prior.img_resolution) == (2, 3)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    for sigma in (0.3, 2.0):
        got = prior(x.reshape(5, 1, 2, 3), sigma)
        assert got.shape == (5, 1, 2, 3)
        torch.testing.assert_close(got.reshape(5, 6), dense_denoiser(x, sigma, weights, means, covs),
                                   rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(prior.log_prob(x.reshape(5, 1, 2, 3), sigma),
                                   dense_log_density(x, sigma, weights, means, covs), rtol=1e-11, atol=1e-11)
    assert torch.exp(prior.log_weights).sum().item() == pytest.approx(1.0, rel=1e-14)


def test_log_prob_defaults_to_the_clean_density():
    weights, means, basis, spectrum, tau2, covs = low_rank(seed=2)
    prior = GaussianMixturePrior(weights, means, basis, spectrum, tau2, (6, 1, 1))
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=DT)
    torch.testing.assert_close(prior.log_prob(x.reshape(4, 6, 1, 1)), dense_log_density(x, 0.0, weights, means, covs),
                               rtol=1e-12, atol=1e-12)


def test_negative_spectrum_entries_count_as_zero():
    weights, means, basis, spectrum, tau2, _ = low_rank(seed=4)
    clipped = spectrum.clone()
    clipped[:, 0] = 0.0
    negative = spectrum.clone()
    negative[:, 0] = -5.0
    x = torch.randn(3, 6, 1, 1, generator=torch.Generator().manual_seed(5), dtype=DT)
    a = GaussianMixturePrior(weights, means, basis, negative, tau2, (6, 1, 1))
    b = GaussianMixturePrior(weights, means, basis, clipped, tau2, (6, 1, 1))
    torch.testing.assert_close(a(x, 0.5), b(x, 0.5), rtol=0, atol=0)


def test_denoiser_keeps_a_float32_input_in_float32_but_computes_in_float64():
    weights, means, basis, spectrum, tau2, covs = low_rank(seed=6)
    prior = GaussianMixturePrior(weights, means, basis, spectrum, tau2, (6, 1, 1))
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    out = prior(x.reshape(3, 6, 1, 1), 0.7)
    assert out.dtype == torch.float32
    # computed in float64 and rounded once: within one float32 ulp of the exact value
    exact = dense_denoiser(x.double(), 0.7, weights, means, covs)
    torch.testing.assert_close(out.reshape(3, 6).double(), exact, rtol=1.2e-7, atol=1e-9)


def test_per_sample_sigma_must_have_one_value_per_sample():
    weights, means, basis, spectrum, tau2, _ = low_rank(seed=8)
    prior = GaussianMixturePrior(weights, means, basis, spectrum, tau2, (6, 1, 1))
    x = torch.randn(3, 6, 1, 1, dtype=DT)
    with pytest.raises(ValueError, match=r"one value per sample \(3\), got 2"):
        prior(x, torch.tensor([0.1, 0.2], dtype=DT))
    assert prior(x, torch.tensor([0.4], dtype=DT)).shape == x.shape


def test_from_covariances_reproduces_the_covariances_and_refuses_singular_ones():
    gen = torch.Generator().manual_seed(9)
    f = torch.randn(2, 4, 4, generator=gen, dtype=DT)
    covs = f @ f.transpose(1, 2) + 0.05 * torch.eye(4, dtype=DT)
    means = torch.randn(2, 4, generator=gen, dtype=DT)
    prior = GaussianMixturePrior.from_covariances([0.3, 0.7], means, covs)
    assert prior.img_shape == (4, 1, 1)
    rebuilt = prior.basis @ torch.diag_embed(prior.spectrum) @ prior.basis.transpose(1, 2) \
        + prior.noise_var[:, None, None] * torch.eye(4, dtype=DT)
    torch.testing.assert_close(rebuilt, covs, rtol=1e-12, atol=1e-12)
    assert bool((prior.noise_var > 0).all())
    singular = covs.clone()
    singular[1] = torch.outer(means[0], means[0])              # rank one
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixturePrior.from_covariances([0.3, 0.7], means, singular)


@pytest.mark.parametrize("change,fragment", [
    (dict(weights=torch.tensor([1.0, 0.0], dtype=DT)), "weights must be positive"),
    (dict(img_shape=(2, 2, 2)), "img_shape"),
    (dict(basis=torch.zeros(2, 4, 3, dtype=DT)), "basis must be"),
    (dict(spectrum=torch.ones(2, 3, dtype=DT)), "basis must be"),
    (dict(noise_var=torch.ones(3, dtype=DT)), "basis must be"),
    (dict(noise_var=torch.tensor([0.1, 0.0], dtype=DT)), r"noise_var \(τ²\) must be > 0"),
])
def test_inconsistent_parameters_are_refused(change, fragment):
    parts = dict(weights=torch.tensor([1.0, 2.0], dtype=DT), means=torch.zeros(2, 4, dtype=DT),
                 basis=torch.linalg.qr(torch.randn(2, 4, 2, dtype=DT)).Q, spectrum=torch.ones(2, 2, dtype=DT),
                 noise_var=torch.tensor([0.1, 0.2], dtype=DT), img_shape=(4, 1, 1))
    GaussianMixturePrior(**parts)                                   # the unchanged parts are fine
    with pytest.raises(ValueError, match=fragment):
        GaussianMixturePrior(**{**parts, **change})


# -- fit ------------------------------------------------------------------------------------------------

def clustered_images(n_per=(30, 40, 50), d=12, seed=10):
    gen = torch.Generator().manual_seed(seed)
    centres = 20 * torch.randn(len(n_per), d, generator=gen, dtype=DT)
    scales = torch.rand(len(n_per), d, generator=gen, dtype=DT) + 0.2
    parts = [centres[k] + scales[k] * torch.randn(n, d, generator=gen, dtype=DT) for k, n in enumerate(n_per)]
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(n_per)])
    order = torch.randperm(sum(n_per), generator=gen)
    return torch.cat(parts)[order].reshape(-1, 3, 2, 2), labels[order]


@pytest.mark.parametrize("rank,min_var,sizes", [(3, 1e-4, (30, 40, 50)), (40, 1e-4, (30, 40, 50)),
                                               (3, 5.0, (30, 40, 50)), (11, 1e-4, (30, 40, 50)),
                                               (40, 1e-4, (4, 6, 8))])
def test_fit_keeps_each_clusters_top_principal_directions_and_residual_variance(rank, min_var, sizes):
    """Per cluster (well separated, so k-means recovers them): the mean, the weight n_k/n, and the covariance
    U diag(s) Uᵀ + τ²I whose top-q part is the empirical covariance's top-q eigenpairs (s + τ² = λ_i) and whose
    τ² is the mean of the other eigenvalues (at least min_var); q = min(rank, smallest cluster − 1). Float32
    images are fitted in float64."""
    images, labels = clustered_images(n_per=sizes)
    prior = GaussianMixturePrior.fit(images.float(), n_components=3, rank=rank, iters=30, min_var=min_var, seed=1)
    images = images.float().double()
    data = images.reshape(len(images), -1)
    d = data.shape[1]
    q = min(rank, min(sizes) - 1, d)
    assert prior.basis.shape == (3, d, q) and prior.means.dtype == DT
    found = torch.cdist(prior.means, torch.stack([data[labels == k].mean(0) for k in range(3)]))
    match = found.argmin(1)
    assert sorted(match.tolist()) == [0, 1, 2] and float(found.min(1).values.max()) < 1e-10
    for comp, k in enumerate(match.tolist()):
        members = data[labels == k]
        assert math.exp(prior.log_weights[comp]) == pytest.approx(len(members) / len(data), rel=1e-12)
        centred = members - members.mean(0)
        evals, evecs = torch.linalg.eigh(centred.T @ centred / len(members))
        evals, evecs = evals.flip(0), evecs.flip(1)
        qq = q
        tau2 = max(float(evals[qq:].sum() / max(d - qq, 1)), min_var)
        assert float(prior.noise_var[comp]) == pytest.approx(tau2, rel=1e-9)
        model = prior.basis[comp] @ torch.diag(prior.spectrum[comp]) @ prior.basis[comp].T + tau2 * torch.eye(d, dtype=DT)
        top = evecs[:, :qq] @ torch.diag((evals[:qq] - tau2).clamp_min(0)) @ evecs[:, :qq].T + tau2 * torch.eye(d, dtype=DT)
        torch.testing.assert_close(model, top, rtol=1e-8, atol=1e-8)


def test_fit_gives_every_component_a_member_even_on_degenerate_data():
    """Three distinct images, or only two, each repeated, and three components: k-means must re-seed the
    empty cluster (k-means++ finds no third distinct point in the second case)."""
    a, b, c = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 5.0)
    for images, seed in [(torch.cat([a.expand(6, -1, -1, -1), b.expand(6, -1, -1, -1), c]), s) for s in range(3)] + [
            (torch.cat([a.expand(5, -1, -1, -1), b.expand(5, -1, -1, -1)]), s) for s in range(3)]:
        prior = GaussianMixturePrior.fit(images, n_components=3, rank=2, seed=seed)
        sizes = sorted(round(math.exp(w) * len(images)) for w in prior.log_weights.tolist())
        assert sum(sizes) == len(images) and min(sizes) >= 1


def test_fit_is_deterministic_for_a_seed():
    images, _ = clustered_images(seed=11)
    one = GaussianMixturePrior.fit(images, n_components=3, rank=2, seed=3)
    two = GaussianMixturePrior.fit(images, n_components=3, rank=2, seed=3)
    assert torch.equal(one.means, two.means) and torch.equal(one.noise_var, two.noise_var)


def test_low_rank_samples_have_the_mixture_moments():
    weights, means, basis, spectrum, tau2, covs = low_rank(d=3, q=1, k=2, seed=12)
    prior = GaussianMixturePrior(weights, means, basis, spectrum, tau2, (3, 1, 1))
    samples = prior.sample(200000, generator=torch.Generator().manual_seed(0)).reshape(-1, 3)
    w = weights / weights.sum()
    mean = (w[:, None] * means).sum(0)
    second = sum(wk * (c + torch.outer(m, m)) for wk, m, c in zip(w, means, covs))
    torch.testing.assert_close(samples.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), second - torch.outer(mean, mean), atol=0.04, rtol=0)


def test_fit_accepts_as_many_images_as_components():
    images = 10 * torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(13), dtype=DT)
    prior = GaussianMixturePrior.fit(images, n_components=3, rank=2)
    assert sorted(prior.means.tolist()) == sorted(images.reshape(3, -1).tolist())


def test_fit_and_sample_use_only_their_own_generators():
    """Reproducible for a seed (fit) or a generator (sample), and the global random state is left alone."""
    images, _ = clustered_images(seed=14)
    weights, means, basis, spectrum, tau2, _ = low_rank(seed=15)
    prior = GaussianMixturePrior(weights, means, basis, spectrum, tau2, (6, 1, 1))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    GaussianMixturePrior.fit(images, n_components=3, rank=2, seed=3)
    one = prior.sample(50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(prior.sample(50, generator=torch.Generator().manual_seed(4)), one)


def test_parameters_given_in_float32_are_kept_in_float64():
    """The closed forms run in float64 whatever the parameters' dtype: float32 parameters give the dense Bayes
    denoiser of their float64 values to float64 rounding."""
    weights, means, _, spectrum, tau2, covs = low_rank(seed=16)
    basis = torch.eye(6, dtype=DT)[:, [[0, 3], [1, 5], [4, 2]]].permute(1, 0, 2)     # orthonormal in float32 too
    w32, m32, b32, s32, t32 = (t.float() for t in (weights, means, basis, spectrum, tau2))
    prior = GaussianMixturePrior(w32, m32, b32, s32, t32, (6, 1, 1))
    assert all(buf.dtype == DT for buf in (prior.log_weights, prior.means, prior.basis, prior.spectrum,
                                            prior.noise_var))
    cov32 = (b32.double() @ torch.diag_embed(s32.double()) @ b32.double().transpose(1, 2)
             + t32.double()[:, None, None] * torch.eye(6, dtype=DT))
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(17), dtype=DT)
    torch.testing.assert_close(prior(x.reshape(4, 6, 1, 1), 0.6).reshape(4, 6),
                               dense_denoiser(x, 0.6, w32.double(), m32.double(), cov32), rtol=1e-11, atol=1e-11)
    c32 = covs.float()
    c32 = 0.5 * (c32 + c32.transpose(1, 2))                                   # exactly symmetric in float32
    full = GaussianMixturePrior.from_covariances(w32, m32, c32)
    assert full.basis.dtype == DT and full.means.dtype == DT
    torch.testing.assert_close(full(x.reshape(4, 6, 1, 1), 0.6).reshape(4, 6),
                               dense_denoiser(x, 0.6, w32.double(), m32.double(), c32.double()),
                               rtol=1e-11, atol=1e-11)


def test_a_covariance_with_a_zero_eigenvalue_is_refused():
    cov = torch.diag(torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=DT))[None]
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, 4, dtype=DT), cov)


def test_fit_on_unclustered_data_ends_at_a_lloyd_fixed_point():
    """k-means run to convergence: every image is nearest to its own component's mean, and each mean is the
    average of the images nearest to it (a fixed point of Lloyd's iteration), with weights their shares."""
    images = torch.rand(120, 1, 2, 2, generator=torch.Generator().manual_seed(18), dtype=DT)
    prior = GaussianMixturePrior.fit(images, n_components=4, rank=1, iters=100, seed=2)
    data = images.reshape(120, -1)
    nearest = torch.cdist(data, prior.means).argmin(1)
    for k in range(4):
        members = data[nearest == k]
        assert len(members) > 0
        torch.testing.assert_close(prior.means[k], members.mean(0), rtol=1e-12, atol=1e-12)
        assert math.exp(prior.log_weights[k]) == pytest.approx(len(members) / 120, rel=1e-12)


def test_a_singleton_cluster_keeps_every_component_isotropic():
    """q = min(rank, smallest cluster − 1) = 0 when a cluster has one image: no principal directions anywhere,
    τ² = the cluster's total variance / d."""
    gen = torch.Generator().manual_seed(19)
    spread = 5.0 + torch.randn(20, 4, generator=gen, dtype=DT) * torch.tensor([2.0, 0.1, 0.1, 0.1], dtype=DT)
    lone = torch.full((1, 4), -50.0, dtype=DT)
    prior = GaussianMixturePrior.fit(torch.cat([spread, lone]).reshape(21, 1, 2, 2), n_components=2, rank=3, seed=0)
    assert prior.basis.shape[2] == 0
    k = int(torch.cdist(spread.mean(0, keepdim=True), prior.means).argmin())
    centred = spread - spread.mean(0)
    assert float(prior.noise_var[k]) == pytest.approx(float(centred.square().sum() / 20 / 4), rel=1e-12)
