"""Analytic algebra of InverseBench's linear operators (lmaps_plugin.inversebench.scattering and .mri).

Every claim is checked against an independent truth: the adjoint against the dot-product identity
and against autograd vector-Jacobian products of *upstream's* forward; the gradient against
upstream's autograd gradient of upstream's loss, on a plain upstream instance; the batched forward
against upstream's forward element by element; the Gram eigenbasis against AᵀA v computed with
forward and adjoint. Small grids keep it fast; float64 throughout.
"""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = [pytest.mark.inversebench,
              pytest.mark.skipif(not os.environ.get("INVERSEBENCH_ROOT"), reason="INVERSEBENCH_ROOT is not set")]

from lmaps_plugin import inversebench as ib  # noqa: E402

ROUNDING = 1e-12  # relative to the product of the norms involved (float64)

# Two small geometries, one per factorisation: 2·T·R = 192 real measurements < 576 pixels (SVD of A) and
# 720 > 576 (eigh of AᵀA).
SVD_GEOMETRY = dict(Nx=24, Ny=24, numTrans=4, numRec=24)
GRAM_GEOMETRY = dict(Nx=24, Ny=24, numTrans=6, numRec=60)
UNNORM = dict(sigma_noise=1e-4, unnorm_shift=1.0, unnorm_scale=0.5, device="cpu", svd=False)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def real_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Re⟨a, b⟩ over all elements (complex or real)."""
    return float((a.conj() * b).real.sum()) if a.is_complex() else float((a * b).sum())


def assert_dot_identity(lhs: float, rhs: float, scale: float) -> None:
    assert abs(lhs - rhs) <= ROUNDING * scale, (lhs, rhs, scale)


# --------------------------------------------------------------------------------- scattering
def upstream_scatter_class():
    return ib.import_upstream("inverse_problems.inverse_scatter", "test").InverseScatter


@pytest.fixture(scope="module", params=["svd", "gram"])
def scatter(request):
    """(ours, a plain upstream instance of the same geometry), no disk cache."""
    geometry = SVD_GEOMETRY if request.param == "svd" else GRAM_GEOMETRY
    ours = ib.InverseScatter(**geometry, **UNNORM, gram_cache=False, gram_method=request.param)
    return ours, upstream_scatter_class()(**geometry, **UNNORM)


def random_images(op, batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 1, op.Ny, op.Nx, dtype=torch.float64, generator=generator(seed))


def random_field(op, batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, op.numTrans, op.numRec, dtype=torch.complex128, generator=generator(seed))


def linear_part(op, x: torch.Tensor) -> torch.Tensor:
    return op.forward(x) - op.forward(torch.zeros_like(x[:1]))


def test_scatter_factory_builds_the_linear_subclass(scatter):
    ours, plain = scatter
    assert isinstance(ours, type(plain)) and type(ours) is not type(plain)
    assert ours.is_linear and not getattr(plain, "is_linear", False)


def test_scatter_batched_forward_is_upstream_forward_of_each_element(scatter):
    ours, plain = scatter
    x = random_images(ours, 5, seed=0)
    batched = ours.forward(x)
    assert batched.shape == (5, ours.numTrans, ours.numRec) and batched.dtype == torch.complex128
    for i in range(5):
        torch.testing.assert_close(batched[i:i + 1], plain.forward(x[i:i + 1]), rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.forward(x, unnormalize=False)[1:2], plain.forward(x[1:2], unnormalize=False),
                               rtol=1e-12, atol=0)


def test_scatter_forward_is_affine_with_the_adjoints_linear_part(scatter):
    ours, _ = scatter
    a, b = random_images(ours, 2, seed=1), random_images(ours, 2, seed=2)
    offset = ours.forward(torch.zeros(1, 1, ours.Ny, ours.Nx, dtype=torch.float64))
    torch.testing.assert_close(ours.forward(2.0 * a - b) - offset,
                               2.0 * (ours.forward(a) - offset) - (ours.forward(b) - offset), rtol=1e-10, atol=1e-18)


def test_scatter_adjoint_dot_product_identity(scatter):
    ours, _ = scatter
    x, y = random_images(ours, 3, seed=3), random_field(ours, 3, seed=4)
    ax, aty = linear_part(ours, x), ours.adjoint(y)
    assert aty.shape == x.shape and aty.dtype == torch.float64
    assert_dot_identity(real_dot(ax, y), real_dot(x, aty), float(ax.norm() * y.norm() + x.norm() * aty.norm()))


def test_scatter_adjoint_is_the_vjp_of_upstream_forward(scatter):
    ours, plain = scatter
    x, y = random_images(ours, 3, seed=5), random_field(ours, 3, seed=6)
    expected = []
    for i in range(3):
        leaf = x[i:i + 1].clone().requires_grad_(True)
        (vjp,) = torch.autograd.grad((plain.forward(leaf).conj() * y[i:i + 1]).real.sum(), leaf)
        expected.append(vjp)
    expected = torch.cat(expected)
    torch.testing.assert_close(ours.adjoint(y), expected, rtol=1e-10, atol=1e-12 * float(y.abs().max()))
    leaf = x.clone().requires_grad_(True)  # algorithms that differentiate through our batched forward
    (through_ours,) = torch.autograd.grad((ours.forward(leaf).conj() * y).real.sum(), leaf)
    torch.testing.assert_close(through_ours, expected, rtol=1e-10, atol=1e-12 * float(y.abs().max()))


def test_scatter_gradient_is_upstream_autograd_gradient_of_upstream_loss(scatter):
    ours, plain = scatter
    pred = random_images(ours, 3, seed=7)
    observation = plain.forward(random_images(ours, 1, seed=8)) + 1e-4 * random_field(ours, 1, seed=9)
    expected = torch.cat([plain.gradient(pred[i:i + 1], observation) for i in range(3)])
    grad, loss = ours.gradient(pred, observation, return_loss=True)
    assert grad.dtype == pred.dtype and not grad.requires_grad
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12 * float(expected.abs().max()))
    upstream_loss = sum(float(plain.loss(pred[i:i + 1], observation).sum()) for i in range(3))
    assert float(loss) == pytest.approx(upstream_loss, rel=1e-12)
    assert ours.gradient(pred.float(), observation).dtype == torch.float32  # upstream: pred's dtype


def test_scatter_gradient_does_not_track_autograd(scatter):
    ours, _ = scatter
    pred = random_images(ours, 1, seed=10).requires_grad_(True)
    observation = random_field(ours, 1, seed=11)
    assert ours.gradient(pred, observation).grad_fn is None


def test_scatter_eigenbasis_reproduces_the_gram_map_and_is_orthonormal(scatter):
    ours, _ = scatter
    v = random_images(ours, 4, seed=12)
    basis = ours.gram_eigenbasis(v)
    assert basis.eigenvalues.dtype == torch.float64 and bool((basis.eigenvalues >= 0).all())
    coeffs = basis.to_basis(v)
    assert coeffs.shape[-1] == basis.eigenvalues.shape[-1]
    torch.testing.assert_close(coeffs.norm(dim=1), v.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(basis.from_basis(coeffs), v, rtol=0, atol=1e-12 * float(v.abs().max()))
    gram_v = ours.adjoint(linear_part(ours, v))
    torch.testing.assert_close(basis.from_basis(basis.eigenvalues * coeffs), gram_v,
                               rtol=0, atol=1e-10 * float(gram_v.abs().max()))
    vectors = ours.gram_factorisation()["eigenvectors"]
    identity = torch.eye(vectors.shape[1], dtype=torch.float64)
    torch.testing.assert_close(vectors.T @ vectors, identity, rtol=0, atol=1e-12)


def test_scatter_gram_and_svd_factorisations_agree():
    from lmaps_plugin.inversebench.scattering import scattering_gram_factorisation

    op = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=False, gram_basis=False)
    assert op.gram_eigenbasis(torch.zeros(1, 1, op.Ny, op.Nx)) is None
    args = (op._incident, op._green, op._cell)
    by_gram, by_svd = scattering_gram_factorisation(*args, "gram"), scattering_gram_factorisation(*args, "svd")
    top = min(by_gram["eigenvalues"].numel(), by_svd["eigenvalues"].numel())
    assert top <= 2 * op.numTrans * op.numRec  # rank of the real Born matrix
    # eigenvalues agree to the rounding of the Gram route (~P·ε·λ_max)
    torch.testing.assert_close(by_gram["eigenvalues"][:top], by_svd["eigenvalues"][:top],
                               rtol=0, atol=1e-12 * float(by_svd["eigenvalues"][0]))


def test_scatter_eigenvalues_scale_with_unnorm_scale_and_ignore_the_shift():
    common = dict(SVD_GEOMETRY, sigma_noise=1e-4, device="cpu", svd=False, gram_cache=False)
    half = ib.InverseScatter(unnorm_shift=1.0, unnorm_scale=0.5, **common)
    other = ib.InverseScatter(unnorm_shift=-3.0, unnorm_scale=2.0, **common)
    assert half.gram_cache_key() == other.gram_cache_key()
    like = torch.zeros(1, 1, half.Ny, half.Nx, dtype=torch.float64)
    torch.testing.assert_close(other.gram_eigenbasis(like).eigenvalues, 16.0 * half.gram_eigenbasis(like).eigenvalues)


def test_scatter_eigenbasis_coefficients_are_float64_images_the_callers_dtype(scatter):
    ours, _ = scatter
    v = random_images(ours, 2, seed=13).float()
    basis = ours.gram_eigenbasis(v)
    coeffs = basis.to_basis(v)
    assert coeffs.dtype == torch.float64 and basis.from_basis(coeffs).dtype == torch.float32
    torch.testing.assert_close(coeffs, ours.gram_eigenbasis(v.double()).to_basis(v.double()), rtol=0, atol=0)
    assert ours.gram_eigenbasis(v) is basis  # cached per dtype


def test_scatter_gram_cache_hit_and_key(tmp_path, monkeypatch):
    from lmaps_plugin import io
    from lmaps_plugin.inversebench import scattering

    first = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=str(tmp_path))
    like = torch.zeros(1, 1, first.Ny, first.Nx, dtype=torch.float64)
    computed = first.gram_eigenbasis(like).eigenvalues
    assert first.gram_source == "computed"
    files = sorted(tmp_path.glob("inverse-scatter-gram-*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the factorisation was recomputed instead of read from the cache")

    monkeypatch.setattr(scattering, "scattering_gram_factorisation", must_not_run)
    second = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=str(tmp_path))
    torch.testing.assert_close(second.gram_eigenbasis(like).eigenvalues, computed, rtol=0, atol=0)
    assert second.gram_source == "disk"

    keys = {io.cache_key_digest(first.gram_cache_key())}
    for change in (dict(numRec=25), dict(numTrans=5), dict(Lx=0.2), dict(wave=5), dict(sensorRadius=1.5)):
        other = ib.InverseScatter(**{**SVD_GEOMETRY, **change}, **UNNORM, gram_cache=str(tmp_path))
        keys.add(io.cache_key_digest(other.gram_cache_key()))
    assert len(keys) == 6
    assert first.gram_cache_key()["inversebench_commit"] == ib.PINNED_COMMIT


def test_scatter_stale_cache_file_is_recomputed(tmp_path):
    from lmaps_plugin import io

    op = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=str(tmp_path))
    path = tmp_path / f"inverse-scatter-gram-{io.cache_key_digest(op.gram_cache_key())}.pt"
    path.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="unreadable cache file"):
        op.gram_eigenbasis(torch.zeros(1, 1, op.Ny, op.Nx))
    assert op.gram_source == "computed"
    assert torch.load(path, weights_only=True)["key"] == op.gram_cache_key()


def test_scatter_unusable_cache_directory_warns_and_computes(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    op = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="cannot use the cache directory"):
        basis = op.gram_eigenbasis(torch.zeros(1, 1, op.Ny, op.Nx))
    assert basis is not None and op.gram_source == "computed (not cached)"


def test_scatter_without_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    op = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=False)
    op.gram_eigenbasis(torch.zeros(1, 1, op.Ny, op.Nx))
    assert op.gram_source == "computed (not cached)" and not any(tmp_path.iterdir())
    assert ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=True).gram_cache_dir == tmp_path / "lmaps-plugin"


def test_scatter_too_large_grid_has_no_eigenbasis():
    op = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=False, gram_max_pixels=24 * 24 - 1)
    assert op.gram_eigenbasis(torch.zeros(1, 1, 24, 24)) is None


@pytest.mark.parametrize("key, value, allowed", [("gram_cache", 3, "true"), ("gram_basis", "yes", "true or false"),
                                                 ("gram_max_pixels", -1, "non-negative"),
                                                 ("gram_method", "qr", "'auto', 'gram' or 'svd'")])
def test_scatter_bad_settings_are_named(key, value, allowed):
    with pytest.raises(ValueError, match=f"{key}=.*not allowed.*{allowed}"):
        ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, **{key: value})


def test_scatter_wrong_shapes_are_named(scatter):
    ours, _ = scatter
    with pytest.raises(ValueError, match=r"expected measurements shaped \(B, \d+, \d+\)"):
        ours.adjoint(torch.zeros(1, ours.numTrans + 1, ours.numRec, dtype=torch.complex128))
    with pytest.raises(ValueError, match=r"expected images shaped \(B, 1, 24, 24\)"):
        ours.forward(torch.zeros(1, 1, 23, 24))


# ------------------------------------------------------------------------------------- MRI
def mri_operator(height: int, width: int, coils: int, seed: int, unit_maps: bool = False):
    """(ours, upstream) MRI operators holding the same random coil maps (set through ``__call__``)."""
    upstream = ib.import_upstream("inverse_problems.multi_coil_mri", "test").MultiCoilMRI
    g = generator(seed)
    maps = torch.randn(1, coils, height, width, dtype=torch.complex128, generator=g)
    maps = maps / maps.abs() if unit_maps else maps / maps.abs().square().sum(dim=1, keepdim=True).sqrt()
    kspace = torch.randn(1, coils, height, width, dtype=torch.complex128, generator=g)
    data = {"maps": maps, "kspace": kspace}
    ops = []
    for make in (ib.MultiCoilMRI, upstream):
        op = make(total_lines=width, acceleration_ratio=4, device="cpu")
        op(data)
        ops.append(op)
    return ops


def random_mri_images(batch, height, width, seed):
    return torch.randn(batch, 2, height, width, dtype=torch.float64, generator=generator(seed))


def random_kspace(batch, coils, height, width, seed):
    return torch.randn(batch, coils, height, width, 2, dtype=torch.float64, generator=generator(seed))


SIZES = [(16, 16), (15, 17)]  # odd sizes: fftshift ≠ ifftshift


@pytest.mark.parametrize("height, width", SIZES)
def test_mri_adjoint_dot_product_identity(height, width):
    ours, _ = mri_operator(height, width, coils=3, seed=20)
    x, y = random_mri_images(2, height, width, seed=21), random_kspace(2, 3, height, width, seed=22)
    ax, aty = ours.forward(x), ours.adjoint(y)
    assert aty.shape == x.shape and aty.dtype == torch.float64
    assert_dot_identity(real_dot(ax, y), real_dot(x, aty), float(ax.norm() * y.norm() + x.norm() * aty.norm()))
    complex_y = torch.view_as_complex(y.contiguous())
    torch.testing.assert_close(ours.adjoint(complex_y), aty, rtol=0, atol=0)


@pytest.mark.parametrize("height, width", SIZES)
def test_mri_adjoint_is_the_vjp_of_upstream_forward(height, width):
    ours, plain = mri_operator(height, width, coils=3, seed=23)
    x, y = random_mri_images(2, height, width, seed=24), random_kspace(2, 3, height, width, seed=25)
    leaf = x.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad((plain.forward(leaf) * y).sum(), leaf)
    torch.testing.assert_close(ours.adjoint(y), vjp, rtol=1e-10, atol=1e-12 * float(vjp.abs().max()))
    upstream_style = _complex_to_channels_sum(plain, y)
    assert torch.allclose(upstream_style, vjp) == (height % 2 == 0 and width % 2 == 0)  # upstream ifft: even sizes only


def _complex_to_channels_sum(op, y):
    """Σ conj(maps)·op.ifft(mask·y) with upstream's own ``ifft`` (not the adjoint of its ``fft`` for odd sizes)."""
    images = (op.maps.conj() * op.ifft(op.mask * torch.view_as_complex(y.contiguous()))).sum(dim=1)
    return torch.view_as_real(images).permute(0, 3, 1, 2)


