"""Safe saving and loading of diffusion-prior checkpoints.

Our format (``save_prior``) is a ``torch.save`` of plain data only::

    {'format': 'lmaps-prior', 'version': 1,
     'state_dict': {name: tensor},              # EDMPrecond(SmallUNet) parameters, float32 or float16
     'meta': {'unet': {...}, 'sigma_data': 0.5,  # architecture, enough to rebuild the module
              ... anything JSON-able: dataset, seed, steps, wall time, final loss ...}}

It loads with ``torch.load(weights_only=True)``, which never runs code from the file. InverseBench-style
checkpoints are also understood: a state dict under ``'ema'`` or ``'net'`` (loaded into a module you pass), and, only
with ``trust_pickle=True``, a pickled module under ``'ema'``. Unpickling arbitrary objects executes code chosen by
whoever wrote the file, so it is refused by default.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write, file_sha256
from .edm import build_edm_unet

FORMAT = "lmaps-prior"
VERSION = 1


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint holds pickled Python objects and ``trust_pickle`` was not set."""


class NotATorchZipError(UntrustedCheckpointError, ValueError):
    """A file that is not laid out as a ``torch.save`` zip archive (a bare pickle, a legacy ``torch.save``, a pickle
    with a zip appended): refused before any of it is unpickled, whatever ``trust_pickle`` says."""


#: the signature of a zip local file header; a torch.save archive starts with one at offset 0
ZIP_LOCAL_HEADER = b"PK\x03\x04"


