"""One contract over every operator registered under the entry-point group
``lmaps_plugin.operators`` (operators added by other distributions are covered too), then
closed-form checks of the image-restoration operators.

Contract (per operator): shapes of ``forward``/``__call__``/``loss``/``gradient``; batch
independence; adjointness ⟨Ax, y⟩ = ⟨x, Aᵀy⟩ (linear); ``gradient`` against autograd and a
finite-difference directional derivative (differentiable) or against 2·J_H'ᵀ(H(x) − y)
(non-differentiable, surrogate H'); determinism of seeded masks/kernels; dtype; device.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from lmaps_plugin.operators import available_operators, build_operator, get_operator
from lmaps_plugin.operators.image_conventions import scaled_length, scaled_odd_size

RES = 32
CHANNELS = 3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = sorted(available_operators())


# -- construction ---------------------------------------------------------------------------
def _accepts(cls, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def make(name: str, weights, seed: int | None = None, device: str = "cpu", **extra):
    """Build the operator ``name`` for ``RES``² images with ``CHANNELS`` channels."""
    cls = get_operator(name)
    kwargs = dict(sigma_noise=0.05, device=device, **extra)
    if name == "matrix":
        gen = torch.Generator().manual_seed(0 if seed is None else seed)
        kwargs.update(matrix=torch.randn(40, CHANNELS * RES * RES, generator=gen,
                                         dtype=torch.float64) / RES,
                      image_shape=(CHANNELS, RES, RES))
    if name == "nonlinear_deblur":
        kwargs["weights_path"] = weights
    for key, value in (("resolution", RES), ("channels", CHANNELS), ("seed", seed)):
        if value is not None and _accepts(cls, key):
            kwargs[key] = value
    return build_operator(name, **kwargs)


def images(batch: int, dtype=torch.float64, seed: int = 0, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = 1.8 * torch.rand(batch, CHANNELS, RES, RES, generator=gen, dtype=torch.float64) - 0.9
    return x.to(device=device, dtype=dtype)


def observation(op, batch: int, dtype=torch.float64):
    """A noisy observation of other images (so the residual is far from zero)."""
    torch.manual_seed(99)
    return op({"target": images(batch, dtype, seed=7)})


def is_linear(op) -> bool:
    return bool(getattr(op, "is_linear", False))


def is_differentiable(op) -> bool:
    return bool(getattr(op, "is_differentiable", True))


def autograd_loss_gradient(op, x, y):
    """∇ₓ Σ‖forward(x) − y‖² by autograd, independently of ``op.gradient``."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((op.forward(x) - y).square().sum(), x)
    return grad


EXPECTED_SHAPES = {  # observation shape for a (2, 3, 32, 32) batch, where known
    "sr4": (2, 3, 8, 8), "gaussian_deblur": (2, 3, 32, 32), "motion_deblur": (2, 3, 32, 32),
    "inpaint_box": (2, 3, 32, 32), "inpaint_random": (2, 3, 32, 32),
    "phase_retrieval": (2, 3, 48, 48), "nonlinear_deblur": (2, 3, 32, 32),
    "hdr": (2, 3, 32, 32), "jpeg": (2, 3, 32, 32), "quantization": (2, 3, 32, 32),
    "matrix": (2, 40),
}


