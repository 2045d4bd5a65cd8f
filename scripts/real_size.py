#!/usr/bin/env python
"""InverseBench at its published sizes, offline: cost, memory and failures of LMAPS, DPS and DAPS.

One script, four stages (each reuses what an earlier call left in ``--work``):

1. **data** -- ``make_inversebench_data.py`` at the real sizes: scattering 128² LMDB, multi-coil knee
   320×320 with 15 coils, black hole 64² with an EHT 2017 observation (ehtim ``ttype=direct``), FFHQ-style
   256² PNGs; ``--num-test`` samples each (default 1).
2. **checkpoints** -- ``make_inversebench_ckpt.py --published``: each ``configs/pretrain/<name>.yaml`` of the
   checkout as published (inv-scatter, mri-knee-mvue, blackhole, ffhq256), **randomly initialised**, saved as
   ``{'ema': state_dict}`` (``main.py`` loads ``ckpt['ema']`` into ``instantiate(pretrain.model)``).  Random
   weights make every quality number meaningless: this rig measures time, memory and failures only.
3. **bare network** -- per prior, one child process times a bare forward (no grad) and a forward+backward
   of the network at batch 1 (what every method here uses: ``num_samples=1``), after one warm-up call.
4. **runs** -- the checkout's unmodified ``main.py``, run from its root through a launcher
   (``real_size.py --child``) that only observes: it times ``instantiate`` of the operator, wraps the
   algorithm's ``inference`` with a clock, puts forward hooks on the network (call count and start times), records
   warnings and ``algo.last_run_stats``, and reads the peak RSS (``getrusage``).  For the FFHQ problems it first
   imports ``inverse_problems.image_restore`` with lmaps-plugin's torchvision stand-ins and gives
   ``training.dataset`` a tensor ``Resize`` (``ImageFolder`` builds one in its constructor; the PNGs are
   already 256², so it is never called), and replaces ``eval.Image`` (it downloads VGG weights for LPIPS) by
   lmaps-plugin's ``ImageEvaluator``.

Step counts are cut (``--steps``, ``--daps-levels``, ``--daps-ode``, ``--daps-langevin``) and the full run is
projected per image:

    projected = setup + N × (network + own)

* network: the bare forward time × network calls per step (DPS: the bare forward+backward, since DPS
  differentiates through the network);
* own: measured wall per step minus network, the wall per step being the mean over steps 2..S (step 1 can hold
  lazy set-up work; its excess over the mean is counted in setup);
* setup: operator construction (``instantiate(problem.model)``: factorisations, caches, the EHT observation) +
  inference start to the first network call (calibration, probes) + step 1's excess;
* N: the config's ``num_steps`` for LMAPS (Table-4 rows: 100 or 200; ``lmaps_auto``: 200), 1000 for DPS
  (``configs/algorithm/dps.yaml``), 200 annealing levels for DAPS; a DAPS "step" is one annealing level, whose
  published cost is 5 ODE network calls + 100 Langevin steps: network = 5 × forward and
  own = 100 × (own time of one Langevin step, measured at ``--daps-langevin`` steps per level).

Example (about 22 minutes on 2 busy cores, one torch thread per run)::

    export INVERSEBENCH_ROOT=/path/to/InverseBench
    python scripts/real_size.py --work /tmp/real-size          # all stages, writes report.md and results.json
    python scripts/real_size.py --work /tmp/real-size --only scatter-nr360   # one case, reusing the rest
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent

#: published step counts of the peers (InverseBench's configs/algorithm/{dps,daps}.yaml)
DPS_STEPS = 1000
DAPS_LEVELS, DAPS_ODE, DAPS_LANGEVIN = 200, 5, 100

#: pretrain config, checkpoint name (make_inversebench_ckpt.py) and data problem of each family
FAMILIES = {
    'scatter': ('inv-scatter', 'scatter'),
    'mri': ('mri-knee-mvue', 'mri'),
    'blackhole': ('blackhole', 'blackhole'),
    'ffhq': ('ffhq256', 'ffhq'),
}


@dataclass(frozen=True)
class Case:
    """One problem setting: a problem config, its overrides and its Table-4 row."""

    name: str
    family: str
    problem: str
    overrides: tuple
    row: str


def cases() -> list[Case]:
    out = [Case(f'scatter-nr{nr}', 'scatter', 'inv-scatter-fixed', (f'problem.model.numRec={nr}',),
                f'lmaps_lis_nr{nr}') for nr in (360, 180, 60)]
    out += [Case(f'mri-{r}x', 'mri', 'multi-coil-mri-knee-lmdb-fixed', (f'problem.model.acceleration_ratio={r}',),
                 f'lmaps_mri_{r}x_raw') for r in (4, 8)]
    out += [Case(f'blackhole-{p}pct', 'blackhole', 'blackhole-fixed',
                 (f'problem.model.observation_time_ratio={ratio}',), f'lmaps_blackhole_{p}pct')
            for p, ratio in ((3, 0.03), (10, 0.1), (100, 1.0))]
    # deblurring through our ffhq256_deblur-fixed: upstream's 61x61 blur as two 1-D convolutions, for every method
    out += [Case(f'ffhq-{t}', 'ffhq', f'ffhq256_{t}-fixed' if t == 'deblur' else f'ffhq256_{t}', (), row)
            for t, row in (('sr', 'lmaps_sr4'), ('deblur', 'lmaps_gaussian_deblur'),
                           ('inpaint', 'lmaps_inpaint_box'), ('pr', 'lmaps_phase_retrieval'))]
    return out


METHODS = ('row', 'auto', 'dps', 'daps')

FFHQ_EVALUATOR = ['problem.evaluator._target_=lmaps_plugin.evaluation.metrics.ImageEvaluator',
                  '+problem.evaluator.lpips=false']


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f'_real_size_{name}', SCRIPTS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def lmaps_num_steps(config: str) -> int:
    """``method.num_steps`` of one of our LMAPS configs (the published N of the projection)."""
    from omegaconf import OmegaConf

    path = REPO / 'configs' / 'algorithm' / f'{config}.yaml'
    steps = OmegaConf.load(path).get('method', {}).get('num_steps')
    return int(steps) if steps is not None else lmaps_num_steps('lmaps')


def method_plan(method: str, case: Case, args) -> tuple[str, list[str], int, int]:
    """(algorithm config, step overrides, steps run, published steps)."""
    if method in ('row', 'auto'):
        config = case.row if method == 'row' else 'lmaps_auto'
        return config, [f'algorithm.method.num_steps={args.steps}'], args.steps, lmaps_num_steps(config)
    if method == 'dps':
        return 'dps', [f'algorithm.method.diffusion_scheduler_config.num_steps={args.steps}'], args.steps, DPS_STEPS
    return 'daps', [f'algorithm.method.annealing_scheduler_config.num_steps={args.daps_levels}',
                    f'algorithm.method.diffusion_scheduler_config.num_steps={args.daps_ode}',
                    f'algorithm.method.lgvd_config.num_steps={args.daps_langevin}'], args.daps_levels, DAPS_LEVELS


def project(setup_s: float, network_s: float, own_s: float, steps: int) -> float:
    """The projection rule: setup + N × (network + own) per step."""
    return setup_s + steps * (network_s + own_s)


# --------------------------------------------------------------------------------------------------
# Child processes (bare network timing; main.py launcher)
# --------------------------------------------------------------------------------------------------

def _checkout_on_path(ib_root: Path) -> None:
    os.environ['INVERSEBENCH_ROOT'] = str(ib_root)
    from lmaps_plugin.inversebench import import_upstream

    import_upstream('models.precond', 'scripts/real_size.py')


def bare_network(pretrain: str, ckpt: str, ib_root: Path, reps: int) -> dict:
    """Forward and forward+backward seconds of the published network at batch 1 (min over ``reps`` after a warm-up)."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    _checkout_on_path(ib_root)
    net = instantiate(OmegaConf.load(ib_root / 'configs' / 'pretrain' / f'{pretrain}.yaml').model)
    net.load_state_dict(torch.load(ckpt, map_location='cpu')['ema'])
    net.eval()
    x = torch.randn(1, net.img_channels, net.img_resolution, net.img_resolution)
    sigma = torch.tensor([2.0])

    def fwd():
        with torch.no_grad():
            net(x, sigma)

    def fwd_bwd():
        xg = x.clone().requires_grad_(True)
        out = net(xg, sigma)
        torch.autograd.grad(out, xg, torch.ones_like(out))

    result = {'parameters': sum(p.numel() for p in net.parameters()), 'threads': torch.get_num_threads()}
    for name, fn in (('forward_s', fwd), ('forward_backward_s', fwd_bwd)):
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        result[name] = min(times[1:])
    import resource
    result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _ffhq_shims() -> None:
    """FFHQ through stock main.py without torchvision: image_restore imported with the stand-ins; ImageFolder's
    constructor gets a tensor Resize (only called for images of another size)."""
    import types

    import torch.nn.functional as F
    from lmaps_plugin.inversebench import import_upstream

    import_upstream('inverse_problems.image_restore', 'scripts/real_size.py (FFHQ)')
    dataset = import_upstream('training.dataset', 'scripts/real_size.py (FFHQ)')

    class Resize:
        def __init__(self, size):
            self.size = tuple(size) if not isinstance(size, int) else (size, size)

        def __call__(self, img):
            return F.interpolate(img[None], size=self.size, mode='bilinear', antialias=True)[0]

    dataset.transforms = types.SimpleNamespace(Resize=Resize)


