"""InverseBench's algorithms (DPS, DAPS, DiffPIR, RED-diff, ΠGDM) on lmaps-plugin's priors, operators and images.

InverseBench is not a pip package; its ``algo`` modules are imported lazily from the checkout named by
``INVERSEBENCH_ROOT`` (:func:`lmaps_plugin.inversebench.locate.import_upstream`). The algorithm configs
``configs/algorithm/ib_*.yaml`` name :func:`inversebench_algorithm` as their ``_target_``::

    name: DPS
    method:
      _target_: lmaps_plugin.inversebench.peers.inversebench_algorithm
      algorithm_class: algo.dps.DPS
      guidance_scale: 1.0
      ...

so ``lmaps algorithm=ib_dps`` (or ``python main.py algorithm=ib_dps`` inside InverseBench) builds
``algo.dps.DPS(net=..., forward_op=..., **kwargs)``.

ΠGDM (``noisy=False``) calls ``forward_op.pseudo_inverse(y)``, which our operators do not define;
:class:`PseudoInverseOperator` adds it (conjugate gradient on the normal equations of the operator's linear part)
while passing everything else through to the operator.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..local_map import conjugate_gradient, normal_equation_ops
from .locate import import_upstream

Tensor = torch.Tensor

#: short names -> InverseBench classes (their configs/algorithm/<name>.yaml targets)
PEERS = {"dps": "algo.dps.DPS", "daps": "algo.daps.DAPS", "diffpir": "algo.diffpir.DiffPIR",
         "reddiff": "algo.reddiff.REDDiff", "pigdm": "algo.pigdm.PiGDM"}


class PseudoInverseOperator:
    """An operator proxy that adds ``pseudo_inverse(y)``: the minimum-norm least-squares solution of
    ``L x = y − c``, found by conjugate gradient on ``(LᵀL + δI) x = Lᵀ(y − c)`` from 0, where ``L`` is the linear
    part of the operator (linear or affine operators: H(x) = L x + c with c = H(0), transpose ``adjoint``; for
    InverseBench's scattering operator c comes from its ``unnormalize`` shift) or its ``linear_part``
    (non-differentiable operators such as JPEG, quantization, HDR, whose rounding/clipping stage ``L`` leaves out;
    transpose by autograd). ``tol`` is CG's relative residual.

    Every other attribute is the wrapped operator's.
    """

    def __init__(self, operator, image_shape: tuple[int, ...] | None = None, iters: int = 50,
                 damping: float = 1e-6, tol: float = 1e-5):
        linear = getattr(operator, "is_linear", False) and hasattr(operator, "adjoint")
        if not linear and not hasattr(operator, "linear_part"):
            raise ValueError(f"{type(operator).__name__} is neither linear (with an adjoint) nor has a linear_part; "
                             "ΠGDM's pseudo-inverse is undefined for it (use noisy=True with a dense forward_op.A, "
                             "or another algorithm)")
        object.__setattr__(self, "_op", operator)
        object.__setattr__(self, "_linear", linear)
        object.__setattr__(self, "_iters", int(iters))
        object.__setattr__(self, "_damping", float(damping))
        object.__setattr__(self, "_tol", float(tol))
        object.__setattr__(self, "_image_shape", None if image_shape is None else tuple(image_shape))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._op, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._op, name, value)

    def __call__(self, *args, **kwargs):
        return self._op(*args, **kwargs)

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        if self._image_shape is None:
            object.__setattr__(self, "_image_shape", tuple(x.shape[1:]))
        return self._op.forward(x, **kwargs)

    def _normal_equations(self, y: Tensor, like: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        """The map v ↦ LᵀLv and the vector Lᵀ(y − c): for a linear or affine operator those of
        :func:`lmaps_plugin.local_map.normal_equation_ops` (c = H(0) measured once; the operator's fused ``gram``
        when it has one), else those of ``linear_part`` (c = 0) with its transpose by autograd."""
        if self._linear:
            return normal_equation_ops(self._op, y, like)

        def transpose(z: Tensor) -> Tensor:
            with torch.enable_grad():
                x = torch.zeros_like(like).requires_grad_(True)
                (g,) = torch.autograd.grad(self._op.linear_part(x), x, grad_outputs=z)
            return g

        return (lambda v: transpose(self._op.linear_part(v))), transpose(y)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """``L⁺y`` in image space (shape ``(B, *image_shape)``)."""
        gram, rhs = self._normal_equations(y, self._template(y))
        rhs = rhs.detach()
        x, _ = conjugate_gradient(lambda v: gram(v) + self._damping * v,
                                  rhs, torch.zeros_like(rhs), tol=self._tol, max_iter=self._iters)
        return x

    def _template(self, y: Tensor) -> Tensor:
        shape = self._image_shape
        if shape is None:
            channels = getattr(self._op, "channels", y.shape[1])
            resolution = getattr(self._op, "resolution", None)
            if resolution is None:
                raise RuntimeError("pseudo_inverse needs the image size: call forward once first or build the "
                                   "operator with resolution=...")
            shape = (channels, resolution, resolution)
        return torch.zeros((y.shape[0], *shape), dtype=y.real.dtype, device=y.device)

    def __repr__(self) -> str:
        return f"PseudoInverseOperator({self._op!r})"


def inversebench_algorithm(algorithm_class: str, net, forward_op, pseudo_inverse: bool | str = "auto",
                           **kwargs: Any):
    """Build InverseBench's ``algorithm_class`` (e.g. ``'algo.dps.DPS'``) on ``net`` and ``forward_op``.

    Args:
        algorithm_class: dotted path of an InverseBench algorithm, or a short name in :data:`PEERS`.
        pseudo_inverse: wrap ``forward_op`` in :class:`PseudoInverseOperator`: ``'auto'`` does so for ΠGDM
            when the operator has no ``pseudo_inverse`` of its own.
        **kwargs: the algorithm's own arguments (as in InverseBench's ``configs/algorithm/*.yaml``).

    Raises:
        lmaps_plugin.inversebench.InverseBenchNotFound: no checkout (``INVERSEBENCH_ROOT`` unset or wrong).
    """
    dotted = PEERS.get(algorithm_class, algorithm_class)
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"algorithm_class must be a dotted path like 'algo.dps.DPS' or one of {sorted(PEERS)}, "
                         f"got {algorithm_class!r}")
    module = import_upstream(module_name, f"the InverseBench algorithm {dotted} (algorithm=ib_*)")
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"InverseBench module {module_name!r} has no class {class_name!r}")
    wants_pinv = pseudo_inverse is True or (pseudo_inverse == "auto" and class_name == "PiGDM"
                                            and not kwargs.get("noisy", False))
    if wants_pinv and not hasattr(forward_op, "pseudo_inverse"):
        res = getattr(net, "img_resolution", None)
        shape = (net.img_channels, res, res) if isinstance(res, int) else None
        forward_op = PseudoInverseOperator(forward_op, image_shape=shape)
    return cls(net=net, forward_op=forward_op, **_plain(kwargs))


def _plain(kwargs: dict) -> dict:
    """Nested OmegaConf containers -> plain dicts/lists (InverseBench's schedulers take ``**config``)."""
    return {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
            for k, v in kwargs.items()}


__all__ = ["PEERS", "inversebench_algorithm", "PseudoInverseOperator"]
