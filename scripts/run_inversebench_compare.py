#!/usr/bin/env python
"""Offline InverseBench rig: LMAPS vs InverseBench's DPS and DAPS through stock ``main.py``, on CPU.

For linear inverse scattering, black-hole imaging and multi-coil CS-MRI this script

1. writes a synthetic test set and training images (``make_inversebench_data.py``),
2. trains a tiny prior per problem for a few minutes (``make_inversebench_ckpt.py``: InverseBench's own
   networks at ``model_channels=16``; the black-hole prior uses ``EDMPrecond`` instead of upstream's
   ``VPPrecond``, see that script),
3. runs the checkout's unmodified ``main.py`` once per (problem, algorithm), in the checkout's root,
   with lmaps-plugin's ``*-fixed`` problem configs (InverseBench's problems with our adapters: they
   import without piq/torchvision and write ``metrics.json``),
4. prints the metrics side by side: InverseBench's evaluator metrics (from ``metrics.json``, or the
   log's ``Final metric results`` line), a plain PSNR computed here from ``result_*.pt``, and
   wall-clock / CPU seconds.

Smoke scale, not the paper's settings.  Every algorithm gets about the same budget of operator
gradients per sample (~100): LMAPS N=20 annealing x K=5 gradient steps; DPS 100 steps (upstream:
1000); DAPS 20 annealing steps (upstream: 200) x (2 ODE steps (5) + 5 Langevin steps (100)).
LMAPS uses the paper's Table-4 rows for the task (LIS NR=360, CS-MRI 4x noiseless, black hole 100%)
for η, k1, k2; DPS's guidance scale and DAPS's Langevin step/τ are the geometric midpoints of
InverseBench's own sweep ranges (``configs/sweep/<problem>/<algo>.yaml``), or upstream defaults where
there is no sweep.  See ``ALGORITHM_OVERRIDES``.

Example (about 20-30 min on 2 cores, most of it in the black-hole and scattering runs)::

    export INVERSEBENCH_ROOT=/path/to/InverseBench
    python scripts/run_inversebench_compare.py --work /tmp/lmaps-ib-compare

Re-running reuses the data and checkpoints in ``--work`` (``--fresh`` rebuilds them); a problem whose data or
checkpoint is not there yet (e.g. ``--problems scatter`` after ``--problems blackhole,mri``) gets them first.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class RigProblem:
    """One InverseBench problem as the rig runs it."""

    key: str             # name used by make_inversebench_data/ckpt (--problems)
    problem: str         # Hydra problem config (lmaps-plugin's *-fixed variant of InverseBench's)
    train_seconds: float  # default training budget of the prior


RIG_PROBLEMS = {
    'scatter': RigProblem('scatter', 'inv-scatter-fixed', 240.0),
    'blackhole': RigProblem('blackhole', 'blackhole-fixed', 150.0),
    'mri': RigProblem('mri', 'multi-coil-mri-knee-lmdb-fixed', 150.0),
}

ALGORITHMS = ('lmaps', 'dps', 'daps')
ALGORITHM_NAMES = {'lmaps': 'LMAPS', 'dps': 'DPS', 'daps': 'DAPS'}
"""``algorithm.name`` of each config (the results folder under ``problem.exp_dir``)."""

_LMAPS_SMOKE = ['algorithm.method.num_steps=20', 'algorithm.method.inner_steps=5']
_DPS_SMOKE = ['algorithm.method.diffusion_scheduler_config.num_steps=100']
_DAPS_SMOKE = ['algorithm.method.annealing_scheduler_config.num_steps=20',
               'algorithm.method.diffusion_scheduler_config.num_steps=2',
               'algorithm.method.lgvd_config.num_steps=5']

ALGORITHM_OVERRIDES = {
    # LMAPS: Table 4 rows (η, k1, k2), N and K shrunk.
    ('lmaps', 'scatter'): _LMAPS_SMOKE + ['algorithm.method.lr=1.0', 'algorithm.method.k1=0.0',
                                          'algorithm.method.k2=5000.0'],
    ('lmaps', 'mri'): _LMAPS_SMOKE + ['algorithm.method.lr=0.01', 'algorithm.method.k1=0.0',
                                      'algorithm.method.k2=100.0'],
    ('lmaps', 'blackhole'): _LMAPS_SMOKE + ['algorithm.method.lr=0.01', 'algorithm.method.k1=0.1',
                                            'algorithm.method.k2=0.01'],
    # DPS: guidance = geometric midpoint of configs/sweep/<problem>/dps.yaml's range.
    ('dps', 'scatter'): _DPS_SMOKE + ['algorithm.method.guidance_scale=11.3'],   # [1, 128]
    ('dps', 'mri'): _DPS_SMOKE + ['algorithm.method.guidance_scale=1.0'],        # [1e-3, 1e3]
    ('dps', 'blackhole'): _DPS_SMOKE + ['algorithm.method.guidance_scale=5.5e-4'],  # [1e-4, 3e-3]
    # DAPS: Langevin lr / tau = geometric midpoints of configs/sweep/<problem>/daps.yaml (no scatter sweep:
    # upstream defaults lr=1e-4, tau=0.01).
    ('daps', 'scatter'): _DAPS_SMOKE,
    ('daps', 'mri'): _DAPS_SMOKE + ['algorithm.method.lgvd_config.lr=1e-4',        # [1e-5, 1e-3]
                                    'algorithm.method.lgvd_config.tau=0.01'],      # [1e-3, 1e-1]
    ('daps', 'blackhole'): _DAPS_SMOKE + ['algorithm.method.lgvd_config.lr=3.2e-8',  # [1e-8, 1e-7]
                                          'algorithm.method.annealing_scheduler_config.sigma_min=3.2e-3'],
}


# --------------------------------------------------------------------------------------------------
# Data and checkpoints
# --------------------------------------------------------------------------------------------------

def run_script(name: str, args: list[str]) -> None:
    """Run ``scripts/<name>`` with this interpreter; raise with its output if it fails."""
    cmd = [sys.executable, str(SCRIPTS / name), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')


def data_entries(problem: str, num_train: int) -> tuple[str, ...]:
    """The ``manifest.json`` entries (of ``make_inversebench_data.py``) a problem's runs need."""
    needed = {'scatter': ('scatter_test',), 'blackhole': ('blackhole_measure', 'blackhole_test'),
              'mri': ('mri_test',)}[problem]
    return needed + ((f'{problem}_train',) if num_train > 0 else ())


