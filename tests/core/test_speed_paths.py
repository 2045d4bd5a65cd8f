"""The fast paths of the LMAPS inner solver against the plain iterations they replace.

* ``gd_local_map(..., closed_form=True)`` sums K gradient steps in a Gram eigenbasis; it must
  land on the point that K plain steps (``closed_form=False``) reach, to float64 rounding, for
  every registered linear operator that offers an eigenbasis, for stable and divergent step
  sizes and K = 1; operators without one (or with a non-default loss) must run the iterations.
* The eigenbasis must be orthogonal and reconstruct HᵀH.
* The in-place iteration must never modify x̂0, y or a tensor already handed to a callback.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from lmaps_plugin.local_map import cg_local_map, gd_local_map, gd_step_coefficients
from lmaps_plugin.local_map.gd import _gd_iterations
from lmaps_plugin.operators import MatrixOperator, available_operators, build_operator, get_operator
from lmaps_plugin.operators.base import GramEigenbasis, Operator
from lmaps_plugin.operators.blur import GaussianBlur
from lmaps_plugin.operators.linear import RandomInpainting
from lmaps_plugin.schedules import poly_sigmas, prior_weight
from lmaps_plugin.local_map import InnerSettings, LMAPSDivergenceError
from lmaps_plugin.sampler import sample_lmaps

DT = torch.float64
RES, CHANNELS = 24, 3
TOL = 1e-10


class EighMatrixOperator(MatrixOperator):
    """A dense operator with a dense-``eigh`` Gram eigenbasis: the closed form on an H with no
    structure at all (the shipped ``MatrixOperator`` offers none)."""

    def gram_eigenbasis(self, like):
        values, vectors = torch.linalg.eigh(self.matrix.T @ self.matrix)
        v = vectors.to(like.dtype)
        return GramEigenbasis(values.clamp_min(0.0),
                              to_basis=lambda x: x.flatten(1) @ v,
                              from_basis=lambda c: (c @ v.T).reshape(c.shape[0], *self.image_shape))


def linear_operator_names() -> list[str]:
    return [name for name in sorted(available_operators())
            if getattr(get_operator(name), "is_linear", False)]


def make(name: str):
    """Operator ``name`` for RES² images (a Gaussian blur wide enough to be ill-conditioned)."""
    if name == "matrix":
        gen = torch.Generator().manual_seed(0)
        n = CHANNELS * RES * RES
        return MatrixOperator(torch.randn(300, n, generator=gen, dtype=DT) / math.sqrt(n),
                              (CHANNELS, RES, RES))
    extra = {"kernel_size": 9, "std": 2.0} if name == "gaussian_deblur" else {}
    return build_operator(name, resolution=RES, channels=CHANNELS, sigma_noise=0.05, **extra)


def problem(op, batch: int = 2, seed: int = 0):
    """(x̂0, y): a random estimate and a noisy observation of another image."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *op.image_shape) if isinstance(op, MatrixOperator) else (batch, CHANNELS, RES, RES)
    x_hat = torch.randn(shape, generator=gen, dtype=DT)
    truth = torch.rand(shape, generator=gen, dtype=DT) * 2 - 1
    clean = op.forward(truth)
    y = clean + 0.05 * torch.randn(clean.shape, generator=gen, dtype=DT)
    return x_hat, y


def operators_with_basis():
    """(name, operator) for every linear operator with a Gram eigenbasis, plus a dense one."""
    found = []
    for name in linear_operator_names():
        op = make(name)
        x_hat, _ = problem(op)
        if op.gram_eigenbasis(x_hat) is not None:
            found.append((name, op))
    gen = torch.Generator().manual_seed(1)
    found.append(("dense-eigh", EighMatrixOperator(torch.randn(60, 80, generator=gen, dtype=DT) / 9, (5, 4, 4))))
    return found


WITH_BASIS = operators_with_basis()


def lambda_max(op, like) -> float:
    return float(op.gram_eigenbasis(like).eigenvalues.max())


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_the_image_operators_that_should_offer_a_basis_do():
    names = {name for name, _ in WITH_BASIS}
    assert {"sr4", "gaussian_deblur", "inpaint_box", "inpaint_random"} <= names


