"""Speed of LMAPS, side by side, as ratios measured within one run.

Sections (``--sections``, default all):

a. overhead over N network calls: LMAPS' wall time / the wall time of its N network calls alone (the same
   prior at the same batch, called N times at the run's noise levels, inference mode; 1.0 = the inner solve is
   free), per operator, for the Table-4 row (algorithm config ``lmaps_<task>``) and ``lmaps_auto``:
   the 9 image operators on the faces64 prior; InverseBench's scattering operator (64², NR = 360) through our
   adapter (analytic adjoint, Gram eigenbasis: its factorisation is timed separately, runs use the warm cache)
   and through the stock class (autograd gradients); InverseBench's multi-coil MRI operator (synthetic data of
   ``scripts/make_inversebench_data.py``, so a source checkout: 64², 8 sigpy coils, 4×) through our adapter and
   the stock class. Medians of paired rounds (cheap operators get more rounds). ``--before-src DIR`` measures
   the code at DIR too (older code without ``lmaps_auto``: the row with ``inner_solver='cg'``) and prints
   before -> after with the targets; ``--cases`` picks operators. Then (a'): smaller levers (inference mode,
   adjoint vs autograd);
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
    git worktree add /tmp/before <commit>               # older code, for before -> after:
    python scripts/bench_speed.py --sections a --before-src /tmp/before
    python scripts/bench_speed.py --compile --sections a   # adds (f): compiling takes a minute or more

``python -m lmaps_plugin.bench.speed.main`` is the same command.
"""
from __future__ import annotations

import os

# InverseBench's peers draw progress bars unconditionally; tqdm reads TQDM_* when it is first imported,
# which the imports below do (through the sampler)
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import lmaps_plugin  # noqa: E402

from .memory import rss_child, section_memory  # noqa: E402
from .overhead import print_before_after, section_overhead  # noqa: E402
from .problems import (CHANNELS, IMAGE_OPERATORS, OVERHEAD_CASES, RESOLUTION, SIGMA_NOISE, Bench,  # noqa: E402
                       timing_prior, warm_up)
from .sections import (section_batching, section_compile, section_exact_solver, section_levers,  # noqa: E402
                       section_peers)
from .timing import FULL, QUICK, Plan  # noqa: E402

#: the --before-src child: lmaps_plugin from that tree (first on PYTHONPATH), this benchmark from its own files
#: under a name of its own (an older tree need not hold lmaps_plugin.bench); argv[1] is this package's folder
BEFORE_CHILD = """\
import importlib.util, sys
here = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location("lmaps_speed_bench", here + "/__init__.py",
                                              submodule_search_locations=[here])
sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules[spec.name])
from lmaps_speed_bench.main import main
sys.exit(main())
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute run (fewer steps and repeats)")
    parser.add_argument("--sections", default="abcde",
                        help="letters of the sections to run (default 'abcde'; 'f' = torch.compile, as --compile)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 2 quick, 3 full)")
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
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = _parser()
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
    """Section (a) of this benchmark on the code at ``args.before_src`` (a subprocess); its JSON record."""
    here = str(Path(__file__).resolve().parent)
    cmd = [sys.executable, "-c", BEFORE_CHILD, here, "--sections", "a", "--json", path, "--threads",
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


def plan_of(args) -> Plan:
    """The quick or full plan, with ``--repeats`` and ``--no-shipped-peers`` applied."""
    plan = QUICK if args.quick else FULL
    if args.repeats is not None:
        plan = Plan(**{**plan.__dict__, "repeats": args.repeats})
    if args.no_shipped_peers:
        plan = Plan(**{**plan.__dict__, "run_shipped_peers": False})
    return plan


def run_sections(bench: Bench, letters: str) -> None:
    """The sections named by ``letters``, in the order a, b, c, d, e, f; (a) ends with its levers (a')."""
    plan = bench.plan
    sections = {"a": lambda b: (section_overhead(b), section_levers(b)), "b": section_peers, "c": section_batching,
                "d": section_exact_solver, "e": lambda b: section_memory(b, plan.rss_steps, plan.rss_batches),
                "f": section_compile}
    for key in "abcdef":
        if key in letters:
            sections[key](bench)
            sys.stdout.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child, args.rss_steps, args.rss_batch)
        return 0
    torch.set_num_threads(args.threads)
    plan = plan_of(args)
    before = None
    if args.before_src and "a" in args.sections:
        with tempfile.TemporaryDirectory(prefix="lmaps-bench-before-") as scratch:
            before = run_before(args, os.path.join(scratch, "before.json"))
    elif args.before_json:
        before = load_overhead(args.before_json)
    net, label = timing_prior()
    bench = Bench(plan=plan, clock=args.clock, net=net, net_label=label, cases=args.cases,
                  gram_cache=args.gram_cache)
    machine_at_start = machine_line(args.threads)
    print(machine_at_start)
    print(f"code: {os.path.dirname(os.path.dirname(os.path.abspath(lmaps_plugin.__file__)))}")
    print(f"timing prior: {label}; images: faces test split, {RESOLUTION}x{RESOLUTION}x{CHANNELS}; "
          f"noise sigma {SIGMA_NOISE}; {plan.repeats} interleaved rounds, medians; "
          f"{'quick' if args.quick else 'full'} plan")
    started = time.perf_counter()
    warm_up(bench)
    run_sections(bench, args.sections)
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
    raise SystemExit(main())
