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
from .units import field_of_view_mask, hu_to_mu, line_integrals, mu_to_hu

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