# -- the coefficients of K steps on one quadratic -----------------------------------------------

@pytest.mark.parametrize("lam,r,k2,lr,steps", [
    (0.0, 0.5, 10.0, 0.1, 50), (0.7, 0.9, 100.0, 0.01, 100), (1.0, 0.999, 20.0, 0.05, 1),
    (1e-9, 1 - 1e-10, 100.0, 0.01, 100), (0.0, 1.0, 100.0, 0.01, 30),      # a ≈ 0 and a = 0
    (1.0, 0.9, 100.0, 0.03, 25), (0.2, 0.5, 1.0, 1.5, 40),                 # |q| > 1: divergent
])
def test_step_coefficients_match_the_scalar_recursion(lam, r, k2, lr, steps):
    """cᴷ of c ← c − η(a·c − b): qᴷ from (c₀, b) = (1, 0), (1 − qᴷ)/a from (0, 1)."""
    a = (1 - r) + r * k2 * lam
    decay, gain = 1.0, 0.0
    for _ in range(steps):
        decay -= lr * a * decay
        gain -= lr * (a * gain - 1.0)
    qk, g = gd_step_coefficients(torch.tensor([lam], dtype=DT), r, k2, lr, steps)
    assert qk.item() == pytest.approx(decay, rel=1e-12, abs=1e-300)
    assert g.item() == pytest.approx(gain, rel=1e-12, abs=1e-300)


# -- the eigenbasis --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,op", WITH_BASIS, ids=[n for n, _ in WITH_BASIS])
def test_eigenbasis_is_orthogonal_and_reconstructs_the_gram_map(name, op):
    v, _ = problem(op, seed=3)
    w, _ = problem(op, seed=4)
    basis = op.gram_eigenbasis(v)
    assert basis.eigenvalues.dtype == DT and bool((basis.eigenvalues >= 0).all())
    cv, cw = basis.to_basis(v), basis.to_basis(w)
    assert rel(basis.from_basis(cv), v) < TOL                                   # V Vᵀ = I
    assert (cv * cw).sum().item() == pytest.approx((v * w).sum().item(), rel=TOL)  # Vᵀ preserves ⟨,⟩
    assert rel(basis.from_basis(basis.eigenvalues * cv), op.adjoint(op.forward(v))) < TOL


# -- closed form == iterations -----------------------------------------------------------------------

#: (r, k2, lr or None for "divergent", K): Table-4 rows, a weak data term, K = 1, r ≈ 1 with k1 = 0
SETTINGS = [(0.9, 100.0, 0.01, 100), (0.3, 5.0, 0.05, 20), (0.999, 20.0, 0.05, 1),
            (prior_weight(100.0, 0.0), 50.0, 0.02, 7), (0.95, 100.0, None, 30)]


@pytest.mark.parametrize("r,k2,lr,steps", SETTINGS)
@pytest.mark.parametrize("name,op", WITH_BASIS, ids=[n for n, _ in WITH_BASIS])
def test_closed_form_equals_the_iterations(name, op, r, k2, lr, steps):
    x_hat, y = problem(op)
    divergent = lr is None
    if divergent:      # η·a_max = 3: the stiffest direction flips and grows by 2× per step
        lr = 3.0 / ((1 - r) + r * k2 * lambda_max(op, x_hat))
    fast, fast_loss = gd_local_map(x_hat, y, op, r, k2, lr, steps, closed_form=True)
    slow, slow_loss = gd_local_map(x_hat, y, op, r, k2, lr, steps, closed_form=False)
    assert rel(fast, slow) < TOL
    assert torch.allclose(fast_loss, slow_loss, rtol=1e-9, atol=0)
    if divergent:      # both blow up, alike
        start = op.loss(x_hat, y)
        assert bool((slow_loss > 1e3 * start).all()) and bool((fast_loss > 1e3 * start).all())


