"""What the benchmark runs on: the priors, the test images, the operators and their observations, the LMAPS
keywords of the algorithm configs, InverseBench's peers, and :class:`Bench` (the settings and results every
section shares)."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lmaps_plugin import algorithm as algorithm_module
from lmaps_plugin.algorithm import LMAPS
from lmaps_plugin.data import builtin_dataset
from lmaps_plugin.inversebench import InverseBenchNotFound, find_inversebench, require_inversebench
from lmaps_plugin.inversebench.peers import inversebench_algorithm
from lmaps_plugin.local_map import gd_local_map
from lmaps_plugin.operators import build_operator
from lmaps_plugin.priors import build_edm_unet, builtin_prior, builtin_prior_names, default_unet_config
from lmaps_plugin.priors.factories import fitted_gmm
from lmaps_plugin.sampler import denoise

from .timing import Plan

TASKS = ("gaussian_deblur", "motion_deblur", "sr4", "inpaint_box", "inpaint_random")
PEER_TASKS = ("gaussian_deblur", "inpaint_random")
RESOLUTION, CHANNELS, SIGMA_NOISE = 64, 1, 0.05
#: the operators of section (a): image operators on the faces64 prior, InverseBench's through ours and stock
IMAGE_OPERATORS = ("sr4", "gaussian_deblur", "motion_deblur", "inpaint_box", "inpaint_random",
                   "jpeg", "hdr", "quantization", "phase_retrieval")
INVERSEBENCH_OPERATORS = ("scatter-ours", "scatter-stock", "mri-ours", "mri-stock")
OVERHEAD_CASES = IMAGE_OPERATORS + INVERSEBENCH_OPERATORS


# ------------------------------------------------------------------------------------- priors and images
def timing_prior() -> tuple[torch.nn.Module, str]:
    """The shipped faces64 UNet, else a random-weight UNet of its architecture (same cost)."""
    if "faces64" in builtin_prior_names():
        return builtin_prior("faces64").eval().requires_grad_(False), "shipped faces64 UNet (trained)"
    torch.manual_seed(0)
    net = build_edm_unet(default_unet_config(CHANNELS, RESOLUTION)).eval().requires_grad_(False)
    params = sum(p.numel() for p in net.parameters())
    return net, (f"random-weight UNet, faces64 architecture ({params / 1e6:.2f} M params; no trained "
                 "weights shipped in lmaps_plugin/priors/weights/)")


def psnr_prior(timing_net, timing_label: str) -> tuple[torch.nn.Module, str]:
    """The trained UNet when shipped, else the exact GMM prior fitted on the faces train split."""
    if timing_label.startswith("shipped"):
        return timing_net, timing_label
    return fitted_gmm("faces", RESOLUTION, channels=CHANNELS).requires_grad_(False), \
        "exact Gaussian-mixture prior fitted on the 80 faces train images (fitted_gmm)"


def test_images(count: int) -> torch.Tensor:
    """The first ``count`` images of the faces test split, 64² gray."""
    return builtin_dataset("faces", RESOLUTION, num_images=count, channels=CHANNELS).images


# ---------------------------------------------------------------------------------- algorithm configs
@functools.cache
def _composed_method(config: str) -> dict:
    with initialize_config_module(config_module="lmaps_plugin.configs", version_base="1.3"):
        method = OmegaConf.to_container(compose(config_name=f"algorithm/{config}").algorithm.method)
    method.pop("_target_", None)
    return method


def method_kwargs(config: str) -> dict:
    """LMAPS keywords of the algorithm config ``<config>`` of the installed ``lmaps_plugin.configs``: its
    ``method`` with the defaults chain, composed by Hydra (also when ``--before-src`` measures older code),
    without ``_target_``. Composed once per config: solvers built inside timed runs do no config I/O there."""
    return dict(_composed_method(config))


def algorithm_kwargs(config: str, steps: int) -> dict:
    """``method`` of the algorithm config ``<config>`` (its defaults chain composed by Hydra), N = ``steps``."""
    return {**method_kwargs(config), "num_steps": int(steps)}


def table4_row(task: str) -> dict:
    """``inner_steps, lr, k1, k2`` of the algorithm config ``lmaps_<task>`` (Table 4 of the paper)."""
    method = method_kwargs(f"lmaps_{task}")
    return {key: method[key] for key in ("inner_steps", "lr", "k1", "k2")}


def accepted(kwargs: dict) -> dict:
    """The keywords of ``kwargs`` that this code's ``LMAPS`` takes (older code knows fewer): the algorithm
    module's ``FLAT_KEYS`` where ``LMAPS(net, op, **settings)`` validates them there, else the parameters of
    ``LMAPS.__init__``."""
    known = getattr(algorithm_module, "FLAT_KEYS", None) or inspect.signature(LMAPS.__init__).parameters
    return {key: value for key, value in kwargs.items() if key in known}


# ------------------------------------------------------------------------------------------- operators
def make_operator(task: str):
    """``task``'s operator (its problem config's settings are the class defaults) for 64² gray images."""
    try:
        return build_operator(task, resolution=RESOLUTION, channels=CHANNELS, sigma_noise=SIGMA_NOISE)
    except TypeError:      # operators that take their size from the image (JPEG, HDR, quantization)
        return build_operator(task, sigma_noise=SIGMA_NOISE)


def observe(op, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``op(images)`` plus the operator's Gaussian noise (seeded)."""
    clean = op.forward(images)
    gen = torch.Generator().manual_seed(seed)
    return clean + op.sigma_noise * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)


