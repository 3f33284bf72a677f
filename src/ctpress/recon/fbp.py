"""Filtered back-projection for parallel- and fan-beam data (flat or cylindrical detector).

The geometry conventions are those of :mod:`ctpress.sim.projector`, so that
``fbp(forward_project(image, ...), ...)`` returns ``image``.  The formulas are those of
Kak & Slaney (*Principles of Computerized Tomographic Imaging*, ch. 3), written with
``R`` = source-isocentre and ``D`` = source-detector distance, source angle ``b``, a
pixel ``p`` at lateral distance ``p.u(b)`` from the central ray and at distance
``U = R + p.d(b)`` from the source along it:

* parallel beam: ``f(p) = sum_b w_b q_b(p.u(b))``, ``q_b`` the ramp-filtered projection;
* fan beam, flat detector ("equally spaced collinear detectors", sec. 3.4.2): the
  projections are weighted by ``D / sqrt(D^2 + s^2)`` (cosine of the ray angle), ramp
  filtered with the detector pitch scaled to the isocentre (``pitch R / D``) and
  back-projected at ``s = D p.u / U`` with weight ``(R / U)^2``;
* fan beam, cylindrical detector (equiangular rays, sec. 3.4.1, fan angle ``g = s / D``):
  weighted by ``R cos g``, filtered in ``g`` with the kernel ``h(g) (g / sin g)^2`` and
  back-projected at ``g = atan2(p.u, U)`` with weight ``1 / L^2``, ``L^2 = U^2 +
  (p.u)^2``.

Angular weights ``w_b`` come from the angular coverage (sum of the view spacings):

* parallel beam needs at least ``pi``, fan/cone beam at least ``pi + 2 g_max`` (the fan
  angle, from the outermost detector column);
* with one or more whole periods (``pi`` parallel, ``2 pi`` fan/cone) the views of the
  whole periods get ``step * pi / covered`` (1/2 for a ``2 pi`` fan scan) and views of
  an incomplete extra period (over-scan) are left out, so that every line counts once;
* fan/cone beam covering less than ``2 pi`` is a short scan: every ray gets Parker's
  weight (Parker 1982) with ``2 delta = coverage - pi``, so that every line measured
  twice has weights summing to one;
* less than that raises :class:`~ctpress.errors.InputError`.

Back-projection is voxel driven: for a batch of views, the detector coordinate of every
pixel is computed and the filtered projections are sampled bilinearly with
``torch.nn.functional.grid_sample``.  On a square grid of square pixels, views whose
angles differ by a multiple of ``pi / 2`` share the same sampling pattern up to a
rotation of the image, so they are sampled with one grid (as channels) and the partial
images rotated back before summing.  On the CPU the work is shared by one single-threaded
worker per torch thread (``torch.get_num_threads()``): torch's intra-op thread count is
set to 1 meanwhile (:func:`~ctpress._torch_threads.one_torch_thread`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from .._torch_threads import one_torch_thread
from ..errors import InputError
from ..scan import Geometry
from .filters import filter_projections

__all__ = ["fbp"]

#: Elements (floats) of the largest temporary of one back-projection step.
_STEP_ELEMENTS = 1 << 23
#: Two view angles closer than this (radians, modulo pi / 2) are treated as rotations.
_ANGLE_TOL = 1e-9


def as_projection_tensor(
    projections: np.ndarray | torch.Tensor, device: torch.device | str | None
) -> torch.Tensor:
    """Projections as a float32 tensor of shape (n_views, rows, cols) on ``device``.

    ``device`` None keeps a tensor where it is and puts an array on the CPU.
    """
    t = torch.as_tensor(projections)
    if device is not None:
        t = t.to(device)
    if t.ndim == 2:
        t = t[:, None, :]
    if t.ndim != 3 or t.numel() == 0:
        raise InputError(
            f"projections must have shape (views, cols) or (views, rows, cols), got "
            f"{tuple(t.shape)}"
        )
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise InputError("projections contain NaN or inf")
    return t


def check_geometry(geometry: Geometry, n_views: int, kinds: tuple[str, ...]) -> None:
    """Raise :class:`InputError` unless ``geometry`` is of ``kinds`` and has ``n_views``."""
    if geometry.kind == "helical":
        raise InputError(
            "helical scans cannot be reconstructed directly: rebin them to fan-beam or "
            "parallel-beam sinograms first"
        )
    if geometry.kind not in kinds:
        raise InputError(f"expected a {' or '.join(kinds)} geometry, got {geometry.kind!r}")
    if geometry.n_views != n_views:
        raise InputError(
            f"geometry has {geometry.n_views} view angles but the projections have {n_views} views"
        )
    if geometry.z_mm is not None and any(z != geometry.z_mm[0] for z in geometry.z_mm):
        raise InputError("views at different z (helical): rebin to a circular orbit first")


def detector_coords(geometry: Geometry, det_shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Row and column coordinates ``t_r``, ``s_c`` (mm, at the detector), float64."""
    n_rows, n_cols = det_shape
    (p_row, p_col), (o_row, o_col) = geometry.detector_spacing_mm, geometry.detector_offset_mm
    t = (np.arange(n_rows) - (n_rows - 1) / 2) * p_row + o_row
    s = (np.arange(n_cols) - (n_cols - 1) / 2) * p_col + o_col
    return t, s