@pytest.mark.parametrize("r,k2", [(0.3, 5.0), (0.9, 100.0), (0.999, 20.0)])
@pytest.mark.parametrize("name,op", WITH_BASIS, ids=[n for n, _ in WITH_BASIS])
def test_exact_solve_in_the_eigenbasis_equals_conjugate_gradient(name, op, r, k2):
    x_hat, y = problem(op)
    fast, fast_loss, _ = cg_local_map(x_hat, y, op, r, k2, closed_form=True)
    slow, _, _ = cg_local_map(x_hat, y, op, r, k2, max_iter=20000, tol=1e-14, closed_form=False)
    assert rel(fast, slow) < 1e-7
    assert torch.allclose(fast_loss, op.loss(fast, y))


def test_exact_solve_at_r_one_puts_observed_pixels_on_y_and_keeps_the_rest():
    op = make("inpaint_random")
    x_hat, y = problem(op)
    x, _, _ = cg_local_map(x_hat, y, op, 1.0, 50.0, closed_form=True)
    mask = op.mask.expand_as(x).bool()
    assert torch.allclose(x[mask], y[mask], rtol=0, atol=1e-12)
    assert torch.equal(x[~mask], x_hat[~mask])


@pytest.mark.parametrize("name", ["inpaint_random", "gaussian_deblur", "sr4"])
def test_closed_form_in_float32_stays_within_float32_rounding(name):
    op = make(name)
    x_hat, y = problem(op)
    x_hat, y = x_hat.float(), y.float()
    fast, _ = gd_local_map(x_hat, y, op, 0.9, 100.0, 0.01, 100, closed_form=True)
    slow, _ = gd_local_map(x_hat, y, op, 0.9, 100.0, 0.01, 100, closed_form=False)
    exact, _ = gd_local_map(x_hat.double(), y.double(), op, 0.9, 100.0, 0.01, 100, closed_form=False)
    assert fast.dtype == torch.float32
    assert rel(fast.double(), exact) < 1e-5 and rel(slow.double(), exact) < 1e-5


def test_operators_without_a_basis_run_the_iterations():
    for name in linear_operator_names():
        op = make(name)
        x_hat, y = problem(op)
        if op.gram_eigenbasis(x_hat) is not None:
            continue
        a, _ = gd_local_map(x_hat, y, op, 0.9, 100.0, 0.01, 10, closed_form=True)
        b, _ = gd_local_map(x_hat, y, op, 0.9, 100.0, 0.01, 10, closed_form=False)
        assert torch.equal(a, b), name


class WeightedRandomInpainting(RandomInpainting):
    """A linear operator whose misfit is 3·‖Hx − y‖²: the basis of HᵀH alone is not the quadratic."""

    def loss(self, pred, observation, **kwargs):
        return 3.0 * super().loss(pred, observation)

    def gradient(self, pred, observation, return_loss=False):
        grad, loss = super().gradient(pred, observation, return_loss=True)
        return (3.0 * grad, 3.0 * loss) if return_loss else 3.0 * grad


def test_an_operator_with_its_own_loss_is_not_summed_in_closed_form():
    op = WeightedRandomInpainting(resolution=RES, channels=CHANNELS)
    plain = RandomInpainting(resolution=RES, channels=CHANNELS)
    x_hat, y = problem(op)
    fast, _ = gd_local_map(x_hat, y, op, 0.9, 10.0, 0.01, 20, closed_form=True)
    slow, _ = gd_local_map(x_hat, y, op, 0.9, 10.0, 0.01, 20, closed_form=False)
    unweighted, _ = gd_local_map(x_hat, y, plain, 0.9, 10.0, 0.01, 20, closed_form=True)
    assert torch.equal(fast, slow)
    assert rel(fast, unweighted) > 1e-3


# -- the whole sampler, closed form on and off --------------------------------------------------------

def shrink(x, sigma):
    """The exact denoiser of a N(0, I) prior."""
    return x / (1 + sigma ** 2)


