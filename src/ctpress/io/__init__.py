"""Read and write CT scans: ``.npy``, ``.npz``, TIFF stacks, HDF5/NXtomo, zarr v3 and
DICOM-CT-PD series (a directory of ``.dcm`` files, format ``dicom-ctpd``).

Every format but ``.npy`` and ``dicom-ctpd`` stores the geometry, metadata,
``original_ndim`` and aux arrays of a :class:`~ctpress.scan.Scan` exactly, under a JSON
header named ``ctpress_scan``; ``dicom-ctpd`` maps them to DICOM tags (see
:mod:`ctpress.io._dicom_ctpd`).  Writes are atomic and never replace an existing output
unless asked to (see :mod:`ctpress.io._atomic`).

Large inputs are not read whole: a ``.npy``, or a contiguous unfiltered HDF5 dataset, is
memory-mapped; a chunked or compressed HDF5 dataset, a Zarr array, a TIFF stack of one
page per view or a DICOM-CT-PD series of more than :data:`~ctpress.io._lazy.LAZY_BYTES`
(256 MiB) comes as a :class:`LazyViews` that reads only the views it is sliced for.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import InputError
from ..scan import Scan, as_scan
from . import _npy
from ._atomic import MARKER, OutputExistsError, atomic_path, check_output, results_directory
from ._lazy import LazyViews

__all__ = [
    "FORMATS",
    "MARKER",
    "LazyViews",
    "OutputExistsError",
    "atomic_path",
    "check_output",
    "format_from_path",
    "read_scan",
    "results_directory",
    "write_scan",
]

#: Format name -> file extensions (lower case, with the dot).
FORMATS: dict[str, tuple[str, ...]] = {
    "npy": (".npy",),
    "npz": (".npz",),
    "tiff": (".tif", ".tiff"),
    "hdf5": (".h5", ".hdf5", ".hdf", ".nxs"),
    "zarr": (".zarr",),
    "dicom-ctpd": (".dcm",),  # a directory of .dcm files (also detected by its content)
}
_NAMED = ("npz", "hdf5", "zarr")  # formats whose files hold named datasets


def _module(name: str) -> ModuleType:
    """The format module ``ctpress.io.<name>``, imported on first use together with the
    library it wraps (tifffile, h5py, zarr, pydicom), so that ``import ctpress`` does not."""
    return importlib.import_module(f"{__name__}.{name}")


_READERS: dict[str, Callable[[Path, str | None], Scan]] = {
    "npy": lambda path, _: _npy.read_npy(path),
    "npz": _npy.read_npz,
    "tiff": lambda path, _: _module("_tiff").read_tiff(path),
    "hdf5": lambda path, dataset: _module("_hdf5").read_hdf5(path, dataset),
    "zarr": lambda path, dataset: _module("_zarr").read_zarr(path, dataset),
    "dicom-ctpd": lambda path, _: _module("_dicom_ctpd").read_ctpd(path),
}
_WRITERS: dict[str, Callable[[Scan, Path, str | None], None]] = {
    "npy": lambda scan, path, _: _npy.write_npy(scan, path),
    "npz": _npy.write_npz,
    "tiff": lambda scan, path, _: _module("_tiff").write_tiff(scan, path),
    "hdf5": lambda scan, path, dataset: _module("_hdf5").write_hdf5(scan, path, dataset),
    "zarr": lambda scan, path, dataset: _module("_zarr").write_zarr(scan, path, dataset),
    "dicom-ctpd": lambda scan, path, _: _module("_dicom_ctpd").write_into(scan, path),
}


def format_from_path(path: str | os.PathLike[str], format: str | None = None) -> str:
    """Format name of ``path`` from its extension, or ``format`` when given.

    A directory holding ``.dcm`` files is a ``dicom-ctpd`` series.

    Raises
    ------
    InputError
        If ``format`` is not a key of :data:`FORMATS`, or the extension is unknown.
    """
    if format is not None:
        if format not in FORMATS:
            raise InputError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    suffix = Path(path).suffix.lower()
    for name, extensions in FORMATS.items():
        if suffix in extensions:
            return name
    if Path(path).is_dir() and any(p.suffix.lower() == ".dcm" for p in Path(path).iterdir()):
        return "dicom-ctpd"
    known = ", ".join(ext for exts in FORMATS.values() for ext in exts)
    raise InputError(
        f"{path}: unknown extension {suffix or '(none)'!r}; use one of {known} "
        "or name the format explicitly (--format)"
    )


def _check_dataset(fmt: str, dataset: str | None) -> None:
    if dataset is not None and fmt not in _NAMED:
        raise InputError(f"dataset applies only to {', '.join(_NAMED)} files, not {fmt}")


def read_scan(
    path: str | os.PathLike[str], format: str | None = None, dataset: str | None = None
) -> Scan:
    """Read a scan from a file (or a ``.zarr`` or DICOM-CT-PD directory).

    Parameters
    ----------
    path : str or PathLike
        File to read.
    format : str, optional
        Format name (a key of :data:`FORMATS`); default: from the extension.
    dataset : str, optional
        Name of the projections array inside an npz, HDF5 or zarr file; default:
        auto-detected (``projections``, an NXtomo entry, or the only candidate).

    Returns
    -------
    Scan
        Projections of shape (n_views, det_rows, det_cols) with geometry, metadata and
        aux arrays where the file has them (a bare ``.npy`` has none).

    Raises
    ------
    InputError
        Missing file, unknown extension, ambiguous or missing dataset, invalid data.
    FormatError
        The file is not readable as the expected format.
    """
    fmt = format_from_path(path, format)
    _check_dataset(fmt, dataset)
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source}: no such file; check the path")
    return _READERS[fmt](source, dataset)


def write_scan(
    scan: Scan | np.ndarray,
    path: str | os.PathLike[str],
    format: str | None = None,
    dataset: str | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Write a scan atomically.

    An existing output at ``path`` is replaced only with ``overwrite=True``, and a directory
    only if ctpress wrote it (see :func:`check_output`).

    ``.npy`` stores only ``scan.user_array()`` (geometry, metadata and aux arrays are
    dropped); the other formats keep everything.

    Parameters
    ----------
    scan : Scan or ndarray
        Scan to write; a bare array of shape (views, rows, cols) or (views, cols) is
        wrapped with no geometry.
    path : str or PathLike
        Output file (or ``.zarr`` / DICOM-CT-PD directory).
    format : str, optional
        Format name (a key of :data:`FORMATS`); default: from the extension.
    dataset : str, optional
        Name of the projections array in npz, HDF5 or zarr output (default
        ``projections``; an HDF5 file given no name may be written as NXtomo).
    overwrite : bool
        Replace an existing output (a directory only if ctpress wrote it).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    InputError
        ``path`` is a directory ctpress did not write, or the scan cannot be stored.
    """
    scan = as_scan(scan)
    fmt = format_from_path(path, format)
    _check_dataset(fmt, dataset)
    with atomic_path(path, overwrite=overwrite) as tmp:
        _WRITERS[fmt](scan, tmp, dataset)