@pytest.mark.parametrize("height, width", SIZES)
def test_mri_gradient_is_upstream_autograd_gradient(height, width):
    ours, plain = mri_operator(height, width, coils=4, seed=26)
    pred = random_mri_images(3, height, width, seed=27)
    observation = plain.forward(random_mri_images(1, height, width, seed=28))
    grad, loss = ours.gradient(pred, observation, return_loss=True)
    expected, expected_loss = plain.gradient(pred, observation, return_loss=True)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12 * float(expected.abs().max()))
    assert float(loss) == pytest.approx(float(expected_loss.detach()), rel=1e-12)
    assert ours.gradient(pred.float(), observation).dtype == torch.float32


def test_mri_single_coil_fourier_eigenbasis():
    ours, _ = mri_operator(15, 16, coils=1, seed=29, unit_maps=True)
    v = random_mri_images(2, 15, 16, seed=30)
    basis = ours.gram_eigenbasis(v)
    coeffs = basis.to_basis(v)
    torch.testing.assert_close(coeffs.flatten(1).norm(dim=1), v.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(basis.from_basis(coeffs), v, rtol=0, atol=1e-12)
    torch.testing.assert_close(basis.from_basis(basis.eigenvalues * coeffs), ours.adjoint(ours.forward(v)),
                               rtol=0, atol=1e-12)
    assert set(basis.eigenvalues.unique().tolist()) == {0.0, 1.0}


def test_mri_eigenbasis_only_for_single_unit_modulus_coil():
    like = torch.zeros(1, 2, 16, 16)
    assert mri_operator(16, 16, coils=3, seed=31)[0].gram_eigenbasis(like) is None
    assert mri_operator(16, 16, coils=1, seed=32)[0].gram_eigenbasis(like) is not None  # normalized: |m| = 1
    single, _ = mri_operator(16, 16, coils=1, seed=33)
    single.maps = 0.5 * single.maps
    assert single.gram_eigenbasis(like) is None


def test_mri_adjoint_without_maps_says_what_to_do():
    op = ib.MultiCoilMRI(total_lines=16, acceleration_ratio=4, device="cpu")
    assert op.is_linear and isinstance(op, ib.import_upstream("inverse_problems.multi_coil_mri", "test").MultiCoilMRI)
    with pytest.raises(RuntimeError, match=r"needs coil maps: call the operator on a sample"):
        op.adjoint(torch.zeros(1, 2, 16, 16, 2))


def test_a_factorisation_above_the_default_size_says_its_cost_before_it_starts(monkeypatch):
    """Asked for explicitly (gram_max_pixels above 64²), the factorisation first warns with its estimated time and
    memory; the estimate scales the measured 64² cost by the route's flop count (P³ for the Gram route)."""
    from lmaps_plugin.inversebench import scattering

    method, seconds, memory = scattering.factorisation_estimate(128 * 128, 2 * 20 * 360)
    assert method == "gram" and seconds == pytest.approx(20.0 * 64) and memory == pytest.approx(2 * 8.0 * 16384 ** 2)
    assert scattering.factorisation_estimate(128 * 128, 2 * 20 * 60)[0] == "svd"
    calls = []
    monkeypatch.setattr(scattering, "DEFAULT_GRAM_MAX_PIXELS", 100)
    monkeypatch.setattr(scattering, "scattering_gram_factorisation", lambda *a: calls.append(a) or {})
    op = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=False, gram_max_pixels=24 * 24)
    with pytest.warns(RuntimeWarning, match=r"24x24 grid .* takes about \d+ min of CPU time and [\d.]+ GB"):
        op._factorise()
    assert len(calls) == 1


