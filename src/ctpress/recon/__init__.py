"""Image reconstruction from projections: FBP, FDK and SIRT.

All functions take NumPy arrays (or torch tensors, computed on their device) and a
:class:`~ctpress.scan.Geometry`, follow the conventions of :mod:`ctpress.sim.projector`
(they invert its ``forward_project``), and return attenuation in 1/mm when the input is
line integrals with distances in mm.

* :func:`fbp`: parallel beam and fan beam (flat or cylindrical detector, full or short
  scan with Parker weights), every detector row a 2-D slice;
* :func:`fdk`: circular cone beam (flat or cylindrical detector);
* :func:`sirt`: iterative reconstruction with the torch projector for any of these;
* :func:`reconstruct`: picks one of them for a :class:`~ctpress.scan.Scan` and converts
  its stored values to line integrals first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..scan import Scan
from .fbp import fbp
from .fdk import fdk
from .filters import FILTERS
from .helical import rebin_helical, reconstruct_helical
from .sirt import sirt
from .units import field_of_view_mask, hu_to_mu, mu_to_hu

__all__ = [
    "FILTERS",
    "fbp",
    "fdk",
    "field_of_view_mask",
    "hu_to_mu",
    "line_integrals",
    "mu_to_hu",
    "rebin_helical",
    "reconstruct",
    "reconstruct_helical",
    "sirt",
]

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
    values = scan.projections.astype(np.float64)
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


def reconstruct(scan: Scan, algorithm: str = "fbp", **options: Any) -> np.ndarray:
    """Reconstruct a scan with the method that fits its geometry.

    Parameters
    ----------
    scan : Scan
        Projections with a parallel, fan, cone or helical geometry (helical scans are
        rebinned to fan-beam slices, :func:`reconstruct_helical`).  Stored values are
        converted by :func:`line_integrals`.
    algorithm : {"fbp", "fdk", "sirt"}
        ``fbp`` and ``fdk`` both mean filtered back-projection: :func:`fbp` for parallel
        and fan beam, :func:`fdk` for cone beam.  ``sirt`` runs :func:`sirt`.
    **options
        Passed on to the chosen function, except ``i0`` (for :func:`line_integrals`).

    Returns
    -------
    ndarray, float32
        Attenuation in 1/mm: (ny, nx) for one detector row, else (rows or nz, ny, nx).
    """
    geometry = scan.geometry
    if geometry is None:
        raise InputError("the scan has no geometry: reconstruction needs its angles and distances")
    if geometry.kind == "helical":
        if algorithm != "fbp":
            raise InputError("helical scans are reconstructed by rebinning + fan-beam 'fbp'")
        return reconstruct_helical(scan, **options)[1]
    if geometry.n_views != scan.shape[0]:
        raise InputError(
            f"geometry has {geometry.n_views} view angles but the scan has {scan.shape[0]} views"
        )
    if algorithm not in ("fbp", "fdk", "sirt"):
        raise InputError(f"algorithm must be 'fbp', 'fdk' or 'sirt', got {algorithm!r}")
    proj = line_integrals(scan, options.pop("i0", None))
    if algorithm == "sirt":
        return sirt(proj, geometry, **options)
    if geometry.kind == "cone":
        return fdk(proj, geometry, **options)
    return fbp(proj, geometry, **options)
