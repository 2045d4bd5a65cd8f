#!/usr/bin/env python
"""Generate small, synthetic test data in InverseBench's on-disk formats, offline.

Three problems, each in the layout its stock InverseBench dataset/operator class reads
(no InverseBench import is needed to *write* the data):

* ``inv-scatter-test/``, ``inv-scatter-train/`` -- linear inverse scattering.  An LMDB read by
  ``training.dataset.LMDBData``: keys ``b'0'``, ``b'1'``, ...; values float32 bytes of one
  ``(1, R, R)`` permittivity-contrast image in ``[0, 1]`` (the dataset maps it to ``[-1, 1]`` with
  ``mean=0.5, std=0.25``).  Images: ``lmaps_plugin.data`` procedural ``cells``.
  ``--scatter-resolutions 128,64`` also writes ``inv-scatter-test-64/`` etc.
* ``blackhole/measure/{obs.uvfits,gt.fits}`` -- what ``inverse_problems.blackhole.BlackHoleImaging``
  loads at construction: an ehtim observation of a reference ring image with an EHT 2017-like array
  (the public EHT 2017 station table is built in, ehtim's wheel ships none; ``--eht-array`` takes
  another), observed with ``ttype='direct'``
  (pynfft is not installable here).  ``blackhole/test/`` and ``blackhole/train/`` are LMDBs read by
  ``training.dataset.BlackHole``: keys ``b'0'``...; values float64 bytes of one ``(1, R, R)``
  crescent image (``lmaps_plugin.data`` ``rings`` in ``[0, 1]``; the dataset divides by the max and
  maps to ``[-1, 1]``).  The field of view (``--blackhole-fov-uas``, default 128 µas) makes the rings
  38-64 µas across, like M87*.
* ``mri/test/{mvue,s_maps,kspace}/`` -- three LMDBs read by ``training.dataset.MultiCoilMRILMDBData``:
  keys ``b'0'``...; complex64 bytes of shapes ``(1, H, W)``, ``(coils, H, W)`` and ``(coils, H, W)``.
  Images: ``lmaps_plugin.data`` ``phantoms`` (magnitude) times a random linear phase.
  Coil maps are sigpy birdcage maps normalised to unit root-sum-of-squares; k-space is the centred
  orthonormal 2-D FFT of ``maps * image`` (the convention of ``MultiCoilMRI.fft`` and ``sigpy.fft``),
  so the MVUE of the fully sampled k-space equals the image.  ``mri/train/mvue/`` holds more images for
  training a prior (``mvue_only=True`` reads only that LMDB).  ``mri/mask_equispaced_{R}x.npy`` is a
  1-D line mask usable as ``problem.model.mask_fname`` (their operator also draws its own masks).
  ``--mri-size 320 --mri-coils 15`` is the published knee size.
* ``ffhq256/{00000,00001,...}.png`` (``--problems ffhq``, not in the default set) -- what
  ``training.dataset.ImageFolder`` reads for the ``ffhq256_{sr,deblur,inpaint,pr}`` problems: RGB
  uint8 PNGs of ``--ffhq-resolution`` (default 256) named by zero-padded id.  Images:
  ``lmaps_plugin.data`` ``faces`` (upsampled, so smooth: fine for timing, not for quality).

A ``manifest.json`` in ``--out`` lists every path, shape and the Hydra overrides that point stock
``main.py`` at the data; a later call with other ``--problems`` adds to it.  Everything is seeded (the same ``--seed`` gives the same files); the default
sizes take about half a minute on one core, most of it drawing the 128×128 training cells.
Training images (``--num-train``) are only needed for ``make_inversebench_ckpt.py --train-steps > 0``.

Example::

    python scripts/make_inversebench_data.py --out /tmp/ibdata
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

#: The problems written by default, in the order they are generated.
PROBLEMS = ('scatter', 'blackhole', 'mri')
#: Every problem this script knows (``ffhq`` only on request: its PNGs are only used at the real size).
ALL_PROBLEMS = PROBLEMS + ('ffhq',)

#: Stable integers per split, for seeding numpy generators.
SPLIT_IDS = {'test': 0, 'train': 1}

#: M87* pointing and epoch used for the synthetic EHT observation (public values).
M87_RA_HOURS = 12.513728
M87_DEC_DEG = 12.391123
EHT2017_MJD = 57854
EHT_FREQ_HZ = 230e9

#: The EHT 2017 array (public station table: positions in geocentric metres, SEFDs in Jy), in ehtim's
#: ``array.load_txt`` format.  ehtim's wheel ships no array files, so the table lives here.
EHT2017_ARRAY = """\
#NAME X             Y             Z             SEFDR SEFDL FR_PAR_ANGLE FR_ELEV_ANGLE FR_OFFSET[d] DR_RE   DR_IM   DL_RE    DL_IM
PV    5088967.9000 -301681.6000   3825015.8000  1400  1400  1            -1            0            0       0       0        0
SMT   -1828796.200 -5054406.800   3427865.200   5000  5000  1             1            0            0       0       0        0
SMA   -5464523.400 -2493147.080   2150611.750   4900  4900  1            -1            45           0       0       0        0
LMT   -768713.9637 -5988541.7982  2063275.9472  600   600   1            -1            0            0       0       0        0
ALMA  2225061.164  -5440057.37   -2481681.15    90    90    1             0            0            0       0       0        0
SPT   0.01          0.01         -6359609.7     5000  5000  1             0            0            0       0       0        0
APEX  2225039.53   -5441197.63   -2479303.36    3500  3500  1             1            0            0       0       0        0
JCMT  -5464584.68  -2493001.17    2150653.98    6000  6000  1             0            0            0       0       0        0
"""


# --------------------------------------------------------------------------------------------------
# LMDB writing
# --------------------------------------------------------------------------------------------------

def write_lmdb(path: Path, arrays, dtype) -> int:
    """Write ``arrays`` to a fresh LMDB at ``path`` as keys ``b'0'``, ``b'1'``, ... of raw bytes.

    Every array is cast to ``dtype`` and stored C-contiguous, exactly as InverseBench's LMDB datasets
    read them back with ``np.frombuffer(..., dtype).reshape(...)``.  Returns the number of entries.
    """
    import lmdb

    arrays = [np.ascontiguousarray(a, dtype=dtype) for a in arrays]
    if not arrays:
        raise ValueError(f'write_lmdb({path}): no arrays to write')
    path.mkdir(parents=True, exist_ok=True)
    nbytes = sum(a.nbytes for a in arrays)
    env = lmdb.open(str(path), map_size=max(1 << 24, 4 * nbytes), subdir=True)
    with env.begin(write=True) as txn:
        for i, a in enumerate(arrays):
            txn.put(str(i).encode('utf-8'), a.tobytes())
    env.sync()
    env.close()
    return len(arrays)


# --------------------------------------------------------------------------------------------------
# Images: the procedural sets of ``lmaps_plugin.data`` (cells, rings, phantoms), mapped to each
# problem's physical range
# --------------------------------------------------------------------------------------------------

def procedural_images(name: str, resolution: int, count: int, split: str, seed: int) -> np.ndarray:
    """``count`` images of ``lmaps_plugin.data.builtin_dataset(name)`` as ``(N, 1, R, R)`` in ``[0, 1]``."""
    import torch
    from lmaps_plugin.data import builtin_dataset

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the generators are small; extra threads only contend (10x slower on 2 cores)
    try:
        images = builtin_dataset(name, resolution=resolution, num_images=count, seed=seed, split=split).images
    finally:
        torch.set_num_threads(previous)
    return ((images.double().numpy() + 1.0) / 2.0).clip(0.0, 1.0)


def smooth_phase(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random smooth phase map ``a y + b x + c`` (radians) on a ``size``² grid in ``[-1, 1]²``."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(c, c, indexing='ij')
    return rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx + rng.uniform(-math.pi, math.pi)


def _nonempty_splits(num_test: int, num_train: int):
    """``(split, count)`` pairs to write; a count of 0 skips that split (test sets must not be empty)."""
    if num_test < 1 or num_train < 0:
        raise ValueError(f'need --num-test >= 1 and --num-train >= 0, got {num_test} and {num_train}')
    return [(split, n) for split, n in (('test', num_test), ('train', num_train)) if n > 0]


# --------------------------------------------------------------------------------------------------
# Inverse scattering
# --------------------------------------------------------------------------------------------------

def make_scatter(out: Path, num_test: int, num_train: int, resolutions, seed: int) -> dict:
    """Write ``inv-scatter-test[-R]`` and ``inv-scatter-train[-R]`` LMDBs; return manifest entries."""
    entries = {}
    for res in resolutions:
        suffix = '' if res == 128 else f'-{res}'
        for split, n in _nonempty_splits(num_test, num_train):
            path = out / f'inv-scatter-{split}{suffix}'
            write_lmdb(path, procedural_images('cells', res, n, split, seed), np.float32)
            entries[f'scatter_{split}{suffix}'] = {'path': str(path), 'count': n, 'dtype': 'float32',
                                                   'shape': [1, res, res], 'range': [0.0, 1.0]}
    return entries


# --------------------------------------------------------------------------------------------------
# Black hole
# --------------------------------------------------------------------------------------------------

def _eht_image(img: np.ndarray, fov_uas: float, total_flux_jy: float):
    """An ehtim ``Image`` of ``img`` (``(R, R)``) at M87's position, scaled to ``total_flux_jy``."""
    import ehtim as eh

    res = img.shape[-1]
    arr = np.asarray(img, dtype=np.float64)
    arr = arr / arr.sum() * total_flux_jy
    return eh.image.Image(arr, fov_uas * eh.RADPERUAS / res, M87_RA_HOURS, M87_DEC_DEG,
                          rf=EHT_FREQ_HZ, source='M87', mjd=EHT2017_MJD)


