"""EDM preconditioning against its closed forms, the Gaussian-data identities it implies, safe checkpoint I/O, and
the shipped priors' usefulness (they must denoise held-out test images clearly better than the noisy input)."""
import math
import os

import pytest
from evil_checkpoints import evil_checkpoints
import torch

from lmaps_plugin.data import builtin_dataset
from lmaps_plugin.priors import (EDMPrecond, SmallUNet, UntrustedCheckpointError, build_edm_unet, builtin_prior,
                                 builtin_prior_names, default_unet_config, edm_coefficients, edm_loss, heun_sample,
                                 load_prior, read_meta, save_prior)
from lmaps_plugin.evaluation.prior_check import denoising_report

SIGMA_DATA = 0.5
TINY = dict(img_channels=1, img_resolution=16, model_channels=8, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[8], patch_size=1)


def tiny_net(seed=0, randomize=True, **overrides) -> EDMPrecond:
    """A small EDMPrecond(SmallUNet); with ``randomize`` every parameter (also the zero-initialised output
    layers) gets random values, so F is not identically zero."""
    torch.manual_seed(seed)
    net = build_edm_unet({**TINY, **overrides})
    if randomize:
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.2)
    return net.eval()


def test_coefficients_match_closed_forms():
    sigma = torch.tensor([0.0, 0.5, 2.0, 80.0], dtype=torch.float64)
    c = edm_coefficients(sigma, SIGMA_DATA)
    torch.testing.assert_close(c.c_skip, 0.25 / (sigma ** 2 + 0.25))
    torch.testing.assert_close(c.c_out, sigma * 0.5 / (sigma ** 2 + 0.25).sqrt())
    torch.testing.assert_close(c.c_in, 1 / (sigma ** 2 + 0.25).sqrt())
    torch.testing.assert_close(c.c_noise[1:], sigma[1:].log() / 4)
    # hand-computed values at σ = σ_d = 0.5
    assert c.c_skip[1].item() == pytest.approx(0.5)
    assert c.c_out[1].item() == pytest.approx(0.25 / math.sqrt(0.5))
    assert c.c_in[1].item() == pytest.approx(math.sqrt(2))
    assert c.c_noise[1].item() == pytest.approx(math.log(0.5) / 4)
    # the EDM identity c_skip + c_out²/σ_d² = 1 (unit total variance of the training target)
    torch.testing.assert_close(c.c_skip + c.c_out ** 2 / SIGMA_DATA ** 2, torch.ones_like(sigma))
    assert torch.isfinite(c.c_noise[0])  # σ = 0 stays finite


def test_small_sigma_returns_the_input():
    net = tiny_net()
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(net(x, 0.0), x)
    assert (net(x, 1e-4) - x).abs().max() < 1e-3
    assert (net(x, 1.0) - x).abs().max() > 0.1  # ...while a real noise level changes it


def test_untrained_net_is_the_exact_gaussian_posterior_mean():
    # zero-initialised output layers make F ≡ 0, so D(x; σ) = c_skip·x = σ_d²/(σ² + σ_d²)·x, which is exactly
    # E[x0 | x] for x0 ~ N(0, σ_d² I) and x = x0 + σ·ε.
    net = build_edm_unet(TINY).eval()
    x = torch.randn(2, 1, 16, 16)
    for sigma in (0.1, 0.5, 3.0):
        torch.testing.assert_close(net(x, sigma), SIGMA_DATA ** 2 / (sigma ** 2 + SIGMA_DATA ** 2) * x)


def test_edm_loss_of_the_gaussian_posterior_mean_is_one():
    # With D = c_skip·x on N(0, σ_d²) data, the per-pixel error has variance σ²σ_d²/(σ²+σ_d²) = 1/λ(σ)
    # for every σ, so the EDM loss has expectation exactly 1 whatever the log-normal σ draw.
    net = build_edm_unet(TINY)
    gen = torch.Generator().manual_seed(0)
    images = SIGMA_DATA * torch.randn(128, 1, 16, 16, generator=gen)
    with torch.no_grad():
        loss = edm_loss(net, images, generator=gen).item()
    assert loss == pytest.approx(1.0, abs=0.03)  # std of the estimate ≈ sqrt(2/32768) ≈ 0.008