def child(out_json: Path, overrides: list[str], ffhq: bool) -> None:
    """Run ``main.py`` (cwd: the checkout) with ``overrides``, observing it; write what was seen to ``out_json``."""
    import resource
    import runpy
    import traceback
    import warnings

    import hydra.utils
    import torch

    sys.path.insert(0, os.getcwd())
    record = {'warnings': [], 'instantiate': [], 'inference': [], 'net_calls': [], 'net_ends': [], 'error': None}
    t_start = time.perf_counter()

    def showwarning(message, category, filename, lineno, file=None, line=None):
        text = f'{category.__name__}: {message}'
        if text not in record['warnings']:
            record['warnings'].append(text)
        sys.stderr.write(f'{filename}:{lineno}: {text}\n')

    warnings.showwarning = showwarning
    if ffhq:
        _ffhq_shims()
    original = hydra.utils.instantiate
    algo_box = {}
    depth = [0]

    def observed_instantiate(config, *a, **kw):
        if depth[0]:  # a factory instantiating inside main.py's call: main.py's call is what is timed
            return original(config, *a, **kw)
        target = str(config.get('_target_', '')) if hasattr(config, 'get') else ''
        t0 = time.perf_counter()
        depth[0] += 1
        try:
            obj = original(config, *a, **kw)
        finally:
            depth[0] -= 1
        record['instantiate'].append({'target': target, 'seconds': time.perf_counter() - t0})
        if isinstance(obj, torch.nn.Module) and hasattr(obj, 'img_resolution'):
            obj.register_forward_pre_hook(lambda m, inp: record['net_calls'].append(time.perf_counter()))
            obj.register_forward_hook(lambda m, inp, out: record['net_ends'].append(time.perf_counter()))
        if callable(getattr(obj, 'inference', None)):
            algo_box['algo'] = obj
            inference = obj.inference

            def timed_inference(*ia, **ikw):
                start = len(record['net_calls'])
                t0 = time.perf_counter()
                out = inference(*ia, **ikw)
                t1 = time.perf_counter()
                record['inference'].append({'start': t0, 'end': t1, 'first_call': start,
                                            'calls': len(record['net_calls']) - start,
                                            'dtype': str(out.dtype), 'device': str(out.device),
                                            'shape': list(out.shape), 'finite': bool(torch.isfinite(out).all())})
                return out

            obj.inference = timed_inference
        return obj

    hydra.utils.instantiate = observed_instantiate
    sys.argv = ['main.py', *overrides]
    try:
        runpy.run_path('main.py', run_name='__main__')
    except SystemExit as exc:
        if exc.code not in (None, 0):
            record['error'] = f'SystemExit({exc.code})'
    except BaseException:  # noqa: BLE001 - everything main.py raises is a finding
        record['error'] = traceback.format_exc()
        traceback.print_exc()
    finally:
        algo = algo_box.get('algo')
        stats = getattr(algo, 'last_run_stats', None)
        record['last_run_stats'] = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                                    for k, v in (stats or {}).items()}
        record['algo_repr'] = repr(algo) if algo is not None else None
        record['wall_s'] = time.perf_counter() - t_start
        record['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record['torch_threads'] = torch.get_num_threads()
        out_json.write_text(json.dumps(record, indent=1))
    if record['error']:
        sys.exit(1)


# --------------------------------------------------------------------------------------------------
# Parent: stages and the table
# --------------------------------------------------------------------------------------------------

def run_child(cmd: list[str], cwd: Path, log: Path, timeout: float, threads: int) -> tuple[int, float, float]:
    """Run ``cmd`` with stdout/stderr to ``log``; return (exit code, wall s, peak RSS MB of that child)."""
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads),
           'WANDB_MODE': 'disabled', 'HYDRA_FULL_ERROR': '1', 'PYTHONUNBUFFERED': '1'}
    t0 = time.perf_counter()
    with open(log, 'w') as fh:
        fh.write('$ cd ' + shlex.quote(str(cwd)) + ' && ' + ' '.join(shlex.quote(c) for c in cmd) + '\n\n')
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024


