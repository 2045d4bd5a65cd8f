"""lmaps_auto on a χ² loss (the black hole's closure quantities): σ_y² = Σ_t W_t / Σ_t M_t read off the operator,
and Table 4's black-hole row, with a warning, when the data counts cannot be read."""
from __future__ import annotations

import math

import pytest
import torch

from lmaps_plugin.operators.capabilities import operator_capabilities
from lmaps_plugin.schedules import prior_weight
from lmaps_plugin.weighting import (Calibration, Chi2Term, calibrate, chi2_noise_variance, chi2_terms,
                                    loss_weighting)

N = 12
LIKE = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
SIGMAS = (20.0, 1.0, 0.3, 0.05, 0.002)


def _problem(counts=(7, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    mats = [torch.randn(m, N, generator=gen, dtype=torch.float64) for m in counts]
    truth = torch.randn(1, 1, 3, 4, generator=gen, dtype=torch.float64)
    ys = [a @ truth.flatten() for a in mats]
    return mats, truth, ys


class DeclaredChi2:
    """loss = Σ_t W_t · mean(((A_t x − y_t)/σ)²), declaring its terms (W_t, M_t)."""

    def __init__(self, mats, sigma, weights):
        self.mats, self.sigma, self.weights = mats, sigma, weights
        self.counts = [a.shape[0] for a in mats]

    def split(self, y):
        return torch.split(y, self.counts, dim=-1)

    def forward(self, x):
        return torch.cat([x.flatten(1) @ a.T for a in self.mats], dim=-1)

    def loss(self, x, y):
        parts = self.split(y)
        return sum(w * (((x.flatten(1) @ a.T) - p) / self.sigma).square().mean(-1)
                   for w, a, p in zip(self.weights, self.mats, parts))

    def chi2_terms(self):
        return [(f"t{i}", w, m) for i, (w, m) in enumerate(zip(self.weights, self.counts))]


class StackedLeastSquares:
    """The equivalent unnormalised problem: ‖A x − y‖² with A the stacked A_t and noise σ."""

    def __init__(self, mats, sigma):
        self.a, self.sigma_noise = torch.cat(mats), sigma

    def loss(self, x, y):
        return ((x.flatten(1) @ self.a.T) - y).square().sum(-1)


class LayoutChi2:
    """An operator with InverseBench's black-hole attribute layout: ``weight_cp = w2·cphase_dim`` and so on, χ²
    methods on the unnormalised image, ``decompress`` and a loss of 2·Σ_t weight_t·χ²_t."""

    def __init__(self, mats, sigma, w=(1.0, 1.0), counts=True, observation_time_ratio=1.0):
        self.mats, self.sigma = mats, sigma
        self.observation_time_ratio = observation_time_ratio
        if counts:
            self.cphase_dim, self.logcamp_dim = (a.shape[0] for a in mats)
        self.weight_cp = w[0] * mats[0].shape[0]
        self.weight_camp = w[1] * mats[1].shape[0]

    def unnormalize(self, x):
        return (x + 1.0) * 0.5

    def decompress(self, y):
        m0, m1 = self.mats[0].shape[0], self.mats[1].shape[0]
        sig = torch.full_like(y, self.sigma)
        return (None, None, y[..., :m0], sig[..., :m0], y[..., m0:m0 + m1], sig[..., m0:m0 + m1])

    def _chi2(self, a, image, value, sigma):
        return (((image.flatten(1) @ a.T) - value) / sigma).square().mean(-1)

    def chi2_cphase(self, image, value, sigma):
        return self._chi2(self.mats[0], image, value, sigma)

    def chi2_logcamp(self, image, value, sigma):
        return self._chi2(self.mats[1], image, value, sigma)

    def loss(self, x, y):
        _, _, cp, scp, lc, slc = self.decompress(y)
        image = self.unnormalize(x)
        return 2.0 * (self.weight_cp * self.chi2_cphase(image, cp, scp)
                      + self.weight_camp * self.chi2_logcamp(image, lc, slc))


def _data_weight(weighting, sigma):
    r, k2 = weighting(sigma, None)
    return r * k2 / (1.0 - r)


def test_noise_variance_is_total_weight_over_total_count():
    terms = [Chi2Term("cp", 6.0, 3), Chi2Term("camp", 10.0, 5), Chi2Term("amp", 0.0, 100)]
    assert chi2_noise_variance(terms) == pytest.approx(16.0 / 8.0)
    # at a noise-level fit (every χ²_t = 1) L = Σ W_t matches 2σ_y²·NLL, NLL = ½ Σ M_t
    unequal = [Chi2Term("a", 3.0, 2), Chi2Term("b", 1.0, 6)]
    assert sum(t.weight for t in unequal) == pytest.approx(2 * chi2_noise_variance(unequal) * 0.5 * 8)
    with pytest.raises(ValueError):
        chi2_noise_variance([Chi2Term("amp", 0.0, 4)])


@pytest.mark.parametrize("scale", [1.0, 0.25, 3.0])
def test_chi2_weight_equals_least_squares_weight_of_equivalent_problem(scale):
    """W_t = s·M_t, common σ: L = (s/σ²)·‖Ax − y‖², so the weight lmaps_auto puts on ½L times L must be the
    weight calibrate() puts on ½‖Ax − y‖² (the unnormalised problem with sigma_noise = σ) times ‖Ax − y‖²."""
    mats, truth, ys = _problem()
    sigma = 0.3
    y = torch.cat(ys)[None] + 0.0
    chi2_op = DeclaredChi2(mats, sigma, [scale * a.shape[0] for a in mats])
    ls_op = StackedLeastSquares(mats, sigma)
    assert operator_capabilities(chi2_op).chi2_terms and not operator_capabilities(ls_op).chi2_terms
    chi2 = loss_weighting(chi2_op, y, LIKE, lam=1.4)
    ls_rule = calibrate(ls_op, y, lam=1.4)
    assert ls_rule.sigma_y == sigma  # the σ_y floor is not what sets it here
    x = torch.randn(1, 1, 3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for s in SIGMAS:
        w_ls = ls_rule.data_weight(s)
        assert _data_weight(chi2, s) * float(chi2_op.loss(x, y)) == pytest.approx(w_ls * float(ls_op.loss(x, y)),
                                                                                  rel=1e-9)
        # in Table 4's parameters at the χ² loss's own scale: k2 = k1²/(λ σ_y²), σ_y² = s
        assert _data_weight(chi2, s) == pytest.approx(Calibration(math.sqrt(scale), lam=1.4).data_weight(s))


def test_layout_counts_and_loss_factor_are_read_from_the_operator():
    mats, truth, ys = _problem(counts=(9, 4))
    op = LayoutChi2(mats, sigma=0.5, w=(1.0, 3.0))
    y = torch.cat(ys)[None]
    terms = {t.name: t for t in chi2_terms(op, y, LIKE)}
    assert set(terms) == {"cphase", "logcamp"}
    assert terms["cphase"].count == 9 and terms["logcamp"].count == 4
    # the loss doubles the weighted sum: W_t = 2·w_t·M_t
    assert terms["cphase"].weight == pytest.approx(2 * 9) and terms["logcamp"].weight == pytest.approx(2 * 3 * 4)
    assert chi2_noise_variance(terms.values()) == pytest.approx((18 + 24) / 13)
    weighting = loss_weighting(op, y, LIKE, lam=1.0)
    for s in SIGMAS:
        assert _data_weight(weighting, s) == pytest.approx(Calibration(math.sqrt(42 / 13)).data_weight(s))


def test_unreadable_counts_fall_back_to_the_table4_row_with_one_warning_line():
    mats, truth, ys = _problem()
    op = LayoutChi2(mats, sigma=0.5, counts=False, observation_time_ratio=0.1)
    y = torch.cat(ys)[None]
    assert operator_capabilities(op).chi2_terms and chi2_terms(op, y, LIKE) is None
    with pytest.warns(RuntimeWarning, match=r"data counts cannot be read.*10% row k1=0\.1, k2=0\.03") as caught:
        weighting = loss_weighting(op, y, LIKE, k1=0.22, k2=100.0)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    for s in SIGMAS:
        assert weighting(s, None) == (prior_weight(s, 0.1), 0.03)
    op.observation_time_ratio = 0.03
    with pytest.warns(RuntimeWarning, match=r"3% row k1=0\.05, k2=0\.05"):
        assert loss_weighting(op, y, LIKE)(1.0, None) == (prior_weight(1.0, 0.05), 0.05)


def test_other_losses_keep_the_configured_weights():
    class Scaled:
        def loss(self, x, y):
            return 3.0 * (x.flatten(1) - y).square().sum(-1)

    with pytest.warns(RuntimeWarning, match=r"not the plain sum of squares.*k1=0\.22, k2=100"):
        weighting = loss_weighting(Scaled(), torch.zeros(1, N), LIKE, k1=0.22, k2=100.0, mismatch=2.0)
    assert weighting(0.5, None) == (prior_weight(0.5, 0.22), 100.0)


def test_bad_declared_terms_count_as_unreadable():
    mats, truth, ys = _problem()
    op = DeclaredChi2(mats, 0.3, [1.0, 1.0])
    op.chi2_terms = lambda: [("t0", 1.0, 0)]  # a count of 0 is no count
    y = torch.cat(ys)[None]
    assert chi2_terms(op, y, LIKE) is None
    with pytest.warns(RuntimeWarning, match="data counts cannot be read"):
        loss_weighting(op, y, LIKE)


def test_lmaps_auto_uses_the_chi2_weight():
    """LMAPS(calibrate=True) on a χ² operator: the data weight of σ_y² = Σ W_t / Σ M_t, no warning."""
    import warnings

    from lmaps_plugin import LMAPS

    class Net:
        img_shape = (1, 3, 4)
        sigma_data = 0.5

    mats, truth, ys = _problem()
    op = DeclaredChi2(mats, 0.3, [2.0 * a.shape[0] for a in mats])
    y = torch.cat(ys)[None]
    lmaps = LMAPS(Net(), op, calibrate=True, calib_lambda=1.4, k1=0.22, k2=100.0, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weighting = lmaps.weighting(y)
    for s in SIGMAS:
        assert _data_weight(weighting, s) == pytest.approx(Calibration(math.sqrt(2.0), lam=1.4).data_weight(s))


def test_chi2_calibration_is_the_rule_lmaps_calibrate_prints():
    """chi2_calibration: σ_y² = Σ W_t / Σ M_t for a readable χ² loss; None for other operators and unreadable counts."""
    from lmaps_plugin.weighting import chi2_calibration

    mats, truth, ys = _problem()
    weights = [2.0 * a.shape[0] for a in mats]
    op = DeclaredChi2(mats, 0.3, weights)
    y = torch.cat(ys)[None]
    rule = chi2_calibration(op, y, LIKE, lam=1.4)
    assert rule.sigma_y == pytest.approx(math.sqrt(sum(weights) / sum(a.shape[0] for a in mats)))
    assert rule.lam == 1.4
    op.chi2_terms = lambda: [("t0", 1.0, 0)]
    assert chi2_calibration(op, y, LIKE) is None

    class Plain:
        def loss(self, x, y):
            return (x.flatten(1) - y).square().sum(-1)

    assert chi2_calibration(Plain(), torch.zeros(1, 12), LIKE) is None
