"""HDF5 files: a plain dataset, or the NeXus NXtomo layout used at synchrotrons."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import FormatError, InputError
from ..scan import Geometry, Projections, Scan, view_blocks
from . import _header, _lazy
from ._lazy import LazyViews

with contextlib.suppress(ImportError):  # registers Blosc/LZ4/bitshuffle filters if present
    import hdf5plugin  # noqa: F401

#: NXtomo image_key values.
PROJECTION, FLAT, DARK = 0, 1, 2
_KEY_OF_AUX = {"flat": FLAT, "dark": DARK}
_AUX_GROUP = "ctpress_aux"
_NXTOMO_DATA = "instrument/detector/data"


def _text(value: Any) -> str | None:
    """Attribute or scalar dataset value as str (h5py returns str or bytes)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes):
        return value.decode()
    return None if value is None else str(value)


def _find_dataset(f: h5py.File, path: Path) -> str:
    """Projections path: the dataset with a ctpress header, an NXtomo entry, or the only one."""
    found: list[h5py.Dataset] = []
    f.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    tagged = [ds.name for ds in found if _header.KEY in ds.attrs]
    nxtomo = [
        f"{g.name}/{_NXTOMO_DATA}"
        for g in f.values()
        if isinstance(g, h5py.Group)
        and isinstance(g.get(_NXTOMO_DATA), h5py.Dataset)
        and isinstance(g.get("instrument/detector/image_key"), h5py.Dataset)
    ]
    images = [ds.name for ds in found if ds.ndim in (2, 3)]
    for names in (tagged, nxtomo, images):
        if len(names) == 1:
            return names[0]
        if len(names) > 1:
            raise InputError(
                f"{path}: several candidate datasets {names}; pass one with --dataset "
                "(dataset= in Python)"
            )
    raise FormatError(f"{path}: no 2-D or 3-D dataset found; check the file")


def _nxtomo_angles(ds: h5py.Dataset, is_projection: np.ndarray) -> Geometry | None:
    """Parallel geometry from ``sample/rotation_angle`` of the NXentry holding ``ds``."""
    entry = ds.parent
    while entry.name != "/" and _text(entry.attrs.get("NX_class")) != "NXentry":
        entry = entry.parent
    rot = entry.get("sample/rotation_angle")
    if not isinstance(rot, h5py.Dataset) or rot.shape != is_projection.shape:
        return None
    angles = np.asarray(rot[()], dtype=np.float64)[is_projection]
    if _text(rot.attrs.get("units")) not in ("rad", "radian", "radians"):
        angles = np.radians(angles)
    return Geometry(kind="parallel", angles_rad=tuple(angles))


def _mapped(ds: h5py.Dataset, path: Path) -> np.ndarray:
    """The dataset's values: memory-mapped where HDF5 stores them as one contiguous,
    unfiltered block of native-order values (then compressing reads them chunk by chunk,
    never whole), else read into memory."""
    offset = ds.id.get_offset()
    plain = ds.chunks is None and not ds.compression and ds.dtype.isnative and ds.size > 0
    if plain and offset is not None and ds.dtype.kind in "uif":
        return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
    return np.asarray(ds[()])


def _lazy_frames(ds: h5py.Dataset, path: Path, first: int, stop: int) -> LazyViews:
    """Frames ``first:stop`` of ``ds`` read view by view: the file stays open while the
    views are in use, and each read is one slab ``ds[a:b]`` of whole HDF5 chunks (h5py
    decompresses only the chunks it covers; :class:`LazyViews` keeps the last ones).  A
    2-D dataset (views, cols) reads as (views, 1, cols)."""
    two_d = ds.ndim == 2
    rows, cols = (1, ds.shape[1]) if two_d else ds.shape[1:]
    f = h5py.File(path, "r")
    kept = f[ds.name]

    def read(start: int, end: int) -> np.ndarray:
        views = np.asarray(kept[first + start : first + end])
        return views[:, None, :] if two_d else views

    # HDF5 chunks along the views, where they line up with view 0 of the stack
    block = ds.chunks[0] if ds.chunks and first % ds.chunks[0] == 0 else 1
    shape = (stop - first, rows, cols)
    views = LazyViews(
        read, shape, ds.dtype, f"{path}:{ds.name}", source_ndim=ds.ndim, block_views=block
    )
    weakref.finalize(views, f.close)
    return views


