#!/usr/bin/env python
"""Speed of LMAPS, side by side, as ratios measured within one run (issue 6).

Sections (``--sections``, default all):

a. overhead over N network calls: LMAPS' wall time / the wall time of its N network calls alone (the same
   prior at the same batch, called N times at the run's noise levels, inference mode; 1.0 = the inner solve is
   free), per operator, for the Table-4 row (``configs/algorithm/lmaps_<task>.yaml``) and ``lmaps_auto``:
   the 9 image operators on the faces64 prior; InverseBench's scattering operator (64², NR = 360) through our
   adapter (analytic adjoint, Gram eigenbasis: its factorisation is timed separately, runs use the warm cache)
   and through the stock class (autograd gradients); InverseBench's multi-coil MRI operator (synthetic data of
   ``make_inversebench_data.py``: 64², 8 sigpy coils, 4×) through our adapter and the stock class. Medians of
   paired rounds (cheap operators get more rounds). ``--before-src DIR`` measures the code at DIR too (older
   code without ``lmaps_auto``: the row with ``inner_solver='cg'``) and prints before -> after with the issue's
   targets; ``--cases`` picks operators. Then (a'): smaller levers (inference mode, adjoint vs autograd);
b. peers: InverseBench's DAPS and DPS (their shipped ``configs/algorithm/{daps,dps}.yaml``) vs LMAPS on the
   same prior, operator and images. The shipped settings are too slow for CPU on a UNet, so per-step costs
   are *measured* at a few steps and *extrapolated* to the shipped step counts (printed separately); runs
   that actually finish (small N; in the full run also the shipped settings on the cheap exact prior) give
   PSNR side by side;
c. batching: per-sample cost at 8 observations (and at num_samples = 8) vs 1;
d. exact linear solver (``inner_solver='cg'``) vs K = 20 / 100 gradient steps: cost per local-MAP solve and
   distance to the exact answer (CG to 1e-10 in float64), gradient descent iterated and in closed form;
e. memory: peak resident memory (``ru_maxrss``) of LMAPS vs DPS (and DAPS) at batch 8, each in its own
   subprocess;
f. (``--compile`` only) ``torch.compile`` of the network: compile time and per-call gain.

Clocks: every timing records wall time and process CPU time. Section (a) shows wall-time ratios (and CPU-time
ratios beside them); the other sections' tables show CPU-time ratios
(single-threaded, CPU time is what wall time would be on an idle core, and it is far less disturbed by
other processes on a shared machine); ``--clock wall`` shows wall-time ratios instead. Every ratio is the
median over ``--repeats`` interleaved rounds (variants rotate their order each round) of the ratio within
a round.

Priors: the timing prior is the shipped ``faces64`` UNet when its weights are in
``lmaps_plugin/priors/weights/``, else a random-weight UNet of the same architecture
(``build_edm_unet(default_unet_config(1, 64))``: the cost is the same, the samples are not images). PSNR
needs a prior that knows faces: the shipped UNet if present, else the exact Gaussian-mixture prior fitted
on the faces train split (``priors.factories.fitted_gmm``).

Usage::

    export INVERSEBENCH_ROOT=/path/to/InverseBench     # (a)'s scattering and MRI rows, sections b and e (peers)
    python scripts/bench_speed.py --quick               # ~1 min of CPU (1-2 min wall on a busy 2-core box)
    python scripts/bench_speed.py                       # all sections; (a) alone takes ~5 min wall
    git worktree add /tmp/before 704d5a5                # the code before lmaps_auto, for before -> after:
    python scripts/bench_speed.py --sections a --before-src /tmp/before   # ~9 min wall (busy 2-core box)
    python scripts/bench_speed.py --compile --sections a   # adds (f): compiling takes a minute or more
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")   # the peers draw progress bars unconditionally

import torch  # noqa: E402

from lmaps_plugin.local_map import cg_local_map, gd_local_map  # noqa: E402
from lmaps_plugin.app.metrics import psnr  # noqa: E402
from lmaps_plugin.operators import build_operator  # noqa: E402
from lmaps_plugin.schedules import prior_weight  # noqa: E402
from lmaps_plugin.algorithm import LMAPS  # noqa: E402
from lmaps_plugin.sampler import denoise  # noqa: E402

TASKS = ("gaussian_deblur", "motion_deblur", "sr4", "inpaint_box", "inpaint_random")
PEER_TASKS = ("gaussian_deblur", "inpaint_random")
RESOLUTION, CHANNELS, SIGMA_NOISE = 64, 1, 0.05
SHIPPED_PEER_STEPS = {"dps": 1000, "daps": 200}      # checked against the configs when they are read
REPO = Path(__file__).resolve().parents[1]
ALGORITHM_CONFIGS = REPO / "configs" / "algorithm"


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Plan:
    """How much to measure: ``--quick`` or the full run."""
    repeats: int
    overhead_steps: int          # (a) N of the timed LMAPS runs (image operators)
    scatter_steps: int           # (a) N on the scattering operator with an analytic adjoint
    autograd_steps: int          # (a) N on the scattering operator without one (autograd: ~1 s per GD step)
    mri_steps: int               # (a) N on the MRI operator with an analytic adjoint
    mri_autograd_steps: int      # (a) N on the MRI operator without one
    case_budget_s: float         # (a) cheap operators get more rounds, up to about this many seconds each
    max_rounds: int              # (a) ... and at most this many rounds
    lmaps_probe_steps: int       # (b) steps timed per method to get a per-step cost
    daps_probe_steps: int
    dps_probe_steps: int
    psnr_images: int             # (b) images of the actually-run comparison
    daps_small: int              # (b) annealing steps of the small DAPS run
    dps_small: int               # (b) steps of the small DPS run
    run_shipped_peers: bool      # (b) run DAPS/DPS at their shipped step counts on the PSNR prior
    batch_steps: int             # (c)
    solves: int                  # (d) local-MAP solves per timing
    solve_sigmas: tuple          # (d) noise levels of the local-MAP problems
    rss_steps: int               # (e)
    rss_batches: tuple           # (e)


QUICK = Plan(repeats=2, overhead_steps=10, scatter_steps=10, autograd_steps=2, mri_steps=10, mri_autograd_steps=5,
             case_budget_s=2.0,
             max_rounds=5, lmaps_probe_steps=4, daps_probe_steps=1, dps_probe_steps=5,
             psnr_images=1, daps_small=10, dps_small=50, run_shipped_peers=False, batch_steps=3, solves=3,
             solve_sigmas=(1.0,), rss_steps=2, rss_batches=(8,))
FULL = Plan(repeats=3, overhead_steps=50, scatter_steps=50, autograd_steps=6, mri_steps=50, mri_autograd_steps=20,
            case_budget_s=12.0,
            max_rounds=15, lmaps_probe_steps=10, daps_probe_steps=3, dps_probe_steps=20,
            psnr_images=2, daps_small=20, dps_small=200, run_shipped_peers=True, batch_steps=8, solves=5,
            solve_sigmas=(10.0, 1.0, 0.3), rss_steps=3, rss_batches=(1, 8))


# -------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Cost:
    """One timing: wall and process-CPU seconds."""
    wall: float
    cpu: float

    def get(self, clock: str) -> float:
        return self.wall if clock == "wall" else self.cpu


def measure(fn: Callable[[], object]) -> tuple[object, Cost]:
    """Run ``fn`` once; its result and cost."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, Cost(time.perf_counter() - wall, time.process_time() - cpu)


