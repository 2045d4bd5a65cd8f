"""The inverse-scattering adapter: InverseBench's ``InverseScatter`` (Born approximation) as a linear map.

Upstream's scattering operator is affine in the prior's normalized space, but offers only autograd gradients, and
its ``forward`` maps batch element 0 only. :func:`linear_inverse_scatter_class` subclasses the imported upstream
class (never a copy of its code) with :class:`LinearInverseScatterAlgebra`: a vectorised batched ``forward`` (one
complex matmul ``(B·T, P) @ (P, R)``), the analytic ``adjoint`` and ``gradient``, and ``gram_eigenbasis``, an
orthogonal eigenbasis of AᵀA factorised once per geometry (:func:`scattering_gram_factorisation`) and cached on
disk (:func:`lmaps_plugin.io.load_or_compute`).

Images are real ``(B, 1, Ny, Nx)`` tensors in the prior's normalized space, measurements complex
``(B, numTrans, numRec)``; adjoints are transposes for the real inner product ``Re⟨·,·⟩``. Everything runs in
float64 (upstream's forward does); gradients come back in the dtype of the prediction, as upstream's autograd
gradients do.
"""
from __future__ import annotations

import functools
import inspect
import logging
import time
import warnings
from typing import Any, Callable

import torch

from ..io import cache_file, load_or_compute, resolve_cache_dir
from ..operators.base import GramEigenbasis
from ..operators.linear import cached_per_device
from .algebra import analytic_gradient, as_complex
from .locate import PINNED_COMMIT

log = logging.getLogger(__name__)

Tensor = torch.Tensor

SCATTER_GEOMETRY = ("Lx", "Ly", "Nx", "Ny", "wave", "numRec", "numTrans", "sensorRadius")
"""Constructor arguments of ``InverseScatter`` that fix its Born matrix (and so its Gram factorisation)."""

GRAM_CACHE_FORMAT = 1
"""Version of the on-disk Gram factorisation; bump it when the stored content changes meaning."""

DEFAULT_GRAM_MAX_PIXELS = 64 * 64
"""Largest grid (Nx·Ny) whose Gram eigenbasis is factorised by default (see ``gram_max_pixels``)."""

GRAM_METHODS = ("auto", "gram", "svd")


# ------------------------------------------------------------------- eigenbasis transforms
def subspace_eigenbasis(eigenvalues: Tensor, vectors: Tensor, image_shape: tuple[int, ...],
                        like: Tensor) -> GramEigenbasis:
    """The :class:`GramEigenbasis` of ``G = V diag(λ) Vᵀ`` for ``V`` with orthonormal columns (P × k).

    For ``k = P``, ``to_basis(v) = Vᵀv`` (shape ``(B, P)``). For ``k < P`` the orthogonal complement of
    ``range(V)`` (where ``G`` is 0) is carried along: ``to_basis(v) = [Vᵀv, v − VVᵀv]`` (shape
    ``(B, k + P)``, eigenvalues ``[λ, 0, …, 0]``) and ``from_basis([c, w]) = Vc + w``, so
    ``from_basis(φ(λ)·to_basis(v)) = φ(G)v`` holds exactly for every per-eigenvalue function φ.

    Coefficients are float64 whatever the input's dtype: exact local-MAP solves multiply the data
    coefficients by ``r·k2/((1 − r) + r·k2·λ)``, up to ~10¹¹ for near-null directions when k1 = 0, which
    would amplify float32 rounding of ``Vᵀ Aᵀy`` into the solution. ``from_basis`` returns ``like``'s dtype.
    """
    pixels, rank = vectors.shape
    basis = vectors.to(device=like.device, dtype=torch.float64)   # no copy when already there
    basis_t = basis.T
    values = eigenvalues.to(device=like.device, dtype=torch.float64)

    def flat(v: Tensor) -> Tensor:
        return v.reshape(v.shape[0], pixels).to(torch.float64)

    def unflat(v: Tensor) -> Tensor:
        return v.reshape(v.shape[0], *image_shape).to(like.dtype)

    if rank == pixels:
        return GramEigenbasis(eigenvalues=values, to_basis=lambda v: flat(v) @ basis,
                              from_basis=lambda c: unflat(c.to(torch.float64) @ basis_t))

    def to_basis(v: Tensor) -> Tensor:
        x = flat(v)
        coeffs = x @ basis
        return torch.cat([coeffs, x - coeffs @ basis_t], dim=1)

    def from_basis(c: Tensor) -> Tensor:
        c = c.to(torch.float64)
        return unflat(c[:, :rank] @ basis_t + c[:, rank:])

    zeros = torch.zeros(pixels, dtype=torch.float64, device=like.device)
    return GramEigenbasis(eigenvalues=torch.cat([values, zeros]), to_basis=to_basis, from_basis=from_basis)


