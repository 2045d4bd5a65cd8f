"""``lmaps-calibrate``: print what lmaps_auto's rule (:mod:`lmaps_plugin.weighting`) chooses for a problem of the
``lmaps`` app, and which local MAP solve the operator gets::

    lmaps-calibrate problem=sr4 prior=faces64
"""
from __future__ import annotations

import math
import sys

import torch
from hydra.errors import HydraException
from hydra.utils import instantiate

from ..local_map import InnerSettings, InnerSolve
from ..schedules import poly_sigmas
from ..weighting import calibrate, chi2_calibration, describe, surrogate_mismatch
from .build import build_dataset, build_prior, refusals, resolve_device
from .compose import compose_app, composition_errors
from . import schema
from .schema import ConfigError


#: exit codes of ``lmaps-calibrate`` (the contract of every ``lmaps`` command)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    """Print the rule's numbers for a problem of the ``lmaps`` app: ``lmaps-calibrate problem=sr4 prior=faces64``.

    Exit codes: 0 printed, 1 the computation failed, 2 the configuration was refused (an override Hydra cannot
    compose, a value the ``lmaps`` schema or a class refuses); either error is one line on stderr."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in overrides):
        print(main.__doc__)
        return EXIT_OK
    try:
        cfg = _compose(overrides)
        schema.validate(cfg)
        device = resolve_device(str(cfg.device))
        with refusals("problem.model"):   # on the app's device, as the app builds it (InverseBench's default: cuda)
            forward_op = instantiate(cfg.problem.model, device=device)
        dataset = build_dataset(cfg)  # the test images ids / num_images select (the first one is used)
        with refusals("prior"):
            net = build_prior(cfg, device) if "net" in cfg.prior else None
        _print_rule(cfg, forward_op, dataset, net)
    except ConfigError as exc:
        print(f"lmaps-calibrate: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except composition_errors() as exc:
        if isinstance(exc, OSError) and not isinstance(exc, HydraException):  # not the configuration's: a failure
            print(f"lmaps-calibrate: failed: {type(exc).__name__}: {' '.join(str(exc).split())[:600]}",
                  file=sys.stderr, flush=True)
            return EXIT_FAILED
        print(f"lmaps-calibrate: the configuration was refused ({type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:600]})", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the contract: one line and exit code 1, no traceback
        print(f"lmaps-calibrate: failed: {type(exc).__name__}: {' '.join(str(exc).split())[:600]}", file=sys.stderr,
              flush=True)
        return EXIT_FAILED
    return EXIT_OK


def _compose(overrides: list[str]):
    """The ``lmaps`` app's config with ``algorithm=lmaps_auto`` and the command's overrides."""
    return compose_app(["algorithm=lmaps_auto", *overrides])


def _print_rule(cfg, forward_op, dataset, net) -> None:
    """What ``main`` prints: the rule's numbers and the local MAP solve for the composed config."""
    method = cfg.algorithm.method
    target = dataset[0]["target"][None] if isinstance(dataset[0], dict) else dataset[0][None]
    torch.manual_seed(0)
    observation = forward_op({"target": target})
    lam, variance = float(method.get("calib_lambda", 1.0)), str(method.get("calib_variance", "gaussian"))
    # a χ² loss (the black hole) sets σ_y from its closure terms' weights and counts, as LMAPS does
    calibration = (chi2_calibration(forward_op, observation, torch.zeros_like(target), net, lam=lam, variance=variance)
                   or calibrate(forward_op, observation, net, lam=lam, variance=variance))
    solve = InnerSolve(InnerSettings(kind=str(method.inner_solver), lr=None, step_guard=True))
    solve.setup(forward_op, target, observation)
    if solve.exact:
        how = "exact: Gram eigenbasis" if solve.system.eigenbasis is not None else (
            f"exact: conjugate gradient (cg_tol={method.cg_tol}, cg_max_iter={method.cg_max_iter}, warm-started)")
        if not math.isfinite(solve.gram_norm) and solve.system.eigenbasis is not None:
            solve.gram_norm = float(solve.system.eigenbasis.eigenvalues.max())
    else:
        how = f"gradient descent: K={method.inner_steps} steps with eta = 1/((1-r) + r*k2*lambda_max)"
    gram_norm = solve.gram_norm if math.isfinite(solve.gram_norm) else None
    sigmas = poly_sigmas(int(method.num_steps), float(method.sigma_min), float(method.sigma_max),
                         float(method.rho))
    print(f"problem={cfg.problem.name} operator={type(forward_op).__name__} sigma_noise={forward_op.sigma_noise}")
    print(f"local MAP solve: {how}")
    mismatch = surrogate_mismatch(forward_op, target)
    if mismatch:
        print(f"surrogate model error at the first test image: RMS {math.sqrt(mismatch):.4g} (added to sigma_y^2 "
              f"at every step, measured there at x0_hat)")
    print(describe(calibration, sigmas, gram_norm))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