def interleaved(variants: dict[str, Callable[[], object]], repeats: int,
                warm_ups: dict[str, Callable[[], object]] | None = None, budget_s: float = 0.0,
                max_rounds: int = 0) -> dict[str, list[Cost]]:
    """``repeats`` rounds; each round runs every variant once, the order rotated by one per round.

    Every variant first runs once untimed (first-call costs: allocator, autograd engine, caches), or its
    ``warm_ups`` stand-in (a shorter run of the same thing) when given. With ``budget_s``, rounds go on
    after ``repeats`` while the rounds so far took less than ``budget_s`` in all (at most ``max_rounds``):
    cheap measurements get more rounds, so their medians move less with the load of a shared machine."""
    names = list(variants)
    for name in names:
        (warm_ups or variants)[name]()
    samples: dict[str, list[Cost]] = {name: [] for name in names}
    started = time.perf_counter()
    rnd = 0
    while rnd < repeats or (time.perf_counter() - started < budget_s * rnd / (rnd + 1) and rnd < max_rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(measure(variants[name])[1])
        rnd += 1
    return samples


def ratio_quartiles(num: list[Cost], den: list[Cost], clock: str) -> tuple[float, float]:
    """First and third quartile of the per-round ratios (their spread on a loaded machine)."""
    ratios = sorted(a.get(clock) / b.get(clock) for a, b in zip(num, den))
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return q[0], q[2]


def median_ratio(num: list[Cost], den: list[Cost], clock: str, num_scale: float = 1.0,
                 den_scale: float = 1.0) -> float:
    """Median over rounds of ``(num/num_scale) / (den/den_scale)``, paired within each round."""
    return statistics.median((a.get(clock) / num_scale) / (b.get(clock) / den_scale) for a, b in zip(num, den))


def median_of(samples: list[Cost], clock: str, scale: float = 1.0) -> float:
    return statistics.median(s.get(clock) for s in samples) / scale


# ---------------------------------------------------------------------------------------- the problems
def timing_prior() -> tuple[torch.nn.Module, str]:
    """The shipped faces64 UNet, else a random-weight UNet of its architecture (same cost)."""
    from lmaps_plugin.priors import build_edm_unet, builtin_prior, builtin_prior_names, default_unet_config

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
    from lmaps_plugin.priors.factories import fitted_gmm

    return fitted_gmm("faces", RESOLUTION, channels=CHANNELS).requires_grad_(False), \
        "exact Gaussian-mixture prior fitted on the 80 faces train images (fitted_gmm)"


def test_images(count: int) -> torch.Tensor:
    from lmaps_plugin.data import builtin_dataset

    return builtin_dataset("faces", RESOLUTION, num_images=count, channels=CHANNELS).images


@functools.cache
def _composed_method(config: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ALGORITHM_CONFIGS), version_base="1.3"):
        method = OmegaConf.to_container(compose(config_name=config).method)
    method.pop("_target_", None)
    return method


def method_kwargs(config: str) -> dict:
    """LMAPS keywords of ``configs/algorithm/<config>.yaml``: its ``method`` with the defaults chain, composed by
    Hydra from this checkout's files (also when ``--before-src`` measures older code), without ``_target_``.
    Composed once per config: solvers built inside timed runs do no config I/O there."""
    return dict(_composed_method(config))


def table4_row(task: str) -> dict:
    """``inner_steps, lr, k1, k2`` of ``configs/algorithm/lmaps_<task>.yaml`` (Table 4 of the paper)."""
    method = method_kwargs(f"lmaps_{task}")
    return {key: method[key] for key in ("inner_steps", "lr", "k1", "k2")}


def make_operator(task: str):
    """``task``'s operator (its problem config's settings are the class defaults) for 64² gray images."""
    try:
        return build_operator(task, resolution=RESOLUTION, channels=CHANNELS, sigma_noise=SIGMA_NOISE)
    except TypeError:      # operators that take their size from the image (JPEG, HDR, quantization)
        return build_operator(task, sigma_noise=SIGMA_NOISE)


def observe(op, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    clean = op.forward(images)
    gen = torch.Generator().manual_seed(seed)
    return clean + op.sigma_noise * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)


def lmaps(net, op, num_steps: int, task: str, **overrides) -> LMAPS:
    row = {**table4_row(task), **overrides}
    return LMAPS(net, op, num_steps=num_steps, verbose=False, **row)


def has_basis(op, like) -> bool:
    basis = getattr(op, "gram_eigenbasis", None)
    return callable(basis) and basis(like) is not None


# ------------------------------------------------------------------------------------------- the peers
def peer_config(name: str) -> dict:
    """InverseBench's shipped ``configs/algorithm/<name>.yaml`` method kwargs (without ``_target_``)."""
    from omegaconf import OmegaConf

    from lmaps_plugin.inversebench import require_inversebench

    root = require_inversebench(f"bench_speed.py's {name.upper()} comparison")
    method = OmegaConf.to_container(OmegaConf.load(str(root / "configs" / "algorithm" / f"{name}.yaml")).method)
    method.pop("_target_", None)
    return method


def peer_steps(name: str, config: dict) -> int:
    key = "annealing_scheduler_config" if name == "daps" else "diffusion_scheduler_config"
    return int(config[key]["num_steps"])


def with_steps(name: str, config: dict, steps: int) -> dict:
    key = "annealing_scheduler_config" if name == "daps" else "diffusion_scheduler_config"
    return {**config, key: {**config[key], "num_steps": int(steps)}}


def peer(name: str, net, op, config: dict):
    from lmaps_plugin.inversebench.peers import inversebench_algorithm

    return inversebench_algorithm(name, net=net, forward_op=op, **config)


