"""SIRT: iterative reconstruction with the torch ray-marching projector.

``A`` is :func:`ctpress.sim.projector.forward_project_tensor` and its adjoint ``A^T`` is
taken exactly by automatic differentiation (``A`` is linear, so the gradient of
``<A x, v>`` with respect to ``x`` is ``A^T v``).  The update is the standard SIRT step

    x <- x + lambda C A^T R (p - A x),   R = 1 / (A 1),   C = 1 / (A^T 1)

(row and column sums; rays or voxels with zero sum get zero weight), optionally
followed by clipping at zero.  Every iteration costs one projection and one
back-projection, done ``view_batch`` views at a time to bound memory.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..scan import Geometry
from ..sim.projector import forward_project_tensor
from .fbp import as_projection_tensor, check_geometry, voxel_size

__all__ = ["sirt"]


def _default_grid(
    geometry: Geometry,
    det_shape: tuple[int, int],
    shape: tuple[int, ...] | None,
    voxel_size_mm: float | tuple[float, float, float] | None,
) -> tuple[tuple[int, ...], tuple[float, float, float]]:
    """Grid covering the detector at the isocentre: (ny, nx) for one row, else 3-D."""
    n_rows, n_cols = det_shape
    p_row, p_col = geometry.detector_spacing_mm
    mag = geometry.magnification
    dz = p_row / mag if geometry.kind == "cone" else p_row
    voxel = voxel_size(voxel_size_mm, (dz, p_col / mag, p_col / mag))
    if shape is None:
        shape = (n_cols, n_cols) if n_rows == 1 else (n_rows, n_cols, n_cols)
    dims = tuple(int(v) for v in shape)
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise InputError(f"shape must be (ny, nx) or (nz, ny, nx), got {shape}")
    return dims, voxel


def sirt(
    projections: np.ndarray | torch.Tensor,
    geometry: Geometry,
    shape: tuple[int, int] | tuple[int, int, int] | None = None,
    voxel_size_mm: float | tuple[float, float, float] | None = None,
    n_iter: int = 50,
    *,
    relaxation: float = 1.0,
    nonnegative: bool = True,
    x0: np.ndarray | torch.Tensor | None = None,
    step_mm: float | None = None,
    device: torch.device | str | None = None,
    view_batch: int = 16,
) -> np.ndarray:
    """Simultaneous iterative reconstruction technique (SIRT).

    Parameters
    ----------
    projections : ndarray or Tensor, shape (n_views, n_cols) or (n_views, n_rows, n_cols)
        Line integrals (dimensionless).  A CUDA tensor is reconstructed on its device.
    geometry : Geometry
        Parallel, fan or cone geometry (helical scans: rebin first).
    shape : (ny, nx) or (nz, ny, nx), optional
        Grid (projector conventions).  Default (n_cols, n_cols) for one detector row,
        else (n_rows, n_cols, n_cols).  A 2-D image is one slice at z = 0.
    voxel_size_mm : float or (float, float, float), optional
        Voxel size, isotropic or (z, y, x); default the detector pitch at the isocentre
        (the row pitch itself along z for parallel and fan stacks).
    n_iter : int
        Iterations.
    relaxation : float
        Step ``lambda`` in (0, 2).
    nonnegative : bool
        Clip the image at zero after every update.
    x0 : ndarray or Tensor, optional
        Starting image of ``shape`` (default zeros).
    step_mm : float, optional
        Ray-marching step of the projector (default half the smallest voxel size).
    device : torch.device or str, optional
        Where to compute; default the tensor's device, or the CPU for an array.
    view_batch : int
        Views projected per autograd pass (bounds memory).

    Returns
    -------
    ndarray, shape ``shape``, float32
        Attenuation in 1/mm.
    """
    proj = as_projection_tensor(projections, device)
    check_geometry(geometry, proj.shape[0], ("parallel", "fan", "cone"))
    det_shape = (proj.shape[1], proj.shape[2])
    grid, voxel = _default_grid(geometry, det_shape, shape, voxel_size_mm)
    if n_iter < 0 or not 0 < relaxation < 2 or view_batch < 1:
        raise InputError(
            f"need n_iter >= 0, 0 < relaxation < 2 and view_batch >= 1, got {n_iter}, "
            f"{relaxation} and {view_batch}"
        )
    dev = proj.device
    chunks = [
        (start, geometry.select_views(start, start + view_batch))
        for start in range(0, geometry.n_views, view_batch)
    ]

    def backproject_residual(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """``A^T (weight * (p - A x))``, or ``A^T 1`` when ``weight`` is None."""
        x = x.detach().requires_grad_(True)
        total = torch.zeros_like(x)
        for start, g in chunks:
            with torch.enable_grad():
                y = forward_project_tensor(
                    x, voxel, g, det_shape, step_mm=step_mm, view_batch=view_batch
                )
            if weight is None:
                v = torch.ones_like(y)
            else:
                stop = start + y.shape[0]
                v = weight[start:stop] * (proj[start:stop] - y.detach())
            (part,) = torch.autograd.grad(y, x, grad_outputs=v)
            total += part
        return total

    ones = torch.ones(grid, dtype=torch.float32, device=dev)
    with torch.no_grad():
        row_sums = forward_project_tensor(
            ones, voxel, geometry, det_shape, step_mm=step_mm, view_batch=view_batch
        )
    col_sums = backproject_residual(ones, None)
    row_w = torch.where(row_sums > 1e-6 * row_sums.max(), 1.0 / row_sums, 0.0)
    col_w = torch.where(col_sums > 1e-6 * col_sums.max(), relaxation / col_sums, 0.0)
    if x0 is None:
        x = torch.zeros(grid, dtype=torch.float32, device=dev)
    else:
        x = torch.as_tensor(x0, dtype=torch.float32, device=dev).clone()
        if tuple(x.shape) != grid:
            raise InputError(f"x0 has shape {tuple(x.shape)}, expected {grid}")
    for _ in range(n_iter):
        update = backproject_residual(x, row_w)
        with torch.no_grad():
            x = x + col_w * update
            if nonnegative:
                x.clamp_(min=0.0)
    return x.detach().cpu().numpy()
