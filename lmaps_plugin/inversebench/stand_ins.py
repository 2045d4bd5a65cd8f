"""Stand-ins for ``piq`` and ``torchvision`` while importing InverseBench modules.

InverseBench's ``eval.py``, ``training/loss.py``, ``training/dataset.py`` and
``inverse_problems/blackhole.py`` import ``piq`` / ``torchvision`` at module import time,
although the scattering, MRI and black-hole tasks only use a handful of their functions.
Both packages pull in a torchvision build that replaces a CPU-only torch with a multi-GB
CUDA build, so environments that pin torch (ours, many clusters) do not have them.

:func:`optional_dependency_stand_ins` is a context manager that, *only for those of the two
packages that cannot be imported* and *only while it is active*, answers their imports with
small modules built here.  "Cannot be imported" means missing, or installed but failing to
import: e.g. ``pip install --no-deps piq`` next to a torchvision that is absent or broken
(``cannot import name 'models' from 'torchvision' (unknown location)``).  A package counts as
usable only when its modules that InverseBench and piq need import (:data:`PROBES`); piq is
never used without a usable torchvision.  After the block, the stand-ins are removed from
``sys.modules`` again and any broken module they hid is put back (the upstream modules keep
the references they took), so no other code ever sees a fake ``piq`` or ``torchvision``.

What the stand-ins provide:

* ``piq.psnr``, ``piq.ssim``, ``piq.SSIMLoss``: the same definitions as piq (images divided
  by ``data_range``; PSNR = -10 log10(MSE + 1e-8); SSIM with an 11x11 Gaussian window of
  std 1.5, k1 = 0.01, k2 = 0.03, valid-region mean, piq's average-pool downsampling for
  images larger than 256), computed with torch.
* ``piq.LPIPS``: raises, because LPIPS needs downloaded VGG weights; use real piq for it.
* ``torchvision.transforms.functional.resize`` / ``center_crop`` / ``pad`` for tensors and
  ``InterpolationMode``; the PIL-image pipeline classes (``Compose``, ``ToTensor``, ...)
  raise a clear error when constructed.

The stand-in PSNR/SSIM are a visible fallback: :func:`metric_backend` says which implementation
InverseBench's evaluators compute with, and every ``metrics.json`` our evaluators write records it
(``metric_backend``, :mod:`lmaps_plugin.inversebench.adapters`).
"""
from __future__ import annotations

import contextlib
import enum
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

_PSNR_EPS = 1e-8  # piq's EPS inside the log

PIQ_BACKEND = "piq"
STAND_IN_BACKEND = "lmaps_plugin stand-in (piq not importable)"

_piq_backend: str | None = None
"""Which piq the InverseBench modules imported under :func:`optional_dependency_stand_ins` got (None: none yet)."""


class MissingOptionalDependency(ImportError):
    """An InverseBench code path needs piq/torchvision functionality we do not stand in for."""


# --------------------------------------------------------------------------- piq stand-in
def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean(dim=0)
    if reduction == "sum":
        return values.sum(dim=0)
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, reduction: str = "mean",
         convert_to_greyscale: bool = False) -> torch.Tensor:
    """Per-image PSNR in dB, as ``piq.psnr``: -10·log10(mean((x-y)²)/data_range² + 1e-8)."""
    if convert_to_greyscale:
        raise MissingOptionalDependency("psnr(convert_to_greyscale=True) needs the real piq package")
    x = x / float(data_range)
    y = y / float(data_range)
    mse = (x - y).square().flatten(start_dim=1).mean(dim=1)
    return _reduce(-10.0 * torch.log10(mse + _PSNR_EPS), reduction)


