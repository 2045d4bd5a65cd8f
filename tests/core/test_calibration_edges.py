"""lmaps_auto's rule (docs/calibration.md) at its edges: the formulas by hand, the noise floor, complex noise,
the prior's σ_d, every refused input naming its key, the table ``describe`` prints and the ``lmaps-calibrate``
command on a linear, a blurred and a non-linear problem."""
from __future__ import annotations

import math

import pytest
import torch

from lmaps_plugin.weighting import (NOISE_FLOOR, VARIANCE_MODELS, Calibration, calibrate, describe,
                                      effective_noise_std, prior_variance)
from lmaps_plugin.operators import MatrixOperator

DT = torch.float64


@pytest.mark.parametrize("sigma,sd", [(0.05, 0.5), (0.5, 0.5), (3.0, 0.7), (40.0, 0.2)])
def test_prior_variance_is_the_gaussian_posterior_variance_or_sigma_squared(sigma, sd):
    """v_σ = 1/(1/σ² + 1/σ_d²): the variance of x0 | x_σ for a prior N(·, σ_d²); 'sigma2' is σ²."""
    assert prior_variance(sigma, sd) == pytest.approx(1.0 / (1.0 / sigma ** 2 + 1.0 / sd ** 2), rel=1e-13)
    assert prior_variance(sigma, sd, "gaussian") == prior_variance(sigma, sd)
    assert prior_variance(sigma, sd, "sigma2") == pytest.approx(sigma ** 2, rel=1e-15)
    assert prior_variance(sigma) == pytest.approx(1.0 / (1.0 / sigma ** 2 + 4.0), rel=1e-13)     # σ_d = 0.5
    with pytest.raises(ValueError, match=r"variance model must be one of \('gaussian', 'sigma2'\), got 'sigma'"):
        prior_variance(sigma, sd, "sigma")


def test_weights_reproduce_the_ratio_and_k1_the_small_sigma_rule():
    cal = Calibration(sigma_y=0.04, lam=1.5, sigma_data=0.6, variance="gaussian")
    for sigma in (0.01, 0.3, 5.0):
        w = prior_variance(sigma, 0.6) / (1.5 * 0.04 ** 2)
        assert cal.data_weight(sigma) == pytest.approx(w, rel=1e-13)
        r, k2 = cal.weights(sigma)
        assert k2 == 1.0 and r == pytest.approx(w / (1 + w), rel=1e-13)
    # Table 4's weight at small σ is k2·σ²/k1²; the rule's is σ²/(λ·σ_y²): equal when k1² = λ·σ_y²·k2
    for k2 in (1.0, 100.0):
        k1 = cal.equivalent_k1(k2)
        assert k1 == pytest.approx(math.sqrt(1.5 * 0.04 ** 2 * k2), rel=1e-14)
        sigma = 1e-4
        assert k2 * sigma ** 2 / k1 ** 2 == pytest.approx(cal.data_weight(sigma), rel=1e-6)
    assert Calibration(sigma_y=0.1).lam == 1.0 and Calibration(sigma_y=0.1).sigma_data == 0.5
    assert Calibration(sigma_y=0.1).variance == "gaussian"


@pytest.mark.parametrize("key", ["sigma_y", "lam", "sigma_data"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan, True, "1"])
def test_calibration_refuses_what_is_not_a_positive_finite_number(key, value):
    with pytest.raises(ValueError, match=f"Calibration: {key}=.* is invalid; it must be a finite number > 0"):
        Calibration(**{"sigma_y": 0.1, key: value})


def test_calibration_refuses_an_unknown_variance_model():
    assert VARIANCE_MODELS == ("gaussian", "sigma2")
    with pytest.raises(ValueError, match="variance='paper' is invalid"):
        Calibration(sigma_y=0.1, variance="paper")
    Calibration(sigma_y=1e-300, lam=1e300, sigma_data=1e-9, variance="sigma2")


