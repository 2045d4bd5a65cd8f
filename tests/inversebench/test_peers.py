"""InverseBench peers on our priors/operators: the pseudo-inverse adapter (against a dense pseudo-inverse) and,
with an InverseBench checkout, each peer algorithm run by the ``lmaps`` app on a tiny problem."""
from __future__ import annotations

import os

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from lmaps_plugin.app.compose import compose_app
from lmaps_plugin.app import run as app_run
from lmaps_plugin.operators import operator_matrix
from lmaps_plugin.operators.linear import BoxInpainting, SuperResolution
from lmaps_plugin.operators.non_differentiable import HighDynamicRange
from lmaps_plugin.inversebench.peers import PseudoInverseOperator, inversebench_algorithm
from lmaps_plugin.local_map import conjugate_gradient

needs_inversebench = pytest.mark.skipif(not os.environ.get("INVERSEBENCH_ROOT"),
                                        reason="INVERSEBENCH_ROOT is not set")


@pytest.mark.parametrize("make", [lambda: SuperResolution(factor=2, resolution=8, channels=1),
                                  lambda: BoxInpainting(resolution=8, channels=1)])
def test_pseudo_inverse_matches_the_dense_moore_penrose_inverse(make):
    op = make()
    a = operator_matrix(op, (1, 8, 8))          # from the forward alone, independent of the adjoint
    y = torch.randn(2, a.shape[0], dtype=torch.float64)
    wrapped = PseudoInverseOperator(op, image_shape=(1, 8, 8), iters=200, damping=1e-12, tol=1e-12)
    obs = y.reshape(2, *op.forward(torch.zeros(1, 1, 8, 8, dtype=torch.float64)).shape[1:])
    got = wrapped.pseudo_inverse(obs).reshape(2, -1)
    want = y @ torch.linalg.pinv(a).T
    assert torch.allclose(got, want, atol=1e-6)


def test_pseudo_inverse_of_a_nondifferentiable_operator_uses_its_linear_part():
    op = HighDynamicRange()  # H(x) = clip(2x); linear part 2x, so L⁺y = y/2
    wrapped = PseudoInverseOperator(op, image_shape=(1, 4, 4), iters=20, damping=0.0)
    y = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    assert torch.allclose(wrapped.pseudo_inverse(y), y / 2, atol=1e-10)


def test_wrapper_passes_the_operator_through():
    op = BoxInpainting(resolution=8, channels=1)
    wrapped = PseudoInverseOperator(op)
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(wrapped.forward(x), op.forward(x)) and wrapped.sigma_noise == op.sigma_noise
    assert torch.equal(wrapped.gradient(x, op.forward(x)), torch.zeros_like(x))


def test_conjugate_gradient_solves_a_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    spd = m @ m.T + torch.eye(6, dtype=torch.float64)
    b = torch.randn(2, 6, generator=g, dtype=torch.float64)
    x, report = conjugate_gradient(lambda v: v @ spd.T, b, torch.zeros_like(b), tol=1e-12, max_iter=50)
    assert report.converged
    assert torch.allclose(x, torch.linalg.solve(spd, b.T).T, atol=1e-8)


def test_missing_checkout_gives_a_clear_error(monkeypatch):
    monkeypatch.delenv("INVERSEBENCH_ROOT", raising=False)
    import lmaps_plugin.inversebench as ib
    from lmaps_plugin.inversebench import locate
    monkeypatch.setattr(locate, "_root_from_importable_packages", lambda: None)
    with pytest.raises(ib.InverseBenchNotFound, match="INVERSEBENCH_ROOT"):
        inversebench_algorithm("algo.dps.DPS", net=None, forward_op=None)


PEER_TINY = {
    "ib_dps": ["algorithm.method.diffusion_scheduler_config.num_steps=5"],
    "ib_daps": ["algorithm.method.annealing_scheduler_config.num_steps=3",
                "algorithm.method.diffusion_scheduler_config.num_steps=2", "algorithm.method.lgvd_config.num_steps=3"],
    "ib_diffpir": ["algorithm.method.diffusion_scheduler_config.num_steps=5"],
    "ib_reddiff": ["algorithm.method.num_steps=5"],
    "ib_pigdm": ["algorithm.method.scheduler_config.num_steps=5"],
}


@pytest.mark.inversebench
@needs_inversebench
@pytest.mark.parametrize("algorithm", sorted(PEER_TINY))
def test_each_peer_runs_in_the_lmaps_app(tmp_path, algorithm):
    cfg = compose_app(["prior=gmm", "prior.resolution=16", "num_images=1", "threads=1", f"algorithm={algorithm}",
                       f"exp_dir={tmp_path}", "verbose=false", "figure.enabled=false", *PEER_TINY[algorithm]])
    GlobalHydra.instance().clear()
    summary = app_run.run(cfg)
    outcome = summary.outcomes[0]
    assert outcome.status in ("ok", "failed")  # a peer may diverge; it must then be recorded, never written
    exp = summary.exp_dir
    if outcome.status == "ok":
        data = torch.load(exp / "result_0.pt", weights_only=True)
        assert data["recon"].shape == (1, 1, 16, 16) and torch.isfinite(data["recon"]).all()
    else:
        assert not (exp / "result_0.pt").exists()


@pytest.mark.inversebench
@needs_inversebench
def test_stock_inversebench_algorithm_configs_are_selectable(tmp_path):
    cfg = compose_app(["algorithm=daps", "prior=gmm", "prior.resolution=16"])
    GlobalHydra.instance().clear()
    assert cfg.algorithm.name == "DAPS" and cfg.algorithm.method._target_ == "algo.daps.DAPS"


def test_pseudo_inverse_of_an_affine_operator_removes_its_offset():
    """InverseBench's scattering operator is affine (unnormalize adds a shift): ΠGDM's pseudo-inverse must invert
    H(x) = L x + c, i.e. return L⁺(y − c), not L⁺y."""
    g = torch.Generator().manual_seed(3)
    lin = torch.randn(30, 16, generator=g, dtype=torch.float64)
    offset = torch.randn(1, 30, generator=g, dtype=torch.float64)

    class Affine:
        is_linear = True
        sigma_noise = 0.0

        def forward(self, x, **kwargs):
            return x.flatten(1) @ lin.T + offset

        def adjoint(self, y):
            return (y @ lin).reshape(-1, 1, 4, 4)

    x = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    wrapped = PseudoInverseOperator(Affine(), image_shape=(1, 4, 4), iters=200, tol=1e-12)
    assert torch.allclose(wrapped.pseudo_inverse(Affine().forward(x)), x, atol=1e-5)