def ensure_data(work: Path, args) -> dict:
    manifest = work / 'data' / 'manifest.json'
    if not manifest.exists():
        load_script('make_inversebench_data').main(
            ['--out', str(work / 'data'), '--problems', 'scatter,blackhole,mri,ffhq', '--num-test', str(args.num_test),
             '--num-train', '0', '--mri-size', '320', '--mri-coils', '15', '--seed', '0'])
    return json.loads(manifest.read_text())


def ensure_checkpoints(work: Path, args) -> dict:
    manifest = work / 'ckpt' / 'checkpoints.json'
    have = json.loads(manifest.read_text()) if manifest.exists() else {}
    missing = [p for p in ('scatter', 'mri', 'blackhole', 'ffhq') if p not in have]
    if missing:
        load_script('make_inversebench_ckpt').main(
            ['--out', str(work / 'ckpt'), '--published', '--ib-root', str(args.ib_root),
             '--problems', ','.join(missing), '--seed', '0'])
    return json.loads(manifest.read_text())


def ensure_bare(work: Path, family: str, ckpts: dict, args) -> dict:
    path = work / 'bare' / f'{family}.json'
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    pretrain, ckpt_key = FAMILIES[family]
    cmd = [sys.executable, str(Path(__file__).resolve()), '--bare', pretrain, ckpts[ckpt_key]['path'],
           '--ib-root', str(args.ib_root), '--out-json', str(path)]
    rc, wall, rss = run_child(cmd, REPO, work / 'bare' / f'{family}.log', args.timeout, args.threads)
    if rc != 0:
        raise RuntimeError(f'bare network timing of {family} failed: see {work / "bare" / (family + ".log")}')
    return json.loads(path.read_text())