def test_noise_floor_and_complex_noise():
    """σ_y per real component (σ/√2 for complex noise), at least NOISE_FLOOR × RMS(y) (a 60 dB SNR)."""
    assert NOISE_FLOOR == 1e-3
    assert effective_noise_std(0.2, False, 1.0) == 0.2
    assert effective_noise_std(0.2, True, 1.0) == pytest.approx(0.2 / math.sqrt(2), rel=1e-15)
    assert effective_noise_std(0.0, False, 7.0) == pytest.approx(7e-3, rel=1e-15)
    assert effective_noise_std(1e-4, True, 1.0) == pytest.approx(1e-3, rel=1e-15)       # the floor wins
    assert effective_noise_std(2e-3, False, 1.0) == 2e-3                                   # just above it


def test_calibrate_reads_the_noise_the_rms_and_the_prior():
    a = torch.eye(4, dtype=DT)
    y = torch.tensor([[3.0, -4.0, 0.0, 0.0]], dtype=DT)                       # RMS = 2.5
    noiseless = MatrixOperator(a, (4, 1, 1), sigma_noise=0.0)
    assert calibrate(noiseless, y).sigma_y == pytest.approx(2.5e-3, rel=1e-14)
    yc = torch.tensor([[3.0 + 4.0j, 0.0, 0.0, 0.0]], dtype=torch.complex128)  # |z|² mean = 25/4
    assert calibrate(noiseless, yc).sigma_y == pytest.approx(2.5e-3, rel=1e-14)

    class Net:
        sigma_data = 0.8

    class Zero:
        sigma_data = 0.0

    noisy = MatrixOperator(a, (4, 1, 1), sigma_noise=0.1)
    assert calibrate(noisy, y, Net()).sigma_data == 0.8
    assert calibrate(noisy, y, None).sigma_data == 0.5 and calibrate(noisy, y, Zero()).sigma_data == 0.5
    cal = calibrate(noisy, y, Net(), lam=2.0, variance="sigma2")
    assert (cal.sigma_y, cal.lam, cal.variance) == (0.1, 2.0, "sigma2")
    assert calibrate(noisy, y).lam == 1.0 and calibrate(noisy, y).variance == "gaussian"
    with pytest.raises(ValueError, match="observation is all zeros and sigma_noise is 0"):
        calibrate(noiseless, torch.zeros(1, 4, dtype=DT))


@pytest.mark.parametrize("value", [None, True, "0.1", math.nan, math.inf, -0.1])
def test_calibrate_refuses_an_operator_without_a_usable_noise_level(value):
    op = MatrixOperator(torch.eye(4, dtype=DT), (4, 1, 1), sigma_noise=0.1)
    op.sigma_noise = value
    with pytest.raises(ValueError, match=r"MatrixOperator.sigma_noise = .*expected a finite number >= 0"):
        calibrate(op, torch.ones(1, 4, dtype=DT))


def parse_rows(text):
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5:
            try:
                rows.append([float(p) if p != "-" else None for p in parts])
            except ValueError:
                continue
    return rows


@pytest.mark.parametrize("rows", [2, 3, 5])
@pytest.mark.parametrize("gram_norm", [None, 2.5])
def test_describe_tabulates_the_rule_at_evenly_spread_levels(rows, gram_norm):
    cal = Calibration(sigma_y=0.05, lam=1.5, sigma_data=0.5)
    sigmas = [10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.0]          # the trailing 0 is not a level
    text = describe(cal, sigmas, gram_norm=gram_norm, rows=rows)
    table = parse_rows(text)
    levels = sigmas[:-1]
    expected_levels = [levels[round(i * (len(levels) - 1) / (rows - 1))] for i in range(rows)]
    assert [row[0] for row in table] == pytest.approx(expected_levels, rel=1e-3)
    for sigma, v, w, r, stiff in table:
        assert v == pytest.approx(prior_variance(sigma, 0.5), rel=1e-3)
        assert w == pytest.approx(cal.data_weight(sigma), rel=1e-3)
        assert r == pytest.approx(cal.weights(sigma)[0], abs=1e-8)
        assert stiff == (None if gram_norm is None else pytest.approx(cal.data_weight(sigma) * gram_norm, rel=1e-3))
    assert ("lambda_max(J^T J) = 2.5" in text) == (gram_norm is not None)
    header = [line for line in text.splitlines() if line.split()[:2] == ["sigma", "v_sigma"]]
    assert [line.split() for line in header] == [["sigma", "v_sigma", "w", "=", "v/(lam", "sy^2)", "r", "(k2=1)",
                                                  "w*lambda_max"]]
    assert text.splitlines()[0] == ("lmaps_auto: sigma_y = 0.05 (per real component), lambda = 1.5, v_sigma model = "
                                    "gaussian (sigma_data = 0.5)")
    assert (f"k1 = {math.sqrt(1.5 * 0.0025 * 100):.4g} for k2 = 100, {math.sqrt(1.5 * 0.0025):.4g} for k2 = 1"
            in text.splitlines()[-1])


