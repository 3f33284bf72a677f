"""Ray-marching forward projector in torch (CPU, or CUDA when the volume lives there).

Conventions
-----------
World coordinates are (x, y, z) in mm with the isocentre at the origin and the rotation
axis along +z.  A volume array has axes (z, y, x); array index increases with the
coordinate and the volume is centred on the isocentre, so voxel ``i`` along an axis of
``n`` voxels of size ``d`` has its centre at ``(i - (n - 1) / 2) * d``.  Between voxel
centres the attenuation is trilinear, and beyond the outermost centres it falls linearly to
zero over one voxel (zero padding), so its support is the bounding box ``|x| <= n * d / 2``
grown by half a voxel on every side.  Rays are sampled only across that support.

For a view at angle ``a`` (radians):

* central ray direction ``d(a) = (-sin a, cos a, 0)``;
* detector column direction ``u(a) = (cos a, sin a, 0)``; column index increases along
  ``u``, row index increases along +z;
* fan/cone/helical source at ``S(a) = (R sin a, -R cos a, z_view)`` with
  ``R = source_isocenter_mm`` (``a = 0``: source on -y; increasing ``a`` turns the source
  counter-clockwise seen from +z, from -y towards +x);
* parallel beam: the ray of column coordinate ``s`` passes through ``s * u(a)``, so a
  point ``p`` projects to ``s = p . u(a) = x cos a + y sin a``.

Detector coordinates of column ``c`` and row ``r`` (at the detector, in mm):
``s_c = (c - (n_cols - 1) / 2) * pitch_col + offset_col`` and
``t_r = (r - (n_rows - 1) / 2) * pitch_row + offset_row``
(``pitch``/``offset`` from ``Geometry.detector_spacing_mm`` / ``detector_offset_mm``,
given as (row, column)).  The detector pixel centre is

* flat: ``S + D d + s_c u + t_r e_z`` (``D = source_detector_mm``);
* cylindrical (arc of radius ``D`` centred on the source, ``g = s_c / D``):
  ``S + D (cos g d + sin g u) + t_r e_z``;
* cone and helical rays go from ``S`` to that point.  ``fan`` is a stack of independent
  fans: row ``r`` has its own source at ``S + t_r e_z`` and its rays stay in the plane
  ``z = z_view + t_r``;
* parallel rows sit at ``z = z_view + t_r``.

Line integrals use the midpoint rule: each ray's chord through the support is cut into
equal steps no longer than ``step_mm`` (default half the smallest voxel size), sampled
trilinearly with ``torch.nn.functional.grid_sample`` (``align_corners=False``, so grid
coordinates +-1 fall on the box faces).

``z_view`` is ``Geometry.z_mm[view]`` when given (helical), else 0.  These are ASTRA's
``fanflat``/``cone`` vector conventions (source ``(sin a, -cos a) R``, ``u = (cos a,
sin a)``); ASTRA's 2-D images have their row index pointing to -y, so an ASTRA 2-D
image is ``image[::-1, :]`` of ours (see ``tests/test_sim.py``).

A 2-D image (y, x) is treated as a single slice (z = 1) of thickness ``voxel_size_mm``
centred on z = 0; project it with ``det_rows = 1`` (rows at other z miss it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..scan import Geometry

__all__ = ["detector_rays", "forward_project", "forward_project_tensor"]


def _voxel_size(voxel_size_mm: float | tuple[float, float, float]) -> tuple[float, float, float]:
    """Voxel size as (z, y, x) mm."""
    sizes = np.broadcast_to(np.asarray(voxel_size_mm, dtype=np.float64), (3,))
    if not (np.isfinite(sizes).all() and (sizes > 0).all()):
        raise InputError(
            f"voxel_size_mm must be positive (z, y, x) or a scalar, got {voxel_size_mm}"
        )
    return (float(sizes[0]), float(sizes[1]), float(sizes[2]))


def detector_rays(
    geometry: Geometry,
    det_shape: tuple[int, int],
    views: slice | None = None,
    *,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray of every detector pixel, per the module's conventions.

    Parameters
    ----------
    geometry : Geometry
        Acquisition geometry.
    det_shape : (int, int)
        (det_rows, det_cols).
    views : slice, optional
        Views to compute (default all).
    device : torch.device or str
        Device of the returned tensors.

    Returns
    -------
    origin : Tensor, shape (n, det_rows, det_cols, 3), float64
        Ray start (x, y, z) in mm: the source, or for parallel beam a point on the ray.
    direction : Tensor, shape (n, det_rows, det_cols, 3), float64
        Unit ray direction.
    length : Tensor, shape (n, det_rows, det_cols), float64
        Source-to-pixel distance in mm (``inf`` for parallel beam).
    """
    n_rows, n_cols = det_shape
    sel = views if views is not None else slice(None)
    angles = geometry.angles()[sel]
    z_src = np.zeros_like(angles) if geometry.z_mm is None else np.asarray(geometry.z_mm)[sel]
    (p_row, p_col), (o_row, o_col) = geometry.detector_spacing_mm, geometry.detector_offset_mm

    def f64(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float64, device=device)

    n, zeros, ones = len(angles), np.zeros_like(angles), np.ones_like(angles)
    d0 = f64(np.stack([-np.sin(angles), np.cos(angles), zeros], -1))[:, None, None, :]
    u = f64(np.stack([np.cos(angles), np.sin(angles), zeros], -1))[:, None, None, :]
    ez = f64(np.stack([zeros, zeros, ones], -1))[:, None, None, :]
    s = f64((np.arange(n_cols) - (n_cols - 1) / 2) * p_col + o_col)[None, None, :, None]
    t = f64((np.arange(n_rows) - (n_rows - 1) / 2) * p_row + o_row)[None, :, None, None]
    z_view = f64(z_src)[:, None, None, None] * ez
    shape = (n, n_rows, n_cols, 3)
    if geometry.kind == "parallel":
        origin = (s * u + t * ez + z_view).expand(shape)
        return (
            origin,
            d0.expand(shape),
            torch.full(shape[:3], math.inf, dtype=torch.float64, device=device),
        )
    sid, sdd = geometry.source_isocenter_mm, geometry.source_detector_mm
    assert sid is not None and sdd is not None
    src = -sid * d0 + z_view
    if geometry.detector_shape == "flat":
        lateral = sdd * d0 + s * u
    else:
        g = s / sdd
        lateral = sdd * (torch.cos(g) * d0 + torch.sin(g) * u)
    if geometry.kind == "fan":
        origin, target = src + t * ez, src + t * ez + lateral
    else:
        origin, target = src, src + lateral + t * ez
    origin, ray = origin.expand(shape), (target - origin).expand(shape)
    length = torch.linalg.vector_norm(ray, dim=-1)
    return origin, ray / length[..., None], length