def problems_lacking_data(manifest: dict, problems, num_train: int) -> list[str]:
    """The requested problems whose data the manifest does not list, or lists at a path that is gone."""
    entries = manifest.get('entries', {})
    lacking = []
    for p in problems:
        for key in data_entries(p, num_train):
            path = (entries.get(key) or {}).get('path')
            if not path or not Path(path).exists():
                lacking.append(p)
                break
    return lacking


def ensure_data(data_dir: Path, problems, num_test: int, num_train: int, seed: int = 0) -> dict:
    """Write the synthetic data of every requested problem that lacks it (the manifest is merged, so runs with
    different ``--problems`` share one data folder); return the manifest."""
    manifest = data_dir / 'manifest.json'
    have = json.loads(manifest.read_text()) if manifest.exists() else {}
    lacking = problems_lacking_data(have, problems, num_train)
    if lacking:
        print(f'writing data for {", ".join(lacking)} into {data_dir}', flush=True)
        run_script('make_inversebench_data.py', ['--out', str(data_dir), '--problems', ','.join(lacking),
                                                 '--num-test', str(num_test), '--num-train', str(num_train),
                                                 '--seed', str(seed)])
    return json.loads(manifest.read_text())


def ensure_checkpoints(ckpt_dir: Path, data_dir: Path, ib_root: Path, problems, train_seconds: dict,
                       extra: list[str] = ()) -> dict:
    """Make the missing checkpoints (trained for ``train_seconds[p]``, 0 = random); return the manifest."""
    manifest = ckpt_dir / 'checkpoints.json'
    have = json.loads(manifest.read_text()) if manifest.exists() else {}
    for p in problems:
        if p in have:
            continue
        seconds = train_seconds[p]
        steps = ['--train-steps', '1000000', '--train-seconds', str(seconds)] if seconds > 0 else []
        run_script('make_inversebench_ckpt.py', ['--out', str(ckpt_dir), '--data', str(data_dir),
                                                 '--ib-root', str(ib_root), '--problems', p, *steps, *extra])
    return json.loads(manifest.read_text())


# --------------------------------------------------------------------------------------------------
# Running stock main.py
# --------------------------------------------------------------------------------------------------