def fan_angles(geometry: Geometry, s: np.ndarray) -> np.ndarray:
    """Fan angle (radians) of the detector columns at coordinates ``s`` (mm)."""
    sdd = geometry.source_detector_mm
    assert sdd is not None
    return s / sdd if geometry.detector_shape == "cylindrical" else np.arctan(s / sdd)


def angular_weights(geometry: Geometry, gamma: np.ndarray | None) -> np.ndarray:
    """Angular integration weights, with Parker's weights for a fan-beam short scan.

    Parameters
    ----------
    geometry : Geometry
        Its angles must be strictly monotonic (either direction).
    gamma : ndarray, shape (n_cols,), or None
        Fan angle of every detector column (radians); None for parallel beam.

    Returns
    -------
    ndarray, shape (n_views, n_cols) or (n_views, 1), float64
        Weight of every ray in the angular sum (radians), see the module docstring.
    """
    a = geometry.angles()
    if a.size < 2:
        raise InputError("reconstruction needs at least two views")
    diff = np.diff(a)
    if not (np.all(diff > 0) or np.all(diff < 0)):
        raise InputError("view angles must be strictly increasing or decreasing")
    step = np.abs(np.gradient(a))
    coverage = float(step.sum())
    tol = 0.5 * coverage / a.size
    beta = np.abs(a - a[0]) + 0.5 * step[0]  # position of each view in the sweep
    # Whole periods (pi for parallel, 2 pi for divergent beams) measure every line equally
    # often: keep the views of the whole periods, weighted uniformly.
    period = math.pi if gamma is None else 2 * math.pi
    periods = math.floor((coverage + tol) / period)
    if periods >= 1:
        keep = beta < periods * period
        return (step * keep * (math.pi / (periods * period)))[:, None]
    if gamma is None:
        raise InputError(f"parallel beam needs pi of angular coverage, got {coverage:.4f} rad")
    g_max = float(np.abs(gamma).max())
    if coverage < math.pi + 2 * g_max - tol:
        raise InputError(
            f"a short scan needs pi + fan angle = {math.pi + 2 * g_max:.4f} rad of coverage, "
            f"got {coverage:.4f} rad"
        )
    # Parker's conjugate ray is (b + pi + 2 g', -g'); ours is (a + pi - 2 g, -g) for
    # increasing angles, so g' = -g there.
    delta = 0.5 * (coverage - math.pi)
    g = -gamma[None, :] * np.sign(diff[0])
    x1 = beta[:, None] / np.maximum(delta - g, 1e-12)
    x2 = (math.pi + 2 * delta - beta[:, None]) / np.maximum(delta + g, 1e-12)

    def ramp(x: np.ndarray) -> np.ndarray:
        return np.sin(0.25 * np.pi * np.clip(x, 0.0, 2.0)) ** 2

    return step[:, None] * ramp(x1) * ramp(x2)


