"""Test images built from pictures that scikit-image ships inside its wheel (no download).

- ``faces``: the 100 face crops of ``skimage.data.lfw_subset()`` (25×25 grayscale, Labeled Faces in the Wild);
  items 100–199 of that array are non-face patches and are not used. Faces 0–79 form the train split (80 images,
  the only ones the shipped ``faces64`` prior and the ``gmm`` prior were fitted on), faces 80–91 the test split
  (12 images) and faces 92–99 the validation split (8 images, for hyperparameter tuning); each is resized to the
  requested resolution with bicubic interpolation. Ids index faces within a split; ``seed`` has no effect.
  (Until the val split existed, test held faces 80–99: test ids 0–11 are the same images as before, ids 12–19
  became val ids 0–7.)
- ``photos``: RGB photographs. Test split: ``astronaut``, ``coffee``, ``chelsea``, ``rocket``; ids 0–3 are their
  centred square crops, ids ≥ 4 random square crops (side 30–70 % of the short edge) of those four. Train split:
  random crops of different pictures (``immunohistochemistry``, ``hubble_deep_field``, ``retina``,
  ``stereo_motorcycle`` left view), so no test pixel is shared with another split. Validation split: random crops
  of the train pictures from another seeded stream (never a test picture; scikit-image ships no further colour
  photographs). Crops are resized with antialiased
  bicubic interpolation.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

FACES = {"train": range(0, 80), "test": range(80, 92), "val": range(92, 100)}
FACES_TRAIN, FACES_TEST, FACES_VAL = FACES["train"], FACES["test"], FACES["val"]
_TRAIN_PHOTOS = ("immunohistochemistry", "hubble_deep_field", "retina", "stereo_motorcycle")
PHOTOS = {
    "test": ("astronaut", "coffee", "chelsea", "rocket"),
    "train": _TRAIN_PHOTOS,
    "val": _TRAIN_PHOTOS,
}


def _skimage_data():
    try:
        import skimage.data  # scikit-image: its sample images, loaded only for these datasets
    except ImportError as exc:  # pragma: no cover - scikit-image is a dependency
        raise ImportError("the 'faces' and 'photos' datasets need scikit-image: pip install scikit-image") from exc
    return skimage.data


def _resize(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bicubic resize of a (C, h, w) image to (C, resolution, resolution), antialiased when shrinking."""
    shrinking = image.shape[-1] > resolution or image.shape[-2] > resolution
    out = F.interpolate(image[None], size=(resolution, resolution), mode="bicubic", align_corners=False,
                        antialias=shrinking)
    return out[0].clamp(-1, 1)


@functools.lru_cache(maxsize=1)
def _lfw_faces() -> torch.Tensor:
    """The 100 lfw_subset faces as a (100, 1, 25, 25) float32 tensor in [-1, 1]."""
    faces = np.asarray(_skimage_data().lfw_subset()[:100], dtype=np.float32)
    return torch.from_numpy(faces)[:, None] * 2 - 1


@functools.lru_cache(maxsize=16)
def _photo(name: str) -> torch.Tensor:
    """A scikit-image picture as a (3, H, W) float32 tensor in [-1, 1]."""
    image = getattr(_skimage_data(), name)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
    image = np.asarray(image)[..., :3].astype(np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1).contiguous() * 2 - 1


def num_faces(split: str) -> int:
    return len(FACES[split])


def face(split: str, image_id: int, resolution: int) -> torch.Tensor:
    """Face ``image_id`` of a split, (1, resolution, resolution) in [-1, 1]."""
    indices = FACES[split]
    if image_id >= len(indices):
        raise ValueError(f"the faces {split} split has {len(indices)} images (ids 0-{len(indices) - 1}); "
                         f"got id {image_id}")
    return _resize(_lfw_faces()[indices[image_id]], resolution)


def photo(split: str, image_id: int, resolution: int, gen: torch.Generator) -> torch.Tensor:
    """Photo crop ``image_id`` of a split, (3, resolution, resolution) in [-1, 1]; see the module docstring."""
    sources = PHOTOS[split]
    centred = split == "test" and image_id < len(sources)
    source = _photo(sources[image_id % len(sources)] if centred else
                    sources[int(torch.randint(len(sources), (1,), generator=gen))])
    h, w = source.shape[-2:]
    short = min(h, w)
    if centred:
        side, top, left = short, (h - short) // 2, (w - short) // 2
    else:
        side = int(short * (0.3 + 0.4 * float(torch.rand(1, generator=gen))))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
    return _resize(source[:, top:top + side, left:left + side], resolution)
