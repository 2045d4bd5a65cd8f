"""How much to measure (:class:`Plan`) and how: interleaved rounds of wall and CPU time, ratios paired within
a round, medians and quartiles over rounds."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


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
    """Median of one variant's timings on ``clock``, divided by ``scale`` (e.g. per step)."""
    return statistics.median(s.get(clock) for s in samples) / scale