def numerical_rank_mask(eigenvalues: Tensor, size: int) -> Tensor:
    """Eigenvalues above ``size·ε·λ_max`` (float64 ε): those below are at the factorisation's rounding level."""
    threshold = eigenvalues.max().clamp_min(0.0) * size * torch.finfo(torch.float64).eps
    return eigenvalues > threshold


# ------------------------------------------------------------------ scattering (Born) algebra
def born_field(contrast: Tensor, incident_conj_t: Tensor, green: Tensor, cell: float) -> Tensor:
    """``u[b, t, r] = cell · Σ_p f[b, p]·conj(u_in[p, t])·G[p, r]`` for real contrasts ``f`` (B, P).

    One complex matmul ``(B·T, P) @ (P, R)``; ``incident_conj_t`` is ``conj(u_in)ᵀ`` (T, P).
    """
    batch, pixels = contrast.shape
    sources = (contrast[:, None, :] * incident_conj_t).reshape(-1, pixels)
    return cell * (sources @ green).reshape(batch, incident_conj_t.shape[0], green.shape[1])


def born_field_transpose(field: Tensor, incident_t: Tensor, green: Tensor, cell: float) -> Tensor:
    """The transpose of :func:`born_field` for ``Re⟨·,·⟩``: ``cell·Re Σ_t u_in[p, t]·Σ_r conj(G[p, r])·y[b, t, r]``.

    Returns real contrasts (B, P); one complex matmul ``(B·T, R) @ (R, P)``.
    """
    batch, trans, receivers = field.shape
    back = (field.reshape(-1, receivers) @ green.conj().T).reshape(batch, trans, -1)
    return cell * (incident_t * back).real.sum(dim=1)