def make_blackhole(out: Path, num_test: int, num_train: int, resolution: int, fov_uas: float,
                   array_file: Path | None, tadv_s: float, seed: int) -> dict:
    """Write ``blackhole/measure/{obs.uvfits,gt.fits,array.txt}`` and the ring-image LMDBs."""
    import ehtim as eh

    root = out / 'blackhole'
    measure = root / 'measure'
    measure.mkdir(parents=True, exist_ok=True)
    if array_file is None:
        array_file = measure / 'array.txt'
        array_file.write_text(EHT2017_ARRAY)
    elif not array_file.is_file():
        raise FileNotFoundError(f'--eht-array {array_file} does not exist; pass an ehtim station table '
                                '(ehtim.array.load_txt format) or omit it for the built-in EHT 2017 array')

    # reference image of the observation set-up: a ring from a seed no test/train image uses
    ref = procedural_images('rings', resolution, 1, 'train', seed + 7919)[0, 0]
    im = _eht_image(ref, fov_uas, total_flux_jy=0.6)
    array = eh.array.load_txt(str(array_file))
    obs = im.observe(array, tint=60, tadv=tadv_s, tstart=0, tstop=24, bw=2e9, mjd=EHT2017_MJD,
                     ttype='direct', add_th_noise=True, ampcal=True, phasecal=True, seed=seed + 1,
                     verbose=False)
    obs.save_uvfits(str(measure / 'obs.uvfits'))
    im.save_fits(str(measure / 'gt.fits'))

    entries = {'blackhole_measure': {'path': str(measure), 'num_vis': int(len(obs.data)),
                                     'stations': sorted(set(obs.data['t1']) | set(obs.data['t2'])),
                                     'fov_uas': fov_uas, 'resolution': resolution}}
    for split, n in _nonempty_splits(num_test, num_train):
        path = root / split
        write_lmdb(path, procedural_images('rings', resolution, n, split, seed), np.float64)
        entries[f'blackhole_{split}'] = {'path': str(path), 'count': n, 'dtype': 'float64',
                                         'shape': [1, resolution, resolution]}
    return entries


