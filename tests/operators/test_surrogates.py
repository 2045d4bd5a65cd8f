"""Surrogate gradients: the registry, the straight-through function, the non-differentiable
operators (quantization, HDR, JPEG) and what autograd-based algorithms receive from them.

Truths used: closed forms (quantization levels and thresholds, HDR clip, 2(H(x) − y)),
torch.func.vjp of the surrogate evaluated on its own, an independently written chroma
resampler for the structured JPEG surrogate, and superposition for its linearity.
"""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from skimage import data

from lmaps_plugin.operators.jpeg import JPEG, jpeg_codec
from lmaps_plugin.operators.non_differentiable import (HighDynamicRange, NonDifferentiableOperator,
                                            Quantization)
from lmaps_plugin.operators.registry import available_operators, get_operator
from lmaps_plugin.operators.surrogates import (GROUP, available_surrogates, get_surrogate,
                                     resolve_surrogate, straight_through)

OURS = ("identity", "linear_part", "jpeg_linear", "jpeg_kornia")


def _photo_batch(size: int = 32, dtype=torch.float64) -> torch.Tensor:
    """Two real colour crops in [-1, 1]: (2, 3, size, size)."""
    crops = [data.astronaut()[100:100 + size, 200:200 + size],
             data.coffee()[60:60 + size, 300:300 + size]]
    x = torch.stack([torch.from_numpy(c).permute(2, 0, 1) for c in crops]).to(dtype)
    return x / 127.5 - 1.0


def _perturbed(x: torch.Tensor, seed: int = 0, scale: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return x + scale * torch.randn(x.shape, generator=g, dtype=x.dtype)


# -- registry ------------------------------------------------------------------------------
def test_registry_lists_our_surrogates_from_entry_points():
    registered = available_surrogates()
    assert set(OURS) <= set(registered)
    assert list(registered) == sorted(registered)
    for name in OURS:
        assert callable(get_surrogate(name))
        assert registered[name].group == GROUP


def test_unknown_surrogate_error_names_the_valid_ones():
    with pytest.raises(KeyError, match="unknown surrogate 'nope'.*identity.*jpeg_linear"):
        get_surrogate("nope")
    with pytest.raises(KeyError, match="unknown surrogate 'nope'"):
        Quantization(surrogate="nope")
    with pytest.raises(TypeError, match="registered name or a callable"):
        resolve_surrogate(3)


def test_operators_choose_surrogates_by_name_or_callable():
    assert (JPEG().surrogate, Quantization().surrogate, HighDynamicRange().surrogate) == (
        "jpeg_linear", "identity", "linear_part")
    assert JPEG(surrogate="identity").surrogate == "identity"

    def halved(op, x):
        return 0.5 * x

    op = Quantization(surrogate=halved)
    assert op.surrogate == "halved"
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)[None]
    y = torch.zeros_like(x)
    torch.testing.assert_close(op.gradient(x, y), op.forward_exact(x))  # 2·0.5·(H − 0)
    for op in (JPEG(), Quantization(), HighDynamicRange()):
        assert op.is_differentiable is False


# -- the operators' values (closed forms) --------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_quantization_has_exactly_2_to_the_n_levels(bits):
    x = torch.linspace(-1.5, 1.5, 30001, dtype=torch.float64)[None]
    levels = torch.unique(Quantization(bits=bits).forward(x))
    top = 2 ** bits - 1
    expected = 2.0 * torch.arange(top + 1, dtype=torch.float64) / top - 1.0
    torch.testing.assert_close(levels, expected, atol=1e-12, rtol=0)


def test_two_bit_quantization_closed_form_values_and_thresholds():
    op = Quantization(bits=2)
    # u = (x+1)/2; ⌊3u + 0.5⌋ changes at u = 1/6, 1/2, 5/6, i.e. x = -2/3, 0, 2/3.
    eps = 1e-6
    x = torch.tensor([[-1.0, -2 / 3 - eps, -2 / 3 + eps, -eps, eps, 2 / 3 - eps, 2 / 3 + eps, 1.0,
                       -1.7, 1.7]], dtype=torch.float64)
    expected = torch.tensor([[-1, -1, -1 / 3, -1 / 3, 1 / 3, 1 / 3, 1, 1, -1, 1]], dtype=torch.float64)
    torch.testing.assert_close(op.forward(x), expected, atol=1e-12, rtol=0)


def test_hdr_is_clip_of_scaled_input():
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)[None]
    torch.testing.assert_close(HighDynamicRange().forward(x), (2 * x).clamp(-1, 1))
    torch.testing.assert_close(HighDynamicRange(scale=3.0).forward(x), (3 * x).clamp(-1, 1))
    with pytest.raises(ValueError, match="scale must be > 0"):
        HighDynamicRange(scale=0)
    with pytest.raises(ValueError, match="bits must be an integer"):
        Quantization(bits=0)


