"""Feldkamp-Davis-Kress (FDK) reconstruction of circular cone-beam projections.

Conventions are those of :mod:`ctpress.sim.projector`.  With ``R`` / ``D`` the source-
isocentre / source-detector distances, detector coordinates ``(t, s)`` in mm and a voxel
``p = (x, y, z)`` at depth ``U = R + p.d(b)`` from the source along the central ray:

* flat panel (Feldkamp et al. 1984): projections weighted by ``D / sqrt(D^2 + s^2 +
  t^2)``, ramp filtered along rows with the pitch scaled to the isocentre, back-projected
  at ``s = D p.u / U``, ``t = D z / U`` with weight ``(R / U)^2``;
* cylindrical detector (arc of radius ``D`` about the source, fan angle ``g = s / D``):
  weighted by ``R cos g D / sqrt(D^2 + t^2)``, filtered in ``g`` with the equiangular
  kernel, back-projected at ``g = atan2(p.u, U)``, ``t = D z / L`` with weight
  ``1 / L^2``, ``L^2 = U^2 + (p.u)^2`` (the fan-beam formula on every tilted fan).

Full (``2 pi``) and short scans (Parker weights) are handled as in
:mod:`ctpress.recon.fbp`.  Memory is bounded by back-projecting a batch of views into one
z-slab at a time (about 32 MB of temporaries per step and worker besides the volume).

``backend="tigre"`` hands the work to TIGRE's GPU FDK when ``import tigre`` works (not
installable on the CPU-only development machines: that path maps the geometry from
TIGRE's documented conventions — source angle ``a - pi / 2`` — and is untested here).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError
from ..scan import Geometry
from .fbp import (
    as_projection_tensor,
    backproject,
    check_geometry,
    default_grid,
    voxel_size,
    weight_and_filter,
)

__all__ = ["fdk"]


def _fdk_tigre(
    proj: torch.Tensor,
    geometry: Geometry,
    shape: tuple[int, int, int],
    voxel: tuple[float, float, float],
    filter: str,
) -> np.ndarray:
    """FDK through TIGRE (GPU); geometry mapped from its documented conventions."""
    try:
        import tigre
        import tigre.algorithms as algs
    except ImportError as exc:
        raise InputError(
            "backend='tigre' needs the TIGRE package (GPU only; not installed)"
        ) from exc
    if geometry.detector_shape != "flat":
        raise InputError("backend='tigre' supports flat detectors only")
    _, n_rows, n_cols = proj.shape
    geo = tigre.geometry(mode="cone", default=False)
    geo.DSO, geo.DSD = geometry.source_isocenter_mm, geometry.source_detector_mm
    geo.nDetector = np.array([n_rows, n_cols])
    geo.dDetector = np.array(geometry.detector_spacing_mm)
    geo.sDetector = geo.nDetector * geo.dDetector
    geo.offDetector = np.array(geometry.detector_offset_mm)
    geo.nVoxel = np.array(shape)
    geo.dVoxel = np.array(voxel)
    geo.sVoxel = geo.nVoxel * geo.dVoxel
    geo.offOrigin = np.zeros(3)
    geo.rotDetector = np.zeros(3)
    geo.accuracy = 0.5
    angles = geometry.angles() - math.pi / 2
    filt = {"ram-lak": "ram_lak", "shepp-logan": "shepp_logan", "cosine": "cosine"}
    vol = algs.fdk(proj.cpu().numpy(), geo, angles, filter=filt.get(filter, "hann"))
    return np.asarray(vol, dtype=np.float32)


def fdk(
    projections: np.ndarray | torch.Tensor,
    geometry: Geometry,
    volume_shape: tuple[int, int, int] | None = None,
    voxel_size_mm: float | tuple[float, float, float] | None = None,
    filter: str = "ram-lak",
    cutoff: float = 1.0,
    *,
    device: torch.device | str | None = None,
    view_batch: int = 8,
    backend: str = "torch",
) -> np.ndarray:
    """FDK reconstruction of circular cone-beam projections (flat or cylindrical detector).

    Parameters
    ----------
    projections : ndarray or Tensor, shape (n_views, n_rows, n_cols)
        Line integrals (dimensionless), ``n_rows >= 2``.  A CUDA tensor is reconstructed
        on its device.
    geometry : Geometry
        ``cone`` geometry with one angle per view; distances in mm.
    volume_shape : (nz, ny, nx), optional
        Output grid centred on the isocentre; default (n_rows, n_cols, n_cols).
    voxel_size_mm : float or (float, float, float), optional
        Voxel size in mm, isotropic or (z, y, x); default the column pitch scaled to the
        isocentre.
    filter : {"ram-lak", "shepp-logan", "cosine", "hann"}
        Apodisation window of the ramp filter.
    cutoff : float
        Filter cut-off as a fraction of Nyquist, in (0, 1].
    device : torch.device or str, optional
        Where to compute; default the tensor's device, or the CPU for an array.
    view_batch : int
        Views sampled per back-projection step (at most; memory is bounded anyway).
    backend : {"torch", "tigre"}
        ``tigre`` uses TIGRE's FDK if installed (``cutoff`` is ignored there).

    Returns
    -------
    ndarray, shape (nz, ny, nx), float32
        Attenuation in 1/mm, axes (z, y, x) as the projector's.
    """
    if backend not in ("torch", "tigre"):
        raise InputError(f"backend must be 'torch' or 'tigre', got {backend!r}")
    proj = as_projection_tensor(projections, device)
    check_geometry(geometry, proj.shape[0], ("cone",))
    _, n_rows, n_cols = proj.shape
    if n_rows < 2 or n_cols < 2:
        raise InputError(f"cone-beam projections need >= 2 rows and columns, got {proj.shape}")
    n, size = default_grid(geometry, n_cols, None)
    voxel = voxel_size(voxel_size_mm, (size, size, size))
    dims = [n_rows, n, n] if volume_shape is None else [int(v) for v in volume_shape]
    if len(dims) != 3 or min(dims) < 1:
        raise InputError(f"volume_shape must be (nz, ny, nx), got {volume_shape}")
    shape = (dims[0], dims[1], dims[2])
    if view_batch < 1:
        raise InputError(f"view_batch must be >= 1, got {view_batch}")
    if backend == "tigre":
        return _fdk_tigre(proj, geometry, shape, voxel, filter)
    with torch.no_grad():
        q = weight_and_filter(proj, geometry, filter, cutoff, cone=True)
        volume = backproject(q, geometry, shape, voxel, view_batch=view_batch)
    return volume.cpu().numpy()