def main_py_command(problem: str, algorithm: str, data_manifest: dict, ckpt_manifest: dict, exp_dir: Path,
                    exp_name: str = 'compare', extra: list[str] = ()) -> list[str]:
    """The ``python main.py ...`` command line for one run (cwd: the checkout root)."""
    rig = RIG_PROBLEMS[problem]
    return [sys.executable, 'main.py', f'problem={rig.problem}', f'algorithm={algorithm}',
            *ckpt_manifest[problem]['overrides'], *data_manifest['overrides'][rig.problem],
            f'problem.exp_dir={exp_dir}', f'exp_name={exp_name}', 'wandb=false',
            f'hydra.run.dir={exp_dir / "hydra" / algorithm}', *extra]


@dataclass
class RunResult:
    problem: str
    algorithm: str
    returncode: int
    wall_s: float
    cpu_s: float
    result_dir: Path
    log_tail: str


def run_main(ib_root: Path, command: list[str], problem: str, algorithm: str, exp_dir: Path,
             exp_name: str = 'compare', threads: int = 1, timeout: float | None = None) -> RunResult:
    """Run one ``main.py`` command in ``ib_root`` and time it (wall and child CPU seconds)."""
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads),
           'INVERSEBENCH_ROOT': str(ib_root), 'WANDB_MODE': 'disabled', 'PYTHONUNBUFFERED': '1'}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=ib_root, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result_dir = exp_dir / ALGORITHM_NAMES.get(algorithm, algorithm) / exp_name
    return RunResult(problem, algorithm, proc.returncode, wall, cpu, result_dir,
                     (proc.stdout + proc.stderr)[-4000:])


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

def result_files(result_dir: Path) -> list[Path]:
    """``result_<id>.pt`` files of one run, by id."""
    files = result_dir.glob('result_*.pt')
    return sorted(files, key=lambda p: int(re.search(r'result_(\d+)\.pt$', p.name).group(1)))


def load_result(path: Path) -> dict:
    import torch

    return torch.load(path, map_location='cpu', weights_only=True)


def plain_psnr(problem: str, recon, target) -> float:
    """PSNR of one reconstruction in dB, the same way for every algorithm.

    scatter, blackhole: images in [0, 1] (``main.py`` stores them unnormalized), clipped, data range 1;
    mri: magnitude of the 2-channel complex image, data range max |target| (InverseBench's convention).
    """
    import torch
    from torchmetrics.functional import peak_signal_noise_ratio

    recon, target = recon.double(), target.double()
    if target.dim() == 3:
        target = target[None]
    if problem == 'mri':
        recon = torch.linalg.vector_norm(recon, dim=1, keepdim=True)
        target = torch.linalg.vector_norm(target, dim=1, keepdim=True)
        peak = float(target.max())
        recon = recon.clamp(0, peak)
    else:
        peak = 1.0
        recon, target = recon.clamp(0, 1), target.clamp(0, 1)
    return float(peak_signal_noise_ratio(recon, target.expand_as(recon), data_range=peak))


def evaluator_metrics(result_dir: Path) -> dict:
    """InverseBench's final metrics: ``metrics.json`` (lmaps-plugin evaluators) or the log line."""
    metrics_file = result_dir / 'metrics.json'
    if metrics_file.exists():
        return json.loads(metrics_file.read_text()).get('summary', {})
    log = result_dir / 'log.txt'
    if log.exists():
        lines = [l for l in log.read_text().splitlines() if 'Final metric results:' in l]
        if lines:
            text = lines[-1].split('Final metric results:', 1)[1].strip().rstrip('.').strip()
            return ast.literal_eval(re.sub(r'np\.float64\(([^)]*)\)', r'\1', text))
    return {}


def summarize(run: RunResult) -> dict:
    """Metrics of one run: sample count, mean plain PSNR, evaluator means, finiteness, timings."""
    import torch

    row = {'ok': run.returncode == 0, 'wall_s': run.wall_s, 'cpu_s': run.cpu_s}
    files = result_files(run.result_dir)
    psnrs, finite = [], True
    for f in files:
        res = load_result(f)
        finite &= bool(torch.isfinite(res['recon']).all())
        psnrs.append(plain_psnr(run.problem, res['recon'], res['target']))
    row.update(samples=len(files), finite=finite,
               psnr_plain=sum(psnrs) / len(psnrs) if psnrs else math.nan)
    row.update({k: v for k, v in evaluator_metrics(run.result_dir).items() if not k.endswith('_std')})
    return row


