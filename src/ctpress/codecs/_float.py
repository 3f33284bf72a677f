"""Shared pieces of error-bounded floating-point compressors (ZFP, SZ3, SPERR)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Codec, Knob


class ErrorBoundedCodec(Codec):
    """A codec whose native lossy knob is an absolute error tolerance on float data.

    Integer input is converted to float64 (exact for up to 53-bit integers) and rounded
    back on decode; float32 input stays float32.
    """

    has_native_lossy = True

    def _lossy_work(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        work = x if x.dtype == np.float32 else x.astype(np.float64)
        return np.ascontiguousarray(work), {"t": "none", "w": work.dtype.str}

    def _knob(self, work: np.ndarray) -> Knob:
        span = float(work.max()) - float(work.min())
        span = span if span > 0 else 1.0
        return Knob(lo=span * 1e-7, hi=span, is_error_bound=True)