def weight_and_filter(
    proj: torch.Tensor,
    geometry: Geometry,
    filter: str,
    cutoff: float,
    *,
    cone: bool,
) -> torch.Tensor:
    """Pre-weight and ramp-filter projections (views, rows, cols) for back-projection.

    Applies the angular weights (:func:`angular_weights`), the divergent-beam cosine
    weights (fan rows each use their own mid-plane, cone rows their tilt), and the ramp
    filter along the columns with the spacing of the geometry (see the module docstring).
    """
    t_mm, s_mm = detector_coords(geometry, (proj.shape[1], proj.shape[2]))
    p_col = geometry.detector_spacing_mm[1]
    if geometry.kind == "parallel":
        weights = angular_weights(geometry, None)[:, None, :]
        spacing, angular = p_col, False
    else:
        sid, sdd = geometry.source_isocenter_mm, geometry.source_detector_mm
        assert sid is not None and sdd is not None
        gamma = fan_angles(geometry, s_mm)
        t = t_mm[:, None] if cone else np.zeros((1, 1))
        if geometry.detector_shape == "flat":
            pre = sdd / np.sqrt(sdd**2 + s_mm[None, :] ** 2 + t**2)
            spacing, angular = p_col * sid / sdd, False
        else:
            pre = sid * np.cos(gamma)[None, :] * sdd / np.sqrt(sdd**2 + t**2)
            spacing, angular = p_col / sdd, True
        weights = angular_weights(geometry, gamma)[:, None, :] * pre[None]
    w = torch.as_tensor(weights, dtype=proj.dtype, device=proj.device)
    return filter_projections(proj * w, spacing, filter, cutoff, angular=angular)


