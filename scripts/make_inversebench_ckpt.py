#!/usr/bin/env python
"""Make small diffusion-prior checkpoints in InverseBench's checkpoint format, offline.

For each problem the network is InverseBench's own, built exactly as its ``main.py`` builds it:
``hydra.utils.instantiate(pretrain.model)`` from the checkout's ``configs/pretrain/<name>.yaml``,
with a few size overrides so it trains and samples on a CPU:

=========  ===================  ====================================================================
problem    ``pretrain=``        overrides (also needed on the ``main.py`` command line)
=========  ===================  ====================================================================
scatter    ``inv-scatter``      ``pretrain.model.model_channels=C`` (EDMPrecond + DhariwalUNet, 128²)
blackhole  ``blackhole``        ``pretrain.model.model_channels=C`` and, by default,
                                ``pretrain.model._target_=models.precond.EDMPrecond`` (SongUNet, 64²)
mri        ``mri-knee-mvue``    ``pretrain.model.model_channels=C pretrain.model.img_resolution=S``
                                (EDMPrecond + DhariwalUNet, 2 channels, S = ``--mri-size``)
=========  ===================  ====================================================================

``--published`` drops every override: the network is the checkout's ``configs/pretrain/<name>.yaml`` as
published (scatter 128², DhariwalUNet, model_channels 128; black hole 64², VPPrecond + SongUNet 128;
knee MRI 320², 2 channels, DhariwalUNet 128), plus ``ffhq`` (``pretrain=ffhq256``: VPPrecond + ADM 256²,
128 channels; random weights only, its training data is an image folder this script does not read).
The file then holds ``{'ema': state_dict}`` only (what ``main.py`` loads first), the checkpoints are
large (80-375 MB) and the weights random: for cost, memory and dtype/device checks, never for quality.

``C`` is ``--model-channels`` (default 16).  The black-hole prior swaps upstream's ``VPPrecond`` for
InverseBench's own ``EDMPrecond`` (same SongUNet; ``--blackhole-precond vp`` keeps VP): a VP net is an
ε-predictor, ``D(x) = x - σ F(x)``, so its denoising error grows like σ² until F is accurate to ~1/σ,
which minutes of CPU training do not reach (measured after 51 steps: denoiser MSE 21 at σ=10 and
533 at σ=50, against a data variance of 0.13; every sampler then diverged to values of ±40..140).
EDM's c_skip/c_out keep an under-trained denoiser bounded at high σ (MSE 0.14 at σ=10 for the
scattering prior after 81 steps).  The file is ``torch.save({'ema': state_dict, 'net':
state_dict})``, the layout ``main.py`` loads into ``instantiate(pretrain.model)`` when the file is not
a pickled module; point ``main.py`` at it with ``problem.prior=<file>``.  A JSON sidecar
(``<problem>.json``) lists the overrides, and ``checkpoints.json`` collects them for all problems.

Weights are random (``--train-steps 0``, enough for a smoke run of the plumbing) or trained for a few
minutes on the synthetic training images of ``make_inversebench_data.py`` (read through InverseBench's
own dataset classes, so normalisation matches what ``main.py`` feeds the net) with the denoising loss
that matches the preconditioning: EDM's (log-normal σ, weight (σ²+σ_d²)/(σ σ_d)²) for ``EDMPrecond``
and the VP loss (t ~ U[ε_t, 1], weight 1/σ(t)²) for ``VPPrecond``, Adam, and an EMA of the weights.

Needs an InverseBench checkout: ``--ib-root`` or ``INVERSEBENCH_ROOT``.

Example::

    python scripts/make_inversebench_ckpt.py --data /tmp/ibdata --out /tmp/ibckpt --train-seconds 180
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

PROBLEMS = ('scatter', 'blackhole', 'mri')
#: ``ffhq`` only with ``--published`` (random weights): the published ADM at 256².
ALL_PROBLEMS = PROBLEMS + ('ffhq',)


@dataclass(frozen=True)
class PriorSpec:
    """How one problem's prior is built and trained."""

    pretrain: str                       # name of configs/pretrain/<name>.yaml in the checkout
    train_dir: str                      # training LMDB, relative to the data folder
    dataset: str                        # class in InverseBench's training.dataset
    dataset_kwargs: dict = field(default_factory=dict)


def prior_specs(args) -> dict[str, PriorSpec]:
    """The three problems' specs, sized by the command-line arguments."""
    r, s = args.scatter_resolution, args.mri_size
    suffix = '' if r == 128 else f'-{r}'
    return {
        'scatter': PriorSpec('inv-scatter', f'inv-scatter-train{suffix}', 'LMDBData',
                             dict(resolution=r, raw_resolution=r, mean=0.5, std=0.25)),
        'blackhole': PriorSpec('blackhole', 'blackhole/train', 'BlackHole',
                               dict(resolution=args.blackhole_resolution,
                                    original_resolution=args.blackhole_resolution,
                                    random_flip=True, zoom_in_out=False)),
        'mri': PriorSpec('mri-knee-mvue', 'mri/train', 'MultiCoilMRILMDBData',
                         dict(image_size=[s, s], mvue_only=True)),
        'ffhq': PriorSpec('ffhq256', 'ffhq256', 'ImageFolder'),
    }