# -- the surrogate formula -----------------------------------------------------------------
CASES = [
    ("quantization", lambda: Quantization(bits=2), "identity"),
    ("quantization", lambda: Quantization(bits=2), "linear_part"),
    ("hdr", lambda: HighDynamicRange(), "identity"),
    ("hdr", lambda: HighDynamicRange(), "linear_part"),
    ("jpeg", lambda: JPEG(quality=5), "identity"),
    ("jpeg", lambda: JPEG(quality=5), "jpeg_linear"),
    ("jpeg", lambda: JPEG(quality=5), "linear_part"),
    ("jpeg", lambda: JPEG(quality=10), "jpeg_kornia"),
]


@pytest.mark.parametrize("kind,make,surrogate", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_gradient_is_twice_the_surrogate_vjp_of_the_residual(kind, make, surrogate):
    if surrogate == "jpeg_kornia":
        pytest.importorskip("kornia")
    op = make()
    op.surrogate, op._surrogate_fn = resolve_surrogate(surrogate)
    dtype = torch.float32 if surrogate == "jpeg_kornia" else torch.float64
    truth = _photo_batch(dtype=dtype)
    y = op.forward_exact(truth)
    x = _perturbed(truth).to(dtype)
    exact = op.forward_exact(x)
    # Independently: the VJP of the surrogate function alone (no operator machinery).
    _, vjp = torch.func.vjp(lambda z: get_surrogate(surrogate)(op, z), x)
    (expected,) = vjp(2.0 * (exact - y))
    grad, loss = op.gradient(x, y, return_loss=True)
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)
    assert grad.abs().sum() > 0
    # The loss is that of the exact operator, per sample.
    torch.testing.assert_close(loss, (exact - y).square().flatten(1).sum(1))
    # Closed forms where they exist.
    if surrogate == "identity" or (kind == "quantization" and surrogate == "linear_part"):
        torch.testing.assert_close(grad, 2.0 * (exact - y))
    if kind == "hdr" and surrogate == "linear_part":
        torch.testing.assert_close(grad, 2.0 * op.scale * (exact - y))


def test_forward_value_with_autograd_is_bitwise_the_exact_value():
    for op in (JPEG(quality=5), Quantization(), HighDynamicRange()):
        x = _perturbed(_photo_batch(dtype=torch.float32)).requires_grad_(True)
        out = op.forward(x)
        assert out.requires_grad
        assert torch.equal(out.detach(), op.forward_exact(x.detach()))


# -- the structured JPEG surrogate ---------------------------------------------------------
def _chroma_resampled(x: torch.Tensor) -> torch.Tensor:
    """Independent closed form of JPEG without rounding, on [-1, 1] images with H, W even.

    Quantization scaling and DCT/IDCT cancel, so what is left is: JFIF YCbCr (the standard's
    published inverse constants), chroma averaged over 2x2 cells, upsampled by libjpeg's
    triangle filter (3/4 nearer, 1/4 farther, edge replicated), back to RGB.
    """
    p = (x + 1) * 127.5
    r, g, b = p.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b

    def down(c):
        return 0.25 * (c[..., ::2, ::2] + c[..., 1::2, ::2] + c[..., ::2, 1::2] + c[..., 1::2, 1::2])

    def up_axis(c, dim):
        dim %= c.ndim
        n = c.shape[dim]
        prev = c.index_select(dim, torch.clamp(torch.arange(n) - 1, min=0))
        nxt = c.index_select(dim, torch.clamp(torch.arange(n) + 1, max=n - 1))
        even, odd = 0.75 * c + 0.25 * prev, 0.75 * c + 0.25 * nxt
        return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)

    cb, cr = (up_axis(up_axis(down(c), -2), -1) for c in (cb, cr))
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
    return rgb / 127.5 - 1


def test_jpeg_linear_equals_independent_chroma_resampling_closed_form():
    x = _perturbed(_photo_batch(size=48))
    for quality in (5, 50, 95):  # the tables cancel: the surrogate does not depend on QF
        ours = get_surrogate("jpeg_linear")(JPEG(quality=quality), x)
        torch.testing.assert_close(ours, _chroma_resampled(x), atol=2e-5, rtol=0)
    torch.testing.assert_close(JPEG(quality=5).linear_part(x), jpeg_codec(x, 5, rounding=False))


def test_jpeg_linear_is_linear():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(2, 2, 3, 32, 40, generator=g, dtype=torch.float64)
    op = JPEG(quality=5)
    f = op.linear_part
    torch.testing.assert_close(f(2.5 * u - 1.5 * v), 2.5 * f(u) - 1.5 * f(v), atol=1e-10, rtol=0)
    torch.testing.assert_close(f(torch.zeros_like(u)), torch.zeros_like(u), atol=1e-12, rtol=0)


def test_jpeg_linear_differs_from_exact_jpeg_only_by_rounding():
    x = _photo_batch(size=64)
    # At QF 100 (all table entries 1) only the roundings and the 8-bit clamps separate them
    # (chroma resampling overshoots [0, 255] on saturated colours; the codec clamps there).
    gap = (jpeg_codec(x, 100) - jpeg_codec(x, 100, rounding=False).clamp(-1, 1)).abs().max()
    assert gap * 127.5 < 4.0  # grey levels
    # At QF 5 the rounding matters a lot: the surrogate is not the exact operator.
    assert (jpeg_codec(x, 5) - jpeg_codec(x, 5, rounding=False)).abs().max() * 127.5 > 20