def run_sampler(op, y, closed_form: bool, **kwargs):
    gen = torch.Generator().manual_seed(5)
    sigmas = poly_sigmas(6, sigma_min=0.1, sigma_max=20.0)
    x = torch.randn(y.shape[0], CHANNELS, RES, RES, generator=gen, dtype=DT) * float(sigmas[0])
    inner = dict(lr=0.01, steps=40, closed_form=closed_form)
    inner.update({k: kwargs.pop(k) for k in ("lr", "step_guard", "max_backoffs") if k in kwargs})
    return sample_lmaps(shrink, x, sigmas, y, op, k1=0.3, k2=100.0, inner=InnerSettings(**inner), disable=True,
                        generator=gen, **kwargs)


@pytest.mark.parametrize("name", ["gaussian_deblur", "inpaint_box"])
def test_sampler_output_is_the_same_with_and_without_the_closed_form(name):
    op = make(name)
    _, y = problem(op)
    assert rel(run_sampler(op, y, True), run_sampler(op, y, False)) < 1e-9


def test_divergent_lr_is_caught_alike_by_both_paths():
    op = make("inpaint_random")
    _, y = problem(op)
    for closed_form in (True, False):           # no backoff: both raise
        with pytest.raises(LMAPSDivergenceError):
            run_sampler(op, y, closed_form, lr=0.5, step_guard=False, max_backoffs=0)
    messages, outputs = [], []
    for closed_form in (True, False):           # with backoff: the same halvings, the same answer
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs.append(run_sampler(op, y, closed_form, lr=0.5, step_guard=False))
        messages.append(sorted(str(w.message) for w in caught if "halvings" in str(w.message)))
    assert messages[0] and messages[0] == messages[1]
    assert rel(outputs[0], outputs[1]) < 1e-9


# -- no tensor is modified after it is handed out -------------------------------------------------------

def test_in_place_iteration_leaves_its_inputs_alone():
    op = make("motion_deblur")
    x_hat, y = problem(op)
    x_copy, y_copy = x_hat.clone(), y.clone()
    versions = (x_hat._version, y._version)
    out = _gd_iterations(x_hat, y, op, 0.9, 100.0, 0.01, 15)
    assert torch.equal(x_hat, x_copy) and torch.equal(y, y_copy)
    assert (x_hat._version, y._version) == versions
    assert out.data_ptr() != x_hat.data_ptr()


@pytest.mark.parametrize("name,closed_form", [("motion_deblur", True), ("gaussian_deblur", False),
                                              ("gaussian_deblur", True)])
def test_callback_tensors_are_never_modified_afterwards(name, closed_form):
    op = make(name)
    _, y = problem(op)
    handed = []

    def keep(info):
        for key in ("x", "denoised", "local_map", "misfit"):
            handed.append((info["i"], key, info[key], info[key].clone(), info[key]._version))

    run_sampler(op, y, closed_form, callback=keep)
    assert len(handed) == 6 * 4
    for i, key, tensor, copy, version in handed:
        assert tensor._version == version, (i, key)
        assert torch.equal(tensor, copy), (i, key)


class HalfSquaredNorm(Operator):
    """loss = ½‖x‖² per sample, whose gradient is ``pred`` itself (returned without a copy)."""

    def forward(self, x, **kwargs):
        return x

    def loss(self, pred, observation, **kwargs):
        return 0.5 * pred.square().flatten(1).sum(1)

    def gradient(self, pred, observation, return_loss=False):
        return (pred, self.loss(pred, observation)) if return_loss else pred


def test_in_place_iteration_is_exact_when_the_gradient_aliases_the_iterate():
    gen = torch.Generator().manual_seed(6)
    x_hat = torch.randn(2, 3, 4, 4, generator=gen, dtype=DT)
    y = torch.zeros_like(x_hat)
    r, k2, lr, steps = 0.8, 2.0, 0.1, 12
    got = _gd_iterations(x_hat, y, HalfSquaredNorm(), r, k2, lr, steps)
    # x ← x − η[(1 − r)(x − x̂) + r·k2·½x]: a scalar recursion per entry
    want = x_hat.clone()
    for _ in range(steps):
        want = want - lr * ((1 - r) * (want - x_hat) + r * k2 * 0.5 * want)
    assert rel(got, want) < 1e-14
