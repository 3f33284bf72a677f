"""Simulated CT scans: volume -> line integrals -> Poisson counts -> stored projections.

Geometry is fitted to the volume (:func:`fit_geometry`) so that the whole volume stays
inside the field of view in every view, with clinical proportions (Siemens DICOM-CT-PD:
source-isocentre 595 mm and source-detector 1085.6 mm for a 500 mm field of view) scaled
to the object.  Stored ``uint16`` line integrals follow DICOM-CT-PD's rescale convention:
``value = stored * rescale_slope + rescale_intercept``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..scan import DetectorShape, Geometry, GeometryKind, Scan
from .phantom import (
    DEFAULT_VOLUME_NAME,
    MU_WATER_PER_MM,
    hu_to_mu,
    load_default_volume,
    shepp_logan_3d,
)
from .projector import _voxel_size, forward_project

__all__ = ["clinical_views", "default_scan", "fit_geometry", "quantise_uint16", "simulate_scan"]

#: Clinical proportions: source-isocentre / field-of-view radius, and SDD / SID.
_SID_PER_FOV_RADIUS = 595.0 / 250.0
_SDD_PER_SID = 1085.6 / 595.0
#: The clinical scanner of these proportions (Siemens, DICOM-CT-PD; ``../shared/data``):
#: 1152 views per turn, channels of 1.2858 mm at the detector (0.705 mm at the isocentre).
CLINICAL_VIEWS_PER_TURN = 1152
CLINICAL_CHANNEL_MM = 1.2858
#: Relative margin of the detector around the projected volume.
_MARGIN = 1.03
#: Helical collimation at the isocentre, as a fraction of the volume's z extent.
_HELICAL_COLLIMATION = 0.5
#: Output types of :func:`simulate_scan`.
OUTPUTS = ("uint16", "float32", "counts")


def clinical_views(geometry: Geometry) -> int:
    """Views per turn at the clinical scanner's angular step per channel width (at the
    isocentre): a detector whose channels are ``k`` times as wide there takes ``k`` times
    fewer views than the :data:`CLINICAL_VIEWS_PER_TURN` of channels of
    :data:`CLINICAL_CHANNEL_MM`.  Fan and cone beam (a turn is 360 degrees)."""
    sid, sdd = geometry.source_isocenter_mm, geometry.source_detector_mm
    if sid is None or sdd is None:
        raise InputError(f"clinical_views needs a fan or cone geometry, not {geometry.kind}")
    channel_mm = geometry.detector_spacing_mm[1] * sid / sdd
    clinical_mm = CLINICAL_CHANNEL_MM / _SDD_PER_SID
    return round(CLINICAL_VIEWS_PER_TURN * clinical_mm / channel_mm)


def fit_geometry(
    kind: GeometryKind,
    n_views: int,
    det_shape: tuple[int, int],
    extent_mm: tuple[float, float, float],
    *,
    detector_shape: DetectorShape = "flat",
    helical_pitch: float = 1.0,
) -> Geometry:
    """Geometry whose field of view holds a centred box of size ``extent_mm`` (z, y, x).

    Parameters
    ----------
    kind : {"parallel", "fan", "cone", "helical"}
        Beam geometry.  Parallel covers 180 degrees, the others 360 degrees per turn.
    n_views : int
        Number of views (all turns together for helical).
    det_shape : (int, int)
        (det_rows, det_cols).
    extent_mm : (float, float, float)
        Size of the object's support (z, y, x) in mm, centred on the isocentre.
    detector_shape : {"flat", "cylindrical"}
        Detector of fan, cone and helical geometries.
    helical_pitch : float
        Table feed per turn over the collimation at the isocentre (helical only).

    Returns
    -------
    Geometry
        Transaxially, the detector spans the object's circumscribed circle (plus 3 %).
        Parallel and fan rows are stacked planes spanning the z extent; cone rows span it
        at the largest magnification (the volume is seen whole in every view); helical
        rows span half the z extent at the isocentre and the source travels over the
        volume plus one collimation, ``z_mm`` rising with the angle.
    """
    n_rows, n_cols = det_shape
    ext_z, ext_y, ext_x = extent_mm
    if n_views < 1 or n_rows < 1 or n_cols < 1:
        raise InputError(f"need n_views, det_rows, det_cols >= 1, got {n_views}, {det_shape}")
    radius = 0.5 * math.hypot(ext_x, ext_y) * _MARGIN
    if kind == "parallel":
        return Geometry.parallel(n_views, detector_spacing_mm=(ext_z / n_rows, 2 * radius / n_cols))
    if kind not in ("fan", "cone", "helical"):
        raise InputError(f"geometry kind must be parallel, fan, cone or helical, got {kind!r}")
    sid = _SID_PER_FOV_RADIUS * radius
    sdd = _SDD_PER_SID * sid
    half_fan = math.asin(radius / sid)
    if detector_shape == "flat":
        col_pitch = 2 * sdd * math.tan(half_fan) / n_cols
    else:
        col_pitch = 2 * sdd * half_fan / n_cols
    angles = np.arange(n_views) * (2 * math.pi / n_views)
    z_mm = None
    if kind == "fan":
        row_pitch = ext_z / n_rows
    elif kind == "cone":
        row_pitch = ext_z * _MARGIN * sdd / (sid - radius) / n_rows
    else:
        if not helical_pitch > 0:
            raise InputError(f"helical_pitch must be positive, got {helical_pitch}")
        collimation = _HELICAL_COLLIMATION * ext_z
        row_pitch = collimation * sdd / sid / n_rows
        travel = ext_z + collimation
        feed = helical_pitch * collimation
        angles *= travel / feed
        z_mm = tuple(-travel / 2 + feed * angles / (2 * math.pi))
    return Geometry(
        kind=kind,
        angles_rad=tuple(angles),
        source_isocenter_mm=sid,
        source_detector_mm=sdd,
        detector_spacing_mm=(row_pitch, col_pitch),
        detector_shape=detector_shape,
        z_mm=z_mm,
    )


def quantise_uint16(line_integrals: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Store line integrals as uint16 with a power-of-two rescale slope.

    The slope is the smallest power of two for which the data's range (including 0 and
    any negative noise values) fits in 0..65535, so the largest value uses between half
    and all of the 16-bit range (e.g. slope 2**-13 for line integrals up to 8); the
    intercept is a multiple of the slope at or below ``min(0, data.min())``.

    Parameters
    ----------
    line_integrals : ndarray, float
        Any shape.

    Returns
    -------
    stored : ndarray, same shape, uint16
        ``round((value - intercept) / slope)``.
    slope, intercept : float
        ``value ~= stored * slope + intercept``, error at most ``slope / 2``.
    """
    lo = min(0.0, float(line_integrals.min()))
    span = float(line_integrals.max()) - lo
    exponent = math.floor(math.log2(65534.0 / span)) if span > 0 else 12
    slope = 2.0**-exponent
    intercept = math.floor(lo / slope) * slope
    stored = np.rint((line_integrals.astype(np.float64) - intercept) / slope)
    return np.clip(stored, 0, 65535).astype(np.uint16), slope, intercept


