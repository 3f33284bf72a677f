"""Multi-page TIFF stacks: one page per view (tifffile)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from ..errors import FormatError
from ..scan import Scan, view_blocks
from . import _header, _lazy
from ._lazy import LazyViews

_AUX = "ctpress_aux"


_UNREADABLE = (tifffile.TiffFileError, ValueError, OSError)


def _unreadable(path: Path, exc: Exception) -> FormatError:
    return FormatError(f"{path}: not a readable TIFF file ({exc}); check the file")


def _lazy_pages(path: Path, shape: tuple[int, int, int], dtype: np.dtype) -> LazyViews:
    """The first series, one page per view, read page by page: the file stays open while
    the views are in use (its page index is parsed once) and each read reads the pages of
    its views only, one read at a time."""
    tif = tifffile.TiffFile(path)
    lock = threading.Lock()

    def read(start: int, stop: int) -> np.ndarray:
        try:
            with lock:
                pages = tif.series[0].asarray(key=slice(start, stop))
        except _UNREADABLE as exc:
            raise _unreadable(path, exc) from exc
        return pages.reshape(stop - start, *shape[1:])  # one page comes without its axis

    views = LazyViews(read, shape, dtype, str(path))
    weakref.finalize(views, tif.close)
    return views


def read_tiff(path: Path) -> Scan:
    """Read the first series, shape (views, rows, cols), of a TIFF stack.

    A file written by :func:`write_tiff` also yields its geometry, metadata and aux
    arrays; any other stack yields the bare projections.  A stack of one page per view
    larger than :data:`~ctpress.io._lazy.LAZY_BYTES` is read page by page
    (:class:`~ctpress.io.LazyViews`); a smaller one is read into memory.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise FormatError(f"{path}: TIFF file holds no images")
            first = tif.series[0]
            one_page_per_view = first.ndim == 3 and len(first.pages) == first.shape[0]
            projections: np.ndarray | LazyViews = (
                _lazy_pages(path, (first.shape[0], first.shape[1], first.shape[2]), first.dtype)
                if one_page_per_view and _lazy.wanted(first.shape, first.dtype)
                else first.asarray()
            )
            others = [series.asarray() for series in tif.series[1:]]
            shaped = tif.shaped_metadata or ()
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from exc
    header = shaped[0].get(_header.KEY) if shaped else None
    aux = {md[_AUX]: arr for md, arr in zip(shaped[1:], others, strict=False) if _AUX in md}
    return _header.build(projections, header, aux, path)


def write_tiff(scan: Scan, path: Path) -> None:
    """Write one page per view, (rows, cols) each, plus one series per aux array.

    The JSON header lives in the first page's ImageDescription (tifffile shaped
    metadata); each aux array is an extra series tagged with its name.  Views are written
    a block at a time (:func:`~ctpress.scan.view_blocks`), so a memory-mapped or lazily
    decoded scan is never held whole.
    """
    big = scan.projections.nbytes + sum(a.nbytes for a in scan.aux.values()) > 2**31
    shape = scan.projections.shape
    n, rows, cols = int(shape[0]), int(shape[-2]), int(shape[-1])

    def pages() -> Iterator[np.ndarray]:
        for _, block in view_blocks(scan.projections):
            yield from block.reshape(-1, rows, cols)

    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        meta = {_header.KEY: _header.encode(scan)}
        tif.write(
            pages(), shape=(n, rows, cols), dtype=scan.dtype, photometric="minisblack",
            metadata=meta,
        )  # fmt: skip
        for name, arr in scan.aux.items():
            tif.write(np.asarray(arr), photometric="minisblack", metadata={_AUX: name})
