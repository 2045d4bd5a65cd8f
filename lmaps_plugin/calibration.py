"""The ``lmaps_auto`` rule: LMAPS' data weight from the measurement noise (docs/calibration.md).

Eq. 13 weighs the prior term (1 − r)·½‖x0 − x̂0‖² against the data term r·k2·½‖y − H(x0)‖²; its
minimiser depends on the ratio w = r·k2/(1 − r) alone. Sec. 3.2 of the paper: with a Gaussian
x0 | x_σ ~ N(x̂0, v_σ·I) and a likelihood N(y; H x0, σ_y²·I), the local MAP is the posterior mean
when ``w = v_σ/σ_y²``. The rule sets

    w(σ) = v_σ / (λ·σ_y²),        v_σ = σ²·σ_d² / (σ² + σ_d²)    ("gaussian", the default)
                                   v_σ = σ²                       ("sigma2", the paper's k/SNR)

with σ_y the operator's ``sigma_noise`` (per real component: σ/√2 for complex measurements),
σ_d the prior's ``sigma_data`` (0.5 for images in [−1, 1]) and one constant λ (λ = 1 is Bayes),
chosen once on validation images. For a non-differentiable operator (JPEG, quantization, HDR)
the gradient is the surrogate H′'s, so the likelihood LMAPS effectively uses is y ≈ H′(x0) + n + e
with the surrogate's model error e = H(x0) − H′(x0): its mean square at x̂0, measured every step
(:func:`surrogate_mismatch`), is added to σ_y². In Table 4's parameters, k1² = λ·σ_y²·k2 at small σ. The rule
needs the operator's loss to be the plain sum of squares ‖H(x) − y‖²; where it is not (the black
hole's closure-quantity χ²), LMAPS falls back to the configured k1, k2 (see ``LMAPS``).

``python -m lmaps_plugin.calibration [overrides]`` (also ``lmaps-calibrate``) prints what the rule
chooses for a problem of the ``lmaps`` app.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

VARIANCE_MODELS = ("gaussian", "sigma2")
#: σ_y is floored at this fraction of the observation's RMS (a 60 dB SNR): a noiseless problem
#: then gets a near-projection onto the data instead of an infinite weight.
NOISE_FLOOR = 1e-3


def prior_variance(sigma: float, sigma_data: float = 0.5, model: str = "gaussian") -> float:
    """v_σ, the per-pixel variance of x0 | x_σ the rule assumes.

    ``gaussian``: the posterior variance of a Gaussian prior N(·, σ_d²) seen through noise σ,
    σ²σ_d²/(σ² + σ_d²) (≈ σ² for σ ≪ σ_d, → σ_d² for σ ≫ σ_d). ``sigma2``: σ² (Sec. 4.1's
    Σ = k/SNR with k = 1).
    """
    if model == "sigma2":
        return sigma ** 2
    if model == "gaussian":
        return sigma ** 2 * sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    raise ValueError(f"variance model must be one of {VARIANCE_MODELS}, got {model!r}")


@dataclass(frozen=True)
class Calibration:
    """The data weight w(σ) = v_σ/(λ·σ_y²) of one problem and the Eq. 13 weights it implies."""
    sigma_y: float
    lam: float = 1.0
    sigma_data: float = 0.5
    variance: str = "gaussian"

    def __post_init__(self):
        for key in ("sigma_y", "lam", "sigma_data"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"Calibration: {key}={value!r} is invalid; it must be a finite number > 0")
        if self.variance not in VARIANCE_MODELS:
            raise ValueError(f"Calibration: variance={self.variance!r} is invalid; one of {VARIANCE_MODELS}")

    def data_weight(self, sigma: float, model_error: float = 0.0) -> float:
        """w(σ) = v_σ / (λ·(σ_y² + e²)): the data term's weight relative to the prior term's, with
        ``model_error`` e² the mean square of a surrogate's model error (0 for exact operators)."""
        noise = self.sigma_y ** 2 + model_error
        return prior_variance(sigma, self.sigma_data, self.variance) / (self.lam * noise)

    def weights(self, sigma: float, model_error: float = 0.0) -> tuple[float, float]:
        """Eq. 13's ``(r, k2)`` with that ratio: r = w/(1 + w), k2 = 1."""
        w = self.data_weight(sigma, model_error)
        return w / (1.0 + w), 1.0

    def equivalent_k1(self, k2: float) -> float:
        """The small-σ Table-4 k1 for a given k2: k1² = λ·σ_y²·k2 (v_σ ≈ σ²)."""
        return math.sqrt(self.lam * self.sigma_y ** 2 * k2)


def surrogate_mismatch(forward_op, x) -> float:
    """e² = mean |H(x) − H′(x)|² per measurement entry, for an operator whose gradient is a
    surrogate's (``is_differentiable = False`` with ``forward_exact``/``forward_surrogate``); 0 otherwise."""
    if getattr(forward_op, "is_differentiable", True) or not (
            callable(getattr(forward_op, "forward_exact", None))
            and callable(getattr(forward_op, "forward_surrogate", None))):
        return 0.0
    import torch

    with torch.no_grad():
        gap = forward_op.forward_exact(x) - forward_op.forward_surrogate(x)
    return float(gap.abs().square().mean())


