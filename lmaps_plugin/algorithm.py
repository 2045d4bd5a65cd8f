"""LMAPS behind InverseBench's solver interface: :class:`LMAPS` (``__init__(net, forward_op, ...)``,
``inference(observation, num_samples=1)``), built on a frozen, grouped :class:`LMAPSConfig` validated once, and the
checks of what ``inference`` is given."""
from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from .cost import count_cost, counted_network, publish
from .ensemble import inflate
from .local_map import InnerSettings
from .operators.capabilities import operator_capabilities, probe_operator
from .sampler import sample_lmaps
from .schedules import poly_sigmas, resampled_sigmas
from .weighting import VARIANCE_MODELS, Weighting, calibrate, calibrated_weighting, loss_weighting, table4_weighting

Tensor = torch.Tensor
INNER_SOLVERS = ("gd", "cg", "auto")



@dataclass(frozen=True)
class Schedule:
    """The annealing grid: ``num_steps`` (N) noise levels from ``sigma_max`` to ``sigma_min`` (poly-ρ), then
    ``sigma_final``; and the optional resampling of it (off while ``resample_count`` is 0): the levels with σ in
    [``resample_sigma_min``, ``resample_sigma_max``] (None: no upper bound) are walked in blocks of
    ``resample_jump``, each block ``1 + resample_count`` times (:func:`lmaps_plugin.schedules.resampled_sigmas`)."""
    num_steps: int = 200
    sigma_max: float = 100.0
    sigma_min: float = 0.1
    rho: float = 7.0
    sigma_final: float = 0.0
    resample_count: int = 0
    resample_jump: int = 10
    resample_sigma_min: float = 0.0
    resample_sigma_max: float | None = None

    def sigmas(self, device=None) -> Tensor:
        """The annealing grid: N levels, then ``sigma_final``."""
        return poly_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho, self.sigma_final, device=device)

    def walk(self, device=None) -> Tensor:
        """The σ sequence the sampler visits, one network call per entry but the last: the grid itself, or with
        resampling on, the grid with its resampled blocks repeated."""
        upper = math.inf if self.resample_sigma_max is None else self.resample_sigma_max
        return resampled_sigmas(self.sigmas(device), self.resample_jump, self.resample_count,
                                self.resample_sigma_min, upper)


@dataclass(frozen=True)
class Weights:
    """Eq. 13's weights: Table 4's ``k1``, ``k2``, or (``calibrate``) lmaps_auto's rule with ``calib_lambda`` and
    ``calib_variance`` (:mod:`lmaps_plugin.weighting`)."""
    k1: float = 0.22
    k2: float = 100.0
    calibrate: bool = False
    calib_lambda: float = 1.0
    calib_variance: str = "gaussian"


#: keyword argument of :class:`LMAPS` (the YAML key of ``algorithm.method``) -> (group, field) of
#: :class:`LMAPSConfig` (group None: a field of the config itself)
FLAT_KEYS: dict[str, tuple[str | None, str]] = {
    "num_steps": ("schedule", "num_steps"), "sigma_max": ("schedule", "sigma_max"),
    "sigma_min": ("schedule", "sigma_min"), "rho": ("schedule", "rho"), "sigma_final": ("schedule", "sigma_final"),
    "resample_count": ("schedule", "resample_count"), "resample_jump": ("schedule", "resample_jump"),
    "resample_sigma_min": ("schedule", "resample_sigma_min"), "resample_sigma_max": ("schedule", "resample_sigma_max"),
    "k1": ("weights", "k1"), "k2": ("weights", "k2"), "calibrate": ("weights", "calibrate"),
    "calib_lambda": ("weights", "calib_lambda"), "calib_variance": ("weights", "calib_variance"),
    "inner_solver": ("inner", "kind"), "inner_steps": ("inner", "steps"), "lr": ("inner", "lr"),
    "step_guard": ("inner", "step_guard"), "power_iters": ("inner", "power_iters"),
    "max_backoffs": ("inner", "max_backoffs"), "cg_tol": ("inner", "cg_tol"), "cg_max_iter": ("inner", "cg_max_iter"),
    "gd_closed_form": ("inner", "closed_form"),
    "ddim_eta": (None, "ddim_eta"), "ensemble_spread": (None, "ensemble_spread"), "verbose": (None, "verbose"),
    "compile_net": (None, "compile_net"),
}