def born_gram(incident: Tensor, green: Tensor, cell: float, block_bytes: int = 1 << 28) -> Tensor:
    """The real Gram matrix AᵀA (P × P, float64) of the Born map, without forming A.

    ``(AᵀA)[p, q] = cell²·Re[(U Uᴴ)[p, q]·conj(G Gᴴ)[p, q]]`` (U = u_in (P, T), G (P, R)): two
    rank-T and rank-R products, built in row blocks of about ``block_bytes`` each.
    """
    pixels = incident.shape[0]
    gram = torch.empty(pixels, pixels, dtype=torch.float64, device=incident.device)
    rows = max(1, block_bytes // (16 * pixels))
    incident_h, green_t = incident.conj().T, green.T
    for start in range(0, pixels, rows):
        block = slice(start, start + rows)
        gram[block] = ((incident[block] @ incident_h) * (green[block].conj() @ green_t)).real
    return gram.mul_(cell * cell)


def born_matrix(incident: Tensor, green: Tensor, cell: float) -> Tensor:
    """The real Born matrix A (2·T·R × P, float64): rows are (Re, Im) of every (transmitter, receiver)."""
    pixels, trans = incident.shape
    complex_rows = (incident.conj()[:, :, None] * green[:, None, :]).reshape(pixels, -1).T
    return cell * torch.cat([complex_rows.real, complex_rows.imag], dim=0)


def scattering_gram_factorisation(incident: Tensor, green: Tensor, cell: float,
                                  method: str = "auto") -> dict[str, Tensor]:
    """Eigenvalues (descending, float64, > :func:`numerical_rank_mask`'s threshold) and orthonormal
    eigenvectors (P × k) of the physical-space Born map's AᵀA.

    ``method='gram'``: eigh of :func:`born_gram` (P × P, cost ~P³). ``'svd'``: thin SVD of
    :func:`born_matrix` (2TR × P, cost ~(2TR)²·P with a ~3.5× larger constant, measured at 64²), λ = σ².
    ``'auto'`` takes the SVD when 2TR < P/2, the Gram route otherwise.
    """
    pixels, trans = incident.shape
    measurements = 2 * trans * green.shape[1]
    if method == "auto":
        method = "svd" if 2 * measurements < pixels else "gram"
    if method == "gram":
        values, vectors = torch.linalg.eigh(born_gram(incident, green, cell))       # ascending
    elif method == "svd":
        _, singular, vh = torch.linalg.svd(born_matrix(incident, green, cell), full_matrices=False)
        values, vectors = singular.square(), vh.T                                   # descending
    else:
        raise ValueError(f"gram method={method!r} is not allowed: use 'auto', 'gram' or 'svd'")
    kept = torch.nonzero(numerical_rank_mask(values, max(pixels, measurements))).flatten()
    kept = kept[torch.argsort(values[kept], descending=True)]
    return {"eigenvalues": values[kept], "eigenvectors": vectors[:, kept]}          # one copy, P × k


#: measured: the 'gram' route at 64² (P = 4096) takes about 20 s of CPU time; 'svd' has a ~3.5x larger constant
REFERENCE_PIXELS, REFERENCE_SECONDS, SVD_CONSTANT = 4096, 20.0, 3.5


def factorisation_estimate(pixels: int, measurements: int, method: str = "auto") -> tuple[str, float, float]:
    """``(method, seconds, bytes)``: a rough cost of :func:`scattering_gram_factorisation` on this machine's scale
    (CPU seconds scaled from the measured 64² factorisation by the route's flop count; bytes of its largest
    float64 matrices, input and eigenvectors)."""
    if method == "auto":
        method = "svd" if 2 * measurements < pixels else "gram"
    if method == "gram":
        seconds = REFERENCE_SECONDS * (pixels / REFERENCE_PIXELS) ** 3
        memory = 2 * 8.0 * pixels * pixels
    else:
        seconds = REFERENCE_SECONDS * SVD_CONSTANT * measurements ** 2 * pixels / REFERENCE_PIXELS ** 3
        memory = 2 * 8.0 * measurements * pixels
    return method, seconds, memory


def bound_arguments(init: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments a bound constructor ``init`` receives, its defaults filled in (the geometry, defaults included)."""
    bound = inspect.signature(init).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def check_gram_options(gram_basis: Any, gram_max_pixels: Any, gram_method: Any) -> None:
    """Refuse Gram options of the wrong type or value, naming the key."""
    if not isinstance(gram_basis, bool):
        raise ValueError(f"gram_basis={gram_basis!r} is not allowed: use true or false")
    if isinstance(gram_max_pixels, bool) or int(gram_max_pixels) != gram_max_pixels or gram_max_pixels < 0:
        raise ValueError(f"gram_max_pixels={gram_max_pixels!r} is not allowed: use a non-negative integer")
    if gram_method not in GRAM_METHODS:
        raise ValueError(f"gram_method={gram_method!r} is not allowed: use 'auto', 'gram' or 'svd'")


class LinearInverseScatterAlgebra:
    """InverseBench's linear inverse scattering operator (Born), batched, with its analytic algebra.

    Contract:

    * ``forward(x)`` maps every batch element (upstream maps element 0 only), as one complex
      matmul; values equal upstream's ``forward`` of each element. With ``unnormalize=True``
      (the default) it is affine in ``x``: ``forward(x) = A x + forward(0)``, because
      ``unnormalize(x) = (x + shift)·scale``.
    * ``is_linear = True``; ``adjoint(y)`` is the transpose of the **linear part** ``A`` for
      the real inner product ``Re⟨·,·⟩`` on complex measurements ``(B, numTrans, numRec)``:
      ``⟨A x, y⟩ = ⟨x, adjoint(y)⟩`` for real images ``x`` ``(B, 1, Ny, Nx)`` in the prior's
      normalized space. It returns float64. Solvers use ``adjoint(y − forward(0))`` for the
      affine offset.
    * ``gradient(pred, obs, return_loss=False) = 2·adjoint(forward(pred) − obs)``, with no
      autograd graph; it equals the autograd gradient of upstream's ``loss`` (whose per-sample
      sum of squared moduli stays as it is) to float64 rounding, has ``pred``'s dtype, and with
      ``return_loss`` also returns the loss summed over the batch (as upstream's ``gradient``).
    * ``gram_eigenbasis(like)``: a :class:`~lmaps_plugin.operators.base.GramEigenbasis` of AᵀA
      (eigenvalues float64 ≥ 0; ``to_basis``/``from_basis`` act on ``(B, 1, Ny, Nx)``), or None
      when ``gram_basis=False``, or when ``Nx·Ny > gram_max_pixels`` and no factorisation of this geometry is in
      the cache (one that is, made once on request, is always used). It is factorised once per
      geometry (:func:`scattering_gram_factorisation`, truncated at numerical rank, the rest
      carried as the eigenvalue-0 complement) and cached in ``gram_cache`` (True: under
      ``$XDG_CACHE_HOME/lmaps-plugin``; False: no disk cache; or a directory), keyed by the
      geometry and InverseBench's pinned commit. The factorisation is of the physical-space map;
      ``unnorm_scale`` only scales its eigenvalues (by scale²) and ``unnorm_shift`` does not
      enter AᵀA, so neither is part of the key.

    Extra constructor keywords: ``gram_basis`` (bool, default True), ``gram_cache`` (bool or
    path, default True), ``gram_max_pixels`` (int, default 4096 = 64²), ``gram_method``
    ('auto' | 'gram' | 'svd').

    A mixin: :func:`linear_inverse_scatter_class` puts it ahead of upstream's class.
    """

    is_linear = True

    def __init__(self, *args: Any, gram_basis: bool = True, gram_cache: Any = True,
                 gram_max_pixels: int = DEFAULT_GRAM_MAX_PIXELS, gram_method: str = "auto", **kwargs: Any):
        arguments = bound_arguments(super().__init__, args, kwargs)
        check_gram_options(gram_basis, gram_max_pixels, gram_method)
        self.gram_cache_dir = resolve_cache_dir(gram_cache)
        super().__init__(*args, **kwargs)
        self.geometry = {name: arguments[name] for name in SCATTER_GEOMETRY}
        self.gram_basis_enabled = gram_basis
        self.gram_max_pixels = int(gram_max_pixels)
        self.gram_method = gram_method
        self.gram_source: str | None = None
        self._gram_tensors: dict[str, Tensor] | None = None
        self._store_born_parts()

    def _store_born_parts(self) -> None:
        """The incident fields and Green's functions of upstream's grids, as the matrices the Born algebra uses."""
        incident = self.uinc_dom_set[..., 0].reshape(-1, self.numTrans)
        self._incident = incident.contiguous()                     # (P, T)
        self._incident_t = incident.T.contiguous()                 # (T, P)
        self._incident_conj_t = incident.conj().T.resolve_conj().contiguous()
        self._green = self.sensor_greens_function_set[..., 0].reshape(-1, self.numRec).contiguous()  # (P, R)
        self._cell = float(self.dx * self.dy)

    # -- the linear algebra ------------------------------------------------------------
    def _check_image(self, f: Tensor) -> None:
        if f.ndim != 4 or tuple(f.shape[1:]) != (1, self.Ny, self.Nx):
            raise ValueError(f"InverseScatter: expected images shaped (B, 1, {self.Ny}, {self.Nx}), "
                             f"got {tuple(f.shape)}")

    def forward(self, f: Tensor, unnormalize: bool = True) -> Tensor:
        self._check_image(f)
        f = f.to(torch.float64)
        if unnormalize:
            f = self.unnormalize(f)
        return born_field(f.reshape(f.shape[0], -1), self._incident_conj_t, self._green, self._cell)

    def adjoint(self, y: Tensor) -> Tensor:
        y = as_complex(y, "InverseScatter.adjoint", f"(B, {self.numTrans}, {self.numRec})")
        if y.ndim != 3 or tuple(y.shape[1:]) != (self.numTrans, self.numRec):
            raise ValueError(f"InverseScatter.adjoint: expected measurements shaped "
                             f"(B, {self.numTrans}, {self.numRec}), got {tuple(y.shape)}")
        back = born_field_transpose(y, self._incident_t, self._green, self._cell)
        return (self.unnorm_scale * back).reshape(-1, 1, self.Ny, self.Nx)

    def gradient(self, pred: Tensor, observation: Tensor, return_loss: bool = False):
        return analytic_gradient(self, pred, observation, return_loss)

    # -- the Gram eigenbasis -------------------------------------------------------------
    def gram_cache_key(self) -> dict[str, Any]:
        """What the cached factorisation depends on: geometry, factorisation method, upstream commit."""
        geometry = {k: (float(v) if isinstance(v, float) else v) for k, v in self.geometry.items()}
        return {"kind": "inverse-scatter-born-gram", "format": GRAM_CACHE_FORMAT,
                "inversebench_commit": PINNED_COMMIT, "geometry": geometry, "method": self.gram_method}

    def _factorise(self) -> dict[str, Tensor]:
        pixels, measurements = self.Nx * self.Ny, 2 * self.numTrans * self.numRec
        if pixels > DEFAULT_GRAM_MAX_PIXELS:  # asked for explicitly (gram_max_pixels): say what it will cost first
            method, seconds, memory = factorisation_estimate(pixels, measurements, self.gram_method)
            warnings.warn(f"InverseScatter: factorising the Born Gram matrix of a {self.Ny}x{self.Nx} grid "
                          f"({measurements} measurements, method {method}) takes about {seconds / 60:.0f} min of "
                          f"CPU time and {memory / 2 ** 30:.1f} GB of memory (estimated from the 64x64 "
                          f"factorisation); it is done once and cached. Without it (gram_max_pixels <= "
                          f"{DEFAULT_GRAM_MAX_PIXELS}) the exact solve runs warm-started conjugate gradient",
                          RuntimeWarning, stacklevel=2)
        log.info("InverseScatter: factorising the Born Gram matrix (%d pixels, %d measurements); "
                 "done once per geometry%s", self.Nx * self.Ny, 2 * self.numTrans * self.numRec,
                 "" if self.gram_cache_dir is None else f", cached in {self.gram_cache_dir}")
        return scattering_gram_factorisation(self._incident, self._green, self._cell, self.gram_method)

    def _use_cached_factorisation(self) -> bool:
        """Above ``gram_max_pixels``: use a factorisation already on disk (free to read, and what makes every step's
        exact solve two small matrix products); otherwise say once what factorising would cost, and decline."""
        if cache_file(self.gram_cache_dir, "inverse-scatter-gram", self.gram_cache_key()) is not None:
            return True
        if not self.__dict__.get("_declined_factorisation"):
            self._declined_factorisation = True
            pixels, measurements = self.Nx * self.Ny, 2 * self.numTrans * self.numRec
            method, seconds, memory = factorisation_estimate(pixels, measurements, self.gram_method)
            log.info("InverseScatter %dx%d: no Gram eigenbasis (%d pixels > gram_max_pixels=%d, none cached): exact "
                     "solves run warm-started conjugate gradient. problem.model.gram_max_pixels=%d factorises once "
                     "(about %.0f min of CPU time and %.1f GB by the %s route, estimated from 64x64) and caches it; "
                     "a cached factorisation is used whenever present", self.Ny, self.Nx, pixels,
                     self.gram_max_pixels, pixels, seconds / 60, memory / 2 ** 30, method)
        return False

    def gram_factorisation(self) -> dict[str, Tensor]:
        """The physical-space factorisation (``'eigenvalues'``, ``'eigenvectors'``; CPU float64), once."""
        if self._gram_tensors is None:
            start = time.perf_counter()
            tensors, source = load_or_compute(self.gram_cache_dir, "inverse-scatter-gram",
                                              self.gram_cache_key(), self._factorise)
            self._gram_tensors, self.gram_source = tensors, source
            log.info("InverseScatter: Gram eigenbasis of rank %d / %d %s in %.1f s",
                     tensors["eigenvalues"].numel(), self.Nx * self.Ny, "loaded" if source == "disk"
                     else source, time.perf_counter() - start)
        return self._gram_tensors

    def _gram_on_device(self, device: torch.device) -> dict[str, Tensor]:
        """One float64 copy of the factorisation per device, shared by every dtype."""
        device_copies = self.__dict__.setdefault("_gram_device_copies", {})
        if device not in device_copies:
            device_copies[device] = {name: t.to(device) for name, t in self.gram_factorisation().items()}
        return device_copies[device]

    def gram_eigenbasis(self, like: Tensor) -> GramEigenbasis | None:
        if not self.gram_basis_enabled:
            return None
        if self.Nx * self.Ny > self.gram_max_pixels and not self._use_cached_factorisation():
            return None

        def make() -> GramEigenbasis:
            tensors = self._gram_on_device(like.device)
            values = tensors["eigenvalues"] * float(self.unnorm_scale) ** 2
            return subspace_eigenbasis(values, tensors["eigenvectors"], (1, self.Ny, self.Nx), like)

        return cached_per_device(self, ("gram", float(self.unnorm_scale)), like, make)


@functools.cache
def linear_inverse_scatter_class(upstream: type) -> type:
    """Subclass of InverseBench's ``InverseScatter`` with the operator algebra of a linear map
    (:class:`LinearInverseScatterAlgebra` ahead of ``upstream``; its docstring is the contract)."""
    return type("LinearInverseScatter", (LinearInverseScatterAlgebra, upstream),
                {"__doc__": LinearInverseScatterAlgebra.__doc__, "__module__": __name__})