def torch_zip_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not laid out as a ``torch.save`` zip checkpoint (None when it is): a valid zip archive whose
    first local file header is at offset 0 and whose entries all sit in one top folder holding ``data.pkl``.

    ``zipfile.is_zipfile`` alone is not enough: it finds a zip's directory at the end of a file, so a pickle with a
    small zip appended passes it, and ``torch.load`` then unpickles the leading pickle (its legacy format)."""
    with open(path, "rb") as handle:
        head = handle.read(len(ZIP_LOCAL_HEADER))
    if head != ZIP_LOCAL_HEADER:
        return "it does not start with a zip local file header, as a torch.save archive does"
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        return f"it is not a valid zip archive ({exc})"
    if not infos or min(info.header_offset for info in infos) != 0:
        return "its zip archive does not start at the beginning of the file (something precedes it)"
    names = [info.filename for info in infos]
    tops = {name.split("/", 1)[0] for name in names}
    top = next(iter(tops))
    if len(tops) != 1 or f"{top}/data.pkl" not in names:
        return "its zip archive is not a torch.save archive (one top folder holding data.pkl)"
    return None


def _is_float(t: torch.Tensor) -> bool:
    return torch.is_tensor(t) and t.is_floating_point()


def save_prior(path: str | os.PathLike, net: nn.Module, meta: dict, dtype: torch.dtype | None = None) -> Path:
    """Write ``net``'s state dict and JSON-able ``meta`` to ``path`` (atomically: temp file, then rename).

    Args:
        net: an :class:`~lmaps_plugin.priors.edm.EDMPrecond` around a :class:`~lmaps_plugin.priors.unet.SmallUNet`
            (its ``model.config`` and ``sigma_data`` are stored so ``load_prior`` can rebuild it).
        meta: extra metadata (dataset, seed, training steps, wall time, ...); must survive ``json.dumps``.
        dtype: store floating-point tensors in this dtype (``torch.float16`` halves the file).
    """
    config = getattr(getattr(net, "model", None), "config", None)
    if config is None or not hasattr(net, "sigma_data"):
        raise TypeError("save_prior expects an EDMPrecond wrapping a SmallUNet (net.model.config, net.sigma_data); "
                        f"got {type(net).__name__}")
    full_meta = {**meta, "unet": config, "sigma_data": float(net.sigma_data)}
    try:
        full_meta = json.loads(json.dumps(full_meta))
    except TypeError as exc:
        raise TypeError(f"meta must be JSON-serialisable (str, int, float, bool, None, lists, dicts): {exc}") from exc
    state = {k: (v.detach().to("cpu", dtype) if dtype is not None and _is_float(v) else v.detach().cpu()).clone()
             for k, v in net.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "state_dict": state, "meta": full_meta}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


#: (resolved path, size, mtime in ns) -> SHA-256 of the file: a checkpoint is hashed once per process and version
_DIGESTS: dict[tuple[str, int, int], str] = {}


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a checkpoint file's bytes, cached by (path, size, modification time): the file's identity
    in a run's config hash, so that replacing it under the same path is a change of configuration."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def _untrusted_message(path, cause: Exception) -> str:
    needed = re.search(r"GLOBAL ([\w.]+)", str(cause))
    detail = f"the file needs the Python object {needed.group(1)}" if needed else ""
    return (f"refusing to load {path}: it holds pickled Python objects (for example a whole nn.Module, as in "
            f"InverseBench's {{'ema': <module>}} checkpoints), and unpickling runs code chosen by whoever wrote "
            f"the file. Only state dicts load with torch.load(weights_only=True). If you trust the file's source, "
            f"pass trust_pickle=True to load_prior (in configs: prior.trust_pickle=true) to load it with "
            f"weights_only=False; better, convert it once to a state dict with torch.save({{'ema': "
            f"module.state_dict()}}, new_path)." + (f" ({detail})" if detail else ""))


def strict_trust_flag(trust_pickle) -> bool:
    """``trust_pickle`` as a bool, accepting only ``True``/``False`` themselves.

    The flag unlocks code execution, so nothing truthy counts: the strings ``"no"``, ``"off"``,
    ``"false"`` (what a command line like ``prior.trust_pickle=no`` passes) and numbers are refused
    with a message instead of being read as "trusted".
    """
    if isinstance(trust_pickle, bool):
        return trust_pickle
    raise TypeError(f"trust_pickle must be the boolean true or false, got {trust_pickle!r} "
                    f"({type(trust_pickle).__name__}); unpickling runs code from the file, so only an explicit "
                    f"true allows it (in configs: prior.trust_pickle=true)")


def read_checkpoint(path: str | os.PathLike, map_location="cpu", trust_pickle: bool = False):
    """``torch.load`` a checkpoint with ``weights_only=True``; fall back to ``weights_only=False`` only when
    ``trust_pickle is True`` and the file is a ``torch.save`` zip archive. Raises :class:`UntrustedCheckpointError`
    (explaining why) otherwise. A file not laid out as a ``torch.save`` zip archive (:func:`torch_zip_problem`: a
    bare pickle, a pickle with a zip appended) is refused first, :class:`NotATorchZipError`, before any byte of it is
    unpickled, trusted or not."""
    trusted = strict_trust_flag(trust_pickle)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    problem = torch_zip_problem(path)
    if problem:
        # torch.load on anything but a zip archive falls back to plain unpickling, which would run the file's code
        # before any check could refuse it: a bare pickle (e.g. an NVlabs EDM .pkl), or one with a zip appended,
        # is never loaded, trusted or not.
        raise NotATorchZipError(f"{path} is not a torch.save zip checkpoint: {problem} (probably a plain pickle such "
                                f"as an EDM .pkl); lmaps does not unpickle such files. Convert it in a trusted "
                                f"environment to torch.save({{'ema': net.state_dict()}}, 'prior.pt').")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trusted:
            raise UntrustedCheckpointError(_untrusted_message(path, exc)) from None
    return torch.load(path, map_location=map_location, weights_only=False)


def extract_state_dict(ckpt) -> dict:
    """The state dict inside a loaded checkpoint: ours (``'state_dict'``), InverseBench's (``'ema'``, else
    ``'net'``; a module there yields its ``state_dict()``), or a bare ``{name: tensor}`` dict."""
    if not isinstance(ckpt, dict):
        if isinstance(ckpt, nn.Module):
            return ckpt.state_dict()
        raise ValueError(f"checkpoint holds a {type(ckpt).__name__}; expected a dict")
    for key in ("state_dict", "ema", "net"):
        if key in ckpt:
            inner = ckpt[key]
            return inner.state_dict() if isinstance(inner, nn.Module) else inner
    if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return ckpt
    raise ValueError(f"no state dict in checkpoint: expected a key 'state_dict', 'ema' or 'net', or a plain "
                     f"{{name: tensor}} dict; found keys {sorted(map(str, ckpt))[:10]}")


def _to_device(net: nn.Module, map_location) -> nn.Module:
    return net.to(map_location) if isinstance(map_location, (str, torch.device)) else net


def load_prior(path: str | os.PathLike, map_location="cpu", trust_pickle: bool = False,
               module: nn.Module | None = None) -> nn.Module:
    """Load a diffusion prior ``net(x, sigma)`` in eval mode.

    - our ``save_prior`` files rebuild an ``EDMPrecond(SmallUNet)`` from the stored architecture;
    - with ``module`` given, the checkpoint's state dict (``'state_dict'``, ``'ema'`` or ``'net'``) is loaded into
      it (float16 weights are cast to the module's dtype) and the module is returned;
    - a pickled module under ``'ema'`` (InverseBench's pickle format) is returned as is, but only with
      ``trust_pickle=True``: without it a :class:`UntrustedCheckpointError` says why.
    """
    ckpt = read_checkpoint(path, map_location=map_location, trust_pickle=trust_pickle)
    if module is not None:
        target = module.state_dict()
        state = {k: (v.to(target[k].dtype) if k in target and _is_float(v) else v)
                 for k, v in extract_state_dict(ckpt).items()}
        module.load_state_dict(state)
        return _to_device(module, map_location).eval()
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:

        meta = ckpt["meta"]
        net = build_edm_unet(meta["unet"], sigma_data=meta.get("sigma_data", 0.5))
        net.load_state_dict({k: v.float() if _is_float(v) else v for k, v in ckpt["state_dict"].items()})
        net.meta = meta
        return _to_device(net, map_location).eval()
    if isinstance(ckpt, dict) and isinstance(ckpt.get("ema"), nn.Module):
        return _to_device(ckpt["ema"], map_location).eval()
    raise ValueError(f"{path} is not an lmaps prior (format {FORMAT!r}) and holds no pickled module under 'ema'; "
                     f"for a state-dict checkpoint ('ema'/'net' keys) pass the module to load it into: "
                     f"load_prior(path, module=net)")


def read_meta(path: str | os.PathLike) -> dict:
    """The metadata dict of a ``save_prior`` file (weights_only load)."""
    ckpt = read_checkpoint(path)
    if not (isinstance(ckpt, dict) and ckpt.get("format") == FORMAT):
        raise ValueError(f"{path} is not an lmaps prior file (format {FORMAT!r})")
    return ckpt["meta"]


__all__ = ["save_prior", "load_prior", "read_checkpoint", "extract_state_dict", "read_meta", "checkpoint_sha256",
           "strict_trust_flag", "torch_zip_problem", "UntrustedCheckpointError", "NotATorchZipError"]