def main_py_overrides(case: Case, method: str, data: dict, ckpts: dict, run_dir: Path, args) -> tuple[list, int, int]:
    pretrain, ckpt_key = FAMILIES[case.family]
    config, steps_override, steps, published = method_plan(method, case, args)
    data_key = case.problem if case.family != 'ffhq' else 'ffhq256'
    overrides = [f'problem={case.problem}', f'algorithm={config}', f'pretrain={pretrain}',
                 f'problem.prior={ckpts[ckpt_key]["path"]}', *data['overrides'][data_key], *case.overrides,
                 *steps_override, f'problem.exp_dir={run_dir}', 'exp_name=real_size', 'wandb=false',
                 f'hydra.run.dir={run_dir / "hydra"}']
    if case.family == 'ffhq':
        overrides += FFHQ_EVALUATOR
    return overrides, steps, published


def analyse(record: dict, method: str, bare: dict, steps_run: int, published: int, args) -> dict:
    """Per-step network/own seconds, setup and the projection, from one child's record."""
    inf = record['inference'][0]
    calls = record['net_calls'][inf['first_call']:inf['first_call'] + inf['calls']]
    op_setup = sum(i['seconds'] for i in record['instantiate'][:1])  # main.py instantiates problem.model first
    if not calls:
        return {'error': 'no network call observed'}
    per_step_calls = max(1, len(calls) // steps_run)
    starts = [calls[i * per_step_calls] for i in range(steps_run)] + [inf['end']]
    step_walls = [b - a for a, b in zip(starts, starts[1:])]
    steady = sum(step_walls[1:]) / len(step_walls[1:]) if len(step_walls) > 1 else step_walls[0]
    setup = op_setup + (calls[0] - inf['start']) + max(0.0, step_walls[0] - steady)
    fwd = bare['forward_s']
    ends = record.get('net_ends', [])[inf['first_call']:inf['first_call'] + inf['calls']]
    source = 'bare'
    if len(ends) == len(calls) and len(calls) > 1:
        # the forward calls timed inside this run (same load as its solver work), mean over calls 2..: the
        # backward of DPS is scaled from the bare ratio
        durations = [e - c for c, e in zip(calls, ends)][1:]
        fwd, source = sum(durations) / len(durations), 'in-run'
    elif (record.get('last_run_stats') or {}).get('nfe') and 'network_seconds' in record['last_run_stats']:
        stats = record['last_run_stats']   # LMAPS's own counters (runs recorded before the hooks timed calls)
        fwd, source = stats['network_seconds'] / stats['nfe'], 'lmaps-counter'
    backward_factor = bare['forward_backward_s'] / bare['forward_s']
    if method == 'daps':
        own_level = steady - args.daps_ode * fwd
        network = DAPS_ODE * fwd
        own = DAPS_LANGEVIN * own_level / args.daps_langevin
        measured = {'own_per_langevin_s': own_level / args.daps_langevin}
    else:
        network = per_step_calls * fwd * (backward_factor if method == 'dps' else 1.0)
        own = steady - network
        measured = {}
    return {'calls_per_step': per_step_calls, 'step_walls_s': step_walls, 'wall_per_step_s': steady,
            'network_s': network, 'own_s': own, 'overhead': own / network if network > 0 else math.nan,
            'setup_s': setup, 'operator_setup_s': op_setup, 'published_steps': published,
            'projected_s': project(setup, network, own, published), 'forward_s': fwd, 'network_timing': source,
            **measured}


def solve_choice(record: dict, log_text: str) -> str:
    stats = record.get('last_run_stats') or {}
    lines = [l[l.index('LMAPS local MAP solve:'):].strip() for l in log_text.splitlines()
             if 'LMAPS local MAP solve:' in l]
    parts = []
    if 'exact_solve' in stats:
        parts.append(f"exact_solve={stats['exact_solve']}")
    for key in sorted(stats):
        if key.startswith(('cg_iterations', 'krylov_iterations')) or key in ('inner_solver', 'solver', 'lambda_max'):
            v = stats[key]
            parts.append(f'{key}={v:.3g}' if isinstance(v, float) else f'{key}={v}')
    if lines:
        parts.append('log: ' + lines[0][:160])
    return '; '.join(parts)


def run_case(case: Case, method: str, data: dict, ckpts: dict, bare: dict, work: Path, args) -> dict:
    run_dir = work / 'runs' / case.name / method
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides, steps, published = main_py_overrides(case, method, data, ckpts, run_dir, args)
    out_json = run_dir / 'child.json'
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', str(out_json),
           *(['--ffhq'] if case.family == 'ffhq' else []), '--', *overrides]
    log = run_dir / 'run.log'
    rc, wall, rss = run_child(cmd, args.ib_root, log, args.timeout, args.threads)
    record = json.loads(out_json.read_text()) if out_json.exists() else {}
    return row_from_record(case, method, record, rc, wall, rss, overrides, steps, published, bare, log, args)