def _is_lazy(ds: h5py.Dataset) -> bool:
    """Read view by view: a chunked or filtered (not memory-mappable) 2-D or 3-D dataset
    larger than :data:`~ctpress.io._lazy.LAZY_BYTES`."""
    mappable = ds.chunks is None and not ds.compression and ds.dtype.isnative
    return not mappable and ds.ndim in (2, 3) and _lazy.wanted(ds.shape, ds.dtype)


def read_hdf5(path: Path, dataset: str | None) -> Scan:
    """Read projections from ``dataset`` (default: auto-detected, see :func:`_find_dataset`).

    If the dataset has an ``image_key`` sibling (NXtomo), frames with key 0 are the
    projections, keys 1 and 2 give ``aux["flat"]`` and ``aux["dark"]``, and without a
    ctpress header the geometry is parallel beam with the projections' rotation angles
    (degrees unless the ``units`` attribute says radians).

    The projections are memory-mapped where the dataset is contiguous and unfiltered; a
    chunked or compressed dataset larger than :data:`~ctpress.io._lazy.LAZY_BYTES` is read
    view by view (:class:`~ctpress.io.LazyViews`; NXtomo projections must then be one run
    of frames, else they are read whole); a smaller one is read into memory.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(f"{path}: not a readable HDF5 file ({exc}); check the file") from exc
    with f:
        name = dataset or _find_dataset(f, path)
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise InputError(f"{path}: no dataset {name!r}; check the dataset path")
        header = _text(ds.attrs.get(_header.KEY))
        lazy = _is_lazy(ds)
        arr: np.ndarray | LazyViews = (
            _lazy_frames(ds, path, 0, ds.shape[0]) if lazy else _mapped(ds, path)
        )
        group = ds.parent
        aux_group = group.get(_AUX_GROUP)
        aux = {} if aux_group is None else {k: v[()] for k, v in aux_group.items()}
        geometry = None
        if isinstance(group.get("image_key"), h5py.Dataset):
            keys = np.asarray(group["image_key"][()])
            if keys.shape != ds.shape[:1]:
                raise FormatError(f"{path}: image_key length differs from {name} frames")
            for aux_name, key in _KEY_OF_AUX.items():
                if np.any(keys == key):
                    aux[aux_name] = ds[np.flatnonzero(keys == key)]
            frames = np.flatnonzero(keys == PROJECTION)
            one_run = frames.size and frames[-1] - frames[0] + 1 == frames.size
            if one_run and lazy:
                arr = _lazy_frames(ds, path, int(frames[0]), int(frames[-1]) + 1)
            elif one_run:
                arr = arr[frames[0] : frames[-1] + 1]  # a view, no copy
            else:  # scattered frames: read whole
                arr = ds[frames]
            geometry = None if header else _nxtomo_angles(ds, keys == PROJECTION)
    return _header.build(arr, header, aux, path, geometry)


@dataclass(frozen=True)
class Storage:
    """How the projections dataset is stored: as ``dtype`` (numpy dtype string), in chunks
    of ``chunk_views`` whole views, through the HDF5 filter that ``filter_options`` (the
    keywords of ``h5py.Group.create_dataset``: ``compression``, ``compression_opts``, as an
    ``hdf5plugin`` filter object gives them) names.  The default is h5py's: contiguous,
    unfiltered, the scan's dtype."""

    dtype: str | None = None
    chunk_views: int | None = None
    filter_options: dict[str, Any] = field(default_factory=dict)


def _create_projections(
    parent: h5py.Group, name: str, shape: tuple[int, ...], dtype: np.dtype, storage: Storage
) -> h5py.Dataset:
    """The empty projections dataset of ``shape`` (views first) as ``storage`` says."""
    chunks = None
    if storage.chunk_views is not None:
        chunks = (min(storage.chunk_views, shape[0]), *shape[1:])
    return parent.create_dataset(
        name,
        shape=shape,
        dtype=np.dtype(storage.dtype or dtype),
        chunks=chunks,
        **storage.filter_options,
    )


def _fill(data: h5py.Dataset, sources: list[Projections]) -> None:
    """Write the frames of ``sources`` one after the other into ``data`` (a 2-D dataset
    takes the single row of each view), a block of views at a time (a lazily read scan is
    never held whole).  A chunked dataset gets whole chunks, each written once: a lossy
    filter must never decode and code a chunk again (its errors would add up)."""
    offsets = np.cumsum([0, *(source.shape[0] for source in sources)]).tolist()
    blocks: Iterator[tuple[int, np.ndarray]]
    if data.chunks is None:
        blocks = (
            (start + first, views)
            for start, source in zip(offsets, sources, strict=False)
            for first, views in view_blocks(source)
        )
    else:
        blocks = (
            (first, _frames(sources, offsets, first, first + data.chunks[0]))
            for first in range(0, offsets[-1], data.chunks[0])
        )
    for first, views in blocks:
        data[first : first + len(views)] = views[:, 0, :] if data.ndim == 2 else views