# --------------------------------------------------------------------------------------------------
# Multi-coil MRI
# --------------------------------------------------------------------------------------------------

def coil_maps(num_coils: int, size: int) -> np.ndarray:
    """Birdcage coil sensitivities from sigpy, ``(coils, H, W)`` complex64, unit root-sum-of-squares."""
    import sigpy.mri as mr

    maps = mr.birdcage_maps((num_coils, size, size), r=1.5)
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))).astype(np.complex64)


def fully_sampled_kspace(image: np.ndarray, maps: np.ndarray, noise_std: float,
                         rng: np.random.Generator) -> np.ndarray:
    """Centred orthonormal FFT of ``maps * image`` plus complex Gaussian noise, ``(coils, H, W)``."""
    import sigpy as sp

    ksp = sp.fft(maps * image, axes=(-2, -1))
    if noise_std > 0:
        ksp = ksp + noise_std * (rng.standard_normal(ksp.shape) + 1j * rng.standard_normal(ksp.shape))
    return ksp.astype(np.complex64)


def mvue(kspace: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Coil-combined minimum-variance estimate ``sum conj(S) F^-1 k / sqrt(sum |S|^2)``, ``(1, H, W)``."""
    import sigpy as sp

    img = (sp.ifft(kspace, axes=(-2, -1)) * np.conj(maps)).sum(0) / np.sqrt((np.abs(maps) ** 2).sum(0))
    return img[None].astype(np.complex64)


def equispaced_line_mask(total_lines: int, acceleration: int, acs_fraction: float = 0.08) -> np.ndarray:
    """1-D phase-encode mask (float 0/1, length ``total_lines``): centre ACS block plus every R-th line."""
    if acceleration < 1:
        raise ValueError(f'acceleration must be >= 1, got {acceleration}')
    mask = np.zeros(total_lines)
    mask[::acceleration] = 1
    acs = int(math.floor(acs_fraction * total_lines))
    mask[(total_lines - acs) // 2:(total_lines + acs) // 2] = 1
    return mask


def make_mri(out: Path, num_test: int, num_train: int, size: int, num_coils: int,
             noise_std: float, seed: int) -> dict:
    """Write ``mri/test/{mvue,s_maps,kspace}``, ``mri/train/mvue`` and 1-D masks."""
    root = out / 'mri'
    maps = coil_maps(num_coils, size)
    entries = {}
    for split, n in _nonempty_splits(num_test, num_train):
        rng = np.random.default_rng([seed, SPLIT_IDS[split]])
        magnitudes = procedural_images('phantoms', size, n, split, seed)
        images = [(m * np.exp(1j * smooth_phase(rng, size))).astype(np.complex64) for m in magnitudes]
        kspaces = [fully_sampled_kspace(im, maps, noise_std, rng) for im in images]
        write_lmdb(root / split / 'mvue', [mvue(k, maps) for k in kspaces], np.complex64)
        if split == 'test':
            write_lmdb(root / split / 's_maps', [maps] * n, np.complex64)
            write_lmdb(root / split / 'kspace', kspaces, np.complex64)
        entries[f'mri_{split}'] = {'path': str(root / split), 'count': n, 'dtype': 'complex64',
                                   'image_size': [size, size], 'coils': num_coils,
                                   'kspace_noise_std': noise_std}
    for r in (4, 8):
        np.save(root / f'mask_equispaced_{r}x.npy', equispaced_line_mask(size, r))
    entries['mri_masks'] = {'paths': [str(root / f'mask_equispaced_{r}x.npy') for r in (4, 8)]}
    return entries


# --------------------------------------------------------------------------------------------------
# FFHQ-style image folder
# --------------------------------------------------------------------------------------------------

def ffhq_images(resolution: int, count: int, seed: int) -> np.ndarray:
    """``count`` RGB face images as ``(N, H, W, 3)`` uint8 (``lmaps_plugin.data`` ``faces``)."""
    import torch
    from lmaps_plugin.data import builtin_dataset

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = builtin_dataset('faces', resolution=resolution, channels=3, num_images=count, seed=seed).images
    finally:
        torch.set_num_threads(previous)
    rgb = ((images.double().numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return rgb.transpose(0, 2, 3, 1)


def make_ffhq(out: Path, num_test: int, resolution: int, seed: int) -> dict:
    """Write ``ffhq256/<id:05d>.png`` as ``training.dataset.ImageFolder`` reads them (``np.array(Image.open)``,
    HWC uint8, mapped to [-1, 1] by ``x / 127.5 - 1``)."""
    from PIL import Image

    if num_test < 1:
        raise ValueError(f'need --num-test >= 1, got {num_test}')
    root = out / 'ffhq256'
    root.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(ffhq_images(resolution, num_test, seed)):
        Image.fromarray(img).save(root / f'{i:05d}.png')
    return {'ffhq_test': {'path': str(root), 'count': num_test, 'dtype': 'uint8',
                          'shape': [resolution, resolution, 3], 'format': 'png'}}


# --------------------------------------------------------------------------------------------------
# Hydra overrides that point stock main.py at this data
# --------------------------------------------------------------------------------------------------

def hydra_overrides(out: Path, args) -> dict:
    """Per-problem ``main.py`` overrides that point at this data (checkpoints: make_inversebench_ckpt.py).

    Keyed by lmaps-plugin's ``*-fixed`` problem configs, which run without piq/torchvision; the same
    overrides work with the stock names (``inv-scatter``, ``blackhole``, ``multi-coil-mri-knee-lmdb``)
    where piq and torchvision are installed, plus ``+problem.model.svd=false`` for ``inv-scatter`` (``++`` adds or overrides a key).
    """
    out = out.resolve()
    return {
        'inv-scatter-fixed': [f'problem.data.root={out / "inv-scatter-test"}', 'problem.data.id_list=null'],
        'blackhole-fixed': [f'problem.model.root={out / "blackhole" / "measure"}', '++problem.model.ttype=direct',
                            f'problem.model.imsize={args.blackhole_resolution}',
                            f'problem.data.root={out / "blackhole" / "test"}', 'problem.data.id_list=null',
                            f'problem.data.resolution={args.blackhole_resolution}',
                            f'problem.data.original_resolution={args.blackhole_resolution}'],
        'multi-coil-mri-knee-lmdb-fixed': [f'problem.data.root={out / "mri" / "test"}',
                                           f'problem.data.image_size=[{args.mri_size},{args.mri_size}]',
                                           f'problem.model.total_lines={args.mri_size}'],
        # every ffhq256_{sr,deblur,inpaint,pr} problem (stock configs; ImageFolder needs torchvision's Resize)
        'ffhq256': [f'problem.data.root={out / "ffhq256"}', f'problem.data.id_list=0-{max(args.num_test - 1, 0)}',
                    f'problem.data.resolution={args.ffhq_resolution}'],
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True, type=Path, help='output folder (created)')
    p.add_argument('--problems', default=','.join(PROBLEMS),
                   help=f'comma-separated subset of {",".join(ALL_PROBLEMS)} (default {",".join(PROBLEMS)})')
    p.add_argument('--num-test', type=int, default=4, help='test samples per problem')
    p.add_argument('--num-train', type=int, default=128, help='training images per problem (for the prior)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--scatter-resolutions', default='128', help='comma-separated, e.g. 128,64')
    p.add_argument('--blackhole-resolution', type=int, default=64)
    p.add_argument('--blackhole-fov-uas', type=float, default=128.0, help='field of view in µas')
    p.add_argument('--eht-array', type=Path, default=None,
                   help='ehtim station table (default: the built-in EHT 2017 array, written to '
                        'blackhole/measure/array.txt)')
    p.add_argument('--eht-tadv', type=float, default=600.0, help='seconds between EHT scans')
    p.add_argument('--mri-size', type=int, default=64, help='MRI image side (also total_lines)')
    p.add_argument('--mri-coils', type=int, default=8)
    p.add_argument('--ffhq-resolution', type=int, default=256, help='side of the FFHQ-style PNGs')
    p.add_argument('--mri-kspace-noise', type=float, default=0.0,
                   help='std of complex Gaussian noise added to the stored k-space ("raw" data)')
    args = p.parse_args(argv)
    args.problems = [s.strip() for s in args.problems.split(',') if s.strip()]
    bad = [s for s in args.problems if s not in ALL_PROBLEMS]
    if bad:
        p.error(f'--problems: unknown {bad}; valid: {", ".join(ALL_PROBLEMS)}')
    args.scatter_resolutions = [int(r) for r in args.scatter_resolutions.split(',')]
    return args


#: the problem config whose ``main.py`` overrides :func:`hydra_overrides` writes for each problem
PROBLEM_CONFIGS = {'scatter': 'inv-scatter-fixed', 'blackhole': 'blackhole-fixed',
                   'mri': 'multi-coil-mri-knee-lmdb-fixed', 'ffhq': 'ffhq256'}


def merge_manifest(old: dict, new: dict, problems) -> dict:
    """``new`` (the problems just written) on top of ``old`` (an earlier call into the same folder): entries and
    timings are merged; the overrides of problems not written now are kept as they were."""
    merged = {**old, **{k: v for k, v in new.items() if k not in ('entries', 'timings_s', 'overrides')}}
    merged['entries'] = {**old.get('entries', {}), **new['entries']}
    merged['timings_s'] = {**old.get('timings_s', {}), **new['timings_s']}
    overrides = dict(old.get('overrides', {}))
    for key, value in new['overrides'].items():
        if key not in overrides or key in {PROBLEM_CONFIGS[p] for p in problems}:
            overrides[key] = value
    merged['overrides'] = overrides
    return merged


def main(argv=None) -> dict:
    """Write the requested problems' data into ``--out`` and merge ``manifest.json`` with what an earlier call
    wrote there (so ``--problems blackhole,mri`` then ``--problems scatter`` leaves one manifest of all three)."""
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = {'seed': args.seed, 'entries': {}, 'timings_s': {}}
    makers = {
        'scatter': lambda: make_scatter(out, args.num_test, args.num_train, args.scatter_resolutions, args.seed),
        'blackhole': lambda: make_blackhole(out, args.num_test, args.num_train, args.blackhole_resolution,
                                            args.blackhole_fov_uas, args.eht_array, args.eht_tadv, args.seed),
        'mri': lambda: make_mri(out, args.num_test, args.num_train, args.mri_size, args.mri_coils,
                                args.mri_kspace_noise, args.seed),
        'ffhq': lambda: make_ffhq(out, args.num_test, args.ffhq_resolution, args.seed),
    }
    for name in args.problems:
        t0 = time.perf_counter()
        manifest['entries'].update(makers[name]())
        manifest['timings_s'][name] = round(time.perf_counter() - t0, 2)
        print(f'[make_inversebench_data] {name}: {manifest["timings_s"][name]} s')
    manifest['overrides'] = hydra_overrides(out, args)
    path = out / 'manifest.json'
    if path.is_file():
        manifest = merge_manifest(json.loads(path.read_text()), manifest, args.problems)
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    return manifest


if __name__ == '__main__':
    main()