def format_table(problem: str, rows: dict) -> str:
    """A Markdown table: one row per algorithm, columns = plain PSNR, evaluator metrics, timings."""
    fixed = ['samples', 'psnr_plain']
    tail = ['wall_s', 'cpu_s']
    extra = sorted({k for r in rows.values() for k in r} - set(fixed) - set(tail) - {'ok', 'finite'})
    cols = fixed + extra + tail
    lines = [f'### {problem} ({RIG_PROBLEMS[problem].problem})', '',
             '| algorithm | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
    for algo, r in rows.items():
        cells = []
        for c in cols:
            v = r.get(c, '')
            cells.append(f'{v:.4g}' if isinstance(v, float) else str(v))
        status = '' if r.get('ok') and r.get('finite', True) else ' (FAILED)' if not r.get('ok') else ' (non-finite)'
        lines.append(f'| {ALGORITHM_NAMES.get(algo, algo)}{status} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


# --------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--ib-root', type=Path, default=os.environ.get('INVERSEBENCH_ROOT'),
                   help='InverseBench checkout (default: $INVERSEBENCH_ROOT)')
    p.add_argument('--work', type=Path, default=Path('/tmp/lmaps-ib-compare'), help='data, checkpoints, runs')
    p.add_argument('--problems', default=','.join(RIG_PROBLEMS))
    p.add_argument('--algorithms', default=','.join(ALGORITHMS))
    p.add_argument('--num-test', type=int, default=3)
    p.add_argument('--num-train', type=int, default=128)
    p.add_argument('--train-seconds', type=float, default=None,
                   help='training budget per prior (default: per problem, see RIG_PROBLEMS; 0 = random weights)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--fresh', action='store_true', help='rebuild data and checkpoints')
    p.add_argument('--extra', action='append', default=[], help='extra override for every main.py run')
    args = p.parse_args(argv)
    if args.ib_root is None:
        p.error('--ib-root is required when INVERSEBENCH_ROOT is not set')
    args.ib_root = Path(args.ib_root).resolve()
    args.problems = [s for s in args.problems.split(',') if s]
    args.algorithms = [s for s in args.algorithms.split(',') if s]
    for name, valid in (('problems', RIG_PROBLEMS), ('algorithms', ALGORITHMS)):
        bad = [s for s in getattr(args, name) if s not in valid]
        if bad:
            p.error(f'--{name}: unknown {bad}; valid: {", ".join(valid)}')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = args.work.resolve()
    data_dir, ckpt_dir, runs_dir = work / 'data', work / 'ckpt', work / 'runs'
    if args.fresh:
        import shutil
        for d in (data_dir, ckpt_dir, runs_dir):
            shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    data = ensure_data(data_dir, args.problems, args.num_test, args.num_train)
    t_data = time.perf_counter() - t0
    seconds = {p: (RIG_PROBLEMS[p].train_seconds if args.train_seconds is None else args.train_seconds)
               for p in args.problems}
    ckpts = ensure_checkpoints(ckpt_dir, data_dir, args.ib_root, args.problems, seconds)
    t_ckpt = time.perf_counter() - t0 - t_data
    print(f'data ready ({t_data:.0f} s), checkpoints ready ({t_ckpt:.0f} s)', flush=True)

    summary = {}
    for problem in args.problems:
        rows = {}
        exp_dir = runs_dir / problem
        for algo in args.algorithms:
            cmd = main_py_command(problem, algo, data, ckpts, exp_dir,
                                  extra=[*ALGORITHM_OVERRIDES[(algo, problem)], *args.extra])
            print(f'\n$ cd {args.ib_root} && OMP_NUM_THREADS={args.threads} python ' + ' '.join(cmd[1:]), flush=True)
            run = run_main(args.ib_root, cmd, problem, algo, exp_dir, threads=args.threads)
            rows[algo] = summarize(run)
            print(f'  -> rc={run.returncode}, wall {run.wall_s:.0f} s, cpu {run.cpu_s:.0f} s, '
                  f'plain PSNR {rows[algo]["psnr_plain"]:.2f} dB', flush=True)
            if run.returncode != 0:
                print(run.log_tail, flush=True)
        summary[problem] = rows
        print('\n' + format_table(problem, rows), flush=True)

    (work / 'summary.json').write_text(json.dumps(summary, indent=2, default=str))
    print('\n\n## Summary (smoke scale; not the paper\'s numbers)\n')
    for problem, rows in summary.items():
        print(format_table(problem, rows) + '\n')
    total = sum(r['wall_s'] for rows in summary.values() for r in rows.values())
    print(f'main.py runs: {total:.0f} s wall in total; results and logs under {runs_dir}')
    return summary


if __name__ == '__main__':
    main()