def row_from_record(case, method, record, rc, wall, rss, overrides, steps, published, bare, log, args) -> dict:
    run_dir = log.parent
    row = {'case': case.name, 'method': method, 'algorithm': method_plan(method, case, args)[0], 'rc': rc,
           'wall_s': wall, 'peak_rss_mb': rss, 'steps_run': steps, 'log': str(log),
           'command': 'cd $INVERSEBENCH_ROOT && python main.py ' + ' '.join(shlex.quote(o) for o in overrides),
           'error': record.get('error') or (None if rc == 0 else f'exit {rc} (see {log})'),
           'warnings': record.get('warnings', []), 'last_run_stats': record.get('last_run_stats', {}),
           'algo': record.get('algo_repr')}
    metrics = run_dir / 'metrics.json'
    if record.get('inference'):
        row['output'] = {k: record['inference'][0][k] for k in ('dtype', 'device', 'shape', 'finite')}
        row.update(analyse(record, method, bare, steps, published, args))
    if method in ('row', 'auto'):
        row['solve'] = solve_choice(record, log.read_text(errors='replace'))
    row['metrics_written'] = any(run_dir.rglob('metrics.json')) or metrics.exists()
    return row


def fmt(v, spec='.3g'):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '–'
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return format(v, spec) if isinstance(v, float) else str(v)


