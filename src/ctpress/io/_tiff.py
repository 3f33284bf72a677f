"""Multi-page TIFF stacks: one page per view (tifffile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from ..errors import FormatError
from ..scan import Scan
from . import _header

_AUX = "ctpress_aux"


def read_tiff(path: Path) -> Scan:
    """Read the first series, shape (views, rows, cols), of a TIFF stack.

    A file written by :func:`write_tiff` also yields its geometry, metadata and aux
    arrays; any other stack yields the bare projections.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            arrays = [series.asarray() for series in tif.series]
            shaped = tif.shaped_metadata or ()
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise FormatError(f"{path}: not a readable TIFF file ({exc}); check the file") from exc
    if not arrays:
        raise FormatError(f"{path}: TIFF file holds no images")
    header = shaped[0].get(_header.KEY) if shaped else None
    aux = {md[_AUX]: arr for md, arr in zip(shaped, arrays, strict=False) if _AUX in md}
    return _header.build(arrays[0], header, aux, path)


def write_tiff(scan: Scan, path: Path) -> None:
    """Write one page per view, (rows, cols) each, plus one series per aux array.

    The JSON header lives in the first page's ImageDescription (tifffile shaped
    metadata); each aux array is an extra series tagged with its name.
    """
    big = scan.projections.nbytes + sum(a.nbytes for a in scan.aux.values()) > 2**31
    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        meta = {_header.KEY: _header.encode(scan)}
        tif.write(scan.projections, photometric="minisblack", metadata=meta)
        for name, arr in scan.aux.items():
            tif.write(np.asarray(arr), photometric="minisblack", metadata={_AUX: name})
