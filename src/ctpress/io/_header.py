"""The ``ctpress_scan`` JSON header that carries geometry, metadata and shape info in files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import FormatError, InputError
from ..scan import Geometry, Scan
from ._lazy import LazyViews

#: Name of the attribute / entry holding the JSON header in every format but ``.npy``.
KEY = "ctpress_scan"
VERSION = 1
_AUX_NAME = re.compile(r"^(?!\.+$)[A-Za-z0-9_.-]+$")  # also a link name in HDF5: not "." or ".."


def encode(scan: Scan) -> str:
    """JSON header of ``scan`` (geometry, metadata, original_ndim); checks aux names."""
    for name, arr in scan.aux.items():
        if not isinstance(name, str) or not _AUX_NAME.match(name):
            raise InputError(
                f"aux name {name!r} must be non-empty letters, digits, '_', '.', '-' (not only "
                "dots)"
            )
        if arr.dtype.hasobject:
            raise InputError(f"aux array {name!r} has object dtype; use a numeric dtype")
    info = {
        "version": VERSION,
        "geometry": None if scan.geometry is None else scan.geometry.to_dict(),
        "metadata": scan.metadata,
        "original_ndim": scan.original_ndim,
    }
    try:
        return json.dumps(info)
    except (TypeError, ValueError) as exc:
        raise InputError(f"scan metadata must be JSON-serialisable: {exc}") from exc


def build(
    arr: np.ndarray | LazyViews,
    header: str | None,
    aux: dict[str, np.ndarray],
    source: Path,
    geometry: Geometry | None = None,
) -> Scan:
    """Make a :class:`Scan` from stored projections and an optional JSON header.

    Parameters
    ----------
    arr : ndarray, shape (n_views, det_rows, det_cols) or (n_views, det_cols), or LazyViews
        Projections as stored (a :class:`~ctpress.io.LazyViews` is kept unread; a 2-D
        scan's come as (n_views, 1, det_cols)).
    header : str or None
        Output of :func:`encode`, or None for a file not written by ctpress.
    aux : dict of str to ndarray
        Auxiliary arrays read from the file.
    source : Path
        File the data came from (for error messages).
    geometry : Geometry or None
        Geometry found in the file's own layout, used only when there is no header.
    """
    if header is None:
        return Scan(arr, geometry=geometry, aux=aux, original_ndim=_stored_ndim(arr))
    try:
        info = json.loads(header)
        if info.get("version", VERSION) > VERSION:
            raise FormatError(f"{source}: written by a newer ctpress; upgrade ctpress to read it")
        geo = info.get("geometry")
        geometry = None if geo is None else Geometry.from_dict(geo)
        metadata = dict(info.get("metadata") or {})
        ndim = int(info.get("original_ndim", _stored_ndim(arr)))
    except (ValueError, TypeError, AttributeError) as exc:  # InputError is a ValueError
        raise FormatError(f"{source}: damaged {KEY} header ({exc}); rewrite the file") from exc
    if ndim == 2 and arr.ndim == 3:
        if arr.shape[1] != 1:
            raise FormatError(f"{source}: header says 2-D but data has shape {arr.shape}")
        if isinstance(arr, np.ndarray):
            arr = arr[:, 0, :]
    original_ndim = 2 if ndim == 2 else 3  # a LazyViews of a 2-D scan stays 3-D
    return Scan(arr, geometry=geometry, metadata=metadata, aux=aux, original_ndim=original_ndim)


def _stored_ndim(arr: np.ndarray | LazyViews) -> int:
    """Dimensions of the stored projections (a LazyViews remembers a 2-D source)."""
    return arr.source_ndim if isinstance(arr, LazyViews) else arr.ndim
