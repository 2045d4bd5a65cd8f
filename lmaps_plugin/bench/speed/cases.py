"""The operators of the overhead section (a), each an :class:`OverheadCase`: the image operators, and
InverseBench's scattering and multi-coil MRI operators through our adapters and through the stock classes."""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmaps_plugin import algorithm as algorithm_module
from lmaps_plugin import inversebench as ib
from lmaps_plugin.algorithm import LMAPS
from lmaps_plugin.data import builtin_dataset
from lmaps_plugin.local_map import gram_eigenbasis
from lmaps_plugin.operators.base import LinearOperator

from .problems import (IMAGE_OPERATORS, INVERSEBENCH_OPERATORS, RESOLUTION, Bench, make_operator, observe,
                       peers_available, test_images)
from .timing import Plan

#: InverseBench's inv-scatter problem (configs/problem/inv-scatter.yaml) at 64², NR = 360
SCATTER = dict(Nx=RESOLUTION, Ny=RESOLUTION, numTrans=20, numRec=360, sigma_noise=1e-4, unnorm_shift=1.0,
               unnorm_scale=0.5, svd=False, device="cpu")
#: InverseBench's multi-coil-mri-knee problem (4x, random lines, mask seed 0, sigma_noise 0) on the synthetic
#: data of scripts/make_inversebench_data.py (sigpy birdcage maps, a phantom with a smooth phase)
MRI = dict(size=RESOLUTION, coils=8, acceleration=4)
#: the source checkout's scripts/ beside this package (lmaps_plugin/bench/speed/ -> the repository root)
CHECKOUT_SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
MRI_DATA_SCRIPT = CHECKOUT_SCRIPTS / "make_inversebench_data.py"


def solver_has_auto() -> bool:
    """True for code with ``inner_solver='auto'`` (lmaps_auto); False for older code."""
    return "auto" in getattr(algorithm_module, "INNER_SOLVERS", ())


@dataclass
class OverheadCase:
    """One operator of (a): operator, observation, prior, the Table-4 row that fits it, and N."""
    name: str
    op: object
    y: torch.Tensor
    net: torch.nn.Module
    row: str                       # the algorithm config <row>
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


def load_mri_data_script():
    """The source checkout's ``scripts/make_inversebench_data.py`` as a module (the synthetic data's helpers).
    It is not part of the installed package: the MRI cases need a checkout."""
    spec = importlib.util.spec_from_file_location("make_inversebench_data", MRI_DATA_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mri_data() -> dict:
    """One synthetic multi-coil sample as make_inversebench_data.py writes it (noiseless k-space)."""
    make = load_mri_data_script()
    size = MRI["size"]
    maps = make.coil_maps(MRI["coils"], size)
    rng = np.random.default_rng(0)
    magnitude = make.procedural_images("phantoms", size, 1, "test", 0)[0]
    image = (magnitude * np.exp(1j * make.smooth_phase(rng, size))).astype(np.complex64)
    kspace = make.fully_sampled_kspace(image, maps, 0.0, rng)
    return {"maps": torch.from_numpy(maps)[None].to(torch.complex128),
            "kspace": torch.from_numpy(kspace)[None].to(torch.complex128)}


def mri_cases(net, plan: Plan, names: list[str]) -> list[OverheadCase]:
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


def overhead_cases(bench: Bench, names: list[str], cache_dir: str | None) -> list[OverheadCase]:
    """The cases named ``names``; InverseBench's are skipped, with a line saying why, without a checkout."""
    cases = [image_case(name, bench.net, bench.plan) for name in names if name in IMAGE_OPERATORS]
    wanted_ib = [name for name in names if name in INVERSEBENCH_OPERATORS]
    if wanted_ib and not peers_available():
        print(f"\n(a) {', '.join(wanted_ib)}: skipped (INVERSEBENCH_ROOT is not set or not a checkout)")
        return cases
    scatter = [name for name in wanted_ib if name.startswith("scatter")]
    mri = [name for name in wanted_ib if name.startswith("mri")]
    if scatter:
        cases += scatter_cases(bench.net, bench.plan, scatter, cache_dir, bench)
    if mri and not MRI_DATA_SCRIPT.is_file():
        print(f"\n(a) {', '.join(mri)}: skipped (the synthetic MRI data is made by scripts/make_inversebench_data.py "
              f"of a source checkout, not found at {MRI_DATA_SCRIPT}; run from a checkout of lmaps-plugin)")
    elif mri:
        cases += mri_cases(bench.net, bench.plan, mri)
    return cases
