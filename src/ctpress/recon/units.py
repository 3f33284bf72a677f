"""Unit conversions (stored values to line integrals, attenuation to HU) and the
reconstructable field of view."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..scan import Geometry, Scan
from ..sim.phantom import MU_WATER_PER_MM, hu_to_mu
from .fbp import detector_coords, fan_angles

__all__ = ["field_of_view_mask", "hu_to_mu", "line_integrals", "mu_to_hu"]


def mu_to_hu(mu: np.ndarray, mu_water_per_mm: float = MU_WATER_PER_MM) -> np.ndarray:
    """Convert linear attenuation to Hounsfield units (inverse of :func:`hu_to_mu`).

    ``HU = 1000 (mu - mu_water) / mu_water``.

    Parameters
    ----------
    mu : ndarray
        Any shape, attenuation in 1/mm.
    mu_water_per_mm : float
        Attenuation of water in 1/mm.

    Returns
    -------
    ndarray, same shape, float32
        Hounsfield units (air about -1000, water 0).
    """
    if not mu_water_per_mm > 0:
        raise InputError(f"mu_water_per_mm must be positive, got {mu_water_per_mm}")
    mu = np.asarray(mu, dtype=np.float32)
    return (1000.0 * (mu - mu_water_per_mm) / mu_water_per_mm).astype(np.float32)


def field_of_view_mask(
    image_shape: tuple[int, ...],
    pixel_size_mm: float,
    geometry: Geometry,
    n_cols: int,
) -> np.ndarray:
    """Pixels seen by the detector from every view (the scanner's field of view).

    The field of view is the disc about the rotation axis whose radius is the distance
    to it of the outermost rays through the centres of the first and last detector
    columns (the nearer of the two); cone-beam truncation along z is not modelled.

    Parameters
    ----------
    image_shape : (ny, nx) or (nz, ny, nx)
        Grid centred on the isocentre (projector conventions).
    pixel_size_mm : float
        In-plane pixel size in mm.
    geometry : Geometry
        Acquisition geometry (its detector columns' spacing and offset are used).
    n_cols : int
        Detector columns.

    Returns
    -------
    ndarray of bool, shape ``image_shape``
        True inside the field of view.
    """
    if len(image_shape) not in (2, 3) or not pixel_size_mm > 0 or n_cols < 1:
        raise InputError("need a 2-D or 3-D image_shape, pixel_size_mm > 0 and n_cols >= 1")
    _, s = detector_coords(geometry, (1, n_cols))
    if geometry.kind == "parallel":
        edges = s[[0, -1]]
    else:
        sid = geometry.source_isocenter_mm
        assert sid is not None
        edges = sid * np.sin(fan_angles(geometry, s[[0, -1]]))
    radius = max(0.0, min(-float(edges[0]), float(edges[1])))
    ny, nx = image_shape[-2:]
    y = (np.arange(ny) - (ny - 1) / 2) * pixel_size_mm
    x = (np.arange(nx) - (nx - 1) / 2) * pixel_size_mm
    mask = np.hypot(y[:, None], x[None, :]) <= radius + 1e-9 * max(radius, 1.0)
    return np.broadcast_to(mask, tuple(image_shape)).copy()


#: Smallest count, as a fraction of ``i0``, when converting counts to line integrals.
_MIN_TRANSMISSION = 1e-6


def line_integrals(scan: Scan, i0: float | None = None) -> np.ndarray:
    """Projections of ``scan`` as line integrals, float32 (n_views, rows, cols).

    Stored values are first rescaled (``value = stored * rescale_slope +
    rescale_intercept`` when the metadata has either key).  With metadata ``units ==
    "counts"`` they are converted as ``-log(counts / i0)``, counts clipped below at
    ``1e-6 i0``; ``i0`` comes from the argument or ``metadata["i0"]``.  Any other units
    are taken as line integrals already.
    """
    meta = scan.metadata
    values = scan.array().astype(np.float64)
    if "rescale_slope" in meta or "rescale_intercept" in meta:
        slope = float(meta.get("rescale_slope", 1.0))
        intercept = float(meta.get("rescale_intercept", 0.0))
        values = values * slope + intercept
    if meta.get("units") == "counts":
        i0 = meta.get("i0") if i0 is None else i0
        if i0 is None or not float(i0) > 0:
            raise InputError(
                "projections are raw counts: give i0 (incident counts per pixel) as an "
                "option or in metadata['i0'] to convert them to line integrals"
            )
        values = -np.log(np.maximum(values, _MIN_TRANSMISSION * float(i0)) / float(i0))
    return values.astype(np.float32)
