"""NumPy ``.npy`` (bare array) and ``.npz`` (array plus header and aux arrays) files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import FormatError, InputError
from ..scan import Scan, view_blocks
from . import _header

_UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # an .npz under a .npy name: told apart below


def read_npy(path: Path) -> Scan:
    """Read a bare array of shape (views, rows, cols) or (views, cols); no geometry."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_NPY_MAGIC))
        if magic != _NPY_MAGIC and not magic.startswith(_ZIP_MAGIC):
            raise FormatError(
                f"{path}: not a valid .npy file (it does not start with the NumPy header); "
                "check the file, or name its format (--format)"
            )
        # memory-mapped: compressing reads it chunk by chunk, never whole
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except _UNREADABLE as exc:
        raise FormatError(f"{path}: not a readable .npy file ({exc}); check the file") from exc
    if not isinstance(arr, np.ndarray):
        raise FormatError(f"{path}: holds several arrays; read it with format 'npz'")
    return Scan(arr)


def write_npy(scan: Scan, path: Path) -> None:
    """Write ``scan.user_array()`` only: geometry, metadata and aux are not stored."""
    with open(path, "wb") as fh:
        np.save(fh, scan.user_array(), allow_pickle=False)


def read_npz(path: Path, dataset: str | None) -> Scan:
    """Read ``.npz``: projections, ``aux_<name>`` arrays and the optional JSON header.

    The projections are the entry ``dataset``, else ``projections``, else the only entry.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            entries = {name: npz[name] for name in npz.files}
    except _UNREADABLE as exc:
        raise FormatError(f"{path}: not a readable .npz file ({exc}); check the file") from exc
    header = entries.pop(_header.KEY, None)
    aux = {k.removeprefix("aux_"): v for k, v in entries.items() if k.startswith("aux_")}
    names = [k for k in entries if not k.startswith("aux_")]
    name = dataset or ("projections" if "projections" in names or len(names) != 1 else names[0])
    if name not in entries:
        raise InputError(
            f"{path}: no array {name!r}; pass one of {sorted(entries)} with --dataset "
            "(dataset= in Python)"
        )
    return _header.build(entries[name], None if header is None else str(header), aux, path)


def write_npz(scan: Scan, path: Path, dataset: str | None) -> None:
    """Write projections (entry ``dataset`` or ``projections``), header and aux arrays, as
    :func:`numpy.savez` lays them out (uncompressed zip entries ``NAME.npy``); the
    projections go a block of views at a time (a lazily read scan is never held whole)."""
    name = dataset or "projections"
    if name == _header.KEY or name.startswith("aux_"):
        raise InputError(f"dataset name {name!r} is reserved; choose another")
    arrays = {f"aux_{key}": arr for key, arr in scan.aux.items()}
    arrays[_header.KEY] = np.array(_header.encode(scan))
    n_views, _, cols = scan.shape
    two_d = scan.original_ndim == 2
    header = {
        "descr": np.lib.format.dtype_to_descr(scan.dtype),
        "fortran_order": False,
        "shape": (n_views, cols) if two_d else scan.shape,
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asanyarray(array), allow_pickle=False)
        with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array_header_1_0(entry, header)
            for _, views in view_blocks(scan.projections):
                entry.write(np.ascontiguousarray(views[:, 0, :] if two_d else views).data)