def model_overrides(problem: str, args) -> dict:
    """``pretrain.model`` keys to override for ``problem`` (the same ones ``main.py`` needs)."""
    if args.published:
        return {}
    overrides = {'model_channels': args.model_channels}
    if problem == 'blackhole' and args.blackhole_precond == 'edm':
        overrides['_target_'] = 'models.precond.EDMPrecond'
    if problem == 'mri':
        overrides['img_resolution'] = args.mri_size
    if problem == 'scatter' and args.scatter_resolution != 128:
        overrides['img_resolution'] = args.scatter_resolution
    return overrides


def hydra_override_strings(overrides: dict) -> list[str]:
    """``pretrain.model.<key>=<value>`` strings for ``main.py``."""
    return [f'pretrain.model.{k}={v}' for k, v in overrides.items()]


# --------------------------------------------------------------------------------------------------
# InverseBench access (lazy; piq/torchvision stand-ins come from lmaps_plugin.inversebench)
# --------------------------------------------------------------------------------------------------

def upstream(module: str):
    """Import an InverseBench module through lmaps-plugin's bridge."""
    from lmaps_plugin.inversebench import import_upstream

    return import_upstream(module, 'make_inversebench_ckpt.py')


def pretrain_config(ib_root: Path, name: str):
    """The checkout's ``configs/pretrain/<name>.yaml`` as an OmegaConf object."""
    from omegaconf import OmegaConf

    path = ib_root / 'configs' / 'pretrain' / f'{name}.yaml'
    if not path.is_file():
        raise FileNotFoundError(f'{path} not found: is {ib_root} an InverseBench checkout?')
    return OmegaConf.load(path)


def build_net(ib_root: Path, spec: PriorSpec, overrides: dict) -> torch.nn.Module:
    """``instantiate(pretrain.model)`` with ``overrides``, as InverseBench's ``main.py`` does."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    upstream('models.precond')  # makes the checkout importable for instantiate
    cfg = pretrain_config(ib_root, spec.pretrain)
    model_cfg = OmegaConf.merge(cfg.model, overrides)
    return instantiate(model_cfg)


def training_images(data_dir: Path, spec: PriorSpec) -> torch.utils.data.Dataset:
    """The training set, read by InverseBench's own dataset class."""
    root = data_dir / spec.train_dir
    if not root.exists():
        raise FileNotFoundError(f'training data {root} missing: run make_inversebench_data.py --out {data_dir}')
    cls = getattr(upstream('training.dataset'), spec.dataset)
    return cls(root=str(root), **spec.dataset_kwargs)


def as_image_batch(batch) -> torch.Tensor:
    """A dataset batch (dict with 'target', or a bare array as ``mvue_only`` MRI data) as float32."""
    images = batch['target'] if isinstance(batch, dict) else batch
    return torch.as_tensor(images).float()


# --------------------------------------------------------------------------------------------------
# Losses matched to the preconditioning
# --------------------------------------------------------------------------------------------------