def _volume_mu(
    volume_hu: np.ndarray | str | None,
    voxel_size_mm: float | tuple[float, float, float] | None,
    mu_water_per_mm: float,
) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """Attenuation volume (z, y, x) in 1/mm, its voxel size and a provenance label."""
    if volume_hu is None:
        hu, default_voxel = load_default_volume()
        mu, label = hu_to_mu(hu, mu_water_per_mm), DEFAULT_VOLUME_NAME
    elif isinstance(volume_hu, str):
        if volume_hu != "shepp_logan":
            raise InputError(f"unknown phantom {volume_hu!r}; use 'shepp_logan' or an array")
        mu, default_voxel, label = shepp_logan_3d(64, mu_water_per_mm), 4.0, "shepp_logan_3d(64)"
    else:
        hu = np.asarray(volume_hu)
        if hu.ndim not in (2, 3) or hu.size == 0:
            raise InputError(f"volume must be a 2-D or 3-D HU array, got shape {hu.shape}")
        mu = hu_to_mu(hu if hu.ndim == 3 else hu[None], mu_water_per_mm)
        default_voxel, label = 1.0, f"user volume {list(hu.shape)}"
    return mu, _voxel_size(default_voxel if voxel_size_mm is None else voxel_size_mm), label


def simulate_scan(
    volume_hu: np.ndarray | str | None = None,
    *,
    geometry_kind: GeometryKind = "cone",
    n_views: int | None = 180,
    det_rows: int = 16,
    det_cols: int = 128,
    voxel_size_mm: float | tuple[float, float, float] | None = None,
    i0: float | None = 1e5,
    dtype: str = "uint16",
    seed: int = 0,
    detector_shape: DetectorShape = "flat",
    helical_pitch: float = 1.0,
    geometry: Geometry | None = None,
    mu_water_per_mm: float = MU_WATER_PER_MM,
    step_mm: float | None = None,
) -> Scan:
    """Simulate a CT scan of a volume.

    Parameters
    ----------
    volume_hu : ndarray, "shepp_logan" or None
        HU volume (z, y, x), or a 2-D (y, x) slice (one slice thick), centred on the
        isocentre; ``"shepp_logan"``: the 64^3 3-D Shepp-Logan phantom (4 mm voxels by
        default); None: the embedded real volume (:func:`~.phantom.load_default_volume`).
    geometry_kind : {"parallel", "fan", "cone", "helical"}
        Beam geometry, fitted to the volume by :func:`fit_geometry`.
    n_views, det_rows, det_cols : int
        Projection stack shape; ``n_views`` None (fan and cone beam): one turn at the
        clinical angular step per channel width, :func:`clinical_views` of the fitted
        geometry.
    voxel_size_mm : float or (float, float, float), optional
        Voxel size (isotropic or (z, y, x)); default: the embedded volume's own (3 mm),
        4 mm for the phantom, 1 mm for arrays.
    i0 : float or None
        Incident photons per detector pixel for Poisson noise; None: noiseless.
    dtype : {"uint16", "float32", "counts"}
        Output: line integrals quantised to uint16 (:func:`quantise_uint16`), float32
        line integrals, or raw detector counts (uint16 when they fit, else uint32).
    seed : int
        Seed of the noise generator (same seed, same scan).
    detector_shape : {"flat", "cylindrical"}
        Detector of fan, cone and helical geometries.
    helical_pitch : float
        Table feed per turn over the collimation (helical only).
    geometry : Geometry, optional
        Use this geometry instead of fitting one (``geometry_kind``, ``n_views``,
        ``detector_shape`` and ``helical_pitch`` are then ignored).
    mu_water_per_mm : float
        Attenuation of water for the HU conversion, 1/mm.
    step_mm : float, optional
        Ray-marching step (default half a voxel, see :func:`~.projector.forward_project`).

    Returns
    -------
    Scan
        Projections (n_views, det_rows, det_cols).  Metadata: ``units``
        ("line_integral" or "counts"), ``i0``, ``rescale_slope``, ``rescale_intercept``,
        ``mu_water_per_mm``, ``origin`` and ``simulation`` (volume, seed, voxel size).
        Line integrals are ``-log(max(counts, 1) / i0)``.
    """
    if dtype not in OUTPUTS:
        raise InputError(f"dtype must be one of {OUTPUTS}, got {dtype!r}")
    if i0 is not None and not i0 > 0:
        raise InputError(f"i0 must be positive or None, got {i0}")
    if dtype == "counts" and i0 is None:
        raise InputError("dtype='counts' needs an incident count i0")
    mu, voxel, label = _volume_mu(volume_hu, voxel_size_mm, mu_water_per_mm)
    if geometry is None:
        # The projector's support: the volume grown by half a voxel on every side.
        extent = (
            (mu.shape[0] + 1) * voxel[0],
            (mu.shape[1] + 1) * voxel[1],
            (mu.shape[2] + 1) * voxel[2],
        )
        if n_views is None and geometry_kind not in ("fan", "cone"):
            raise InputError(
                f"n_views=None (clinical sampling) needs fan or cone beam, not {geometry_kind}"
            )

        def fitted(views: int) -> Geometry:
            return fit_geometry(
                geometry_kind,
                views,
                (det_rows, det_cols),
                extent,
                detector_shape=detector_shape,
                helical_pitch=helical_pitch,
            )

        # the detector's fit does not depend on the view count
        geometry = fitted(n_views if n_views is not None else 8)
        if n_views is None:
            geometry = fitted(clinical_views(geometry))
    proj = forward_project(mu, voxel, geometry, (det_rows, det_cols), step_mm=step_mm)
    slope, intercept, units = 1.0, 0.0, "line_integral"
    counts = None
    if i0 is not None:
        counts = np.random.default_rng(seed).poisson(i0 * np.exp(-proj.astype(np.float64)))
        proj = -np.log(np.maximum(counts, 1) / i0)
    if counts is not None and dtype == "counts":
        data = counts.astype(np.uint16 if counts.max() <= 65535 else np.uint32)
        units = "counts"
    elif dtype == "uint16":
        data, slope, intercept = quantise_uint16(proj)
    else:
        data = proj.astype(np.float32)
    metadata = {
        "units": units,
        "i0": None if i0 is None else float(i0),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "mu_water_per_mm": mu_water_per_mm,
        "origin": f"ctpress.sim.simulate_scan of {label}, seed {seed}",
        "simulation": {
            "volume": label,
            "volume_shape": list(mu.shape),
            "voxel_size_mm": list(voxel),
            "seed": seed,
            "noise": "none" if i0 is None else "poisson",
            "step_mm": step_mm if step_mm is not None else 0.5 * min(voxel),
        },
    }
    return Scan(data, geometry=geometry, metadata=metadata)


def default_scan() -> Scan:
    """The embedded default scan (used by ``ctpress demo``).

    Cone beam with a cylindrical detector like a clinical scanner, of the embedded
    abdominal CT volume: 360 views x 16 rows x 192 columns, Poisson noise at
    ``i0 = 1e5``, uint16 quantised line integrals, seed 0.  Takes a few seconds on two
    CPU cores.

    Returns
    -------
    Scan
        Shape (360, 16, 192), dtype uint16, with geometry and metadata.
    """
    return simulate_scan(
        None,
        geometry_kind="cone",
        n_views=360,
        det_rows=16,
        det_cols=192,
        detector_shape="cylindrical",
        i0=1e5,
        dtype="uint16",
        seed=0,
    )