def gaussian_window(kernel_size: int, sigma: float, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Normalised 2-D Gaussian window, shape (1, 1, k, k)."""
    coords = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor, kernel_size: int = 11, kernel_sigma: float = 1.5,
         data_range: float = 1.0, reduction: str = "mean", full: bool = False,
         downsample: bool = True, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM of (N, C, H, W) images, as ``piq.ssim``.

    Gaussian window without padding (the mean runs over the valid region only, as in piq
    and scikit-image; torchmetrics treats borders differently), channels averaged. Computed in
    the promoted dtype of ``x`` and ``y`` (a float64 reconstruction against a float32 target
    runs in float64), on ``x``'s device; the window is built there.
    """
    if full:
        raise MissingOptionalDependency("ssim(full=True) needs the real piq package")
    dtype = torch.promote_types(x.dtype, y.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    x = x.to(dtype) / float(data_range)
    y = y.to(device=x.device, dtype=dtype) / float(data_range)
    factor = max(1, round(min(x.shape[-2:]) / 256))
    if downsample and factor > 1:
        x = F.avg_pool2d(x, kernel_size=factor)
        y = F.avg_pool2d(y, kernel_size=factor)
    channels = x.shape[1]
    window = gaussian_window(kernel_size, kernel_sigma, x.dtype, x.device).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = k1 ** 2, k2 ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return _reduce(ssim_map.flatten(start_dim=1).mean(dim=1), reduction)


class SSIMLoss(torch.nn.Module):
    """``1 - ssim(x, y)``, as ``piq.SSIMLoss``."""

    def __init__(self, kernel_size: int = 11, kernel_sigma: float = 1.5, k1: float = 0.01,
                 k2: float = 0.03, downsample: bool = True, reduction: str = "mean",
                 data_range: float = 1.0) -> None:
        super().__init__()
        self.options = dict(kernel_size=kernel_size, kernel_sigma=kernel_sigma, k1=k1, k2=k2,
                            downsample=downsample, data_range=data_range)
        self.reduction = reduction

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _reduce(1.0 - ssim(x, y, reduction="none", **self.options), self.reduction)


class LPIPS:
    """Placeholder: LPIPS needs piq and its downloaded VGG weights."""

    def __init__(self, *args, **kwargs) -> None:
        raise MissingOptionalDependency(
            "LPIPS needs the real piq package (and its pretrained VGG weights); install piq "
            "(pip install piq, which also installs torchvision) to evaluate LPIPS.")


# ------------------------------------------------------------------- torchvision stand-in
class InterpolationMode(enum.Enum):
    """The interpolation modes of ``torchvision.transforms.InterpolationMode`` that torch has."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _resized_size(height: int, width: int, size: int | Sequence[int]) -> tuple[int, int]:
    """Output (H, W) of torchvision's resize: an int (or 1-list) sets the shorter edge."""
    if isinstance(size, int) or len(size) == 1:
        short = size if isinstance(size, int) else size[0]
        if height <= width:
            return short, int(short * width / height)
        return int(short * height / width), short
    if len(size) != 2:
        raise ValueError(f"size must be an int or a sequence of 1 or 2 ints, got {size!r}")
    return int(size[0]), int(size[1])


def resize(img: torch.Tensor, size: int | Sequence[int],
           interpolation: InterpolationMode = InterpolationMode.BILINEAR,
           max_size: int | None = None, antialias: bool | None = True) -> torch.Tensor:
    """Resize the last two dims of a tensor, as ``torchvision.transforms.functional.resize``."""
    if not isinstance(img, torch.Tensor):
        raise MissingOptionalDependency("resize of PIL images needs the real torchvision package")
    if max_size is not None:
        raise MissingOptionalDependency("resize(max_size=...) needs the real torchvision package")
    out_h, out_w = _resized_size(img.shape[-2], img.shape[-1], size)
    if (out_h, out_w) == tuple(img.shape[-2:]):
        return img
    mode = InterpolationMode(interpolation).value
    batch = img.reshape(-1, 1, *img.shape[-2:])
    kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": bool(antialias)}
    out = F.interpolate(batch, size=(out_h, out_w), mode=mode, **kwargs)
    return out.reshape(*img.shape[:-2], out_h, out_w)


def center_crop(img: torch.Tensor, output_size: int | Sequence[int]) -> torch.Tensor:
    """Central crop of the last two dims, as ``torchvision.transforms.functional.center_crop``."""
    crop_h, crop_w = (output_size, output_size) if isinstance(output_size, int) else (
        (output_size[0], output_size[0]) if len(output_size) == 1 else tuple(output_size))
    height, width = img.shape[-2:]
    if crop_h > height or crop_w > width:
        raise MissingOptionalDependency(
            f"center_crop to {crop_h}x{crop_w} of a {height}x{width} image pads; that needs the "
            f"real torchvision package")
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return img[..., top:top + crop_h, left:left + crop_w]


def pad(img: torch.Tensor, padding: int | Sequence[int], fill: float = 0,
        padding_mode: str = "constant") -> torch.Tensor:
    """Constant padding, as ``torchvision.transforms.functional.pad`` ((left, top, right, bottom))."""
    if padding_mode != "constant":
        raise MissingOptionalDependency(f"pad(padding_mode={padding_mode!r}) needs the real torchvision")
    if isinstance(padding, int):
        left = top = right = bottom = padding
    elif len(padding) == 1:
        left = top = right = bottom = padding[0]
    elif len(padding) == 2:
        left, top = padding
        right, bottom = padding
    elif len(padding) == 4:
        left, top, right, bottom = padding
    else:
        raise ValueError(f"padding must be an int or a sequence of 1, 2 or 4 ints, got {padding!r}")
    return F.pad(img, (left, right, top, bottom), mode="constant", value=fill)


def _unavailable_transform(name: str) -> type:
    def __init__(self, *args, **kwargs):
        raise MissingOptionalDependency(
            f"torchvision.transforms.{name} (the PIL-image pipeline InverseBench uses for FFHQ "
            f"data) needs the real torchvision package")
    return type(name, (), {"__init__": __init__, "__doc__": f"Placeholder for transforms.{name}."})


# ------------------------------------------------------------------------ import machinery
def _build_piq(module: types.ModuleType) -> None:
    module.psnr, module.ssim, module.SSIMLoss, module.LPIPS = psnr, ssim, SSIMLoss, LPIPS


def _build_torchvision(module: types.ModuleType) -> None:
    module.__path__ = []  # a package, so that submodule imports resolve through the finder


def _build_transforms(module: types.ModuleType) -> None:
    module.__path__ = []
    module.InterpolationMode = InterpolationMode
    for name in ("Compose", "ToTensor", "Resize", "CenterCrop", "Normalize", "RandomHorizontalFlip"):
        setattr(module, name, _unavailable_transform(name))


def _build_functional(module: types.ModuleType) -> None:
    module.resize, module.center_crop, module.pad = resize, center_crop, pad
    module.InterpolationMode = InterpolationMode


_BUILDERS: dict[str, Callable[[types.ModuleType], None]] = {
    "piq": _build_piq,
    "torchvision": _build_torchvision,
    "torchvision.transforms": _build_transforms,
    "torchvision.transforms.functional": _build_functional,
}


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Meta-path finder that answers imports of unusable piq/torchvision modules."""

    def __init__(self, top_levels: frozenset[str]) -> None:
        self.top_levels = top_levels
        self.created: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in self.top_levels or fullname not in _BUILDERS:
            return None
        is_package = fullname in ("torchvision", "torchvision.transforms")
        return importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)

    def create_module(self, spec):
        return None  # default module creation

    def exec_module(self, module):
        module.__doc__ = f"lmaps_plugin stand-in for {module.__name__} (real package missing or broken)."
        _BUILDERS[module.__name__](module)
        self.created.append(module.__name__)


#: modules that must import for a package to count as usable (what InverseBench and piq import from it)
PROBES: dict[str, tuple[str, ...]] = {
    "torchvision": ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                    "torchvision.models"),
    "piq": ("piq",),
}


def _family(name: str, top_levels) -> bool:
    return name.split(".")[0] in top_levels


def _importable(name: str) -> bool:
    """Whether every module of :data:`PROBES` ``[name]`` imports; a failed attempt leaves nothing in
    ``sys.modules`` (partly initialised packages are dropped)."""
    try:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            return False
    except (ImportError, ValueError):
        return False
    before = set(sys.modules)
    try:
        for module in PROBES[name]:
            importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any failure to import means "not usable here"
        for key in set(sys.modules) - before:
            if _family(key, (name,)):
                sys.modules.pop(key, None)
        return False
    return True


def unusable_optional_packages() -> frozenset[str]:
    """Which of piq / torchvision cannot be used here: not installed, or failing to import."""
    unusable = set()
    if not _importable("torchvision"):
        unusable.add("torchvision")
    if "torchvision" in unusable or not _importable("piq"):
        unusable.add("piq")  # piq imports torchvision's models: without a working torchvision it is broken
    return frozenset(unusable)


@contextlib.contextmanager
def optional_dependency_stand_ins() -> Iterator[frozenset[str]]:
    """Within the block, imports of unusable piq/torchvision modules get the stand-ins.

    Yields the names of the packages being stood in for (empty when both work). Broken modules of those
    packages already in ``sys.modules`` are hidden during the block and restored after it.
    """
    unusable = unusable_optional_packages()
    finder = _StandInFinder(unusable)
    hidden = {key: sys.modules.pop(key) for key in list(sys.modules) if _family(key, unusable)}
    if unusable:
        sys.meta_path.insert(0, finder)  # ahead of the path finders, which would find the broken package
    try:
        yield unusable
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        _record_piq_backend(finder.created, unusable)
        for name in finder.created:
            sys.modules.pop(name, None)
        sys.modules.update(hidden)


def _record_piq_backend(created: list[str], unusable: frozenset[str]) -> None:
    """Note which piq the modules imported in a stand-in block got, when one of them imported piq."""
    global _piq_backend
    if "piq" in created:
        _piq_backend = STAND_IN_BACKEND
    elif "piq" not in unusable and "piq" in sys.modules:
        _piq_backend = PIQ_BACKEND


def metric_backend() -> str:
    """Which PSNR/SSIM implementation InverseBench's evaluators compute with: ``"piq"``, or
    :data:`STAND_IN_BACKEND` when the modules imported under :func:`optional_dependency_stand_ins`
    got the stand-in. Before any of them imported piq: the one an import would get now."""
    if _piq_backend is not None:
        return _piq_backend
    return STAND_IN_BACKEND if "piq" in unusable_optional_packages() else PIQ_BACKEND