def edm_loss(net, images: torch.Tensor, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """EDM denoising loss (Karras et al. 2022): log-normal σ, weight (σ²+σ_d²)/(σ σ_d)²."""
    sigma_data = float(getattr(net, 'sigma_data', 0.5))
    sigma = (torch.randn(images.shape[0], 1, 1, 1) * p_std + p_mean).exp()
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    denoised = net(images + torch.randn_like(images) * sigma, sigma.flatten())
    return (weight * (denoised - images) ** 2).mean()


def vp_loss(net, images: torch.Tensor) -> torch.Tensor:
    """VP denoising loss (Song et al. 2021 in EDM form): t ~ U[ε_t, 1], σ = σ_VP(t), weight 1/σ²."""
    t = 1 + torch.rand(images.shape[0], 1, 1, 1) * (net.epsilon_t - 1)
    sigma = net.sigma(t)
    denoised = net(images + torch.randn_like(images) * sigma, sigma.flatten())
    return ((denoised - images) ** 2 / sigma ** 2).mean()


def loss_for(net):
    """The loss matching ``net``'s preconditioning class."""
    name = type(net).__name__
    if name == 'VPPrecond':
        return vp_loss
    if name == 'EDMPrecond':
        return edm_loss
    raise ValueError(f'no training loss for preconditioning {name!r}; known: EDMPrecond, VPPrecond')


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    for pe, pn in zip(ema.parameters(), net.parameters()):
        pe.lerp_(pn, 1 - decay)


def train(net, dataset, steps: int, seconds: float, batch_size: int, lr: float, ema_decay: float,
          seed: int) -> tuple[torch.nn.Module, dict]:
    """Train ``net`` for ``steps`` Adam steps or ``seconds``, whichever ends first; return (ema, log)."""
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    log = {'steps': 0, 'seconds': 0.0, 'loss_first': None, 'loss_last': None}
    if steps <= 0:
        return ema, log
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    loss_fn = loss_for(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warmup = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    net.train()
    losses, start, step = [], time.perf_counter(), 0
    while step < steps and time.perf_counter() - start < seconds:
        for batch in loader:
            loss = loss_fn(net, as_image_batch(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            update_ema(ema, net, min(ema_decay, (1 + step) / (10 + step)))
            losses.append(loss.item())
            step += 1
            if step >= steps or time.perf_counter() - start >= seconds:
                break
    net.eval()
    k = max(1, min(20, len(losses) // 5))
    log.update(steps=step, seconds=round(time.perf_counter() - start, 1),
               loss_first=sum(losses[:k]) / k, loss_last=sum(losses[-k:]) / k)
    return ema, log


def make_checkpoint(problem: str, args, ib_root: Path) -> dict:
    """Build (and optionally train) one prior, save it, and return its manifest entry."""
    spec = prior_specs(args)[problem]
    overrides = model_overrides(problem, args)
    torch.manual_seed(args.seed)
    net = build_net(ib_root, spec, overrides)
    dataset = training_images(args.data, spec) if args.train_steps > 0 else None
    ema, log = train(net, dataset, args.train_steps, args.train_seconds, args.batch_size, args.lr,
                     args.ema_decay, args.seed)
    path = args.out / f'{problem}.pt'
    state = {'ema': ema.state_dict()} if args.published else {'ema': ema.state_dict(), 'net': net.state_dict()}
    torch.save(state, path)
    entry = {'path': str(path.resolve()), 'pretrain': spec.pretrain,
             'overrides': [f'pretrain={spec.pretrain}', f'problem.prior={path.resolve()}',
                           *hydra_override_strings(overrides)],
             'parameters': sum(p.numel() for p in net.parameters()), 'training': log,
             'published_architecture': bool(args.published)}
    (args.out / f'{problem}.json').write_text(json.dumps(entry, indent=2))
    return entry


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True, type=Path, help='output folder for <problem>.pt (created)')
    p.add_argument('--data', type=Path, help='folder written by make_inversebench_data.py (needed to train)')
    p.add_argument('--ib-root', type=Path, default=os.environ.get('INVERSEBENCH_ROOT'),
                   help='InverseBench checkout (default: $INVERSEBENCH_ROOT)')
    p.add_argument('--problems', default=','.join(PROBLEMS), help=f'comma-separated subset of {ALL_PROBLEMS}')
    p.add_argument('--published', action='store_true',
                   help="the published architecture of each configs/pretrain/<name>.yaml, no size overrides "
                        "(ignores --model-channels, --blackhole-precond and the resolutions)")
    p.add_argument('--model-channels', type=int, default=16)
    p.add_argument('--train-steps', type=int, default=0, help='Adam steps; 0 = random weights')
    p.add_argument('--train-seconds', type=float, default=math.inf, help='wall-clock cap per problem')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--ema-decay', type=float, default=0.995)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1, help='torch threads')
    p.add_argument('--scatter-resolution', type=int, default=128)
    p.add_argument('--blackhole-resolution', type=int, default=64)
    p.add_argument('--blackhole-precond', choices=('edm', 'vp'), default='edm',
                   help="preconditioning of the black-hole prior: 'edm' (default, robust when briefly "
                        "trained) or 'vp' (upstream's configs/pretrain/blackhole.yaml)")
    p.add_argument('--mri-size', type=int, default=64)
    args = p.parse_args(argv)
    args.problems = [s.strip() for s in args.problems.split(',') if s.strip()]
    bad = [s for s in args.problems if s not in ALL_PROBLEMS]
    if bad:
        p.error(f'--problems: unknown {bad}; valid: {", ".join(ALL_PROBLEMS)}')
    if 'ffhq' in args.problems and not (args.published and args.train_steps == 0):
        p.error('--problems ffhq: only the published architecture with random weights '
                '(--published --train-steps 0)')
    if args.ib_root is None:
        p.error('--ib-root is required when INVERSEBENCH_ROOT is not set')
    args.ib_root = Path(args.ib_root).resolve()
    if args.train_steps > 0 and args.data is None:
        p.error('--data is required with --train-steps > 0')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ['INVERSEBENCH_ROOT'] = str(args.ib_root)  # the bridge imports from this checkout
    args.out.mkdir(parents=True, exist_ok=True)
    entries = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for problem in args.problems:
            entries[problem] = make_checkpoint(problem, args, args.ib_root)
            t = entries[problem]['training']
            print(f'[make_inversebench_ckpt] {problem}: {entries[problem]["parameters"]} params, '
                  f'{t["steps"]} steps in {t["seconds"]} s, loss {t["loss_first"]} -> {t["loss_last"]}')
    finally:
        torch.set_num_threads(previous_threads)
    manifest = args.out / 'checkpoints.json'
    old = json.loads(manifest.read_text()) if manifest.exists() else {}
    manifest.write_text(json.dumps({**old, **entries}, indent=2))
    return entries


if __name__ == '__main__':
    main()