@dataclass(frozen=True)
class LMAPSConfig:
    """Every setting of :class:`LMAPS`, grouped and validated once (:meth:`from_keywords`)."""
    schedule: Schedule = field(default_factory=Schedule)
    weights: Weights = field(default_factory=Weights)
    inner: InnerSettings = field(default_factory=InnerSettings)
    ddim_eta: float = 1.0
    ensemble_spread: float = 1.0
    verbose: bool = True
    compile_net: bool = False

    @classmethod
    def from_keywords(cls, **settings) -> "LMAPSConfig":
        """The config of :class:`LMAPS`' keyword arguments (:data:`FLAT_KEYS`); an unknown key or a meaningless
        value is refused with a message naming it and what is allowed."""
        unknown = sorted(set(settings) - set(FLAT_KEYS))
        if unknown:
            raise TypeError(f"LMAPS got unexpected keyword argument(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(FLAT_KEYS)}")
        flat = {**cls().as_keywords(), **settings}
        check_keywords(flat)
        flat = {k: _normalised(k, v) for k, v in flat.items()}
        groups: dict[str, dict] = {"schedule": {}, "weights": {}, "inner": {}}
        top = {}
        for key, value in flat.items():
            group, name = FLAT_KEYS[key]
            (top if group is None else groups[group])[name] = value
        return cls(schedule=Schedule(**groups["schedule"]), weights=Weights(**groups["weights"]),
                   inner=InnerSettings(**groups["inner"]), **top)

    def flat(self, key: str):
        """The value of one keyword argument (:data:`FLAT_KEYS`)."""
        group, name = FLAT_KEYS[key]
        return getattr(self if group is None else getattr(self, group), name)

    def as_keywords(self) -> dict:
        """The keyword arguments that rebuild this config."""
        return {key: self.flat(key) for key in FLAT_KEYS}


_INTEGER_KEYS = ("num_steps", "inner_steps", "power_iters", "max_backoffs", "cg_max_iter", "resample_count",
                 "resample_jump")
_BOOLEAN_KEYS = ("step_guard", "calibrate", "gd_closed_form", "compile_net")


def _normalised(key: str, value):
    if key in _INTEGER_KEYS:
        return int(value)
    if key in _BOOLEAN_KEYS or key in ("inner_solver", "calib_variance", "verbose") or value is None:
        return value
    return float(value)