def test_describe_with_more_rows_than_levels_shows_each_level_once():
    table = parse_rows(describe(Calibration(sigma_y=0.1), [2.0, 1.0, 0.0], rows=8))
    assert [row[0] for row in table] == [2.0, 1.0]
    assert len(parse_rows(describe(Calibration(sigma_y=0.1), [3.0, 2.0, 1.0], rows=1))) == 1


def test_lmaps_calibrate_on_a_blur_and_a_non_linear_problem(capsys):
    """The solve it names follows the operator: CG (with lmaps_auto's cg_tol and cap) for a blur without an
    eigenbasis, gradient descent with η = 1/L for phase retrieval; the grid runs from σ_max to σ_min."""
    from lmaps_plugin.app.calibrate import main

    assert main(["problem=motion_deblur"]) == 0
    out = capsys.readouterr().out
    assert "local MAP solve: exact: conjugate gradient (cg_tol=0.01, cg_max_iter=100, warm-started)" in out
    rows = parse_rows(out)
    assert rows[0][0] == pytest.approx(100.0) and rows[-1][0] == pytest.approx(0.1) and len(rows) == 8
    assert "lambda_max" not in out.split("local MAP solve")[1].split("equivalent Table-4")[0].replace(
        "w*lambda_max", "")                                   # CG measures no λ_max
    assert main(["problem=phase_retrieval"]) == 0
    out = capsys.readouterr().out
    assert "local MAP solve: gradient descent: K=20 steps with eta = 1/((1-r) + r*k2*lambda_max)" in out
    assert "lambda_max(J^T J) = " in out
    assert main(["--help"]) == 0 and "lmaps-calibrate" in capsys.readouterr().out
    assert main(["-h"]) == 0 and "lmaps-calibrate" in capsys.readouterr().out


def test_lmaps_calibrate_reads_its_arguments_from_the_command_line(capsys, monkeypatch):
    import sys

    from lmaps_plugin.app.calibrate import main

    monkeypatch.setattr(sys, "argv", ["lmaps-calibrate", "--help"])
    assert main() == 0 and "lmaps-calibrate problem=sr4" in capsys.readouterr().out


def test_lmaps_calibrate_reports_lambda_max_of_the_eigenbasis(capsys):
    """sr4: the exact solve in the Gram eigenbasis; λ_max(HᵀH) = σ_max(W)⁴ for H X = W X Wᵀ."""
    from lmaps_plugin.app.calibrate import main
    from lmaps_plugin.operators.linear import bicubic_downsampling_matrix

    assert main(["problem=sr4"]) == 0
    out = capsys.readouterr().out
    assert "local MAP solve: exact: Gram eigenbasis" in out
    w = bicubic_downsampling_matrix(64, 16)
    lam = float(torch.linalg.svdvals(w)[0]) ** 4
    assert f"lambda_max(J^T J) = {lam:.4g}" in out


