"""Built-in test sets, all offline: procedural images and pictures that scikit-image ships.

``builtin_dataset(name, ...)`` returns an :class:`ImageDataset` whose items are ``{'target': (C, H, W) in [-1, 1]}``
and whose ``id_list`` names each item (the contract of InverseBench's ``main.py``).

=========  ========  ==========================================================  =========================
name       channels  content                                                     images per split
=========  ========  ==========================================================  =========================
cells      1         procedural fluorescence-like cells                          unlimited (seeded)
rings      1         procedural black-hole-like crescents                        unlimited (seeded)
phantoms   1         random Shepp–Logan-like head phantoms                       unlimited (seeded)
faces      1         scikit-image ``lfw_subset`` faces (25×25, resized)          train 80, val 8, test 12
photos     3         crops of scikit-image photographs (test: own pictures)      unlimited (seeded)
=========  ========  ==========================================================  =========================

Splits (``split=``): ``train`` is what priors are fitted on, ``val`` what ``lmaps-bench tune`` tunes
hyperparameters on, ``test`` what runs and tables report (the default). They never share an image: procedural
images and photo crops are drawn from generators seeded by ``(name, split, seed, id)`` (test photos come from
pictures no other split uses); faces split the 100 faces 80/8/12 (train: faces 0–79, val: faces 92–99, test: faces 80–91).
Building 16 images at 64×64 on one core takes 0.02–0.2 s (photos: 0.7 s the first time, to decode the pictures).
"""
from __future__ import annotations

from typing import Iterable

from .base import SPLITS, ImageDataset, build_images, convert_channels, image_generator, parse_id_list
from . import packaged, procedural

NATIVE_CHANNELS = {"cells": 1, "rings": 1, "phantoms": 1, "faces": 1, "photos": 3}
BUILTIN_DATASETS = tuple(NATIVE_CHANNELS)


def builtin_dataset(name: str, resolution: int = 64, num_images: int | None = 16, channels: int | None = None,
                    seed: int = 0, split: str = "test",
                    id_list: str | Iterable[int] | None = None) -> ImageDataset:
    """Build a built-in image set.

    Args:
        name: one of ``BUILTIN_DATASETS`` (cells, rings, phantoms, faces, photos).
        resolution: square image side in pixels.
        num_images: number of images, ids ``0 .. num_images-1`` (ignored when ``id_list`` is given).
        channels: 1 or 3; default the dataset's own (gray images are replicated to RGB; RGB becomes BT.601 luma).
        seed: seed of the procedural generators and photo crops (faces ignore it).
        split: ``'test'`` (reported), ``'val'`` (for tuning; never a test image) or ``'train'``.
        id_list: explicit image ids, a list or a string such as ``'0-7,10'`` (for sharding by id ranges).
    """
    if name not in NATIVE_CHANNELS:
        raise ValueError(f"unknown built-in dataset {name!r}; valid names: {', '.join(BUILTIN_DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
    channels = NATIVE_CHANNELS[name] if channels is None else channels
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    ids = parse_id_list(id_list, num_images)

    if name in procedural.GENERATORS:
        draw = procedural.GENERATORS[name]

        def make(i):
            return draw(image_generator(name, split, seed, i), resolution)
    elif name == "faces":
        def make(i):
            return packaged.face(split, i, resolution)
    else:
        def make(i):
            return packaged.photo(split, i, resolution, image_generator(name, split, seed, i))
    return ImageDataset(name, split, build_images(make, ids, channels), ids)


__all__ = ["BUILTIN_DATASETS", "ImageDataset", "builtin_dataset", "convert_channels", "parse_id_list"]