def effective_noise_std(sigma_noise: float, complex_measurements: bool, observation_rms: float) -> float:
    """σ_y per real measurement component, floored at :data:`NOISE_FLOOR` × the observation's RMS.

    Complex noise ``sigma_noise·randn_like(z)`` (E|n|² = σ²) has σ²/2 per real component, and the
    loss sums |z|² = Re² + Im², so the Gaussian likelihood reads ½‖res‖²/(σ²/2).
    """
    sigma = float(sigma_noise) / (math.sqrt(2.0) if complex_measurements else 1.0)
    return max(sigma, NOISE_FLOOR * float(observation_rms))


def calibrate(forward_op, observation, net=None, lam: float = 1.0, variance: str = "gaussian") -> Calibration:
    """The :class:`Calibration` of ``forward_op`` at ``observation`` for the prior ``net``.

    σ_y from the operator's ``sigma_noise``; σ_d from ``net.sigma_data`` (0.5 when absent).
    """
    sigma_noise = getattr(forward_op, "sigma_noise", None)
    if isinstance(sigma_noise, bool) or not isinstance(sigma_noise, (int, float)) or not (
            math.isfinite(sigma_noise) and sigma_noise >= 0):
        raise ValueError(f"calibration needs the operator's noise level: {type(forward_op).__name__}.sigma_noise "
                         f"= {sigma_noise!r}, expected a finite number >= 0")
    rms = float(observation.detach().abs().square().mean().sqrt())
    sigma_y = effective_noise_std(sigma_noise, observation.is_complex(), rms)
    if sigma_y == 0:
        raise ValueError("calibration: the observation is all zeros and sigma_noise is 0; no noise level to use")
    sigma_data = float(getattr(net, "sigma_data", 0.5) or 0.5)
    return Calibration(sigma_y=sigma_y, lam=float(lam), sigma_data=sigma_data, variance=variance)


def describe(calibration: Calibration, sigmas, gram_norm: float | None = None, rows: int = 8) -> str:
    """A table of what the rule chooses at ``rows`` noise levels of the grid ``sigmas``."""
    sigmas = [float(s) for s in sigmas if float(s) > 0]
    picks = sorted({round(i * (len(sigmas) - 1) / max(rows - 1, 1)) for i in range(rows)})
    lines = [f"lmaps_auto: sigma_y = {calibration.sigma_y:.4g} (per real component), lambda = {calibration.lam:g}, "
             f"v_sigma model = {calibration.variance} (sigma_data = {calibration.sigma_data:g})"]
    if gram_norm is not None:
        lines.append(f"lambda_max(J^T J) = {gram_norm:.4g}")
    lines.append(f"{'sigma':>10} {'v_sigma':>11} {'w = v/(lam sy^2)':>17} {'r (k2=1)':>12} {'w*lambda_max':>13}")
    for i in picks:
        sigma = sigmas[i]
        w = calibration.data_weight(sigma)
        r, _ = calibration.weights(sigma)
        stiff = f"{w * gram_norm:13.4g}" if gram_norm is not None else f"{'-':>13}"
        lines.append(f"{sigma:10.4g} {prior_variance(sigma, calibration.sigma_data, calibration.variance):11.4g} "
                     f"{w:17.4g} {r:12.8f} {stiff}")
    lines.append(f"equivalent Table-4 k1 at small sigma: k1 = {calibration.equivalent_k1(100.0):.4g} for k2 = 100, "
                 f"{calibration.equivalent_k1(1.0):.4g} for k2 = 1")
    return "\n".join(lines)


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
    from .app import cli
    from .app.schema import ConfigError

    try:
        cfg = _compose(overrides)
        cli.schema.validate(cfg)
        with cli._refusals("problem.model"):
            forward_op = _instantiate(cfg.problem.model)
        dataset = cli.build_dataset(cfg)  # the test images ids / num_images select (the first one is used)
        with cli._refusals("prior"):
            net = _instantiate(cfg.prior.net) if "net" in cfg.prior else None
        _print_rule(cfg, forward_op, dataset, net)
    except ConfigError as exc:
        print(f"lmaps-calibrate: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except cli._composition_errors() as exc:
        from hydra.errors import HydraException

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
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="lmaps_plugin.configs", version_base="1.3"):
        return compose(config_name="config", overrides=["algorithm=lmaps_auto", *overrides])


def _instantiate(node):
    from hydra.utils import instantiate

    return instantiate(node)


def _print_rule(cfg, forward_op, dataset, net) -> None:
    """What ``main`` prints: the rule's numbers and the local MAP solve for the composed config."""
    import torch

    from .schedules import poly_sigmas
    from .local_map import InnerSettings, InnerSolve

    method = cfg.algorithm.method
    target = dataset[0]["target"][None] if isinstance(dataset[0], dict) else dataset[0][None]
    torch.manual_seed(0)
    observation = forward_op({"target": target})
    calibration = calibrate(forward_op, observation, net, lam=float(method.get("calib_lambda", 1.0)),
                            variance=str(method.get("calib_variance", "gaussian")))
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
