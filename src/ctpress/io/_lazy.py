"""Projections read view by view from a file that slices lazily along its first axis
(a chunked or compressed HDF5 dataset, a Zarr array, the pages of a TIFF stack)."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError

#: Inputs larger than this (bytes of projections) are read view by view
#: (:class:`LazyViews`); smaller ones are read into memory, as plain arrays.
LAZY_BYTES = 256 << 20

#: Most bytes of whole source blocks a :class:`LazyViews` keeps (at least one block).
CACHE_BYTES = 32 << 20

#: ``read(start, stop)``: views ``start:stop`` as an array of shape
#: (stop - start, det_rows, det_cols).
ViewReader = Callable[[int, int], np.ndarray]


def wanted(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether a stored array of ``shape`` and ``dtype`` is read lazily (over
    :data:`LAZY_BYTES`)."""
    return math.prod(shape) * np.dtype(dtype).itemsize > LAZY_BYTES


class LazyViews:
    """A stack of views, shape (n_views, det_rows, det_cols), read on demand.

    ``views[a:b]`` and ``views[i]`` return NumPy arrays of only those views (one call of
    ``read``); ``np.asarray(views)`` reads the whole stack.  A :class:`~ctpress.scan.Scan`
    keeps it as its projections without reading it, so that compressing holds a few
    chunks in memory, never the scan.

    Parameters
    ----------
    read : callable ``(start, stop) -> ndarray``
        Views ``start:stop`` of the source, shape (stop - start, det_rows, det_cols); it
        may be called from several threads at once.
    shape : (n_views, det_rows, det_cols)
        Shape of the whole stack.
    dtype : numpy dtype
        Data type ``read`` returns.
    source : str
        What is read (for ``repr`` and error messages), e.g. ``"scan.h5:/projections"``.
    source_ndim : int
        2 where the source stores a sinogram stack (n_views, det_cols), which ``read``
        returns as (k, 1, det_cols); else 3.
    block_views : int
        Views per chunk of the source (HDF5 chunk, Zarr chunk), which it decodes whole
        for any view in it.  Above 1, ``read`` is called for whole blocks only and the
        last blocks read (up to :data:`CACHE_BYTES`) are kept, so that reads of
        neighbouring views that share a block decode it once.  A block larger than
        :data:`CACHE_BYTES` (a source chunked across the views) is not read whole: then
        ``read`` is called for the views asked.
    """

    def __init__(
        self,
        read: ViewReader,
        shape: tuple[int, int, int],
        dtype: Any,
        source: str,
        source_ndim: int = 3,
        block_views: int = 1,
    ) -> None:
        if len(shape) != 3:
            raise InputError(f"{source}: a view stack has shape (views, rows, cols), got {shape}")
        self._read = read
        self.shape: tuple[int, int, int] = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.dtype = np.dtype(dtype)
        self.source = source
        self.source_ndim = source_ndim
        view_bytes = self.nbytes // max(1, self.shape[0])
        fits = block_views * view_bytes <= CACHE_BYTES  # else views are read as asked
        self.block_views = max(1, int(block_views)) if fits else 1
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        """Always 3."""
        return 3

    @property
    def size(self) -> int:
        """Number of values."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole stack once read."""
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyViews({self.source}, shape={self.shape}, dtype={self.dtype.name})"

    def __getitem__(self, key: int | slice) -> np.ndarray:
        """Views ``key`` (an index or a slice of views) as an array, reading only them."""
        n_views = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n_views)
            if step == 1:
                return self._views(start, max(start, stop))
            picked = range(start, stop, step)
            if not picked:
                return self._views(0, 0)
            first = min(picked)
            covering = self._views(first, max(picked) + 1)  # the run of views they span
            return covering[[index - first for index in picked]]
        if isinstance(key, int | np.integer):
            index = int(key) + n_views if key < 0 else int(key)
            if not 0 <= index < n_views:
                raise IndexError(f"view {key} out of range for {n_views} views")
            return self._views(index, index + 1)[0]
        raise TypeError(f"index views with an int or a slice, got {type(key).__name__}")

    def _views(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, *self.shape[1:]), self.dtype)
        if self.block_views == 1:
            return self._checked(start, stop, self._read(start, stop))
        size = self.block_views
        pieces = [
            self._block(block)[max(start, block * size) - block * size : stop - block * size]
            for block in range(start // size, (stop - 1) // size + 1)
        ]
        return np.concatenate(pieces)  # a copy: the cached blocks stay as read

    def _checked(self, start: int, stop: int, views: np.ndarray) -> np.ndarray:
        views = np.asarray(views, dtype=self.dtype)
        expected = (stop - start, *self.shape[1:])
        if views.shape != expected:
            raise InputError(f"{self.source}: read views of shape {views.shape}, not {expected}")
        return views

    def _block(self, block: int) -> np.ndarray:
        """Views of source block ``block`` (``block_views`` views from
        ``block * block_views``), from the cache or read whole."""
        with self._lock:
            if block in self._blocks:
                self._blocks.move_to_end(block)
                return self._blocks[block]
        start = block * self.block_views
        stop = min(start + self.block_views, self.shape[0])
        views = self._checked(start, stop, self._read(start, stop))
        with self._lock:
            self._blocks[block] = views
            while len(self._blocks) > 1 and sum(b.nbytes for b in self._blocks.values()) > (
                CACHE_BYTES
            ):
                self._blocks.popitem(last=False)
        return views

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The whole stack (read at once: only where every view is needed together)."""
        whole = self._views(0, self.shape[0])
        return whole if dtype is None else whole.astype(dtype, copy=False)
