"""The per-step hot path of LMAPS does not wait on the device: no ``.item()``, ``.cpu()``, ``.numpy()``,
``.tolist()``, and Python-scalar conversions only where a decision needs them (one per diffusion step, plus one
per stopping test of an adaptive inner solver). Counted by wrapping ``torch.Tensor``'s conversion methods."""
from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from hand_operators import Affine, AffineWithAdjoint, AffineWithBasis
from lmaps_plugin.local_map import InnerSettings
from lmaps_plugin.local_map.krylov import CHECK_EVERY, lanczos_polynomial
from lmaps_plugin.sampler import sample_lmaps

SYNCING = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy")
IMG = (1, 6, 6)


@contextmanager
def count_host_syncs():
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)
        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def per_step_syncs(op, inner, steps=6):
    """Host synchronisations of every diffusion step after the first (which sets the solve up), by name."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 20, generator=g)
    x = 10 * torch.randn(2, *IMG, generator=g)
    sigmas = torch.tensor([10.0 / 2 ** i for i in range(steps)] + [0.0])
    snapshots = []
    with count_host_syncs() as counts:
        sample_lmaps(lambda v, s: v / (1 + s ** 2), x, sigmas, y, op, k1=0.5, k2=5.0, inner=inner, disable=True,
                     callback=lambda info: snapshots.append(Counter(counts)))
    return [after - before for before, after in zip(snapshots, snapshots[1:])]


def matrix(seed=0):
    return torch.randn(20, 36, generator=torch.Generator().manual_seed(seed)) * 0.3


@pytest.mark.parametrize("inner_steps", [5, 40])
def test_k_gradient_steps_synchronise_once_per_diffusion_step_whatever_k(inner_steps):
    op = Affine(matrix(), square=True)                  # not linear: the K steps run one by one
    steps = per_step_syncs(op, InnerSettings(kind="gd", lr=0.001, steps=inner_steps))
    assert op.gradient_calls > 5 * inner_steps
    assert all(dict(step) == {"__bool__": 1} for step in steps), steps


def test_an_eigenbasis_solve_synchronises_once_per_diffusion_step():
    steps = per_step_syncs(AffineWithBasis(matrix(), img_shape=IMG), InnerSettings(kind="cg"))
    assert all(dict(step) == {"__bool__": 1} for step in steps), steps


def test_conjugate_gradient_synchronises_once_per_stopping_test():
    steps = per_step_syncs(AffineWithAdjoint(matrix(), img_shape=IMG), InnerSettings(kind="cg", cg_tol=1e-6))
    for step in steps:
        assert set(step) <= {"__bool__", "__float__"}, step
        # the step's check, the report's relative residual, and one test per iteration (+1 when it converges)
        assert step["__float__"] == 1 and 2 <= step["__bool__"] <= 2 + 36, step


def test_lanczos_synchronises_once_per_check_and_the_step_once():
    steps = per_step_syncs(AffineWithAdjoint(matrix(), img_shape=IMG), InnerSettings(kind="gd", lr=0.01, steps=40))
    for step in steps:
        assert set(step) <= {"__bool__", "__float__"}, step
        assert step["__float__"] <= 1 and 1 <= step["__bool__"] <= 1 + math.ceil(40 / CHECK_EVERY), step


def test_lanczos_polynomial_counts_one_synchronisation_per_check():
    gram = lambda v: (v.flatten(1) @ (matrix().T @ matrix())).view(v.shape)  # noqa: E731
    v = torch.randn(2, *IMG, generator=torch.Generator().manual_seed(1))
    with count_host_syncs() as counts:
        _, report = lanczos_polynomial(gram, v, 0.9, 10.0, 0.01, 100, tol=1e-6)
    assert report.converged and report.iterations % CHECK_EVERY == 0
    checks = report.iterations // CHECK_EVERY
    assert dict(counts) == {"__bool__": checks, "__float__": 1}


def test_the_progress_bar_reads_the_misfit_a_bounded_number_of_times():
    from lmaps_plugin.sampler import POSTFIX_UPDATES

    op = AffineWithBasis(matrix(), img_shape=IMG)
    steps = 3 * POSTFIX_UPDATES
    sigmas = torch.cat([torch.logspace(1, -1, steps), torch.zeros(1)])
    y = torch.randn(1, 20, generator=torch.Generator().manual_seed(2))
    with count_host_syncs() as counts:
        sample_lmaps(lambda v, s: v / (1 + s ** 2), 10 * torch.randn(1, *IMG), sigmas, y, op,
                     inner=InnerSettings(kind="cg"), disable=False)
    assert POSTFIX_UPDATES <= counts["item"] <= POSTFIX_UPDATES + 1
