"""Shared pieces of error-bounded floating-point compressors (ZFP, SZ3, SPERR)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .base import Codec, Knob


class ErrorBoundedCodec(Codec):
    """A codec whose native lossy knob is an absolute error tolerance on float data.

    Integer input is converted to float64 (exact for up to 53-bit integers) and rounded
    back on decode; float32 input stays float32.  These are 3-D transform or prediction
    coders that gain from view-to-view correlation, so they take whole scans as one chunk
    (up to :attr:`preferred_chunk_bytes` of input) and code each chunk without its
    length-1 axes (:func:`coded_shape`).
    """

    has_native_lossy = True
    #: Whole scans up to 256 MiB of input per chunk: cutting a scan into ~1 MiB chunks
    #: loses the inter-view gain of 3-D coders (about 1 dB at equal rate on a multi-row
    #: scan, see docs/format.md) for parallel chunks and finer view-range reads.
    preferred_chunk_bytes: ClassVar[int | None] = 256 << 20
    probe_min_views = 16

    def _lossy_work(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        work = x if x.dtype == np.float32 else x.astype(np.float64)
        return np.ascontiguousarray(work), {"t": "none", "w": work.dtype.str}

    def _knob(self, work: np.ndarray) -> Knob:
        span = float(work.max()) - float(work.min())
        span = span if span > 0 else 1.0
        return Knob(lo=span * 1e-7, hi=span, is_error_bound=True)


def coded_shape(shape: tuple[int, ...], min_ndim: int) -> tuple[int, ...]:
    """The shape a 3-D coder codes a chunk of ``shape`` as: its length-1 axes dropped (a
    sinogram chunk (views, 1, cols) is a 2-D image), with leading 1s up to ``min_ndim``
    axes."""
    kept = tuple(size for size in shape if size != 1)
    return (1,) * (min_ndim - len(kept)) + kept