class LMAPS:
    """LMAPS behind InverseBench's solver interface.

    Args mirror Table 4 of the paper: ``num_steps`` (N, annealing steps), ``inner_steps``
    (K, gradient steps), ``lr`` (η), ``k1``, ``k2``.

    * ``inner_solver='gd'`` is the paper's K gradient steps; ``'cg'`` the exact minimiser for
      linear operators (Gram eigenbasis, or conjugate gradient warm-started from the previous
      step's solution, to ``cg_tol`` times the residual at x̂0 in at most ``cg_max_iter``
      iterations; a non-linear operator is refused); ``'auto'`` is exact where the operator is linear and
      gradient descent elsewhere.
    * ``calibrate=True`` (``configs/algorithm/lmaps_auto.yaml``) replaces k1, k2 by the rule of
      :mod:`lmaps_plugin.weighting`: data weight w(σ) = v_σ/(λ·σ_y²) with σ_y the operator's
      ``sigma_noise`` and λ = ``calib_lambda``; ``lr=None`` then steps with η = 1/L_σ where gradient
      descent runs. A χ² loss (the black hole's closure quantities) gets the rule with σ_y² = Σ W_t/Σ M_t read
      off the operator (:func:`lmaps_plugin.weighting.loss_weighting`); any other loss that is not the plain sum
      of squares keeps k1, k2, with a warning.
    * ``ddim_eta=1`` is Alg. 4's fresh-noise re-noising; smaller values keep part of the previous
      noise (DDIM). ``step_guard`` caps η where it would make gradient descent diverge
      (:class:`StepGuard`). ``gd_closed_form`` (default on) sums the K gradient steps of a linear
      least-squares operator in closed form: in its eigenbasis of HᵀH (same iterate up to rounding), else by
      Lanczos with at most K Gram products (relative tolerance 1e-4: :mod:`lmaps_plugin.local_map.krylov`).
      ``compile_net`` wraps the network in ``torch.compile`` on first use.
    * ``resample_count`` (default 0 = off, Alg. 4 as published) resamples RePaint-style: the levels with σ in
      [``resample_sigma_min``, ``resample_sigma_max``] are walked in blocks of ``resample_jump`` levels, each block
      ``1 + resample_count`` times, re-noising the last level's x0 back up to the block's first σ
      (:meth:`Schedule.walk`). Each extra level is one more network call: N + resample_count · L in all, for the L
      levels in the range (``configs/algorithm/lmaps_resample.yaml``, docs/results/resampling.md).
    * ``ensemble_spread`` (default 1 = off) widens each observation's ``num_samples`` samples about
      their mean by this factor (:func:`lmaps_plugin.ensemble.inflate`): the ensemble mean is
      unchanged, single samples get worse. LMAPS is mode-seeking and its ensembles are too narrow;
      ``configs/algorithm/lmaps_ensemble.yaml`` sets 1.75, chosen on validation images
      (docs/ensembles.md).

    The keyword arguments are :data:`FLAT_KEYS` (the YAML keys of ``algorithm.method``), validated once into a
    frozen :class:`LMAPSConfig`; ``lmaps.<key>`` reads one back.

    After each :meth:`inference`, :attr:`last_run_stats` holds numbers about the run (exact or
    not, CG's worst relative residual and mean iterations, guard and backoff steps, λ_max) and its counted cost
    (:mod:`lmaps_plugin.cost`: ``nfe``, ``forward_calls``, ``vjp_calls``, ``network_seconds``, ``solver_seconds``).
    """

    def __init__(self, net, forward_op, **settings):
        self.config = LMAPSConfig.from_keywords(**settings)
        self.net = net
        self.forward_op = forward_op
        if hasattr(net, "eval"):
            net.eval()
        self._compiled = None
        self.last_run_stats: dict = {}

    def denoiser(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The network as called in the loop: ``net`` itself, or its ``torch.compile`` wrapper
        (built once, on first use) when ``compile_net`` is set."""
        if not self.config.compile_net:
            return self.net
        if self._compiled is None:
            self._compiled = torch.compile(self.net)
        return self._compiled

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one sample, read from the prior network."""
        shape = getattr(self.net, "img_shape", None)
        if shape is not None:
            return tuple(int(s) for s in shape)
        res = self.net.img_resolution
        res = (res, res) if isinstance(res, int) else tuple(res)
        return (int(self.net.img_channels), *res)

    def sigmas(self, device=None) -> Tensor:
        return self.config.schedule.sigmas(device)

    def weighting(self, observation: Tensor) -> Weighting:
        """Eq. 13's weights per σ: lmaps_auto's rule when ``calibrate`` (and the loss allows it),
        otherwise Table 4's from k1, k2."""
        weights = self.config.weights
        if not weights.calibrate:
            return table4_weighting(weights.k1, weights.k2)
        capabilities = operator_capabilities(self.forward_op)
        if not (capabilities.linear and capabilities.plain_least_squares):
            probe = probe_operator(self.forward_op, torch.zeros((1, *self.sample_shape), dtype=_real_dtype(observation),
                                                                device=observation.device), observation)
            if not probe.is_least_squares(_real_dtype(observation)):
                like = torch.zeros((1, *self.sample_shape), dtype=_real_dtype(observation), device=observation.device)
                return loss_weighting(self.forward_op, observation, like, self.net, lam=weights.calib_lambda,
                                      variance=weights.calib_variance, k1=weights.k1, k2=weights.k2,
                                      mismatch=probe.least_squares_error)
        rule = calibrate(self.forward_op, observation, self.net, lam=weights.calib_lambda,
                         variance=weights.calib_variance)
        return calibrated_weighting(rule, self.forward_op)

    def inference(self, observation: Tensor, num_samples: int = 1, verbose: bool | None = None,
                  callback: Callable[[dict], None] | None = None,
                  generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Reconstruct from ``observation`` (batch B; InverseBench passes B = 1).

        Returns ``(B·num_samples, C, H, W)`` in the prior's normalized space, on the observation's device; the
        samples of observation ``b`` are rows ``b·num_samples … (b+1)·num_samples − 1``. The sampler works in
        ``dtype``, by default the observation's real dtype (float32 for a complex measurement); the samples come
        back in ``dtype`` when it is given, else in the network's (its parameters' floating dtype), whatever the
        inner solve computed in.
        """
        check_inference_arguments(observation, num_samples)
        with count_cost(None, self.forward_op) as cost:
            out, out_dtype, stats = self._sample(observation, num_samples, verbose, callback, generator, dtype, cost)
        self.last_run_stats = {**stats, **cost.as_dict()}
        publish(cost.as_dict(), observation)
        return self.spread(out, num_samples).to(dtype=out_dtype, device=observation.device)

    def _sample(self, observation: Tensor, num_samples: int, verbose: bool | None, callback, generator,
                dtype: torch.dtype | None, cost) -> tuple[Tensor, torch.dtype, dict]:
        """Check the observation against the operator, draw the start and run :func:`sample_lmaps` (the network
        counted into ``cost``); the samples, the dtype to return them in and the solve's run statistics."""
        check_observation(self.forward_op, observation, self.sample_shape)
        verbose = self.config.verbose if verbose is None else verbose
        device = observation.device
        out_dtype = dtype or network_dtype(self.net)
        dtype = dtype or (observation.dtype if observation.is_floating_point() else torch.float32)
        y = observation.repeat_interleave(num_samples, dim=0) if num_samples > 1 else observation
        sigmas = self.config.schedule.walk(device=device)
        shape = (y.shape[0], *self.sample_shape)
        if generator is not None:
            x = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        else:
            x = torch.randn(shape, dtype=dtype, device=device)
        stats: dict = {}
        out = sample_lmaps(counted_network(self.denoiser(), cost), x * float(sigmas[0]), sigmas, y, self.forward_op,
                           inner=self.config.inner, ddim_eta=self.config.ddim_eta, weighting=self.weighting(y),
                           callback=callback, disable=not verbose, generator=generator, stats=stats)
        return out, out_dtype or dtype, stats

    def spread(self, samples: Tensor, num_samples: int) -> Tensor:
        """Apply ``ensemble_spread`` to each observation's ``num_samples`` rows (one ensemble each)."""
        spread = self.config.ensemble_spread
        if spread == 1.0:
            return samples
        if num_samples < 2:
            warnings.warn(f"LMAPS: ensemble_spread={spread:g} widens ensembles about their mean and "
                          "has no effect with num_samples=1 (use num_samples >= 2, e.g. 8)", RuntimeWarning,
                          stacklevel=3)
            return samples
        groups = samples.reshape(-1, num_samples, *samples.shape[1:])
        return inflate(groups, spread, dim=1).reshape(samples.shape)

    def __setattr__(self, name: str, value) -> None:
        """``lmaps.<key> = value`` for a keyword argument revalidates the whole config."""
        if name in FLAT_KEYS:
            value = LMAPSConfig.from_keywords(**{**self.config.as_keywords(), name: value})
            name = "config"
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        """The configured value of a keyword argument (``lmaps.k2``, ``lmaps.num_steps``, ...)."""
        if name in FLAT_KEYS and "config" in self.__dict__:
            return self.config.flat(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        c = self.config
        weights = (f"calibrate=True, calib_lambda={c.weights.calib_lambda}" if c.weights.calibrate
                   else f"lr={c.inner.lr}, k1={c.weights.k1}, k2={c.weights.k2}")
        return f"LMAPS(N={c.schedule.num_steps}, K={c.inner.steps}, {weights}, inner_solver={c.inner.kind!r})"


LMAPS.__signature__ = inspect.Signature(
    [inspect.Parameter("net", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     inspect.Parameter("forward_op", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=value)
       for key, value in LMAPSConfig().as_keywords().items()])


def network_dtype(net) -> torch.dtype | None:
    """The floating dtype of a network's parameters (None for a network without any, e.g. an exact prior)."""
    parameters = getattr(net, "parameters", None)
    if not callable(parameters):
        return None
    for parameter in parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return None


def _real_dtype(observation: Tensor) -> torch.dtype:
    if observation.is_complex():
        return observation.real.dtype
    return observation.dtype if observation.is_floating_point() else torch.float32


def check_inference_arguments(observation, num_samples) -> None:
    """Refuse what ``inference`` cannot use, with a message naming the argument."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(observation, torch.Tensor):
        raise TypeError(f"observation must be a torch.Tensor, got {type(observation).__name__}")
    if observation.device.type == "meta":
        raise ValueError("observation is on the 'meta' device (shape only, no data); pass a tensor with values")
    if observation.dtype == torch.bool or not (observation.is_floating_point() or observation.is_complex()):
        raise TypeError(f"observation must be a floating-point or complex tensor, got dtype {observation.dtype}")
    if observation.ndim < 1 or observation.shape[0] < 1:
        raise ValueError(f"observation must have a leading batch dimension, got shape {tuple(observation.shape)}")
    if not bool(torch.isfinite(observation).all()):
        bad = int((~torch.isfinite(observation)).sum())
        raise ValueError(f"observation holds {bad} non-finite value(s) (NaN or inf): LMAPS cannot fit them. Check the "
                         "measurement and the operator's sigma_noise (it must be a finite number >= 0)")


def check_observation(forward_op, observation: Tensor, sample_shape: tuple[int, ...]) -> None:
    """Check that ``observation`` is what ``forward_op`` makes of an image of the prior's shape.

    Measures one zero image of ``sample_shape`` and compares shape and real/complex type, so a
    mismatch fails before sampling with a message naming both shapes.
    """
    probe = torch.zeros((2, *sample_shape), dtype=_real_dtype(observation), device=observation.device)
    try:
        with torch.no_grad():
            expected = forward_op.forward(probe)
    except Exception as exc:
        raise ValueError(
            f"the forward operator {type(forward_op).__name__} cannot measure an image of the prior's "
            f"shape {tuple(sample_shape)} (net.img_channels, net.img_resolution): {exc}. "
            "Use a prior trained at the operator's image size, or configure the operator for this size."
        ) from exc
    if expected.shape[0] != 2:
        raise ValueError(
            f"{type(forward_op).__name__}.forward maps a batch of 2 images to a batch of {expected.shape[0]}: "
            "it does not measure each image of a batch (InverseBench's InverseScatter reads element 0 only; "
            "use problem=inv-scatter-fixed, or lmaps_plugin.inversebench.InverseScatter)")
    if tuple(expected.shape[1:]) != tuple(observation.shape[1:]):
        raise ValueError(
            f"observation has shape {tuple(observation.shape)} but {type(forward_op).__name__} maps images "
            f"of the prior's shape {tuple(sample_shape)} to (batch, {', '.join(map(str, expected.shape[1:]))}); "
            "check the problem's image size against the prior's img_resolution/img_channels")
    if expected.is_complex() != observation.is_complex():
        kind = lambda t: "complex" if t.is_complex() else "real"  # noqa: E731
        raise ValueError(
            f"observation is {kind(observation)} ({observation.dtype}) but {type(forward_op).__name__} "
            f"produces {kind(expected)} measurements ({expected.dtype})")


def check_keywords(cfg: dict) -> None:
    """Reject meaningless settings with a message naming the key and the valid range."""
    def need(ok: bool, key: str, valid: str) -> None:
        if not ok:
            raise ValueError(f"LMAPS: {key}={cfg[key]!r} is invalid; {key} must be {valid}")

    def number(key: str) -> float:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"LMAPS: {key}={value!r} is invalid; {key} must be a finite number")
        return float(value)

    for key in _INTEGER_KEYS:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"LMAPS: {key}={value!r} is invalid; {key} must be an integer")
    for key in _BOOLEAN_KEYS:
        need(isinstance(cfg[key], bool), key, "true or false")
    need(cfg["num_steps"] >= 1, "num_steps", "an integer >= 1 (N, annealing steps)")
    need(cfg["inner_steps"] >= 1, "inner_steps", "an integer >= 1 (K, gradient steps)")
    need(cfg["power_iters"] >= 1, "power_iters", "an integer >= 1")
    need(cfg["max_backoffs"] >= 0, "max_backoffs", "an integer >= 0")
    need(cfg["cg_max_iter"] >= 1, "cg_max_iter", "an integer >= 1 (conjugate-gradient iteration cap)")
    need(cfg["lr"] is None or number("lr") > 0, "lr", "> 0 (η, the inner learning rate), or null for η = 1/L")
    need(number("k1") >= 0, "k1", ">= 0 (0 makes r ≈ 1: data term only)")
    need(number("k2") > 0, "k2", "> 0 (scale of the data-consistency term)")
    need(number("sigma_min") > 0, "sigma_min", "> 0")
    need(number("sigma_max") >= cfg["sigma_min"], "sigma_max", f">= sigma_min ({cfg['sigma_min']})")
    need(number("rho") > 0, "rho", "> 0 (poly-ρ grid exponent, 7 in EDM)")
    need(0 <= number("sigma_final") <= cfg["sigma_min"], "sigma_final", "in [0, sigma_min]")
    need(cfg["resample_count"] >= 0, "resample_count", "an integer >= 0 (extra passes per resampled block; 0 = off)")
    need(cfg["resample_jump"] >= 1, "resample_jump", "an integer >= 1 (levels per resampled block)")
    need(number("resample_sigma_min") >= 0, "resample_sigma_min", ">= 0 (lowest σ that is resampled)")
    need(cfg["resample_sigma_max"] is None or number("resample_sigma_max") >= cfg["resample_sigma_min"],
         "resample_sigma_max", f">= resample_sigma_min ({cfg['resample_sigma_min']}), or null for no upper bound")
    need(0 <= number("ddim_eta") <= 1, "ddim_eta", "in [0, 1] (1 = Alg. 4's fresh noise, 0 = DDIM)")
    need(number("cg_tol") > 0, "cg_tol", "> 0 (conjugate gradient's relative residual tolerance)")
    need(number("ensemble_spread") > 0, "ensemble_spread",
         "> 0 (factor on each ensemble's deviations from its mean; 1 = off, lmaps_ensemble.yaml: 1.75)")
    need(number("calib_lambda") > 0, "calib_lambda", "> 0 (lmaps_auto's noise-variance multiplier; 1 = Bayes)")
    need(cfg["calib_variance"] in VARIANCE_MODELS, "calib_variance", f"one of {VARIANCE_MODELS}")
    need(cfg["inner_solver"] in INNER_SOLVERS, "inner_solver", f"one of {INNER_SOLVERS}")


__all__ = ["LMAPS", "LMAPSConfig", "Schedule", "Weights", "FLAT_KEYS", "INNER_SOLVERS", "check_inference_arguments",
           "check_observation", "check_keywords", "network_dtype"]