def _frames(sources: list[Projections], offsets: list[int], first: int, stop: int) -> np.ndarray:
    """Frames ``first:stop`` of ``sources`` one after the other (``offsets``: where each
    starts)."""
    return np.concatenate(
        [
            np.asarray(source[max(first - start, 0) : stop - start])
            for start, source in zip(offsets, sources, strict=False)
            if start < stop and start + source.shape[0] > first
        ]
    )


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _write_nxtomo(f: h5py.File, scan: Scan, storage: Storage) -> h5py.Dataset:
    """NXtomo entry: darks, flats then projections in one ``data`` with ``image_key``."""
    proj = scan.projections
    blocks = [(DARK, "dark"), (FLAT, "flat")]
    frames: list[tuple[int, Projections]] = [
        (key, scan.aux[name])
        for key, name in blocks
        if name in scan.aux
        and scan.aux[name].ndim == 3
        and scan.aux[name].shape[1:] == proj.shape[1:]
        and scan.aux[name].dtype == proj.dtype
    ]
    frames.append((PROJECTION, proj))
    entry = _nx_group(f, "entry", "NXentry")
    entry["definition"] = "NXtomo"
    detector = _nx_group(_nx_group(entry, "instrument", "NXinstrument"), "detector", "NXdetector")
    total = sum(len(block) for _, block in frames)
    data = _create_projections(detector, "data", (total, *proj.shape[1:]), proj.dtype, storage)
    keys = np.concatenate([np.full(len(block), key, np.int8) for key, block in frames])
    _fill(data, [block for _, block in frames])
    detector["image_key"] = keys
    stored = {name for key, name in blocks if key in keys}
    aux = {k: v for k, v in scan.aux.items() if k not in stored}
    if aux:
        detector.create_group(_AUX_GROUP).update(aux)
    nxdata = _nx_group(entry, "data", "NXdata")
    nxdata["data"] = h5py.SoftLink(data.name)
    nxdata["image_key"] = h5py.SoftLink(f"{detector.name}/image_key")
    geometry = scan.geometry
    if geometry is not None and geometry.n_views == proj.shape[0]:
        angles = np.full(len(keys), np.degrees(geometry.angles_rad[0]))
        angles[keys == PROJECTION] = np.degrees(geometry.angles())
        sample = _nx_group(entry, "sample", "NXsample")
        sample["rotation_angle"] = angles
        sample["rotation_angle"].attrs["units"] = "degree"
        nxdata["rotation_angle"] = h5py.SoftLink(sample["rotation_angle"].name)
    return data


def _write_views(f: h5py.File, name: str, scan: Scan, storage: Storage) -> h5py.Dataset:
    """The projections as users see them (a sinogram stack as (views, cols)) in dataset
    ``name``, written a block of views at a time (a lazily read scan is never held whole)."""
    two_d = scan.original_ndim == 2
    n_views, _, cols = scan.shape
    shape = (n_views, cols) if two_d else scan.shape
    data = _create_projections(f, name, shape, scan.dtype, storage)
    _fill(data, [scan.projections])
    return data


def write_hdf5(scan: Scan, path: Path, dataset: str | None, storage: Storage | None = None) -> None:
    """Write an NXtomo entry or a plain dataset, with the JSON header as an attribute.

    Without ``dataset``, a scan with parallel geometry or ``dark``/``flat`` aux arrays is
    written as NXtomo (``/entry/instrument/detector/data``; dark/flat frames of the
    projections' dtype and (rows, cols) are interleaved with ``image_key``).  Otherwise
    ``scan.user_array()`` goes to ``dataset`` (default ``projections``).  Other aux arrays
    go to a ``ctpress_aux`` group beside the projections.  ``storage`` chunks and filters
    the projections (default: contiguous, unfiltered).
    """
    storage = storage or Storage()
    text = _header.encode(scan)
    nxtomo = dataset is None and (
        (scan.geometry is not None and scan.geometry.kind == "parallel")
        or bool(_KEY_OF_AUX.keys() & scan.aux.keys())
    )
    with h5py.File(path, "w") as f:
        if nxtomo:
            data = _write_nxtomo(f, scan, storage)
        else:
            data = _write_views(f, dataset or "projections", scan, storage)
            if scan.aux:
                data.parent.create_group(_AUX_GROUP).update(scan.aux)
        data.attrs[_header.KEY] = text