def test_lmaps_auto_measures_the_surrogate_error_at_every_steps_denoised_estimate():
    """Sampler level: the r of each step is the rule's with e² = mean (H(x̂0) − H′(x̂0))² at that step's x̂0 (here
    2-bit quantization with the identity surrogate, computed by hand), and with e² = 0 for exact operators."""
    from lmaps_plugin import LMAPS
    from lmaps_plugin.weighting import surrogate_mismatch
    from lmaps_plugin.operators.registry import build_operator
    from lmaps_plugin.priors.gmm import GaussianMixturePrior

    prior = GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, 64, dtype=DT), 0.3 * torch.eye(64, dtype=DT)[None],
                                                  img_shape=(1, 8, 8))
    op = build_operator("quantization", sigma_noise=0.05)
    y = op(torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=DT) * 2 - 1)
    seen = []
    solver = LMAPS(prior, op, num_steps=4, sigma_max=3.0, sigma_min=0.2, calibrate=True, calib_lambda=1.3,
                   inner_solver="auto", lr=None, inner_steps=2, verbose=False)
    solver.inference(y, generator=torch.Generator().manual_seed(3), callback=lambda info: seen.append(
        (info["sigma"], info["r"], info["denoised"])))
    rms = float(y.square().mean().sqrt())
    sigma_y = max(0.05, 1e-3 * rms)
    for sigma, r, x_hat in seen:
        e2 = float((op.forward_exact(x_hat) - x_hat).square().mean())
        assert e2 > 1e-3 and surrogate_mismatch(op, x_hat) == pytest.approx(e2, rel=1e-12)
        w = prior_variance(sigma, 0.5) / (1.3 * (sigma_y ** 2 + e2))
        assert r == pytest.approx(w / (1 + w), rel=1e-12)

    class NoExact:
        is_differentiable = False

        def forward_surrogate(self, x):
            return x

    assert surrogate_mismatch(NoExact(), torch.ones(1, 4)) == 0.0

    class NoSurrogate:
        is_differentiable = False

        def forward_exact(self, x):
            return x.round()

    assert surrogate_mismatch(NoSurrogate(), torch.full((1, 4), 0.4)) == 0.0


def test_calibrate_names_an_operator_without_a_noise_level():
    class Bare:
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match=r"Bare.sigma_noise = None, expected a finite number >= 0"):
        calibrate(Bare(), torch.ones(1, 4, dtype=DT))


def test_describe_follows_the_variance_model():
    cal = Calibration(sigma_y=0.05, variance="sigma2")
    table = parse_rows(describe(cal, [4.0, 1.0, 0.25, 0.0], rows=3))
    assert [row[1] for row in table] == pytest.approx([16.0, 1.0, 0.0625], rel=1e-3)


def test_lmaps_calibrate_follows_the_configured_grid_variance_model_and_surrogate(capsys):
    """The table's levels are the configured poly-ρ grid (ρ = 3, N = 50 here), v_σ follows calib_variance
    (σ² for 'sigma2'), and a non-differentiable operator reports its surrogate's model error: 2-bit
    quantization with the identity surrogate, RMS ≈ Δ/√12 = 0.19 for Δ = 2/3 (image values spread over the bins)."""
    from lmaps_plugin.app.calibrate import main
    from lmaps_plugin.schedules import poly_sigmas

    assert main(["problem=quantization", "algorithm.method.rho=3", "algorithm.method.num_steps=50",
                 "algorithm.method.calib_variance=sigma2"]) == 0
    out = capsys.readouterr().out
    rows = parse_rows(out)
    grid = poly_sigmas(50, 0.1, 100.0, 3.0)[:-1].tolist()
    assert [r[0] for r in rows] == pytest.approx([grid[round(i * 49 / 7)] for i in range(8)], rel=1e-3)
    assert [r[1] for r in rows] == pytest.approx([r[0] ** 2 for r in rows], rel=2e-3)
    rms = float(out.split("surrogate model error at the first test image: RMS ")[1].split()[0])
    assert rms == pytest.approx((2 / 3) / math.sqrt(12), rel=0.2)
