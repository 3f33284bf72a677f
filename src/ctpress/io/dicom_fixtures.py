"""Realistic DICOM-CT-PD fixture series built with pydicom from the documented tags.

No DICOM-CT-PD sample file is public, so tests and the simulator build series with
:func:`make_ctpd_series`; the files come from the same code as
:func:`ctpress.io._dicom_ctpd.write_fresh` and read back with
:func:`ctpress.io._dicom_ctpd.read_ctpd`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..scan import Geometry, Scan
from ._dicom_ctpd import write_fresh

__all__ = ["FFS_MODES", "make_ctpd_series"]

#: Flying-focal-spot modes; each maps a view index to (angular, axial) shift signs.
FFS_MODES: dict[str, tuple[tuple[int, int], ...]] = {
    "FFSNONE": ((0, 0),),
    "FFSZ": ((0, 1), (0, -1)),
    "FFSXY": ((1, 0), (-1, 0)),
    "FFSXYZ": ((1, 1), (-1, 1), (1, -1), (-1, -1)),
}


def make_ctpd_series(
    out_dir: str | os.PathLike[str],
    projections_uint16: np.ndarray,
    geometry: Geometry,
    *,
    ffs_mode: str = "FFSNONE",
    implicit_vr: bool = False,
    rescale_slope: float = 0.00019311177675,
    rescale_intercept: float = -0.1977421025986,
    mu_water_per_mm: float | None = 0.0192,
    photon_statistics: np.ndarray | None = None,
    filenames: Sequence[str] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write a DICOM-CT-PD series, one projection per file, into ``out_dir``.

    Files get random names (from ``seed``) so that a directory listing is not in
    acquisition order, like real exports; ``InstanceNumber`` counts views from 1.

    Parameters
    ----------
    out_dir : str or PathLike
        Directory to write into (created if missing; existing files are kept, so two
        calls make a mixed directory).
    projections_uint16 : ndarray of uint16, shape (n_views, det_rows, det_cols)
        Stored values (line integral = stored * slope + intercept).
    geometry : Geometry
        Fan, cone or helical geometry with one angle per view.
    ffs_mode : {"FFSNONE", "FFSZ", "FFSXY", "FFSXYZ"}
        Flying focal spot: per-view source shifts alternate by a quarter detector
        element (angular: ``col_pitch / (4 SDD)`` rad; axial: a quarter row at the
        isocentre, ``row_pitch SID / (4 SDD)`` mm); radial shifts are 0.
    implicit_vr : bool
        Write Implicit VR Little Endian (private elements then carry no VR) instead of
        Explicit VR Little Endian.
    rescale_slope, rescale_intercept : float
        RescaleSlope / RescaleIntercept (defaults: the Siemens example).
    mu_water_per_mm : float or None
        Water attenuation coefficient (7041,1001); None leaves it out.
    photon_statistics : ndarray, shape (n_views, det_cols), optional
        Incident counts per channel; default: about 1e5 with 5 % random variation.
    filenames : sequence of str, optional
        File name per view in acquisition order; default: random hex names.
    seed : int
        Seeds the file names, photon statistics and UIDs (different seeds: different
        series).

    Returns
    -------
    list of Path
        The written files in acquisition order.
    """
    arr = np.asarray(projections_uint16)
    if arr.dtype != np.uint16 or arr.ndim != 3:
        raise InputError(
            f"projections must be uint16 (views, rows, cols), got {arr.dtype} {arr.shape}"
        )
    if ffs_mode not in FFS_MODES:
        raise InputError(f"ffs_mode must be one of {', '.join(FFS_MODES)}, got {ffs_mode!r}")
    if geometry.source_detector_mm is None or geometry.source_isocenter_mm is None:
        raise InputError("DICOM-CT-PD fixtures need a fan, cone or helical geometry")
    n, _, cols = arr.shape
    rng = np.random.default_rng(seed)
    if filenames is None:
        filenames = [f"{rng.bytes(6).hex()}.dcm" for _ in range(n)]
    if photon_statistics is None:
        photon_statistics = 1e5 * (1 + 0.05 * rng.standard_normal((n, cols)))
    row_pitch, col_pitch = geometry.detector_spacing_mm
    sdd, sid = geometry.source_detector_mm, geometry.source_isocenter_mm
    signs = np.array(FFS_MODES[ffs_mode])[np.arange(n) % len(FFS_MODES[ffs_mode])]
    steps = np.abs(np.diff(geometry.angles()))
    scan = Scan(
        arr,
        geometry=geometry,
        metadata={
            "rescale_slope": rescale_slope,
            "rescale_intercept": rescale_intercept,
            "ffs_mode": ffs_mode,
            "source_angular_steps": round(2 * math.pi / np.median(steps)) if n > 1 else 1,
            "corrections": {
                k: "YES"
                for k in (
                    "BeamHardeningCorrectionFlag",
                    "GainCorrectionFlag",
                    "DarkFieldCorrectionFlag",
                    "FlatFieldCorrectionFlag",
                    "BadPixelCorrectionFlag",
                    "ScatterCorrectionFlag",
                    "LogFlag",
                )
            },
            "dicom_filenames": list(filenames),
            **({} if mu_water_per_mm is None else {"mu_water_per_mm": mu_water_per_mm}),
        },
        aux={
            "ffs_angular_shift_rad": (signs[:, 0] * col_pitch / (4 * sdd)).astype(np.float32),
            "ffs_axial_shift_mm": (signs[:, 1] * row_pitch * sid / (4 * sdd)).astype(np.float32),
            "ffs_radial_shift_mm": np.zeros(n, np.float32),
            "time_stamp": (np.arange(n) * 0.5e-3).astype(np.float32),
            "photon_statistics": np.asarray(photon_statistics, np.float32),
        },
    )
    return write_fresh(scan, Path(out_dir), implicit_vr=implicit_vr, seed=seed)