def _box_chords(
    origin: torch.Tensor, direction: torch.Tensor, length: torch.Tensor, half: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry parameter and chord length (mm) of rays through the box ``|p| <= half``."""
    safe = torch.where(direction.abs() < 1e-12, torch.full_like(direction, 1e-12), direction)
    t1, t2 = (-half - origin) / safe, (half - origin) / safe
    # Divergent rays start at the source (t >= 0); parallel rays are whole lines.
    t_start = torch.where(length.isfinite(), 0.0, -math.inf)
    t_in = torch.maximum(torch.minimum(t1, t2).amax(-1), t_start)
    t_out = torch.minimum(torch.maximum(t1, t2).amin(-1), length)
    return t_in, (t_out - t_in).clamp(min=0.0)


def _march(
    vol5: torch.Tensor, first: torch.Tensor, span: torch.Tensor, chord: torch.Tensor, step: float
) -> torch.Tensor:
    """Integrate ``vol5`` (1, 1, z, y, x) along rays given in grid units.

    Each ray's chord is split into ``n`` equal sub-steps no longer than ``step`` (midpoint
    rule), ``n`` being ``ceil(chord / step)`` rounded up to three significant bits (at
    most 12.5 % more samples).  ``n`` depends on the ray alone, and rays sharing it are
    marched together; rays that miss the volume are skipped.
    """
    device, dtype = vol5.device, vol5.dtype
    # The CPU grid sampler parallelises over the batch: one batch entry per thread, each
    # group padded with a dummy ray at grid position 2 (outside: samples zeros).
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    dummy = chord.numel()
    first = torch.cat([first, torch.full((1, 3), 2.0, dtype=dtype, device=device)])
    span = torch.cat([span, torch.zeros((1, 3), dtype=dtype, device=device)])
    n_ray = torch.ceil(chord / step).long().clamp(min=1)
    shift = (torch.floor(torch.log2(n_ray.double())).long() - 3).clamp(min=0)
    n_ray = torch.where(chord > 0, ((n_ray + (1 << shift) - 1) >> shift) << shift, 0)
    done, parts = [], []
    for n in torch.unique(n_ray[n_ray > 0]).tolist():
        idx = torch.nonzero(n_ray == n).squeeze(1)
        frac = (torch.arange(n, device=device, dtype=dtype) + 0.5) / n
        padded = F.pad(idx, (0, -idx.numel() % threads), value=dummy)
        grid = torch.addcmul(first[padded, None, :], frac[:, None], span[padded, None, :])
        samples = F.grid_sample(
            vol5.expand(threads, -1, -1, -1, -1),
            grid.reshape(threads, 1, -1, n, 3),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        sums = samples.reshape(-1, n)[: idx.numel()].sum(-1)
        done.append(idx)
        parts.append(sums * (chord[idx] / n).to(dtype))
    result = torch.zeros(chord.shape, dtype=dtype, device=device)
    if not done:
        return result
    return result.index_copy(0, torch.cat(done), torch.cat(parts))


def forward_project_tensor(
    volume_mu: torch.Tensor,
    voxel_size_mm: float | tuple[float, float, float],
    geometry: Geometry,
    det_shape: tuple[int, int],
    *,
    step_mm: float | None = None,
    view_batch: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """Differentiable torch version of :func:`forward_project`.

    Parameters and conventions as :func:`forward_project`; ``volume_mu`` is a float tensor
    of shape (z, y, x) or (y, x) and the result, shape (n_views, det_rows, det_cols), is in
    ``volume_mu``'s dtype on its device (autograd flows through it).
    """
    vol = volume_mu[None] if volume_mu.ndim == 2 else volume_mu
    if vol.ndim != 3:
        raise InputError(
            f"volume must be 2-D (y, x) or 3-D (z, y, x), got shape {tuple(vol.shape)}"
        )
    if len(det_shape) != 2 or min(det_shape) < 1:
        raise InputError(f"det_shape must be (rows, cols) >= 1, got {det_shape}")
    if view_batch < 1 or geometry.n_views < 1:
        raise InputError(
            f"need view_batch and the number of views >= 1, got {view_batch}, {geometry.n_views}"
        )
    vz = _voxel_size(voxel_size_mm)
    step = 0.5 * min(vz) if step_mm is None else float(step_mm)
    if not step > 0:
        raise InputError(f"step_mm must be positive, got {step_mm}")
    device = vol.device
    # (x, y, z) half extents; grid_sample's align_corners=False maps +-1 to the box faces.
    half = torch.tensor(
        [n * d / 2 for n, d in zip(vol.shape[::-1], vz[::-1], strict=True)],
        dtype=torch.float64,
        device=device,
    )
    # With zero padding the trilinear volume reaches half a voxel beyond the box faces.
    support = half + 0.5 * torch.tensor(vz[::-1], dtype=torch.float64, device=device)
    vol5 = vol[None, None]
    batches = range(0, geometry.n_views, view_batch)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="projecting", unit="batch")
    out = []
    for start in batches:
        origin, direction, length = detector_rays(
            geometry, det_shape, slice(start, start + view_batch), device=device
        )
        t_in, chord = _box_chords(origin, direction, length, support)
        # Rays in grid units (align_corners=False: +-1 at the box faces): entry point, and
        # the vector from entry to exit.
        first = ((origin + t_in[..., None] * direction) / half).reshape(-1, 3).to(vol.dtype)
        span = ((chord[..., None] * direction) / half).reshape(-1, 3).to(vol.dtype)
        sums = _march(vol5, first, span, chord.reshape(-1), step)
        out.append(sums.reshape(chord.shape))
    return torch.cat(out)


def forward_project(
    volume_mu: np.ndarray | torch.Tensor,
    voxel_size_mm: float | tuple[float, float, float],
    geometry: Geometry,
    det_shape: tuple[int, int],
    *,
    step_mm: float | None = None,
    view_batch: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """Line integrals of an attenuation volume through every detector pixel.

    Parameters
    ----------
    volume_mu : ndarray or Tensor, shape (z, y, x) or (y, x)
        Linear attenuation in 1/mm, centred on the isocentre (see the module's
        Conventions).  A 2-D image is one slice of thickness ``voxel_size_mm`` at z = 0.
        A tensor on a CUDA device is projected there.
    voxel_size_mm : float or (float, float, float)
        Voxel size in mm, isotropic or (z, y, x).
    geometry : Geometry
        Acquisition geometry; its angles give the views.
    det_shape : (int, int)
        (det_rows, det_cols).
    step_mm : float, optional
        Ray-marching step in mm; default half the smallest voxel size.  Each ray's chord
        through the volume is split into equal sub-steps no longer than this.
    view_batch : int
        Views whose rays are set up together.  The rays of a batch that share a sample
        count are sampled at once, so peak memory stays below about
        ``view_batch * det_rows * det_cols * (longest chord / step) * 16`` bytes.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    ndarray, shape (n_views, det_rows, det_cols), float32
        Dimensionless line integrals ``sum(mu * dl)``.
    """
    with torch.no_grad():
        proj = forward_project_tensor(
            torch.as_tensor(volume_mu).float(),
            voxel_size_mm,
            geometry,
            det_shape,
            step_mm=step_mm,
            view_batch=view_batch,
            progress=progress,
        )
    return proj.cpu().numpy().astype(np.float32, copy=False)
