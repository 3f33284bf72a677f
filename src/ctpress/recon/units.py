"""Unit conversions and the reconstructable field of view."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..scan import Geometry
from ..sim.phantom import MU_WATER_PER_MM, hu_to_mu
from .fbp import detector_coords, fan_angles

__all__ = ["field_of_view_mask", "hu_to_mu", "mu_to_hu"]


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