def test_heun_sampler_follows_the_exact_gaussian_flow():
    # For N(0, σ_d²) data the probability-flow ODE is x(σ) = x(σ_max)·√(σ² + σ_d²)/√(σ_max² + σ_d²);
    # Heun is second order, so doubling the steps must cut the error about 4×.
    net = build_edm_unet(TINY).eval()
    start = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 80.0
    exact = start * SIGMA_DATA / math.sqrt(80.0 ** 2 + SIGMA_DATA ** 2)
    errors = []
    for steps in (24, 48):
        samples = heun_sample(net, 1, num_steps=steps, generator=torch.Generator().manual_seed(1))
        errors.append(((samples - exact).norm() / exact.norm()).item())
    assert errors[1] < 0.01
    assert 3.0 < errors[0] / errors[1] < 5.5


@pytest.mark.parametrize("make_sigma", [
    lambda s, b: s,                                   # python float
    lambda s, b: torch.tensor(s),                     # 0-d tensor (InverseBench: torch.as_tensor(sigma))
    lambda s, b: torch.tensor([s]),                   # one-element tensor
    lambda s, b: torch.full((b,), s),                 # per-batch
    lambda s, b: torch.full((b, 1, 1, 1), s, dtype=torch.float64),
])
def test_sigma_forms_agree(make_sigma):
    net = tiny_net()
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(net(x, make_sigma(0.7, 3)), net(x, 0.7))


def test_per_sample_sigma_and_dtype_and_gradient():
    net = tiny_net()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    out = net(x, torch.tensor([0.3, 2.0]))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[1:], net(x[1:], 2.0), atol=1e-4, rtol=1e-3)  # float32 inside
    out.sum().backward()  # DPS-style algorithms differentiate through the denoiser
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one value per batch element"):
        net(x.detach(), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"\(B, 1, 16, 16\)"):
        net(torch.randn(2, 3, 16, 16), 0.5)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        net(x.detach(), -0.1)
    with pytest.raises(ValueError, match="img_resolution=16"):
        net(torch.randn(2, 1, 32, 32), 0.5)


def test_unet_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible by 8"):
        SmallUNet(img_resolution=36, channel_mult=(1, 2, 2), patch_size=2)
    with pytest.raises(ValueError, match="patch_size"):
        SmallUNet(patch_size=0)


def test_save_and_load_round_trip(tmp_path):
    net = tiny_net(patch_size=2, img_resolution=16, channel_mult=[1, 2], attn_resolutions=[4])
    x = torch.randn(2, 1, 16, 16)
    path = save_prior(tmp_path / "p.pt", net, {"dataset": "cells", "seed": 3})
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format"] == "lmaps-prior" and raw["meta"]["seed"] == 3
    loaded = load_prior(path)
    assert isinstance(loaded, EDMPrecond) and loaded.meta["dataset"] == "cells"
    assert loaded.meta["unet"]["patch_size"] == 2 and read_meta(path)["seed"] == 3
    torch.testing.assert_close(loaded(x, 0.4), net(x, 0.4), atol=0, rtol=0)
    half = load_prior(save_prior(tmp_path / "h.pt", net, {}, dtype=torch.float16))
    assert next(half.parameters()).dtype == torch.float32
    torch.testing.assert_close(half(x, 0.4), net(x, 0.4), atol=2e-2, rtol=2e-2)
    with pytest.raises(TypeError, match="JSON"):
        save_prior(tmp_path / "bad.pt", net, {"when": object()})


def test_pickled_module_is_refused_without_trust(tmp_path):
    net = tiny_net()
    path = tmp_path / "pickled.pt"
    torch.save({"ema": net}, path)  # InverseBench's pickled-module layout
    with pytest.raises(UntrustedCheckpointError) as err:
        load_prior(path)
    message = str(err.value)
    assert "unpickling runs code" in message and "trust_pickle=True" in message
    trusted = load_prior(path, trust_pickle=True)
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(trusted(x, 0.5), net(x, 0.5))


@pytest.mark.parametrize("key", ["ema", "net"])
def test_inversebench_state_dict_checkpoints_load_into_a_module(tmp_path, key):
    net = tiny_net(seed=1)
    path = tmp_path / f"{key}.pt"
    torch.save({key: net.state_dict(), "step": 5}, path)
    fresh = tiny_net(seed=2)
    loaded = load_prior(path, module=fresh)
    assert loaded is fresh
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(loaded(x, 0.5), net(x, 0.5), atol=0, rtol=0)
    with pytest.raises(ValueError, match="module="):
        load_prior(path)