def report(rows: list[dict], bare: dict) -> str:
    lines = ['| case | method | network s/step | own s/step | overhead | setup s | peak RSS MB | N | '
             'projected s/image | failures |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        fail = ''
        if r.get('error'):
            first = [l for l in str(r['error']).strip().splitlines() if l.strip()]
            fail = first[-1][:140] if first else 'failed'
        lines.append(f"| {r['case']} | {r['method']} ({r['algorithm']}) | {fmt(r.get('network_s'))} | "
                     f"{fmt(r.get('own_s'))} | {fmt(r.get('overhead'), '.2f')} | {fmt(r.get('setup_s'))} | "
                     f"{fmt(r.get('peak_rss_mb'), '.0f')} | {fmt(r.get('published_steps'))} | "
                     f"{fmt(r.get('projected_s'), '.0f')} | {fail} |")
    lines += ['', '| prior | parameters | forward s | forward+backward s | threads |', '|---|---|---|---|---|']
    for fam, b in bare.items():
        lines.append(f"| {FAMILIES[fam][0]} | {b['parameters']:,} | {b['forward_s']:.3f} | "
                     f"{b['forward_backward_s']:.3f} | {b['threads']} |")
    lines += ['', '| case | method | solve (LMAPS) | nfe / forward_calls / vjp_calls (S steps) | warnings |',
              '|---|---|---|---|---|']
    for r in rows:
        if r['method'] in ('row', 'auto'):
            stats = r.get('last_run_stats') or {}
            counts = ' / '.join(fmt(stats.get(k)) for k in ('nfe', 'forward_calls', 'vjp_calls'))
            warn = '; '.join(w[:160] for w in r.get('warnings', []) if 'LMAPS' in w or 'lmaps' in w)
            lines.append(f"| {r['case']} | {r['method']} | {r.get('solve', '')} | {counts} | {warn} |")
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--ib-root', type=Path, default=os.environ.get('INVERSEBENCH_ROOT'))
    p.add_argument('--work', type=Path, default=Path('/tmp/lmaps-real-size'))
    p.add_argument('--only', default='', help='comma-separated case names or families (default: all)')
    p.add_argument('--methods', default=','.join(METHODS), help=f'subset of {METHODS}')
    p.add_argument('--steps', type=int, default=3, help='LMAPS and DPS steps per run')
    p.add_argument('--daps-levels', type=int, default=2, help='DAPS annealing levels per run')
    p.add_argument('--daps-ode', type=int, default=1, help='DAPS ODE network calls per level')
    p.add_argument('--daps-langevin', type=int, default=5, help='DAPS Langevin steps per level')
    p.add_argument('--num-test', type=int, default=1)
    p.add_argument('--threads', type=int, default=1, help='torch threads of every child')
    p.add_argument('--reps', type=int, default=2, help='timed repetitions of the bare network')
    p.add_argument('--timeout', type=float, default=900.0, help='seconds per main.py run')
    p.add_argument('--rerun', action='store_true', help='rerun cases that already have a result')
    p.add_argument('--report-only', action='store_true',
                   help='run nothing: recompute every row from the runs in --work and write the report')
    # child modes
    p.add_argument('--child', type=Path, help=argparse.SUPPRESS)
    p.add_argument('--ffhq', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--bare', nargs=2, metavar=('PRETRAIN', 'CKPT'), help=argparse.SUPPRESS)
    p.add_argument('--out-json', type=Path, help=argparse.SUPPRESS)
    p.add_argument('overrides', nargs='*', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ib_root is None and args.child is None:
        p.error('--ib-root is required when INVERSEBENCH_ROOT is not set')
    if args.ib_root is not None:
        args.ib_root = Path(args.ib_root).resolve()
    if args.steps < 2 or args.daps_levels < 2:
        p.error('--steps and --daps-levels must be >= 2 (step 1 is kept apart as set-up)')
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.child is not None:
        child(args.child, args.overrides, args.ffhq)
        return []
    if args.bare is not None:
        result = bare_network(args.bare[0], args.bare[1], args.ib_root, args.reps)
        args.out_json.write_text(json.dumps(result, indent=1))
        return []
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ['INVERSEBENCH_ROOT'] = str(args.ib_root)
    data, ckpts = ensure_data(work, args), ensure_checkpoints(work, args)
    only = {s for s in args.only.split(',') if s}
    selected = [c for c in cases() if not only or c.name in only or c.family in only]
    methods = [m for m in args.methods.split(',') if m]
    results_path = work / 'results.json'
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    bare = {}
    for case in selected:
        bare[case.family] = bare.get(case.family) or ensure_bare(work, case.family, ckpts, args)
        for method in methods:
            key = f'{case.name}/{method}'
            if args.report_only:
                if key in results:
                    old = results[key]
                    run_dir = work / 'runs' / case.name / method
                    out_json = run_dir / 'child.json'
                    record = json.loads(out_json.read_text()) if out_json.exists() else {}
                    overrides, steps, published = main_py_overrides(case, method, data, ckpts, run_dir, args)
                    results[key] = row_from_record(case, method, record, old['rc'], old['wall_s'], old['peak_rss_mb'],
                                                   overrides, steps, published, bare[case.family],
                                                   run_dir / 'run.log', args)
                continue
            if key in results and not args.rerun:
                continue
            t0 = time.perf_counter()
            row = run_case(case, method, data, ckpts, bare[case.family], work, args)
            results[key] = row
            results_path = work / 'results.json'
            if results_path.exists():  # another call may have added rows meanwhile
                results = {**json.loads(results_path.read_text()), key: row}
            results_path.write_text(json.dumps(results, indent=1, default=str))
            print(f'{key}: rc={row["rc"]} wall {time.perf_counter() - t0:.0f} s, network {fmt(row.get("network_s"))} '
                  f'own {fmt(row.get("own_s"))} setup {fmt(row.get("setup_s"))} RSS {row["peak_rss_mb"]:.0f} MB '
                  f'projected {fmt(row.get("projected_s"), ".0f")} s' + (f'  FAILED: {row["error"][-300:]}'
                                                                         if row.get('error') else ''), flush=True)
    if args.report_only:
        results_path.write_text(json.dumps(results, indent=1, default=str))
    order = {c.name: i for i, c in enumerate(cases())}
    rows = sorted(results.values(), key=lambda r: (order.get(r['case'], 99), METHODS.index(r['method'])))
    for fam in FAMILIES:
        path = work / 'bare' / f'{fam}.json'
        if path.exists():
            bare.setdefault(fam, json.loads(path.read_text()))
    text = report(rows, bare)
    (work / 'report.md').write_text(text + '\n')
    print('\n' + text)
    return rows


if __name__ == '__main__':
    main()