def _rotation_groups(
    angles: np.ndarray, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Group views whose angles differ by multiples of pi / 2.

    Returns
    -------
    base : ndarray, shape (n_groups,)
        Angle of each group's quarter-turn 0 (radians).
    members : ndarray, shape (n_groups, n_slots), int
        View index of each slot, or -1 where the group has no view in that quarter turn.
    quarters : list of int, length n_slots
        Quarter turns (0..3) of the slots.
    """
    if not symmetric:
        return angles.copy(), np.arange(angles.size)[:, None], [0]
    quarter = math.pi / 2
    turns = np.floor(angles / quarter)
    key = np.round((angles - turns * quarter) / _ANGLE_TOL).astype(np.int64)
    wrap = key >= round(quarter / _ANGLE_TOL)
    key[wrap] = 0
    turns = (turns + wrap).astype(np.int64)
    slots: dict[tuple[int, int], list[int]] = {}
    for view, (k, q) in enumerate(zip(key.tolist(), (turns % 4).tolist(), strict=True)):
        copy = 0
        while (k, copy) in slots and slots[(k, copy)][q] >= 0:
            copy += 1
        slots.setdefault((k, copy), [-1, -1, -1, -1])[q] = view
    table = np.array(list(slots.values()), dtype=np.int64)
    used = [q for q in range(4) if (table[:, q] >= 0).any()]
    members = table[:, used]
    # Any member's angle minus its quarter turns gives the group's base angle.
    slot = np.argmax(members >= 0, axis=1)
    base = angles[members[np.arange(len(members)), slot]] - np.asarray(used)[slot] * quarter
    return base, members, used


def backproject(
    q: torch.Tensor,
    geometry: Geometry,
    grid_shape: tuple[int, int, int] | tuple[int, int],
    voxel_size_mm: tuple[float, float, float],
    *,
    view_batch: int = 8,
) -> torch.Tensor:
    """Weighted voxel-driven back-projection of filtered projections.

    Parameters
    ----------
    q : Tensor, shape (n_views, n_rows, n_cols), float32
        Weighted, filtered projections (:func:`weight_and_filter`).
    geometry : Geometry
        Parallel, fan or cone.
    grid_shape : (ny, nx) or (nz, ny, nx)
        Output grid.  (ny, nx) reconstructs every detector row as its own slice
        (parallel and fan); (nz, ny, nx) is a cone-beam volume.
    voxel_size_mm : (float, float, float)
        (z, y, x) voxel size in mm (z is used for cone beam only).
    view_batch : int
        Views (or groups of quarter-turn-related views) sampled per step.

    Returns
    -------
    Tensor, shape (n_rows, ny, nx) or (nz, ny, nx), float32
        Sum over views of the weighted samples, i.e. ``f`` of the module docstring.
    """
    _, n_rows, n_cols = q.shape
    if n_cols < 2 or (len(grid_shape) == 3 and n_rows < 2):
        raise InputError("back-projection needs at least 2 detector columns (and rows for cone)")
    cone = len(grid_shape) == 3
    ny, nx = grid_shape[-2:]
    dz, dy, dx = voxel_size_mm
    dev, f64 = q.device, torch.float64
    x = (torch.arange(nx, dtype=f64, device=dev) - (nx - 1) / 2) * dx
    y = (torch.arange(ny, dtype=f64, device=dev) - (ny - 1) / 2) * dy
    base, members, quarters = _rotation_groups(geometry.angles(), ny == nx and dy == dx)
    n_slots = len(quarters)
    # Views stacked per group as channels; slot without a view -> an appended zero view.
    padded = torch.cat([q, q.new_zeros(1, n_rows, n_cols)])
    groups = padded[torch.as_tensor(members, device=dev)]  # (G, slots, rows, cols)
    depth = grid_shape[0] if cone else n_rows
    acc = q.new_zeros(n_slots, depth, ny, nx)
    if cone:
        inputs = groups
        z_view = geometry.z_mm[0] if geometry.z_mm else 0.0  # the orbit's plane
        z = (torch.arange(depth, dtype=f64, device=dev) - (depth - 1) / 2) * dz - z_view
    else:
        inputs = groups.reshape(len(base), n_slots * n_rows, 1, n_cols)
    (p_row, p_col), (o_row, o_col) = geometry.detector_spacing_mm, geometry.detector_offset_mm
    # grid_sample with align_corners=True: column c at -1 + 2 c / (n_cols - 1).
    ax, bx = 2.0 / (p_col * (n_cols - 1)), 2.0 * o_col / (p_col * (n_cols - 1))
    ar = 2.0 / (p_row * max(n_rows - 1, 1))
    br = o_row * ar
    # One step samples (batch, slots, slab, ny, nx) values.
    per_step = max(1, _STEP_ELEMENTS // (n_slots * ny * nx))
    slab = min(depth, per_step)
    batch = max(1, min(view_batch, per_step // slab))
    sid, sdd = geometry.source_isocenter_mm, geometry.source_detector_mm
    flat = geometry.kind != "parallel" and geometry.detector_shape == "flat"
    scale = float(sid) ** 2 if flat and sid is not None else 1.0  # (R / U)^2 as R^2 (1 / U)^2

    def work(target: torch.Tensor, group_starts: Sequence[int], slabs: Sequence[int]) -> None:
        """Accumulate the view batches starting at ``group_starts`` into slabs of ``target``."""
        # Column coordinates go straight into the x channel of a 2-D grid whose y is 0.
        cols = q.new_zeros(batch, ny, nx, 2)
        grid3 = q.new_empty(batch, slab, ny, nx, 2) if cone else None
        for g0 in group_starts:
            a = torch.as_tensor(base[g0 : g0 + batch], dtype=f64, device=dev)
            b = a.shape[0]
            cos, sin = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
            gx = cols[:b, ..., 0]
            weight = mag = None
            # Per pixel and view: lateral coordinate p.u, depth U = R + p.d, column.
            if geometry.kind == "parallel":
                torch.add((cos * ax * x - bx).float(), (sin * ax * y[:, None]).float(), out=gx)
            else:
                assert sid is not None and sdd is not None
                lat = (cos * x).float() + (sin * y[:, None]).float()
                depth_u = (sid - sin * x).float() + (cos * y[:, None]).float()
                if flat:
                    inv = depth_u.reciprocal_()
                    lat.mul_(sdd * ax)
                    torch.addcmul(torch.tensor(-bx, dtype=q.dtype), lat, inv, out=gx)
                    weight = inv.square()
                    mag = inv.mul_(sdd) if cone else None  # D / U
                else:
                    torch.atan2(lat, depth_u, out=gx)
                    gx.mul_(sdd * ax).sub_(bx)
                    weight = torch.addcmul(depth_u.square_(), lat, lat).reciprocal_()  # 1 / L^2
                    mag = weight.sqrt().mul_(sdd) if cone else None  # D / L
            for s0 in slabs:
                s1 = min(depth, s0 + slab)
                if grid3 is not None:
                    assert mag is not None
                    grid = grid3[:b, : s1 - s0]
                    grid[..., 0] = gx[:, None]
                    zz = (z[s0:s1] * ar).float()[None, :, None, None]
                    torch.addcmul(
                        torch.tensor(-br, dtype=q.dtype), zz, mag[:, None], out=grid[..., 1]
                    )
                    grid = grid.reshape(b, (s1 - s0) * ny, nx, 2)
                    inp = inputs[g0 : g0 + b]
                else:
                    grid = cols[:b]
                    inp = inputs[g0 : g0 + b].view(b, n_slots, n_rows, 1, n_cols)[:, :, s0:s1]
                    inp = inp.reshape(b, n_slots * (s1 - s0), 1, n_cols)
                vals = F.grid_sample(
                    inp, grid, mode="bilinear", padding_mode="zeros", align_corners=True
                )
                vals = vals.view(b, n_slots, s1 - s0, ny, nx)
                part = target[:, s0:s1]
                for i in range(b):
                    if weight is None:
                        part.add_(vals[i])
                    else:
                        part.addcmul_(vals[i], weight[i], value=scale)

    group_starts = list(range(0, len(base), batch))
    slab_starts = list(range(0, depth, slab))
    workers = torch.get_num_threads() if dev.type == "cpu" else 1
    if workers == 1:
        work(acc, group_starts, slab_starts)
    else:
        # One single-threaded worker per core: many medium-sized ops run much faster this
        # way than with OpenMP teams (no barrier per op; robust on a busy machine).  Split
        # by z-slab (disjoint parts of ``acc``), or, for a small ``acc``, by views with an
        # accumulator each.
        by_slab = len(slab_starts) >= workers or acc.numel() > _STEP_ELEMENTS
        if by_slab:
            workers = min(workers, len(slab_starts))
            parts = [acc]
            jobs = [(acc, group_starts, slab_starts[k::workers]) for k in range(workers)]
        else:
            parts = [acc] + [torch.zeros_like(acc) for _ in range(workers - 1)]
            jobs = [(parts[k], group_starts[k::workers], slab_starts) for k in range(workers)]
        with one_torch_thread(), ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(work, *job) for job in jobs]:
                future.result()
        for extra in parts[1:]:
            acc += extra
    out = acc[0].clone()
    for slot in range(1, n_slots):
        out += torch.rot90(acc[slot], -quarters[slot], dims=(-2, -1))
    return out


def voxel_size(
    value: float | Sequence[float] | None, default: tuple[float, float, float]
) -> tuple[float, float, float]:
    """A voxel size given as a scalar or (z, y, x) in mm, checked; ``default`` if None."""
    if value is None:
        return default
    values = np.asarray(value, dtype=np.float64).ravel()
    sizes = [float(v) for v in values] * (3 if values.size == 1 else 1)
    if len(sizes) != 3 or not all(v > 0 and math.isfinite(v) for v in sizes):
        raise InputError(f"voxel_size_mm must be positive, scalar or (z, y, x), got {value}")
    return (sizes[0], sizes[1], sizes[2])


def default_grid(geometry: Geometry, n_cols: int, pixel_size_mm: float | None) -> tuple[int, float]:
    """Default image width (pixels) and pixel size (mm): the detector at the isocentre."""
    pitch = geometry.detector_spacing_mm[1] / geometry.magnification
    size = float(pixel_size_mm) if pixel_size_mm is not None else pitch
    if not size > 0:
        raise InputError(f"pixel/voxel size must be positive, got {pixel_size_mm}")
    return n_cols, size


def fbp(
    projections: np.ndarray | torch.Tensor,
    geometry: Geometry,
    image_shape: tuple[int, int] | None = None,
    pixel_size_mm: float | None = None,
    filter: str = "ram-lak",
    cutoff: float = 1.0,
    *,
    rows: int | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    view_batch: int = 8,
) -> np.ndarray:
    """Filtered back-projection of parallel-beam or fan-beam projections.

    Each detector row is reconstructed as its own 2-D slice (a fan-beam stack has one
    source per row, see :mod:`ctpress.sim.projector`).  Full and short scans are detected
    from the angular coverage (module docstring); short fan-beam scans get Parker weights.

    Parameters
    ----------
    projections : ndarray or Tensor, shape (n_views, n_cols) or (n_views, n_rows, n_cols)
        Line integrals (dimensionless).  A CUDA tensor is reconstructed on its device.
    geometry : Geometry
        ``parallel`` or ``fan`` geometry with one angle per view (flat or cylindrical
        detector; distances in mm).
    image_shape : (ny, nx), optional
        Output grid, centred on the isocentre; default (n_cols, n_cols).
    pixel_size_mm : float, optional
        Pixel size in mm; default the column pitch scaled to the isocentre.
    filter : {"ram-lak", "shepp-logan", "cosine", "hann"}
        Apodisation window of the ramp filter.
    cutoff : float
        Filter cut-off as a fraction of Nyquist, in (0, 1].
    rows : int or sequence of int, optional
        Detector rows to reconstruct (default all).
    device : torch.device or str, optional
        Where to compute; default the tensor's device, or the CPU for an array.
    view_batch : int
        Views sampled per back-projection step (bounds memory together with an internal
        limit of about 32 MB per temporary).

    Returns
    -------
    ndarray, shape (n_sel_rows, ny, nx), or (ny, nx) for 2-D input or an int ``rows``
        Attenuation in 1/mm (axes (y, x) as the projector's), float32.
    """
    proj = as_projection_tensor(projections, device)
    check_geometry(geometry, proj.shape[0], ("parallel", "fan"))
    squeeze = proj.shape[1] == 1 or isinstance(rows, int | np.integer)
    if rows is not None:
        sel = [int(rows)] if isinstance(rows, int | np.integer) else [int(r) for r in rows]
        if not sel or min(sel) < -proj.shape[1] or max(sel) >= proj.shape[1]:
            raise InputError(f"rows {rows} out of range for {proj.shape[1]} detector rows")
        proj = proj[:, sel]
    n, size = default_grid(geometry, proj.shape[2], pixel_size_mm)
    shape = (n, n) if image_shape is None else (int(image_shape[0]), int(image_shape[1]))
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"image_shape must be (ny, nx), got {image_shape}")
    if view_batch < 1:
        raise InputError(f"view_batch must be >= 1, got {view_batch}")
    with torch.no_grad():
        q = weight_and_filter(proj, geometry, filter, cutoff, cone=False)
        image = backproject(q, geometry, shape, (size, size, size), view_batch=view_batch)
    out = image.cpu().numpy()
    return out[0] if squeeze else out
