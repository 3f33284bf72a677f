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
from . import _header
from ._atomic import MARKER

#: Target bytes per chunk; chunks hold whole views.
CHUNK_BYTES = 16 * 2**20
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


def read_zarr(path: Path, dataset: str | None) -> Scan:
    """Read the array ``dataset`` (default ``projections``, or the only array) of a store.

    A store holding a single array at its root is read as bare projections.
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
    try:
        proj = np.asarray(arrays[name][...])
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
    arr = scan.user_array()
    view_bytes = arr[0].nbytes
    views = chunk_views or max(1, min(arr.shape[0], CHUNK_BYTES // max(1, view_bytes)))
    group = zarr.open_group(store=str(path), mode="w", zarr_format=3)
    group.attrs[_header.KEY] = _header.encode(scan)
    coding: dict[str, Any] = (
        {} if serializer is None else {"serializer": serializer, "compressors": None}
    )
    group.create_array(name, data=arr, chunks=(min(views, arr.shape[0]), *arr.shape[1:]), **coding)
    for key, value in scan.aux.items():
        group.create_array(f"aux_{key}", data=np.asarray(value))