def test_missing_and_unknown_priors():
    with pytest.raises(FileNotFoundError):
        load_prior("/nonexistent/prior.pt")
    with pytest.raises(ValueError, match="valid names"):
        builtin_prior("no-such-prior")


def test_default_architecture_is_small():
    net = build_edm_unet(default_unet_config(1, 64))
    assert 2e5 < sum(p.numel() for p in net.parameters()) < 1e6
    assert net(torch.randn(1, 1, 64, 64), 1.0).shape == (1, 1, 64, 64)


SHIPPED = builtin_prior_names()


def test_faces_and_cells_priors_are_shipped():
    assert {"faces64", "cells64"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_prior_denoises_held_out_images(name):
    from importlib import resources

    path = resources.files("lmaps_plugin.priors") / "weights" / f"{name}.pt"
    assert path.stat().st_size < 2_000_000
    net = builtin_prior(name)  # weights_only load
    meta = net.meta
    assert meta["split"] == "train" and (net.img_channels, net.img_resolution) == (meta["channels"], 64)
    images = builtin_dataset(meta["dataset"], resolution=64, num_images=8, channels=net.img_channels,
                             split="test").images
    for sigma, margin in ((0.2, 4.0), (0.5, 8.0)):
        report = denoising_report(net, images, sigma, seed=0)
        assert report["denoised"] > report["noisy"] + margin, report
        assert report["denoised"] > report["best_blur"], report


@pytest.mark.inversebench
@pytest.mark.skipif(not os.environ.get("INVERSEBENCH_ROOT"), reason="INVERSEBENCH_ROOT is not set")
@pytest.mark.parametrize("algorithm", ["dps", "daps", "reddiff"])
def test_inversebench_algorithms_run_on_our_prior(algorithm):
    """InverseBench's own samplers call ``net(x, sigma)`` with 0-d tensors / floats and differentiate through it."""
    from lmaps_plugin import inversebench as ib
    from lmaps_plugin.operators.matrix import MatrixOperator

    net = tiny_net()
    gen = torch.Generator().manual_seed(0)
    op = MatrixOperator(torch.randn(40, 256, generator=gen) / 16, (1, 16, 16), sigma_noise=0.05)
    observation = op({"target": torch.rand(1, 1, 16, 16, generator=gen) * 2 - 1})
    schedule = dict(num_steps=3, sigma_min=0.01, sigma_final=0, schedule="linear", timestep="poly-7")
    if algorithm == "dps":
        algo = ib.import_upstream("algo.dps", "test").DPS(
            net, op, dict(num_steps=4, schedule="vp", timestep="vp", scaling="vp"), guidance_scale=1.0)
    elif algorithm == "daps":
        algo = ib.import_upstream("algo.daps", "test").DAPS(
            net, op, annealing_scheduler_config={**schedule, "sigma_max": 10}, diffusion_scheduler_config=schedule,
            lgvd_config=dict(num_steps=3, lr=1e-4, tau=0.01, lr_min_ratio=0.01))
    else:
        algo = ib.import_upstream("algo.reddiff", "test").REDDiff(net, op, num_steps=4)
    torch.manual_seed(0)
    out = algo.inference(observation, num_samples=1)
    assert out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("flag", ["no", "off", "false", "False", "0", "", 0, 1, None, "yes"])
def test_trust_pickle_accepts_only_real_booleans(tmp_path, flag):
    marker, zipped, bare = evil_checkpoints(tmp_path)
    for path in (zipped, bare):
        with pytest.raises(TypeError, match="trust_pickle must be the boolean true or false"):
            load_prior(path, trust_pickle=flag)
    assert not marker.exists()


def test_untrusted_evil_checkpoint_never_runs(tmp_path):
    marker, zipped, bare = evil_checkpoints(tmp_path)
    for path in (zipped, bare):
        with pytest.raises(UntrustedCheckpointError):
            load_prior(path)
    assert not marker.exists()


def test_bare_pickle_is_refused_before_unpickling_even_when_trusted(tmp_path):
    marker, _, bare = evil_checkpoints(tmp_path)
    with pytest.raises(ValueError, match="does not unpickle such files"):
        load_prior(bare, trust_pickle=True)
    assert not marker.exists()