def run_peer(algo, y: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
    kwargs = {"verbose": False} if type(algo).__name__ == "DAPS" else {}
    return algo.inference(y, num_samples=num_samples, **kwargs).detach()


def peers_available() -> bool:
    from lmaps_plugin.inversebench import InverseBenchNotFound, find_inversebench

    try:
        return find_inversebench() is not None
    except InverseBenchNotFound:
        return False


# -------------------------------------------------------------------------------------------- printing
def print_table(title: str, header: list[str], rows: list[list], notes: list[str] = ()) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join("-" * w for w in widths)
    print(line)
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print(line)
    for note in notes:
        print(f"  {note}")


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


# ------------------------------------------------------------------------------------------ sections
@dataclass
class Bench:
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


# ---------------------------------------------------------------------------- (a) overhead per operator
IMAGE_OPERATORS = ("sr4", "gaussian_deblur", "motion_deblur", "inpaint_box", "inpaint_random",
                   "jpeg", "hdr", "quantization", "phase_retrieval")
INVERSEBENCH_OPERATORS = ("scatter-ours", "scatter-stock", "mri-ours", "mri-stock")
OVERHEAD_CASES = IMAGE_OPERATORS + INVERSEBENCH_OPERATORS
#: issue 10's overhead targets (benchmarks, not timed tests): 1.3x for motion deblur and the MRI operator,
#: 1.15x where a closed form exists (masks, super-resolution, separable blur)
TARGETS = {"motion_deblur": 1.3, "mri-ours": 1.3, "mri-stock": 1.3,
           **{task: 1.15 for task in ("sr4", "gaussian_deblur", "inpaint_box", "inpaint_random")}}
#: InverseBench's inv-scatter problem (configs/problem/inv-scatter.yaml) at 64², NR = 360
SCATTER = dict(Nx=RESOLUTION, Ny=RESOLUTION, numTrans=20, numRec=360, sigma_noise=1e-4, unnorm_shift=1.0,
               unnorm_scale=0.5, svd=False, device="cpu")
#: InverseBench's multi-coil-mri-knee problem (4x, random lines, mask seed 0, sigma_noise 0) on the synthetic
#: data of scripts/make_inversebench_data.py (sigpy birdcage maps, a phantom with a smooth phase)
MRI = dict(size=RESOLUTION, coils=8, acceleration=4)


def solver_has_auto() -> bool:
    """True for the code of this round (``inner_solver='auto'``, lmaps_auto); False for older code."""
    import lmaps_plugin.algorithm as algorithm_module

    return "auto" in getattr(algorithm_module, "INNER_SOLVERS", ())


@dataclass
class OverheadCase:
    """One operator of (a): operator, observation, prior, the Table-4 row that fits it, and N."""
    name: str
    op: object
    y: torch.Tensor
    net: torch.nn.Module
    row: str                       # configs/algorithm/<row>.yaml
    steps: int                     # N
    linear: bool                   # the old code's inner_solver='cg' only means something on linear operators
    dtype: torch.dtype = torch.float32
    note: str = ""
    _closed_form: bool | None = None

    @property
    def like(self) -> torch.Tensor:
        return torch.zeros(1, *LMAPS(self.net, self.op, verbose=False).sample_shape, dtype=self.dtype)

    def closed_form(self) -> bool:
        """Whether gradient descent is summed (and an exact solve done) in a Gram eigenbasis for this operator."""
        if self._closed_form is None:
            from lmaps_plugin.local_map import gram_eigenbasis
            from lmaps_plugin.operators.base import LinearOperator

            basis = getattr(self.op, "gram_eigenbasis", None)
            self._closed_form = gram_eigenbasis(self.op, self.like) is not None or (
                solver_has_auto() and not isinstance(self.op, LinearOperator) and callable(basis)
                and basis(self.like) is not None)
        return self._closed_form


class ChannelsAsBatch(torch.nn.Module):
    """A one-channel prior applied to every channel of an image (channels folded into the batch): the shipped
    faces64 UNet as the prior of MRI's two (real, imaginary) channels; one call = the UNet at batch 2."""

    def __init__(self, net: torch.nn.Module, channels: int):
        super().__init__()
        self.net, self.img_channels = net, channels
        self.img_resolution = net.img_resolution
        self.sigma_data = getattr(net, "sigma_data", 0.5)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        return self.net(x.reshape(batch * channels, 1, *x.shape[2:]), sigma).reshape(x.shape)


def image_case(task: str, net, plan: Plan) -> OverheadCase:
    op = make_operator(task)
    return OverheadCase(task, op, observe(op, test_images(1)), net, f"lmaps_{task}", plan.overhead_steps,
                        linear=getattr(op, "is_linear", None) is True)


def per_element_class(upstream: type) -> type:
    """InverseBench's stock ``InverseScatter`` whose ``forward`` maps each batch element by the stock ``forward``
    (a loop): LMAPS checks the operator on a batch of 2, which the stock class (element 0 only) fails. At
    batch 1, as timed here, it is one stock call; gradients stay the stock autograd ones, no adjoint."""

    class StockInverseScatter(upstream):
        def forward(self, f, unnormalize=True):
            return torch.cat([upstream.forward(self, f[i:i + 1], unnormalize) for i in range(f.shape[0])])

    return StockInverseScatter


def gram_factorisation_cost(cache_dir: str) -> tuple[dict, object]:
    """Our scattering operator built into ``cache_dir``: the first construction's factorisation (computed when
    the directory does not hold it) and a fresh operator's read-back. Returns the numbers and that operator."""
    from lmaps_plugin import inversebench as ib

    wall, cpu = time.perf_counter(), time.process_time()
    first = ib.InverseScatter(**SCATTER, gram_cache=cache_dir)
    construct = time.perf_counter() - wall
    wall, cpu = time.perf_counter(), time.process_time()
    tensors = first.gram_factorisation()
    record = {"construct_s": construct, "factorise_wall_s": time.perf_counter() - wall,
              "factorise_cpu_s": time.process_time() - cpu, "source": first.gram_source,
              "rank": int(tensors["eigenvalues"].numel()), "pixels": RESOLUTION * RESOLUTION}
    again = ib.InverseScatter(**SCATTER, gram_cache=cache_dir)
    wall = time.perf_counter()
    again.gram_factorisation()
    record.update(load_s=time.perf_counter() - wall, load_source=again.gram_source,
                  cache_mb=sum(f.stat().st_size for f in Path(cache_dir).glob("inverse-scatter-gram-*.pt")) / 2 ** 20)
    return record, again


def scatter_cases(net, plan: Plan, names: list[str], cache_dir: str | None, bench: Bench) -> list[OverheadCase]:
    from lmaps_plugin import inversebench as ib
    from lmaps_plugin.data import builtin_dataset

    upstream = ib.import_upstream("inverse_problems.inverse_scatter", "bench_speed.py (a)").InverseScatter
    image = builtin_dataset("cells", RESOLUTION, num_images=1, channels=1).images   # contrasts in [-1, 1]
    cases = []
    for name in names:
        if name == "scatter-ours" and solver_has_auto():
            record, op = gram_factorisation_cost(cache_dir)
            bench.results["a_gram_factorisation"] = record
            note = (f"our adapter: analytic adjoint, Gram eigenbasis (rank {record['rank']}, cache read back in "
                    f"{record['load_s']:.2f} s; factorisation timed separately)")
        elif name == "scatter-ours":
            op, note = ib.InverseScatter(**SCATTER), "our adapter of this commit: batched forward, autograd gradients"
        else:
            op, note = per_element_class(upstream)(**SCATTER), "stock class (svd=False): autograd gradients"
        gen = torch.Generator().manual_seed(0)
        clean = op.forward(image)
        y = clean + SCATTER["sigma_noise"] * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
        autograd = not callable(getattr(op, "adjoint", None))
        cases.append(OverheadCase(name, op, y, net, "lmaps_lis_nr360",
                                  plan.autograd_steps if autograd else plan.scatter_steps, linear=True, note=note))
    return cases


def load_script(name: str):
    """A module of scripts/ (the synthetic InverseBench data's helpers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mri_data() -> dict:
    """One synthetic multi-coil sample as make_inversebench_data.py writes it (noiseless k-space)."""
    import numpy as np

    make = load_script("make_inversebench_data")
    size = MRI["size"]
    maps = make.coil_maps(MRI["coils"], size)
    rng = np.random.default_rng(0)
    magnitude = make.procedural_images("phantoms", size, 1, "test", 0)[0]
    image = (magnitude * np.exp(1j * make.smooth_phase(rng, size))).astype(np.complex64)
    kspace = make.fully_sampled_kspace(image, maps, 0.0, rng)
    return {"maps": torch.from_numpy(maps)[None].to(torch.complex128),
            "kspace": torch.from_numpy(kspace)[None].to(torch.complex128)}


def mri_cases(net, plan: Plan, names: list[str]) -> list[OverheadCase]:
    from lmaps_plugin import inversebench as ib

    upstream = ib.import_upstream("inverse_problems.multi_coil_mri", "bench_speed.py (a)").MultiCoilMRI
    kwargs = dict(total_lines=MRI["size"], acceleration_ratio=MRI["acceleration"], pattern="random", mask_seed=0,
                  device="cpu", sigma_noise=0.0)
    data, prior = mri_data(), ChannelsAsBatch(net, 2)
    cases = []
    for name in names:
        op = ib.MultiCoilMRI(**kwargs) if name == "mri-ours" else upstream(**kwargs)
        if name == "mri-ours" and type(op) is upstream and "mri-stock" in names:
            continue                 # code without the adapter: the stock class, measured once as mri-stock
        y = op(data)
        analytic = callable(getattr(op, "adjoint", None))
        note = ("our adapter: analytic adjoint" + (", fused Gram map" if callable(getattr(op, "gram", None)) else "")
                if analytic else "stock class: autograd gradients")
        cases.append(OverheadCase(name, op, y, prior, "lmaps_mri_4x_raw",
                                  plan.mri_steps if analytic else plan.mri_autograd_steps, linear=True,
                                  note=f"{note}; {MRI['coils']} coils, {MRI['acceleration']}x, {MRI['size']}²"))
    return cases


def algorithm_kwargs(config: str, steps: int) -> dict:
    """``method`` of ``configs/algorithm/<config>.yaml`` (its defaults chain composed by Hydra), N = ``steps``."""
    return {**method_kwargs(config), "num_steps": int(steps)}


def variant_kwargs(case: OverheadCase, variant: str) -> dict | None:
    """LMAPS keywords of a variant: ``'table4'`` (the row, gradient descent) or ``'auto'`` (lmaps_auto; in code
    without it, the row with ``inner_solver='cg'`` on linear operators, None elsewhere)."""
    row = algorithm_kwargs(case.row, case.steps)
    if variant == "table4":
        return row
    if solver_has_auto():
        return algorithm_kwargs("lmaps_auto", case.steps)
    return {**row, "inner_solver": "cg"} if case.linear else None


def accepted(kwargs: dict) -> dict:
    params = inspect.signature(LMAPS.__init__).parameters
    return {key: value for key, value in kwargs.items() if key in params}


def lmaps_run(case: OverheadCase, kwargs: dict) -> Callable[[], dict]:
    """One LMAPS inference of the case (the same noise every call); returns the run's stats when the code has them."""
    solver = LMAPS(case.net, case.op, verbose=False, **accepted(kwargs))

    def run() -> dict:
        solver.inference(case.y, generator=torch.Generator().manual_seed(0), dtype=case.dtype)
        return dict(getattr(solver, "last_run_stats", {}) or {})

    return run


def network_run(case: OverheadCase, steps: int) -> Callable[[], object]:
    """The denoiser alone, called as LMAPS calls it: N times, at the run's N noise levels, inference mode."""
    solver = LMAPS(case.net, case.op, num_steps=steps, verbose=False)
    sigmas = [float(s) for s in solver.sigmas()[:steps]]
    gen = torch.Generator().manual_seed(1)
    inputs = [s * torch.randn((1, *solver.sample_shape), generator=gen, dtype=case.dtype) for s in sigmas]
    return lambda: [denoise(case.net, x, s) for x, s in zip(inputs, sigmas)]


def solve_label(case: OverheadCase, kwargs: dict, stats: dict) -> str:
    """How the local MAP was solved: from the run's stats (this code) or from the settings (older code)."""
    if stats.get("exact_solve"):
        iterations = stats.get("cg_iterations_mean", 0.0)
        if not iterations:
            return "exact: eigenbasis"
        above = stats.get("cg_steps_above_tol", 0)
        return f"exact: CG {iterations:.1f} it/step" + (f" ({above} steps at the cap)" if above else "")
    if kwargs.get("inner_solver") == "cg":
        return "exact: eigenbasis" if case.closed_form() else f"CG <= {kwargs['inner_steps']} it, tol 1e-6, cold"
    step = "eta=1/L" if kwargs.get("lr") is None else f"eta={kwargs['lr']:g}"
    grad = "" if callable(getattr(case.op, "adjoint", None)) or not case.name.startswith(("scatter", "mri")) \
        else ", autograd"
    form = "closed form" if case.closed_form() else "iterated"
    return f"GD K={kwargs['inner_steps']} {form} ({step}{grad})"


def measure_case(case: OverheadCase, plan: Plan) -> dict:
    """Interleaved rounds of the network alone and each variant; paired ratios, medians."""
    variants = {v: variant_kwargs(case, v) for v in ("table4", "auto")}
    runs = {"net": network_run(case, case.steps)}
    warm = {"net": network_run(case, 1)}
    for name, kwargs in variants.items():
        if kwargs is not None:
            runs[name] = lmaps_run(case, kwargs)
            warm[name] = lmaps_run(case, {**kwargs, "num_steps": min(2, case.steps)})
    stats: dict[str, dict] = {}

    def keep(name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def call():
            out = fn()
            if isinstance(out, dict):
                stats[name] = out
            return out
        return call

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = interleaved({name: keep(name, fn) for name, fn in runs.items()}, plan.repeats, warm_ups=warm,
                              budget_s=plan.case_budget_s, max_rounds=plan.max_rounds)
    net_wall = median_of(samples["net"], "wall")
    record = {"steps": case.steps, "net_ms_per_call": net_wall / case.steps * 1e3, "note": case.note,
              "rounds": len(samples["net"]), "variants": {}}
    for name, kwargs in variants.items():
        if kwargs is None:
            record["variants"][name] = None
            continue
        lmaps_wall = median_of(samples[name], "wall")
        record["variants"][name] = {
            "ratio_wall": median_ratio(samples[name], samples["net"], "wall"),
            "ratio_cpu": median_ratio(samples[name], samples["net"], "cpu"),
            "ratio_wall_quartiles": ratio_quartiles(samples[name], samples["net"], "wall"),
            "lmaps_s": lmaps_wall, "inner_ms_per_step": (lmaps_wall - net_wall) / case.steps * 1e3,
            "solve": solve_label(case, kwargs, stats.get(name, {})), "stats": stats.get(name, {}),
            "config": "lmaps_auto" if solver_has_auto() and name == "auto" else
            case.row + (" + inner_solver=cg" if name == "auto" else "")}
    return record


def overhead_cases(bench: Bench, names: list[str], cache_dir: str | None) -> list[OverheadCase]:
    cases = [image_case(name, bench.net, bench.plan) for name in names if name in IMAGE_OPERATORS]
    wanted_ib = [name for name in names if name in INVERSEBENCH_OPERATORS]
    if wanted_ib and not peers_available():
        print(f"\n(a) {', '.join(wanted_ib)}: skipped (INVERSEBENCH_ROOT is not set or not a checkout)")
        return cases
    scatter = [name for name in wanted_ib if name.startswith("scatter")]
    mri = [name for name in wanted_ib if name.startswith("mri")]
    if scatter:
        cases += scatter_cases(bench.net, bench.plan, scatter, cache_dir, bench)
    if mri:
        cases += mri_cases(bench.net, bench.plan, mri)
    return cases


def section_overhead(bench: Bench) -> None:
    names = bench.cases
    with tempfile.TemporaryDirectory(prefix="lmaps-bench-gram-") as scratch:
        cases = overhead_cases(bench, names, bench.gram_cache or scratch)
        record = {}
        for case in cases:
            started = time.perf_counter()
            record[case.name] = measure_case(case, bench.plan)
            print(f"  (a) {case.name}: " + ", ".join(
                f"{v['config']} {v['ratio_wall']:.2f}" for v in record[case.name]["variants"].values() if v)
                + f" (N={case.steps}, {record[case.name]['rounds']} rounds, {time.perf_counter() - started:.0f} s)",
                flush=True)
        if "mri-stock" in record and "mri-ours" in names and "mri-ours" not in record:
            record["mri-ours"] = {**record["mri-stock"], "note": "no adapter in this code: the stock class (mri-stock)"}
    bench.results["a_overhead"] = record
    bench.results["a_code"] = "this round (lmaps_auto)" if solver_has_auto() else "before lmaps_auto"
    print_overhead(record, bench.results.get("a_gram_factorisation"))
    section_levers(bench)


def print_overhead(record: dict, factorisation: dict | None) -> None:
    rows = []
    for name, case in record.items():
        for variant, v in case["variants"].items():
            if v is None:
                rows.append([name, variant, "n/a (non-linear: no exact solve in this code)", case["steps"],
                             case["rounds"], case["net_ms_per_call"], "-", "-", "-", "-", "-"])
                continue
            q1, q3 = v["ratio_wall_quartiles"]
            rows.append([name, v["config"], v["solve"], case["steps"], case["rounds"], case["net_ms_per_call"],
                         v["lmaps_s"], v["inner_ms_per_step"], v["ratio_wall"], f"{q1:.3g}-{q3:.3g}", v["ratio_cpu"]])
    print_table("(a) overhead = LMAPS wall time / wall time of its N network calls alone (1.0 = the inner solve is "
                "free), batch 1, medians of paired rounds",
                ["operator", "config", "local MAP solve", "N", "rounds", "net ms/call", "LMAPS s", "inner ms/step",
                 "overhead (wall)", "wall q1-q3", "overhead (cpu)"], rows,
                ["network alone: the same prior at the same batch, called N times at the run's noise levels",
                 "(inference mode); MRI: the faces64 UNet on the real and imaginary channels (batch 2 per call).",
                 "inner ms/step = (LMAPS - network alone) / N: the per-step cost of the solve, its set-up included."]
                + [f"{name}: {case['note']}" for name, case in record.items() if case["note"]])
    if factorisation:
        f = factorisation
        print(f"\n(a) scattering Gram factorisation ({f['pixels']} pixels, NR = {SCATTER['numRec']}): "
              f"{f['source']} in {f['factorise_wall_s']:.1f} s wall / {f['factorise_cpu_s']:.1f} s cpu (rank "
              f"{f['rank']}); a fresh operator reads the {f['cache_mb']:.0f} MB cache back in {f['load_s']:.2f} s "
              f"({f['load_source']}); construction {f['construct_s']:.1f} s")


def target_verdict(name: str, variants: dict) -> str:
    """Whether the issue's target for ``name`` is met, by lmaps_auto (the exact solve) and by the Table-4 row."""
    target = TARGETS.get(name)
    if target is None:
        return "-"
    parts = [f"{label} {'met' if v['ratio_wall'] <= target else 'not met'} ({v['ratio_wall']:.2f})"
             for label, v in (("lmaps_auto", variants.get("auto")), ("Table-4 row", variants.get("table4"))) if v]
    return "; ".join(parts)


def before_after_rows(before: dict, after: dict) -> list[list[str]]:
    """One row per operator: the Table-4 row and lmaps_auto (before: the row with inner_solver='cg'), before -> after."""
    def cell(case: dict | None, variant: str, missing: str) -> str:
        if case is None:
            return "not run"
        v = case["variants"].get(variant)
        return f"{v['ratio_wall']:.2f} ({v['solve']}, N={case['steps']})" if v else missing

    rows = []
    for name, now in after.items():
        then = before.get(name)
        target = TARGETS.get(name)
        rows.append([name, cell(then, "table4", "n/a"), cell(now, "table4", "n/a"),
                     cell(then, "auto", "n/a (non-linear: no exact solve)"), cell(now, "auto", "n/a"),
                     "-" if target is None else f"<= {target:g}", target_verdict(name, now["variants"])])
    return rows


def print_before_after(before: dict, after: dict) -> None:
    header = ["operator", "Table-4 row: before", "Table-4 row: after", "auto: before (row + inner_solver=cg)",
              "auto: after (lmaps_auto)", "target", "met?"]
    print("\n(a) before -> after: overhead over N network calls (wall; the local MAP solve and N in brackets)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in before_after_rows(before, after):
        print("| " + " | ".join(row) + " |")


class AutogradGradient:
    """Operator proxy whose ``gradient`` goes through autograd (InverseBench's default) instead of the adjoint."""

    def __init__(self, op):
        self._op = op

    def __getattr__(self, name):
        return getattr(self._op, name)

    def gradient(self, pred, observation, return_loss=False):
        from lmaps_plugin.operators.base import Operator

        return Operator.gradient(self._op, pred, observation, return_loss=return_loss)


def section_levers(bench: Bench) -> None:
    """The smaller levers, each as slow-way / fast-way on the same work."""
    plan, clock = bench.plan, bench.clock
    task = "gaussian_deblur"
    op = make_operator(task)
    image = test_images(1)
    y = observe(op, image)
    x_hat = image + 0.1 * torch.randn(image.shape, generator=torch.Generator().manual_seed(2))
    row = table4_row(task)
    x = torch.randn(1, CHANNELS, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor(1.0)

    def plain_call():                  # autograd recording through the network's parameters
        with torch.enable_grad():
            return bench.net(x, sigma)

    def gd(operator):
        return lambda: gd_local_map(x_hat, y, operator, 0.9, row["k2"], row["lr"], 100, closed_form=False)

    bench.net.requires_grad_(True)
    try:
        samples = interleaved({"plain": plain_call, "inference": lambda: denoise(bench.net, x, 1.0),
                               "autograd": gd(AutogradGradient(op)), "adjoint": gd(op)}, plan.repeats)
    finally:
        bench.net.requires_grad_(False)
    rows = [["network call: plain forward (recording a graph) / inference_mode",
             median_ratio(samples["plain"], samples["inference"], clock)],
            [f"{task}, K=100 iterated GD: autograd gradient / adjoint gradient",
             median_ratio(samples["autograd"], samples["adjoint"], clock)]]
    bench.results["a_levers"] = {"inference_mode": rows[0][1], "adjoint_gradient": rows[1][1]}
    print_table(f"(a') smaller levers: cost of the slow way / the fast way ({clock})", ["lever", "ratio"], rows,
                ["the closed form's gain is the 'gain' column of (a); batching is (c)."])


def section_peers(bench: Bench) -> None:
    if not peers_available():
        print("\n(b) peers: skipped (INVERSEBENCH_ROOT is not set or not a checkout)")
        return
    plan, clock = bench.plan, bench.clock
    configs = {name: peer_config(name) for name in ("daps", "dps")}
    shipped = {name: peer_steps(name, cfg) for name, cfg in configs.items()}
    probe = {"lmaps": plan.lmaps_probe_steps, "daps": plan.daps_probe_steps, "dps": plan.dps_probe_steps}
    measured_rows, record = [], {}
    psnr_net, psnr_label = psnr_prior(bench.net, bench.net_label)
    for task in PEER_TASKS:
        op = make_operator(task)
        y = observe(op, test_images(1))
        runs = {"lmaps": lambda: lmaps(bench.net, op, probe["lmaps"], task).inference(y)}
        for name in ("daps", "dps"):
            algo = peer(name, bench.net, op, with_steps(name, configs[name], probe[name]))
            runs[name] = (lambda a: lambda: run_peer(a, y))(algo)
        runs["net"] = bench.net_calls(1)
        samples = interleaved(runs, plan.repeats)
        per_step = {m: median_of(samples[m], clock, probe[m]) for m in ("lmaps", "daps", "dps")}
        net_s = median_of(samples["net"], clock)
        totals = {"lmaps": 200, "daps": shipped["daps"], "dps": shipped["dps"]}
        lmaps_total = [Cost(c.wall * 200 / probe["lmaps"], c.cpu * 200 / probe["lmaps"]) for c in samples["lmaps"]]
        for m, label in (("lmaps", "LMAPS Table 4 (N=200, K=100)"),
                         ("daps", f"DAPS shipped ({shipped['daps']} x ({configs['daps']['diffusion_scheduler_config']['num_steps']}"
                                  f" ODE + {configs['daps']['lgvd_config']['num_steps']} Langevin))"),
                         ("dps", f"DPS shipped ({shipped['dps']} steps, guidance {configs['dps']['guidance_scale']})")):
            total = [Cost(c.wall * totals[m] / probe[m], c.cpu * totals[m] / probe[m]) for c in samples[m]]
            ratio = median_ratio(total, lmaps_total, clock)
            measured_rows.append([task, label, probe[m], per_step[m] * 1e3, per_step[m] / net_s,
                                  per_step[m] * totals[m], ratio])
            record[f"{task}/{m}"] = dict(per_step_s=per_step[m], extrapolated_s=per_step[m] * totals[m],
                                         ratio_to_lmaps=ratio)
        for n in (20, 10):
            measured_rows.append([task, f"LMAPS fast row (N={n}, K=100)", "-", per_step["lmaps"] * 1e3,
                                  per_step["lmaps"] / net_s, per_step["lmaps"] * n, n / 200])
        bench.results.setdefault("b_per_step", {})[task] = dict(per_step, net=net_s)
    bench.results["b_extrapolated"] = record
    print_table(f"(b1) per-step cost on the timing prior, measured; full runs extrapolated ({clock} clock)",
                ["task", "method (settings)", "steps timed", "ms/step", "net calls/step", "extrap. s/image",
                 "x LMAPS-200"], measured_rows,
                [f"timing prior: {bench.net_label}",
                 "extrap. s/image = measured ms/step x the settings' step count (not run at that length).",
                 "x LMAPS-200: that extrapolated time / LMAPS Table-4's (median of per-round ratios)."])
    section_peer_runs(bench, psnr_net, psnr_label, configs, shipped)


def section_peer_runs(bench: Bench, psnr_net, psnr_label: str, configs: dict, shipped: dict) -> None:
    """Runs that actually finish, with PSNR; the UNet cost of each from the measured per-step costs."""
    plan, clock = bench.plan, bench.clock
    images = test_images(plan.psnr_images)
    methods = [("LMAPS N=200, K=100 (Table 4)", "lmaps", 200), ("LMAPS N=20, K=100", "lmaps", 20),
               ("LMAPS N=10, K=100", "lmaps", 10), (f"DAPS {plan.daps_small} annealing", "daps", plan.daps_small),
               (f"DPS {plan.dps_small} steps", "dps", plan.dps_small)]
    if plan.run_shipped_peers:
        methods += [(f"DAPS shipped ({shipped['daps']})", "daps", shipped["daps"]),
                    (f"DPS shipped ({shipped['dps']})", "dps", shipped["dps"])]
    rows, record = [], {}
    for task in PEER_TASKS:
        op = make_operator(task)
        per_step = bench.results["b_per_step"][task]
        lmaps_200 = per_step["lmaps"] * 200
        for label, kind, steps in methods:
            scores, costs = [], []
            for i in range(images.shape[0]):
                target = images[i:i + 1]
                y = observe(op, target, seed=100 + i)
                torch.manual_seed(1000 + i)
                if kind == "lmaps":
                    out, cost = measure(lambda: lmaps(psnr_net, op, steps, task).inference(y))
                else:
                    algo = peer(kind, psnr_net, op, with_steps(kind, configs[kind], steps))
                    out, cost = measure(lambda: run_peer(algo, y))
                scores.append(float(psnr(out, target).mean()))
                costs.append(cost)
            finite = [s for s in scores if s == s]
            mean_psnr = statistics.fmean(finite) if finite else float("nan")
            unet_s = per_step[kind] * steps
            rows.append([task, label, mean_psnr, min(scores), median_of(costs, clock), unet_s, unet_s / lmaps_200])
            record[f"{task}/{label}"] = dict(psnr=mean_psnr, psnr_all=scores, run_s=median_of(costs, clock),
                                             unet_s_est=unet_s)
    bench.results["b_runs"] = record
    print_table(f"(b2) actually run on {images.shape[0]} test face(s) (PSNR, dB, one sample each)",
                ["task", "method", "PSNR mean", "PSNR min", f"run s/image ({clock})", "UNet s/image (est.)",
                 "x LMAPS-200 (est.)"], rows,
                [f"PSNR prior (the runs): {psnr_label}",
                 "UNet s/image (est.): that method's measured per-step cost on the timing prior (b1) x its steps.",
                 "Peers at InverseBench's shipped settings for their other keys (guidance 10, lr 1e-4, tau 0.01, ...)."])


def ensemble_kwargs(steps: int) -> dict:
    """``configs/algorithm/lmaps_ensemble.yaml``: lmaps_auto's method plus its ensemble_spread."""
    return accepted(algorithm_kwargs("lmaps_ensemble", steps))


def section_batching(bench: Bench) -> None:
    plan, clock, n = bench.plan, bench.clock, bench.plan.batch_steps
    task = "gaussian_deblur"
    op = make_operator(task)
    images = test_images(8)
    y1, y8 = observe(op, images[:1]), observe(op, images)
    rows, record = [], {}
    for variant in ("closed form", "iterated", "lmaps_ensemble"):
        if variant == "lmaps_ensemble":      # one sample: the same run without the spread (it needs M >= 2)
            solver = LMAPS(bench.net, op, verbose=False, **{**ensemble_kwargs(n), "num_steps": n})
            single = LMAPS(bench.net, op, verbose=False, **{**ensemble_kwargs(n), "num_steps": n, "ensemble_spread": 1.0})
        else:
            solver = single = lmaps(bench.net, op, n, task, gd_closed_form=variant == "closed form")
        variants = {"one": lambda: single.inference(y1), "samples8": lambda: solver.inference(y1, num_samples=8)}
        if variant != "lmaps_ensemble":
            variants["obs8"] = lambda: solver.inference(y8)
        if variant == "closed form":
            variants.update(net1=bench.net_calls(n), net8=bench.net_calls(n, batch=8))
        samples = interleaved(variants, plan.repeats)
        tag = variant if variant == "lmaps_ensemble" else f"Table-4 row, {variant}"
        for key, label in (("obs8", "8 observations"), ("samples8", "1 observation x num_samples 8")):
            if key not in samples:
                continue
            ratio = median_ratio(samples[key], samples["one"], clock, num_scale=8)
            rows.append([f"LMAPS ({tag}), {label}", median_of(samples["one"], clock, n) * 1e3,
                         median_of(samples[key], clock, 8 * n) * 1e3, ratio])
            record[f"{variant}/{key}"] = ratio
        if variant == "closed form":
            ratio = median_ratio(samples["net8"], samples["net1"], clock, num_scale=8)
            rows.append(["network alone, batch 8 (the floor)", median_of(samples["net1"], clock, n) * 1e3,
                         median_of(samples["net8"], clock, 8 * n) * 1e3, ratio])
            record["net8"] = ratio
    bench.results["c_batching"] = record
    print_table(f"(c) batching: per-sample cost at batch 8 / cost at batch 1 ({task}, N={n}, {clock})",
                ["run", "ms/step at batch 1", "ms/step/sample at 8", "per-sample ratio"], rows,
                ["targets: <= 0.5 (issue 6), <= 0.55 at num_samples = 8 (ensembles, issue 14); one thread",
                 "(torch.set_num_threads(1)), so batching buys only what the network's own per-call overhead and",
                 "better BLAS blocking give. The Table-4 rows run K=100 gradient steps."])


def section_exact_solver(bench: Bench) -> None:
    plan, clock = bench.plan, bench.clock
    task = "gaussian_deblur"
    op = make_operator(task)
    row = table4_row(task)
    image = test_images(1)
    gen = torch.Generator().manual_seed(3)
    x_hat = image + 0.1 * torch.randn(image.shape, generator=gen)
    y = observe(op, image)
    one_net = bench.net_calls(1)
    rows, record = [], {}
    for sigma in plan.solve_sigmas:
        r = prior_weight(sigma, row["k1"])
        exact, _, _ = cg_local_map(x_hat.double(), y.double(), op, r, row["k2"], max_iter=5000, tol=1e-10)
        solvers = {
            "cg iterated (tol 1e-6, <=100 it.)": lambda: cg_local_map(
                x_hat, y, op, r, row["k2"], max_iter=100, tol=1e-6, closed_form=False)[0],
            "cg iterated (tol 1e-10, <=5000 it.)": lambda: cg_local_map(
                x_hat, y, op, r, row["k2"], max_iter=5000, tol=1e-10, closed_form=False)[0],
            "cg closed form (eigenbasis, exact)": lambda: cg_local_map(x_hat, y, op, r, row["k2"])[0],
        }
        for k in (20, 100):
            for closed_form in (False, True):
                name = f"gd K={k} ({'closed form' if closed_form else 'iterated'})"
                solvers[name] = (lambda k, cf: lambda: gd_local_map(x_hat, y, op, r, row["k2"], row["lr"], k,
                                                                    closed_form=cf)[0])(k, closed_form)
        loops = {name: (lambda f: lambda: [f() for _ in range(plan.solves)])(f) for name, f in solvers.items()}
        loops["net"] = one_net
        samples = interleaved(loops, plan.repeats)
        for name, solve in solvers.items():
            out = solve().double()
            distance = float((out - exact).norm() / exact.norm())
            ms = median_of(samples[name], clock, plan.solves) * 1e3
            calls = median_ratio(samples[name], samples["net"], clock, num_scale=plan.solves)
            rows.append([f"{sigma:g}", f"{r:.4f}", name, ms, calls, distance])
            record[f"sigma={sigma}/{name}"] = dict(ms=ms, net_calls=calls, distance=distance)
    bench.results["d_exact_solver"] = record
    print_table(f"(d) one local-MAP solve, {task} 64x64 (Table-4 row: lr={row['lr']}, k2={row['k2']}, "
                f"k1={row['k1']}), float32, {clock}",
                ["sigma", "r", "solver", "ms/solve", "in net calls", "rel. distance to exact"], rows,
                ["exact = CG on the normal equations to 1e-10 relative residual in float64.",
                 "LMAPS inner_solver='cg': the closed-form row by default, the first row with gd_closed_form=False",
                 "(cg_tol=1e-6, max_iter=inner_steps=100). inner_solver='gd' (the paper): the gd rows."])


class BatchLossOperator:
    """Operator proxy for InverseBench's DPS at batch > 1: its ``ll_grad * 0.5 / sqrt(loss)`` assumes batch 1,
    so ``gradient(..., return_loss=True)`` returns the per-sample loss shaped ``(B, 1, 1, 1)``. Same numbers."""

    def __init__(self, op):
        self._op = op

    def __getattr__(self, name):
        return getattr(self._op, name)

    def gradient(self, pred, observation, return_loss=False):
        out = self._op.gradient(pred, observation, return_loss=return_loss)
        if not return_loss:
            return out
        grad, loss = out
        return grad, loss.reshape(-1, *([1] * (pred.ndim - 1)))


def section_memory(bench: Bench, steps: int, batches: tuple[int, ...]) -> None:
    methods = ["lmaps", "lmaps_iter"] + (["daps", "dps"] if peers_available() else [])
    peaks = {}
    for batch in batches:
        for method in methods:
            cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", method, "--rss-steps", str(steps),
                   "--rss-batch", str(batch)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"\n(e) {method} at batch {batch}: child failed:\n{done.stderr[-2000:]}")
                continue
            peaks[(method, batch)] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for (method, batch), p in peaks.items():
        base = peaks.get(("lmaps", batch))
        growth = p["peak_mb"] - p["before_mb"]
        ratio = growth / max(base["peak_mb"] - base["before_mb"], 1e-9) if base else float("nan")
        rows.append([method, batch, p["before_mb"], p["peak_mb"], growth, ratio,
                     p["peak_mb"] / base["peak_mb"] if base else float("nan"), p["reset"]])
    bench.results["e_memory"] = {f"{m}/b{b}": p for (m, b), p in peaks.items()}
    slopes = per_sample_growth(peaks, batches)
    if slopes:
        bench.results["e_memory_per_sample_mb"] = slopes

    print_table(f"(e) peak resident memory, gaussian_deblur, {steps} steps (DAPS: 1 annealing step), "
                "one subprocess each, 1 observation x num_samples = batch",
                ["method", "batch", "RSS before MB", "peak MB", "growth MB", "growth / LMAPS", "peak / LMAPS",
                 "peak reset"], rows,
                ["RSS before: resident memory just before inference() (after importing LMAPS and the peers and",
                 "building the net, operator and observation; the same in every child).",
                 "With 'peak reset' True the kernel's high-water mark is reset there (/proc/self/clear_refs) and the",
                 "peak is VmHWM, so growth is the run's own working memory (ru_maxrss, which the reset does not",
                 "clear, only sees the import-time peak at this size; it is kept in --json). Otherwise peak = ru_maxrss.",
                 "LMAPS calls the network under inference_mode (no graph); DPS backpropagates through it.",
                 "DPS at batch > 1 runs through BatchLossOperator (an upstream broadcasting defect:",
                 "ll_grad / sqrt(loss) assumes batch 1)."]
                + ([f"growth per extra sample (MB, from batch {min(batches)} to {max(batches)}): "
                    + ", ".join(f"{m} {v:.2g}" for m, v in slopes.items())] if slopes else []))


def per_sample_growth(peaks: dict, batches: tuple[int, ...]) -> dict[str, float]:
    """(growth at the largest batch − growth at the smallest) / (batch difference), per method."""
    if len(batches) < 2:
        return {}
    lo, hi = min(batches), max(batches)
    growth = {key: p["peak_mb"] - p["before_mb"] for key, p in peaks.items()}
    return {m: (growth[(m, hi)] - growth[(m, lo)]) / (hi - lo)
            for m, b in peaks if b == lo and (m, hi) in growth}


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_child(method: str, steps: int, batch: int) -> None:
    """Body of one (e) subprocess: import and build everything, reset the peak, run, read the peak; print JSON."""
    torch.set_num_threads(1)
    if peers_available():             # every child imports the same modules, whichever method it runs
        from lmaps_plugin.inversebench import import_upstream

        for module in ("algo.dps", "algo.daps"):
            import_upstream(module, "bench_speed.py's memory comparison")
    net, _ = timing_prior()
    op = make_operator("gaussian_deblur")
    gen = torch.Generator().manual_seed(0)
    y = observe(op, torch.rand(1, CHANNELS, RESOLUTION, RESOLUTION, generator=gen) * 2 - 1)
    if method in ("lmaps", "lmaps_iter"):
        solver = lmaps(net, op, steps, "gaussian_deblur", gd_closed_form=method == "lmaps")
        run = lambda: solver.inference(y, num_samples=batch)  # noqa: E731
    else:
        config = peer_config(method)
        wrapped = BatchLossOperator(op) if method == "dps" else op
        algo = peer(method, net, wrapped, with_steps(method, config, 1 if method == "daps" else steps))
        run = lambda: run_peer(algo, y, num_samples=batch)  # noqa: E731
    to_mb = 1 / 1024  # ru_maxrss and /proc are in KiB on Linux
    reset = reset_peak_rss()
    before = proc_status_kib("VmRSS") * to_mb if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb
    run()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb
    peak = proc_status_kib("VmHWM") * to_mb if reset else maxrss
    print(json.dumps({"before_mb": before, "peak_mb": peak, "ru_maxrss_mb": maxrss, "reset": reset}))


def proc_status_kib(key: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``: now; ``VmHWM``: peak since start or reset)."""
    with open("/proc/self/status") as f:
        return float(next(line.split()[1] for line in f if line.startswith(key + ":")))


def section_compile(bench: Bench) -> None:
    plan, clock, n = bench.plan, bench.clock, bench.plan.overhead_steps
    task = "gaussian_deblur"
    op = make_operator(task)
    y = observe(op, test_images(1))
    compiled = lmaps(bench.net, op, n, task, compile_net=True)
    _, compile_cost = measure(lambda: compiled.inference(y))          # compiles on first use
    eager = lmaps(bench.net, op, n, task)
    samples = interleaved({"eager": lambda: eager.inference(y), "compiled": lambda: compiled.inference(y)},
                          plan.repeats)
    ratio = median_ratio(samples["compiled"], samples["eager"], clock)
    saved = median_of(samples["eager"], clock, n) - median_of(samples["compiled"], clock, n)
    breakeven = compile_cost.wall / saved if saved > 0 else float("inf")
    bench.results["f_compile"] = dict(ratio=ratio, compile_wall_s=compile_cost.wall, compile_cpu_s=compile_cost.cpu,
                                      saved_ms_per_step=saved * 1e3, breakeven_steps=breakeven)
    print_table(f"(f) torch.compile of the network (LMAPS compile_net=True), {task}, N={n}, {clock}",
                ["first run wall s", "first run cpu s", "compiled / eager", "saved ms/step", "break-even steps"],
                [[compile_cost.wall, compile_cost.cpu, ratio, saved * 1e3, breakeven]],
                ["first run: compiling plus N steps; inductor compiles in worker processes (not in this process's CPU",
                 "time) and caches kernels under /tmp/torchinductor_$USER, so a first-ever compile is several times",
                 "slower than a cached one. Break-even: first-run wall time / saved time per step. A new batch size",
                 "recompiles."])


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute run (fewer steps and repeats)")
    parser.add_argument("--sections", default="abcde",
                        help="letters of the sections to run (default 'abcde'; 'f' = torch.compile, as --compile)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3 quick, 5 full)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="clock of the ratios shown")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the network (f)")
    parser.add_argument("--no-shipped-peers", action="store_true",
                        help="full run: do not run DAPS/DPS at their shipped step counts in (b2) (saves ~4 min)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--cases", default=None,
                        help=f"(a) operators, comma-separated, from {','.join(OVERHEAD_CASES)} (default: all; "
                             "--quick: the image operators and MRI)")
    parser.add_argument("--gram-cache", default=None,
                        help="(a) directory of the scattering Gram cache (default: a fresh temporary one, so the "
                             "factorisation is timed; a directory that holds it skips the factorisation)")
    parser.add_argument("--before-src", default=None,
                        help="(a) also measure the code at this source tree (e.g. a checkout of an older commit) in a "
                             "subprocess with PYTHONPATH=<it>, and print before -> after")
    parser.add_argument("--before-json", default=None,
                        help="(a) a --json file of an earlier run to compare against (instead of --before-src)")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--rss-batch", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not set(args.sections) <= set("abcdef"):
        parser.error(f"--sections must be letters from 'abcdef', got {args.sections!r}")
    if args.compile and "f" not in args.sections:
        args.sections += "f"
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.cases is None:
        args.cases = list(IMAGE_OPERATORS + ("mri-ours", "mri-stock") if args.quick else OVERHEAD_CASES)
    else:
        args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [c for c in args.cases if c not in OVERHEAD_CASES]
        if unknown or not args.cases:
            parser.error(f"--cases: unknown {unknown or args.cases!r}; allowed: {', '.join(OVERHEAD_CASES)}")
    if args.before_src and args.before_json:
        parser.error("give --before-src or --before-json, not both")
    if args.before_src and not (Path(args.before_src) / "lmaps_plugin" / "__init__.py").is_file():
        parser.error(f"--before-src {args.before_src!r} holds no lmaps_plugin package")
    return args


def machine_line(threads: int) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"machine: {cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__}, {threads} thread(s); "
            f"load average {tuple(round(v, 2) for v in load)}")


def run_before(args, path: str) -> dict:
    """Section (a) of this script on the code at ``args.before_src`` (a subprocess); its JSON record."""
    cmd = [sys.executable, os.path.abspath(__file__), "--sections", "a", "--json", path, "--threads",
           str(args.threads), "--cases", ",".join(args.cases)]
    cmd += (["--quick"] if args.quick else []) + (["--repeats", str(args.repeats)] if args.repeats else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.abspath(args.before_src),
                                                                     os.environ.get("PYTHONPATH")]))}
    print(f"\n=== before: {args.before_src} (subprocess) ===", flush=True)
    subprocess.run(cmd, env=env, check=True)
    print("=== before: done ===\n", flush=True)
    return load_overhead(path)


def load_overhead(path: str) -> dict:
    with open(path) as f:
        return json.load(f)["results"]["a_overhead"]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child, args.rss_steps, args.rss_batch)
        return 0
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    if args.repeats is not None:
        plan = Plan(**{**plan.__dict__, "repeats": args.repeats})
    if args.no_shipped_peers:
        plan = Plan(**{**plan.__dict__, "run_shipped_peers": False})
    before = None
    if args.before_src and "a" in args.sections:
        with tempfile.TemporaryDirectory(prefix="lmaps-bench-before-") as scratch:
            before = run_before(args, os.path.join(scratch, "before.json"))
    elif args.before_json:
        before = load_overhead(args.before_json)
    net, label = timing_prior()
    bench = Bench(plan=plan, clock=args.clock, net=net, net_label=label, cases=args.cases,
                  gram_cache=args.gram_cache)
    import lmaps_plugin

    machine_at_start = machine_line(args.threads)
    print(machine_at_start)
    print(f"code: {os.path.dirname(os.path.dirname(os.path.abspath(lmaps_plugin.__file__)))}")
    print(f"timing prior: {label}; images: faces test split, {RESOLUTION}x{RESOLUTION}x{CHANNELS}; "
          f"noise sigma {SIGMA_NOISE}; {plan.repeats} interleaved rounds, medians; "
          f"{'quick' if args.quick else 'full'} plan")
    started = time.perf_counter()
    warm_up(bench)
    sections = {"a": section_overhead, "b": section_peers, "c": section_batching, "d": section_exact_solver,
                "e": lambda b: section_memory(b, plan.rss_steps, plan.rss_batches), "f": section_compile}
    for key in "abcdef":
        if key in args.sections:
            sections[key](bench)
            sys.stdout.flush()
    if before is not None and "a_overhead" in bench.results:
        bench.results["a_overhead_before"] = before
        print_before_after(before, bench.results["a_overhead"])
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s; {machine_line(args.threads)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_line(args.threads), "machine_at_start": machine_at_start, "prior": label,
                       "plan": plan.__dict__,
                       "clock": args.clock, "results": bench.results}, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
