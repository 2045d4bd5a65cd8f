"""The dataset container shared by all built-in test sets, and the small helpers they use.

Images are tensors of shape (C, H, W) in [-1, 1] (InverseBench's normalized image space). Every image is a pure
function of ``(dataset name, split, seed, image id, resolution)``: id ``k`` is the same image whether a run asks for
ids 0–15 or only 8–15, which is what lets a benchmark shard a test set by id ranges.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Iterable, Sequence

import torch
from torch.utils.data import Dataset

#: ``train`` fits priors, ``val`` tunes hyperparameters (lmaps-bench tune), ``test`` reports; never shared images
SPLITS = ("train", "val", "test")

# ITU-R BT.601 luma weights; they sum to 1, so they map [-1, 1] RGB to [-1, 1] gray.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def image_generator(name: str, split: str, seed: int, image_id: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by a stable hash of ``(name, split, seed, image_id)``.

    Different splits (or seeds) draw from unrelated streams, so train and test never share a procedural image.
    """
    digest = hashlib.sha256(f"{name}|{split}|{int(seed)}|{int(image_id)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def parse_id_list(id_list: str | int | Iterable[int] | None, num_images: int | None) -> list[int]:
    """Image ids to build: ``id_list`` wins when given (a list of ints, or a string such as ``'0-7,10,12-13'``
    with inclusive ranges, as InverseBench's configs write it); otherwise ``range(num_images)``."""
    if id_list is None:
        if num_images is None or int(num_images) < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        return list(range(int(num_images)))
    if isinstance(id_list, int):
        ids = [id_list]
    elif isinstance(id_list, str):
        ids = []
        for part in filter(None, (p.strip() for p in id_list.split(","))):
            lo, sep, hi = part.partition("-")
            try:
                ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
            except ValueError:
                raise ValueError(f"id_list entry {part!r} is not an integer or an inclusive range like '0-7'") from None
    else:
        ids = [int(i) for i in id_list]
    if not ids:
        raise ValueError(f"id_list {id_list!r} names no images")
    if any(i < 0 for i in ids):
        raise ValueError(f"id_list must hold non-negative ids, got {id_list!r}")
    return ids


def convert_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a (C, H, W) image in [-1, 1] to 1 (luma) or 3 (gray replicated) channels."""
    have = image.shape[0]
    if channels == have:
        return image
    if have == 1 and channels == 3:
        return image.expand(3, -1, -1).clone()
    if have == 3 and channels == 1:
        return torch.einsum("c,chw->hw", _LUMA.to(image), image).unsqueeze(0)
    raise ValueError(f"channels must be 1 or 3 (this dataset has {have}), got {channels}")


class ImageDataset(Dataset):
    """A finite, fully materialised image set: ``ds[i] == {'target': images[i]}``; ``ds.id_list[i]`` is the
    image id of item ``i`` (InverseBench's ``main.py`` names result files by it).

    Attributes: ``name``, ``split``, ``resolution``, ``channels``, ``id_list``, ``images`` (N, C, H, W).
    """

    def __init__(self, name: str, split: str, images: torch.Tensor, id_list: Sequence[int]):
        if images.ndim != 4 or images.shape[0] != len(id_list):
            raise ValueError(f"images must be (N, C, H, W) with N == len(id_list); got {tuple(images.shape)} "
                             f"and {len(id_list)} ids")
        self.name = name
        self.split = split
        self.images = images
        self.id_list = list(id_list)
        self.channels = images.shape[1]
        self.resolution = images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"target": self.images[index]}

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"channels={self.channels}, resolution={self.resolution})")


@contextlib.contextmanager
def single_threaded():
    """Run torch on one intra-op thread for the block (restored afterwards).

    Image generators issue many tiny ops; on a busy machine, intra-op thread synchronisation made them 10–15×
    slower with 2 threads than with 1 (measured: 115 vs 7.5 ms per 32×32 cells image at load 8 on 2 cores).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_images(make_image: Callable[[int], torch.Tensor], ids: Sequence[int], channels: int) -> torch.Tensor:
    """Stack ``make_image(id)`` for each id (each (C, H, W) in [-1, 1]) after channel conversion."""
    with single_threaded():
        return torch.stack([convert_channels(make_image(i), channels).clamp(-1, 1) for i in ids])