def lmaps(net, op, num_steps: int, task: str, **overrides) -> LMAPS:
    """LMAPS with ``task``'s Table-4 row (and ``overrides``), N = ``num_steps``."""
    row = {**table4_row(task), **overrides}
    return LMAPS(net, op, num_steps=num_steps, verbose=False, **row)


# ------------------------------------------------------------------------------------------- the peers
def peer_config(name: str) -> dict:
    """InverseBench's shipped ``configs/algorithm/<name>.yaml`` method kwargs (without ``_target_``)."""
    root = require_inversebench(f"bench_speed.py's {name.upper()} comparison")
    method = OmegaConf.to_container(OmegaConf.load(str(root / "configs" / "algorithm" / f"{name}.yaml")).method)
    method.pop("_target_", None)
    return method


def _steps_key(name: str) -> str:
    return "annealing_scheduler_config" if name == "daps" else "diffusion_scheduler_config"


def peer_steps(name: str, config: dict) -> int:
    """The step count of a peer's config (DAPS: annealing steps)."""
    return int(config[_steps_key(name)]["num_steps"])


def with_steps(name: str, config: dict, steps: int) -> dict:
    """A peer's config with its step count set to ``steps``."""
    key = _steps_key(name)
    return {**config, key: {**config[key], "num_steps": int(steps)}}


def peer(name: str, net, op, config: dict):
    """InverseBench's algorithm ``name`` (``daps``, ``dps``) on ``net`` and ``op``."""
    return inversebench_algorithm(name, net=net, forward_op=op, **config)


def run_peer(algo, y: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
    kwargs = {"verbose": False} if type(algo).__name__ == "DAPS" else {}
    return algo.inference(y, num_samples=num_samples, **kwargs).detach()


def peers_available() -> bool:
    """Whether an InverseBench checkout is found (``INVERSEBENCH_ROOT``)."""
    try:
        return find_inversebench() is not None
    except InverseBenchNotFound:
        return False


# -------------------------------------------------------------------------------------- shared state
@dataclass
class Bench:
    """What every section shares: the plan, the clock of the ratios shown, the timing prior, the results."""
    plan: Plan
    clock: str
    net: torch.nn.Module
    net_label: str
    results: dict = field(default_factory=dict)
    cases: list = field(default_factory=lambda: list(OVERHEAD_CASES))   # (a) operators
    gram_cache: str | None = None                                       # (a) scattering cache (None: fresh)

    def net_calls(self, steps: int, batch: int = 1) -> Callable[[], object]:
        """``steps`` network calls as LMAPS makes them (inference mode, one σ each)."""
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch, CHANNELS, RESOLUTION, RESOLUTION, generator=gen)
        sigmas = torch.logspace(2, -1, steps).tolist()
        return lambda: [denoise(self.net, x, s) for s in sigmas]


def warm_up(bench: Bench) -> None:
    """First calls allocate and pick kernels; eigenbases are built once per operator."""
    bench.net_calls(2)()
    bench.net_calls(1, batch=8)()
    x = torch.zeros(1, CHANNELS, RESOLUTION, RESOLUTION, requires_grad=True)
    bench.net(x, torch.tensor(1.0)).sum().backward()
    for task in TASKS:
        op = make_operator(task)
        y = observe(op, torch.zeros(1, CHANNELS, RESOLUTION, RESOLUTION))
        gd_local_map(torch.zeros_like(x.detach()), y, op, 0.5, 1.0, 0.01, 1)