def test_jpeg_kornia_tracks_the_exact_codec():
    pytest.importorskip("kornia")
    op = JPEG(quality=50)
    x = _photo_batch(size=64, dtype=torch.float32)
    smooth = get_surrogate("jpeg_kornia")(op, x)
    assert smooth.shape == x.shape
    assert (smooth - op.forward_exact(x)).abs().mean() * 127.5 < 3.0  # grey levels
    gray = x[:, :1]
    assert get_surrogate("jpeg_kornia")(op, gray).shape == gray.shape


# -- what autograd-based algorithms receive ------------------------------------------------
@pytest.mark.parametrize("make", [lambda: Quantization(), lambda: HighDynamicRange(),
                                  lambda: JPEG(quality=5, surrogate="identity"),
                                  lambda: JPEG(quality=5, surrogate="jpeg_linear")],
                         ids=["quantization", "hdr", "jpeg-identity", "jpeg-jpeg_linear"])
def test_dps_style_autograd_through_loss_gets_the_surrogate_gradient(make):
    op = make()
    truth = _photo_batch()
    y = op.forward_exact(truth)
    # DPS: x_t requires grad, the denoiser output goes through the operator's loss.
    x_t = _perturbed(truth, seed=3).requires_grad_(True)
    denoised = 0.9 * torch.tanh(x_t)
    (grad_xt,) = torch.autograd.grad(op.loss(denoised, y).sum(), x_t)
    chain = 0.9 * (1 - torch.tanh(x_t.detach()) ** 2) * op.gradient(denoised.detach(), y)
    torch.testing.assert_close(grad_xt, chain)
    assert grad_xt.abs().sum() > 0
    # DAPS / RED-diff call gradient(); direct autograd on the loss agrees with it.
    x0 = _perturbed(truth, seed=4).requires_grad_(True)
    (grad_x0,) = torch.autograd.grad(op.loss(x0, y).sum(), x0)
    torch.testing.assert_close(grad_x0, op.gradient(x0.detach(), y))


@pytest.mark.parametrize("make", [lambda: Quantization(), lambda: JPEG(quality=5)],
                         ids=["quantization", "jpeg"])
def test_plain_autograd_through_the_exact_operator_would_give_zeros(make):
    op = make()
    x = _perturbed(_photo_batch()).requires_grad_(True)
    (naive,) = torch.autograd.grad(op.forward_exact(x).square().sum(), x)
    assert torch.count_nonzero(naive) == 0  # why the surrogate is needed
    (ours,) = torch.autograd.grad(op.forward(x).square().sum(), x)
    assert torch.count_nonzero(ours) > 0


def test_straight_through_rejects_a_surrogate_of_the_wrong_shape():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = straight_through(lambda z: torch.round(z[..., ::2, ::2]), lambda z: z, x)
    with pytest.raises(ValueError, match="surrogate output shape"):
        out.sum().backward()


# -- extension through a third-party distribution ------------------------------------------
def test_a_throwaway_distribution_adds_an_operator_and_a_surrogate(tmp_path, monkeypatch):
    module = "lmaps_toyplug_mod"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        import torch
        from lmaps_plugin.operators.non_differentiable import NonDifferentiableOperator

        def tanh_surrogate(op, x):
            return torch.tanh(x)

        class SignOperator(NonDifferentiableOperator):
            default_surrogate = "toy_tanh"

            def forward_exact(self, x):
                return torch.sign(x)
    """))
    dist_info = tmp_path / "lmaps_toyplug-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: lmaps-toyplug\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[lmaps_plugin.operators]\n"
        f"toy_sign = {module}:SignOperator\n\n"
        "[lmaps_plugin.surrogates]\n"
        f"toy_tanh = {module}:tanh_surrogate\n")
    assert "toy_sign" not in available_operators() and "toy_tanh" not in available_surrogates()

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    try:
        assert "toy_sign" in available_operators()
        assert "toy_tanh" in available_surrogates()
        assert {"jpeg", "quantization", "hdr"} <= set(available_operators())  # ours still there
        op = get_operator("toy_sign")()
        assert op.surrogate == "toy_tanh"
        x = torch.linspace(-2, 2, 9, dtype=torch.float64)[None]
        y = torch.full_like(x, 0.25)
        expected = 2 * (1 - torch.tanh(x) ** 2) * (torch.sign(x) - y)
        torch.testing.assert_close(op.gradient(x, y), expected)
        # and the new surrogate serves our operators too
        q = Quantization(surrogate="toy_tanh")
        expected = 2 * (1 - torch.tanh(x) ** 2) * (q.forward_exact(x) - y)
        torch.testing.assert_close(q.gradient(x, y), expected)
    finally:
        sys.modules.pop(module, None)
