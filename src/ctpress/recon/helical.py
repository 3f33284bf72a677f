"""Helical fan-beam data to 2-D fan-beam sinograms per slice (single-slice rebinning).

For a slice at axial position ``z_s`` and a view whose (effective) source sits at
``z_v``, the detector row whose central ray crosses the rotation axis at ``z_s`` has
detector coordinate ``t = (z_s - z_v) * SDD / SID`` (mm at the detector).  The view's
contribution to the slice is that row, interpolated linearly between the two nearest
rows.  Taking a full rotation of views centred on the view with ``z_v = z_s`` (or, when
the pitch is too high for that, the shortest centred window of pi + fan angle, which
:func:`~ctpress.recon.fbp` reconstructs with Parker weights) gives an ordinary fan-beam
sinogram.  The approximation ignores the cone angle across columns (single-slice
rebinning, Noo et al. 1999), which is small for clinical 64-row scanners near the axis.

Flying focal spot: the per-view source shifts stored by the DICOM-CT-PD reader
(``aux["ffs_angular_shift_rad"]``, ``aux["ffs_axial_shift_mm"]``) are added to the
view's angle and axial position, so FFS data rebins with its true source positions
(the radial shift is ignored).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import InputError
from ..scan import Geometry, Scan
from .fbp import fbp
from .units import line_integrals


def _source_positions(scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """Effective source angle (rad) and axial position (mm) of every view."""
    g = scan.geometry
    if g is None or g.kind != "helical" or g.z_mm is None:
        raise InputError("helical rebinning needs a helical geometry with per-view z_mm")
    if g.n_views != scan.shape[0]:
        raise InputError(f"geometry has {g.n_views} angles for {scan.shape[0]} views")
    nominal_z = np.asarray(g.z_mm, dtype=np.float64)
    if not (np.all(np.diff(nominal_z) >= 0) or np.all(np.diff(nominal_z) <= 0)):
        raise InputError("helical z_mm must be monotonic along the views")
    # angles may be stored modulo 2 pi (DICOM-CT-PD): unwrap them into one continuous turn
    angles = np.unwrap(g.angles()) + scan.aux.get("ffs_angular_shift_rad", 0.0)
    z = nominal_z + scan.aux.get("ffs_axial_shift_mm", 0.0)
    return np.asarray(angles, np.float64), z


def _row_coordinate(geometry: Geometry, n_rows: int, t_mm: np.ndarray) -> np.ndarray:
    """Fractional detector row index of detector coordinate ``t_mm`` (mm at the detector)."""
    pitch, offset = geometry.detector_spacing_mm[0], geometry.detector_offset_mm[0]
    return (t_mm - offset) / pitch + (n_rows - 1) / 2


def covered_slice_range(scan: Scan) -> tuple[float, float]:
    """Axial range (mm) in which every slice gets at least a short scan of data."""
    assert scan.geometry is not None
    angles, z = _source_positions(scan)
    step = float(np.mean(np.abs(np.diff(angles))))
    fan = _fan_angle(scan.geometry, scan.shape[2])
    half = math.ceil((math.pi + fan) / step / 2) + 1
    g = scan.geometry
    height = scan.shape[1] * g.detector_spacing_mm[0] / g.magnification  # at the isocentre
    window_span = float(np.abs(z[min(2 * half, len(z) - 1)] - z[0]))
    if 2 * half >= len(z) or window_span > height:
        raise InputError(
            "the helical scan is too short (or its pitch too high for its detector height) to "
            "reconstruct any slice: a slice needs pi + fan angle of views within the detector"
        )
    lo, hi = sorted((float(z[half]), float(z[-half - 1])))
    return lo, hi


def _fan_angle(geometry: Geometry, n_cols: int) -> float:
    """Full fan angle (rad) spanned by the detector columns."""
    sdd = geometry.source_detector_mm
    assert sdd is not None
    pitch, offset = geometry.detector_spacing_mm[1], geometry.detector_offset_mm[1]
    s = np.abs((np.array([0, n_cols - 1]) - (n_cols - 1) / 2) * pitch + offset).max()
    half = s / sdd if geometry.detector_shape == "cylindrical" else math.atan(s / sdd)
    return 2 * float(half)


def rebin_helical(scan: Scan, slice_positions_mm: np.ndarray | list[float]) -> list[Scan]:
    """Rebin a helical scan to one 2-D fan-beam sinogram per slice position.

    Parameters
    ----------
    scan : Scan
        Helical scan (n_views, det_rows, det_cols) of line integrals (float) — use
        :func:`ctpress.recon.line_integrals` first for stored or count data.
    slice_positions_mm : sequence of float
        Axial slice positions, mm, in the coordinates of ``geometry.z_mm``.

    Returns
    -------
    list of Scan
        For every slice a fan-beam scan of shape (n_sel_views, 1, det_cols) whose geometry
        holds the selected views' angles; ``metadata["slice_z_mm"]`` records the position.
    """
    g = scan.geometry
    angles, z = _source_positions(scan)
    assert g is not None and g.source_isocenter_mm is not None and g.source_detector_mm is not None
    _, n_rows, n_cols = scan.shape
    step = float(np.mean(np.abs(np.diff(angles))))
    per_rotation = round(2 * math.pi / step)
    short = math.ceil((math.pi + _fan_angle(g, n_cols)) / step) + 2
    data = scan.array().astype(np.float32, copy=False)
    fan_geometry = Geometry(
        kind="fan",
        source_isocenter_mm=g.source_isocenter_mm,
        source_detector_mm=g.source_detector_mm,
        detector_spacing_mm=g.detector_spacing_mm,
        detector_shape=g.detector_shape,
        detector_offset_mm=(0.0, g.detector_offset_mm[1]),
    )
    sinograms = []
    for z_s in np.asarray(slice_positions_mm, dtype=np.float64):
        rows = _row_coordinate(g, n_rows, (z_s - z) * g.magnification)
        valid = (rows >= 0) & (rows <= n_rows - 1)
        centre = int(np.argmin(np.abs(z - z_s)))
        window = _centred_window(valid, centre, (per_rotation, short))
        if window is None:
            raise InputError(
                f"slice z = {z_s:.2f} mm is not covered by enough views (need pi + fan angle "
                f"of data); reconstructable range: {covered_slice_range(scan)} mm"
            )
        start, stop = window
        r = rows[start:stop]
        lower = np.clip(np.floor(r).astype(int), 0, max(n_rows - 2, 0))
        frac = (r - lower).astype(np.float32)[:, None]
        idx = np.arange(start, stop)
        upper = np.minimum(lower + 1, n_rows - 1)
        sino = data[idx, lower] * (1 - frac) + data[idx, upper] * frac
        geometry = replace(fan_geometry, angles_rad=tuple(angles[start:stop]))
        metadata = dict(scan.metadata, slice_z_mm=float(z_s), units="line_integral")
        for key in ("rescale_slope", "rescale_intercept"):
            metadata.pop(key, None)
        sinograms.append(Scan(sino[:, None, :], geometry, metadata))
    return sinograms


def _centred_window(
    valid: np.ndarray, centre: int, lengths: tuple[int, ...]
) -> tuple[int, int] | None:
    """The first of ``lengths`` (views) that fits in ``valid`` centred on ``centre``."""
    for length in lengths:
        start = centre - length // 2
        start = min(max(start, 0), len(valid) - length)
        if start >= 0 and valid[start : start + length].all():
            return start, start + length
    return None


def reconstruct_helical(
    scan: Scan,
    slice_positions_mm: np.ndarray | list[float] | None = None,
    image_shape: tuple[int, int] | None = None,
    pixel_size_mm: float | None = None,
    **fbp_options: object,
) -> tuple[np.ndarray, np.ndarray]:
    """Rebin a helical scan and reconstruct slices by fan-beam FBP.

    Parameters
    ----------
    scan : Scan
        Helical scan; stored/count values are converted with
        :func:`ctpress.recon.line_integrals`.
    slice_positions_mm : sequence of float, optional
        Axial positions; default every detector-row pitch (at the isocentre) across
        :func:`covered_slice_range`.
    image_shape, pixel_size_mm, **fbp_options
        Passed to :func:`ctpress.recon.fbp`.

    Returns
    -------
    z_mm : ndarray, shape (n_slices,)
    volume : ndarray, shape (n_slices, ny, nx)
        Attenuation in 1/mm.
    """

    g = scan.geometry
    integrals = Scan(line_integrals(scan), g, scan.metadata, scan.aux)
    if slice_positions_mm is None:
        assert g is not None
        lo, hi = covered_slice_range(integrals)
        spacing = g.detector_spacing_mm[0] / g.magnification
        slice_positions_mm = np.arange(lo, hi + 1e-9, spacing)
    z_mm = np.asarray(slice_positions_mm, dtype=np.float64)
    slices = [
        fbp(s.projections, s.geometry, image_shape, pixel_size_mm, **fbp_options)  # type: ignore[arg-type]
        for s in rebin_helical(integrals, z_mm)
    ]
    return z_mm, np.stack([np.asarray(s).reshape(s.shape[-2:]) for s in slices])