def test_scatter_above_the_size_threshold_uses_a_cached_factorisation_and_never_computes_one(tmp_path, monkeypatch,
                                                                                              caplog):
    from lmaps_plugin.inversebench import scattering

    like = torch.zeros(1, 1, 24, 24, dtype=torch.float64)
    small = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=str(tmp_path), gram_max_pixels=24 * 24 - 1)
    with caplog.at_level("INFO", logger=scattering.log.name):
        assert small.gram_eigenbasis(like) is None and small.gram_eigenbasis(like) is None
    declined = [r for r in caplog.records if "no Gram eigenbasis" in r.getMessage()]
    assert len(declined) == 1 and "gram_max_pixels=576" in declined[0].getMessage()   # said once, with the option

    requested = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=str(tmp_path), gram_max_pixels=24 * 24)
    computed = requested.gram_eigenbasis(like).eigenvalues          # made on request, and cached
    assert requested.gram_source == "computed"

    def must_not_run(*args, **kwargs):
        raise AssertionError("a factorisation above gram_max_pixels was computed without being asked for")

    monkeypatch.setattr(scattering, "scattering_gram_factorisation", must_not_run)
    again = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=str(tmp_path), gram_max_pixels=24 * 24 - 1)
    torch.testing.assert_close(again.gram_eigenbasis(like).eigenvalues, computed, rtol=0, atol=0)
    assert again.gram_source == "disk"
    elsewhere = ib.InverseScatter(**SVD_GEOMETRY, **UNNORM, gram_cache=str(tmp_path / "empty"), gram_max_pixels=1)
    assert elsewhere.gram_eigenbasis(like) is None