# -- the contract ---------------------------------------------------------------------------
def test_registry_lists_the_ten_image_tasks():
    assert {"sr4", "gaussian_deblur", "motion_deblur", "inpaint_box", "inpaint_random",
            "phase_retrieval", "nonlinear_deblur", "hdr", "jpeg",
            "quantization"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shapes(name, blur_weights):
    op = make(name, blur_weights)
    x = images(2)
    y = op.forward(x)
    assert y.shape[0] == 2
    if name in EXPECTED_SHAPES:
        assert tuple(y.shape) == EXPECTED_SHAPES[name]
    torch.manual_seed(0)
    noisy = op({"target": x})
    assert noisy.shape == y.shape
    noise = noisy - y
    assert abs(noise.std().item() - 0.05) < 0.01  # sigma_noise is honoured
    obs = observation(op, 2)
    loss = op.loss(x, obs)
    assert loss.shape == (2,)
    torch.testing.assert_close(loss, (y - obs).square().flatten(1).sum(1))
    grad, loss2 = op.gradient(x, obs, return_loss=True)
    assert grad.shape == x.shape and loss2.shape == (2,)
    torch.testing.assert_close(loss2, loss)


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name, blur_weights):
    op = make(name, blur_weights)
    x = images(3)
    obs = observation(op, 3)
    batched = op.forward(x)
    singles = torch.cat([op.forward(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=1e-12, atol=1e-12)
    grad = op.gradient(x, obs)
    grad_singles = torch.cat([op.gradient(x[i:i + 1], obs[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(grad, grad_singles, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_adjointness(name, blur_weights):
    op = make(name, blur_weights)
    if not is_linear(op):
        pytest.skip(f"{name} is not linear")
    x = images(2)
    v = torch.randn_like(op.forward(x))
    lhs = (op.forward(x) * v).sum()
    rhs = (x * op.adjoint(v)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_formula(name, blur_weights):
    """Linear: 2Aᵀ(Ax − y) = autograd = finite differences. Differentiable: autograd = finite
    differences. Non-differentiable: 2·J_H'ᵀ(H(x) − y) with the operator's surrogate H'."""
    op = make(name, blur_weights)
    x = images(2)
    obs = observation(op, 2)
    grad = op.gradient(x, obs)
    assert torch.isfinite(grad).all()
    if is_linear(op):
        torch.testing.assert_close(grad, 2 * op.adjoint(op.forward(x) - obs),
                                   rtol=1e-10, atol=1e-10)
    if is_differentiable(op):
        torch.testing.assert_close(grad, autograd_loss_gradient(op, x, obs),
                                   rtol=1e-8, atol=1e-9)
        direction = torch.randn_like(x)
        eps = 1e-6
        slope = (op.loss(x + eps * direction, obs).sum()
                 - op.loss(x - eps * direction, obs).sum()) / (2 * eps)
        assert (grad * direction).sum().item() == pytest.approx(slope.item(), rel=1e-5)
        return
    # non-differentiable: the surrogate contract of lmaps_plugin.operators.surrogates
    for attribute in ("surrogate", "forward_exact", "forward_surrogate"):
        assert hasattr(op, attribute), f"non-differentiable {name} lacks {attribute!r}"
    exact = op.forward_exact(x)
    assert torch.equal(op.forward(x), exact)
    torch.testing.assert_close(op.loss(x, obs), (exact - obs).square().flatten(1).sum(1))
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(op.forward_surrogate(leaf), leaf, 2 * (exact - obs))
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    assert grad.abs().sum() > 0  # the surrogate gives a signal where H has none


@pytest.mark.parametrize("name", NAMES)
def test_determinism_of_masks_and_kernels(name, blur_weights):
    x = images(2)
    seeded = _accepts(get_operator(name), "seed") or name == "matrix"
    first = make(name, blur_weights, seed=3 if seeded else None).forward(x)
    again = make(name, blur_weights, seed=3 if seeded else None).forward(x)
    assert torch.equal(first, again)
    if not seeded:
        return
    other = make(name, blur_weights, seed=4).forward(x)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_is_preserved(name, dtype, blur_weights):
    op = make(name, blur_weights)
    x = images(2, dtype)
    y = op.forward(x)
    assert y.dtype == dtype
    grad = op.gradient(x, observation(op, 2, dtype))
    assert grad.dtype == dtype
    if is_linear(op):
        assert op.adjoint(y).dtype == dtype
    reference = make(name, blur_weights).forward(images(2)).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    if name == "jpeg" and dtype == torch.float32:
        tol = 0.1  # rounding may flip one quantization step in float32
    if name == "quantization" and dtype == torch.float32:
        tol = quantization_float32_tolerance(op, images(2))
    assert (y - reference).abs().mean().item() < tol


def quantization_float32_tolerance(op, x64: torch.Tensor) -> float:
    """Mean |float32 result − float64 result| that a correct n-bit quantizer can show on ``x64``.

    Off the rounding ties the two agree up to float32's representation of the levels
    2k/(2ⁿ−1) − 1 (≤ 6e-8 per pixel; 3e-7 allows for the arithmetic). A pixel whose
    u·(2ⁿ−1) + 0.5 lies within float32 rounding (< 1e-6 here: values ≤ 2ⁿ, eps 1.2e-7) of an
    integer may land on either neighbouring level in float32, a difference of one step 2/(2ⁿ−1).
    """
    top = op.levels - 1
    scaled = ((x64.double() + 1.0) / 2.0).clamp(0.0, 1.0) * top + 0.5
    on_tie = ((scaled - scaled.round()).abs() < 1e-6).double().mean().item()
    return 3e-7 + (2.0 / top) * on_tie


def test_quantization_float32_differs_only_on_rounding_ties():
    op = make("quantization", None)
    top = op.levels - 1
    x = images(2)
    # half of the pixels exactly on a rounding tie in float64: u·top + 0.5 = k, i.e. x = (2k − 1)/top − 1
    ties = (2.0 * torch.randint(1, top + 1, x.shape, generator=torch.Generator().manual_seed(3)) - 1.0) / top - 1.0
    x = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) < 0.5, ties.double(), x)
    diff = (op.forward(x.float()) - op.forward(x).float()).abs()
    bound = quantization_float32_tolerance(op, x)
    assert 0.49 < (bound - 3e-7) / (2.0 / top) < 0.51      # the tie fraction is seen
    assert diff.mean().item() < bound
    # off the ties float32 and float64 agree to the levels' float32 representation
    off = ((x + 1.0) / 2.0 * top + 0.5 - ((x + 1.0) / 2.0 * top + 0.5).round()).abs() > 1e-6
    assert diff[off].max().item() < 1e-7


@pytest.mark.parametrize("name", NAMES)
def test_device(name, blur_weights):
    op = make(name, blur_weights, device=DEVICE)
    x = images(2, torch.float32, device=DEVICE)
    y = op.forward(x)
    assert y.device.type == torch.device(DEVICE).type
    torch.manual_seed(0)
    obs = op({"target": x})
    grad = op.gradient(x, obs)
    assert grad.device.type == torch.device(DEVICE).type
    if DEVICE != "cpu":  # same numbers as on the CPU
        cpu = make(name, blur_weights).forward(x.cpu())
        assert (y.cpu() - cpu).abs().mean().item() < 1e-4


# -- closed forms ---------------------------------------------------------------------------
from lmaps_plugin.operators.blur import (  # noqa: E402
    GaussianBlur, MotionBlur, gaussian_kernel, motion_blur_kernel, reflect_pad_adjoint)
from lmaps_plugin.operators.linear import BoxInpainting, RandomInpainting, SuperResolution  # noqa: E402
from lmaps_plugin.operators.nonlinear import (  # noqa: E402
    BlurKernelNetwork, NonlinearBlur, PhaseRetrieval)


def test_scaling_rule():
    assert [scaled_odd_size(61, r) for r in (256, 128, 64, 32)] == [61, 31, 15, 7]
    assert [scaled_length(128, r) for r in (256, 64, 32)] == [128, 32, 16]
    assert [scaled_length(32, r) for r in (256, 64, 32)] == [32, 8, 4]
    op = GaussianBlur(resolution=256)
    assert op.kernel.shape == (61, 61) and op.std == 3.0
    assert GaussianBlur(resolution=64).kernel.shape == (15, 15)
    assert MotionBlur(resolution=256).kernel.shape == (61, 61)


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_sr_equals_torch_antialiased_bicubic_resize(resolution):
    op = SuperResolution(resolution=resolution)
    x = torch.randn(2, 3, resolution, resolution, dtype=torch.float64)
    reference = F.interpolate(x, size=(resolution // 4,) * 2, mode="bicubic", antialias=True)
    torch.testing.assert_close(op.forward(x), reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("resolution", [32, 64])
def test_sr_of_a_constant_image_is_that_constant(resolution):
    op = SuperResolution(resolution=resolution)
    x = torch.full((1, 3, resolution, resolution), 0.37, dtype=torch.float64)
    torch.testing.assert_close(op.forward(x), torch.full((1, 3, resolution // 4,
                                                           resolution // 4), 0.37,
                                                          dtype=torch.float64))


@pytest.mark.parametrize("resolution", [32, 256])
def test_sr_adjoint_is_exact_at_several_resolutions(resolution):
    op = SuperResolution(resolution=resolution)
    x = torch.randn(1, 3, resolution, resolution, dtype=torch.float64)
    v = torch.randn(1, 3, resolution // 4, resolution // 4, dtype=torch.float64)
    assert (op.forward(x) * v).sum().item() == pytest.approx(
        (x * op.adjoint(v)).sum().item(), rel=1e-12)


def test_gaussian_kernel_matches_the_peers_scipy_kernel():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    delta = torch.zeros(61, 61, dtype=torch.float64)
    delta[30, 30] = 1.0
    peers = torch.from_numpy(scipy_ndimage.gaussian_filter(delta.numpy(), sigma=3.0))
    ours = gaussian_kernel(61, 3.0)
    assert ours.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (ours - peers).abs().max().item() < 2e-6
    assert (ours - peers).abs().sum().item() < 2e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_motion_kernel_is_a_normalized_path(seed):
    k = motion_blur_kernel(61, 0.5, seed)
    assert k.shape == (61, 61) and (k >= 0).all()
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    support = int((k > 1e-4).sum())
    assert 30 < support < 61 * 61 // 4  # a thin curve, neither a dot nor a blob
    assert not torch.equal(k, motion_blur_kernel(61, 0.5, seed + 1))


@pytest.mark.parametrize("cls", [GaussianBlur, MotionBlur])
def test_blur_equals_conv2d_on_the_reflection_padded_image(cls):
    op = cls(resolution=RES)
    x = images(2)
    k = op.kernel
    pad = k.shape[-1] // 2
    reference = F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"),
                         k.expand(CHANNELS, 1, *k.shape), groups=CHANNELS)
    torch.testing.assert_close(op.forward(x), reference, rtol=1e-12, atol=1e-12)
    assert op.kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    constant = torch.full_like(x, -0.3)
    torch.testing.assert_close(op.forward(constant), constant)


def test_reflect_pad_adjoint_is_the_transpose_of_reflect_padding():
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    for pad in (0, 1, 4, 8):
        z = torch.randn(1, 2, 9 + 2 * pad, 9 + 2 * pad, dtype=torch.float64)
        padded = F.pad(x, (pad,) * 4, mode="reflect") if pad else x
        assert (padded * z).sum().item() == pytest.approx(
            (x * reflect_pad_adjoint(z, pad)).sum().item(), rel=1e-12)


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_random_inpainting_drops_70_percent_on_all_channels(resolution):
    op = RandomInpainting(resolution=resolution)
    kept = op.forward(torch.ones(1, 3, resolution, resolution))
    assert torch.equal(kept[:, 0], kept[:, 1]) and torch.equal(kept[:, 0], kept[:, 2])
    dropped = 1.0 - kept[0, 0].mean().item()
    assert abs(dropped - 0.7) <= 0.01


@pytest.mark.parametrize("resolution,box,margin", [(256, 128, 32), (64, 32, 8), (32, 16, 4)])
def test_box_inpainting_drops_exactly_one_box_inside_the_margin(resolution, box, margin):
    for seed in range(4):
        op = BoxInpainting(resolution=resolution, seed=seed)
        kept = op.forward(torch.ones(1, 3, resolution, resolution))[0, 0]
        rows, cols = torch.nonzero(kept == 0, as_tuple=True)
        assert rows.numel() == box * box
        assert rows.max() - rows.min() + 1 == box and cols.max() - cols.min() + 1 == box
        for low, high in ((rows.min(), rows.max()), (cols.min(), cols.max())):
            assert low >= margin and high <= resolution - 1 - margin


def test_phase_retrieval_satisfies_parseval_and_pads_by_a_quarter():
    assert PhaseRetrieval().padding(256) == 64
    op = PhaseRetrieval(resolution=RES)
    x = images(2)
    amplitude = op.forward(x)
    assert amplitude.shape[-1] == RES + 2 * (RES // 4)
    energy_in = ((x + 1) / 2).square().sum(dim=(-2, -1))
    torch.testing.assert_close(amplitude.square().sum(dim=(-2, -1)), energy_in,
                               rtol=1e-12, atol=0)
    # amplitude is invariant to a (circular) shift of the object inside the padded field
    shifted = torch.roll(F.pad((x + 1) / 2, (8,) * 4), shifts=(3, -5), dims=(-2, -1))
    from lmaps_plugin.operators.nonlinear import centred_fft2
    torch.testing.assert_close(centred_fft2(shifted).abs(),
                               centred_fft2(F.pad((x + 1) / 2, (8,) * 4)).abs())


def test_phase_retrieval_gradient_is_finite_at_zero_amplitude():
    op = PhaseRetrieval(resolution=RES)
    x = -torch.ones(1, 3, RES, RES, dtype=torch.float64)  # (x+1)/2 = 0: all amplitudes 0
    grad = op.gradient(x, torch.rand(1, 3, 48, 48, dtype=torch.float64))
    assert torch.isfinite(grad).all()


def test_nonlinear_blur_missing_weights_says_what_is_expected(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match="BlurKernelNetwork") as info:
        NonlinearBlur(weights_path=missing)
    assert str(missing) in str(info.value) and "GOPRO" in str(info.value)
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {}}, wrong)
    with pytest.raises(ValueError, match="format"):
        NonlinearBlur(weights_path=wrong)


def test_nonlinear_blur_is_nonlinear_and_uses_a_normalized_kernel(blur_weights):
    op = NonlinearBlur(weights_path=blur_weights, resolution=RES)
    kernels = op.network.kernels(op.code[None].float())
    assert kernels.sum().item() == pytest.approx(1.0, abs=1e-5) and (kernels >= 0).all()
    x, z = images(1), images(1, seed=5)
    sum_of_images = op.forward(x + z) + 1.0  # shift: y = 2N(u) − 1 is affine in N
    assert not torch.allclose(sum_of_images, (op.forward(x) + 1.0) + (op.forward(z) + 1.0))


# -- input validation -----------------------------------------------------------------------
IMAGE_OPERATORS = [
    SuperResolution, GaussianBlur, MotionBlur, BoxInpainting, RandomInpainting, PhaseRetrieval]


@pytest.mark.parametrize("cls", IMAGE_OPERATORS)
def test_bad_inputs_raise_clear_errors(cls):
    op = cls(resolution=RES)
    with pytest.raises(ValueError, match="4-D"):
        op.forward(torch.zeros(3, RES, RES))
    with pytest.raises(ValueError, match="resolution=32"):
        op.forward(torch.zeros(1, 3, 2 * RES, 2 * RES))
    with pytest.raises(ValueError, match="channels"):
        op.forward(torch.zeros(1, 1, RES, RES))
    with pytest.raises(ValueError, match="square"):
        op.forward(torch.zeros(1, 3, RES, RES + 4))


@pytest.mark.parametrize("cls", IMAGE_OPERATORS)
def test_resolution_is_inferred_from_the_first_input_then_fixed(cls):
    op = cls()
    y = op.forward(images(1))
    assert op.resolution == RES
    assert torch.equal(y, cls(resolution=RES).forward(images(1)))
    with pytest.raises(ValueError, match="resolution"):
        op.forward(torch.zeros(1, 3, 2 * RES, 2 * RES))


def test_linear_adjoint_infers_resolution_from_the_observation():
    op = SuperResolution()
    y = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    assert op.adjoint(y).shape == (1, 3, 32, 32) and op.resolution == 32
    with pytest.raises(ValueError, match="observation"):
        op.adjoint(torch.randn(1, 3, 32, 32))


def test_constructor_arguments_are_validated():
    with pytest.raises(ValueError, match="divisible"):
        SuperResolution(resolution=30)
    with pytest.raises(ValueError, match="does not fit"):
        BoxInpainting(resolution=32, box_size=30)
    with pytest.raises(ValueError, match="kernel_size"):
        GaussianBlur(resolution=8, kernel_size=31)
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(resolution=32, kernel_size=4)
    with pytest.raises(ValueError, match="intensity"):
        MotionBlur(intensity=1.5)
    with pytest.raises(ValueError, match="drop_fraction"):
        RandomInpainting(drop_fraction=70)
    with pytest.raises(ValueError, match="channels"):
        GaussianBlur(channels=0)


def test_unknown_operator_lists_the_valid_names():
    with pytest.raises(KeyError, match="sr4") as info:
        get_operator("sr5")
    assert "gaussian_deblur" in str(info.value) and "lmaps_plugin.operators" in str(info.value)
    assert isinstance(build_operator("sr4", resolution=RES), SuperResolution)
    assert math.isclose(build_operator("sr4", sigma_noise=0.05).sigma_noise, 0.05)
