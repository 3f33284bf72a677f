"""Zarr v3 directory stores: a group with ``projections`` and ``aux_<name>`` arrays."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr
import zarr.errors

from ..errors import FormatError, InputError
from ..scan import Scan
from . import _header, _lazy
from ._atomic import MARKER
from ._lazy import LazyViews

#: Target bytes per chunk; chunks hold whole views.
CHUNK_BYTES = 16 * 2**20
#: Bytes of projections written to the store at a time (whole chunks).
_WRITE_BLOCK_BYTES = 128 * 2**20
_UNREADABLE = (zarr.errors.BaseZarrError, ValueError, OSError, KeyError)
_T = TypeVar("_T")


def _unreadable(path: Path, exc: Exception) -> FormatError:
    return FormatError(f"{path}: not a readable zarr store ({exc}); check the path")


def _finish_on_interrupt(function: Callable[[], _T]) -> _T:
    """``function()`` run in a worker thread that an interrupt of this thread
    (Ctrl-C, SIGTERM) waits for: zarr does its I/O in tasks of its own event loop thread,
    which would otherwise keep writing into a directory being removed, and report pending
    tasks at exit."""
    with ThreadPoolExecutor(max_workers=1) as pool:  # leaving the block joins the thread
        return pool.submit(function).result()


def _lazy_views(path: Path, stored: zarr.Array) -> LazyViews:
    """The array read view by view: each read decodes the Zarr chunks of its views only
    (:class:`LazyViews` keeps the last ones).  A 2-D array (views, cols) reads as
    (views, 1, cols)."""
    two_d = stored.ndim == 2
    n_views, rows, cols = (stored.shape[0], 1, stored.shape[1]) if two_d else stored.shape

    def read(start: int, stop: int) -> np.ndarray:
        try:
            views = np.asarray(stored[start:stop])
        except _UNREADABLE as exc:
            raise _unreadable(path, exc) from exc
        return views[:, None, :] if two_d else views

    return LazyViews(
        read,
        (n_views, rows, cols),
        stored.dtype,
        str(path),
        source_ndim=stored.ndim,
        block_views=stored.chunks[0],
    )


def read_zarr(path: Path, dataset: str | None) -> Scan:
    """Read the array ``dataset`` (default ``projections``, or the only array) of a store.

    A store holding a single array at its root is read as bare projections.  Projections
    larger than :data:`~ctpress.io._lazy.LAZY_BYTES` are read view by view
    (:class:`~ctpress.io.LazyViews`); smaller ones into memory.
    """
    return _finish_on_interrupt(lambda: _read_zarr(path, dataset))


def _read_zarr(path: Path, dataset: str | None) -> Scan:
    try:
        node = zarr.open(store=str(path), mode="r")
        arrays: dict[str, zarr.Array] = {}
        header = None
        if isinstance(node, zarr.Array):
            arrays["projections"] = node
        else:
            with warnings.catch_warnings():  # the marker of a store ctpress wrote is no array
                warnings.filterwarnings(
                    "ignore", f"Object at {re.escape(MARKER)} is not recognized", UserWarning
                )
                arrays.update(node.arrays())
            header = node.attrs.get(_header.KEY)
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from exc
    names = [k for k in arrays if not k.startswith("aux_")]
    name = dataset or ("projections" if "projections" in names or len(names) != 1 else names[0])
    if name not in arrays:
        raise InputError(
            f"{path}: no array {name!r}; pass one of {sorted(arrays)} with --dataset "
            "(dataset= in Python)"
        )
    stored = arrays[name]
    try:
        proj = (
            _lazy_views(path, stored)
            if stored.ndim in (2, 3) and _lazy.wanted(stored.shape, stored.dtype)
            else np.asarray(stored[...])
        )
        aux = {k[4:]: np.asarray(v[...]) for k, v in arrays.items() if k.startswith("aux_")}
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from exc
    return _header.build(proj, None if header is None else str(header), aux, path)


def write_zarr(
    scan: Scan,
    path: Path,
    dataset: str | None,
    *,
    serializer: Any = None,
    chunk_views: int | None = None,
) -> None:
    """Write a zarr v3 group: projections chunked by whole views, aux arrays, JSON header.

    Projections (``scan.user_array()``) go to ``dataset`` (default ``projections``) in
    chunks of ``chunk_views`` views (default: about :data:`CHUNK_BYTES`), coded by the
    Zarr array-to-bytes codec ``serializer`` (default: zarr's own); the header is the
    group attribute ``ctpress_scan``.
    """
    _finish_on_interrupt(lambda: _write_zarr(scan, path, dataset, serializer, chunk_views))


def _write_zarr(
    scan: Scan, path: Path, dataset: str | None, serializer: Any, chunk_views: int | None
) -> None:
    name = dataset or "projections"
    if name.startswith("aux_"):
        raise InputError(f"dataset name {name!r} is reserved; choose another")
    n_views, rows, cols = scan.shape
    two_d = scan.original_ndim == 2
    view_shape = (cols,) if two_d else (rows, cols)
    view_bytes = rows * cols * scan.dtype.itemsize
    views = min(n_views, chunk_views or max(1, CHUNK_BYTES // max(1, view_bytes)))
    group = zarr.open_group(store=str(path), mode="w", zarr_format=3)
    group.attrs[_header.KEY] = _header.encode(scan)
    coding: dict[str, Any] = (
        {} if serializer is None else {"serializer": serializer, "compressors": None}
    )
    stored = group.create_array(
        name, shape=(n_views, *view_shape), dtype=scan.dtype, chunks=(views, *view_shape), **coding
    )
    # whole chunks, several at a time (zarr codes those in parallel), never the scan
    block_views = views * max(1, _WRITE_BLOCK_BYTES // max(1, views * view_bytes))
    for first in range(0, n_views, block_views):
        block = np.asarray(scan.projections[first : first + block_views])
        stored[first : first + len(block)] = block[:, 0, :] if two_d else block
    for key, value in scan.aux.items():
        group.create_array(f"aux_{key}", data=np.asarray(value))
