"""Whatever the inner solve computes in (a float64 Gram eigenbasis, conjugate gradient, gradient descent through a
surrogate), LMAPS returns samples in the network's dtype, on the observation's device."""
from __future__ import annotations

import pytest
import torch

from lmaps_plugin import LMAPS
from lmaps_plugin.operators import build_operator
from lmaps_plugin.operators.base import GramEigenbasis
from lmaps_plugin.operators.matrix import MatrixOperator
from lmaps_plugin.priors import build_edm_unet

RES = 16


def float32_prior(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_edm_unet(dict(img_channels=channels, img_resolution=RES, model_channels=8, channel_mult=[1, 2],
                               num_blocks=1, attn_resolutions=[], patch_size=1)).eval()


class Float64Basis(MatrixOperator):
    """A dense operator whose Gram eigenbasis is always float64 (as the scattering adapter's cached one is)."""

    def gram_eigenbasis(self, like):
        a = self.matrix.double()
        eigenvalues, vectors = torch.linalg.eigh(a.T @ a)
        shape = like.shape[1:]
        return GramEigenbasis(eigenvalues=eigenvalues.clamp_min(0),
                              to_basis=lambda v: v.double().flatten(1) @ vectors,
                              from_basis=lambda c: (c @ vectors.T).reshape(c.shape[0], *shape))


def operators():
    gen = torch.Generator().manual_seed(3)
    matrix = torch.randn(40, RES * RES, generator=gen, dtype=torch.float64) / RES
    return {
        "inpaint_random": lambda: build_operator("inpaint_random", resolution=RES, channels=1, sigma_noise=0.05),
        "sr4": lambda: build_operator("sr4", resolution=RES, channels=1, sigma_noise=0.05),
        "motion_deblur": lambda: build_operator("motion_deblur", resolution=RES, channels=1, sigma_noise=0.05),
        "phase_retrieval": lambda: build_operator("phase_retrieval", resolution=RES, channels=1, sigma_noise=0.05),
        "quantization": lambda: build_operator("quantization"),
        "float64_basis": lambda: Float64Basis(matrix, (1, RES, RES), sigma_noise=0.05),
    }


@pytest.mark.parametrize("solver", ["gd", "cg", "auto"])
@pytest.mark.parametrize("name", sorted(operators()))
def test_samples_come_back_in_the_networks_dtype(name, solver):
    op = operators()[name]()
    if solver == "cg" and not op.is_linear:
        pytest.skip(f"{name} is not linear: inner_solver=cg refuses it")
    truth = torch.rand(1, 1, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = op({"target": truth.double()})            # a float64 observation: the network (float32) decides
    lmaps = LMAPS(float32_prior(1), op, num_steps=3, inner_steps=2, inner_solver=solver, verbose=False)
    out = lmaps.inference(y, num_samples=2)
    assert out.dtype == torch.float32 and out.device == y.device and out.shape == (2, 1, RES, RES)
    assert torch.isfinite(out).all()


def test_an_explicit_dtype_wins_and_a_network_without_parameters_follows_the_observation():
    from lmaps_plugin.priors.gmm import GaussianMixturePrior

    op = build_operator("inpaint_random", resolution=RES, channels=1, sigma_noise=0.05)
    y = op({"target": torch.zeros(1, 1, RES, RES, dtype=torch.float64)})
    assert LMAPS(float32_prior(1), op, num_steps=2, verbose=False).inference(y, dtype=torch.float64).dtype \
        == torch.float64
    d = RES * RES
    gmm = GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, d, dtype=torch.float64),
                                                torch.eye(d, dtype=torch.float64)[None], img_shape=(1, RES, RES))
    assert LMAPS(gmm, op, num_steps=2, verbose=False).inference(y).dtype == torch.float64
    assert LMAPS(gmm, op, num_steps=2, verbose=False).inference(y.float()).dtype == torch.float32


@pytest.mark.parametrize("name, solver, says", [
    ("inpaint_random", "gd", "K=2 gradient steps, summed in closed form in the Gram eigenbasis; inner_solver=gd"),
    ("motion_deblur", "auto", "exact, by conjugate gradient (cg_tol=1e-05, cg_max_iter=100, warm-started); "
                              "MotionBlur is linear with a least-squares loss (inner_solver=auto)"),
    ("phase_retrieval", "auto", "K=2 gradient steps, one by one; PhaseRetrieval is not linear"),
    ("sr4", "cg", "exact, in the operator's Gram eigenbasis; SuperResolution is linear"),
])
def test_the_run_says_once_which_solve_it_chose_and_why(capsys, name, solver, says):
    op = operators()[name]()
    y = op({"target": torch.zeros(1, 1, RES, RES, dtype=torch.float64)})
    LMAPS(float32_prior(1), op, num_steps=3, inner_steps=2, inner_solver=solver, verbose=True).inference(y)
    err = capsys.readouterr().err
    assert err.count("LMAPS local MAP solve:") == 1 and says in err, err
