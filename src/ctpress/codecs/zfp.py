"""ZFP (zfpy): reversible lossless mode and fixed-accuracy (max abs error) mode."""

from __future__ import annotations

import numpy as np
import zfpy

from ._float import ErrorBoundedCodec
from .base import Knob
from .registry import register_codec


@register_codec
class Zfp(ErrorBoundedCodec):
    """ZFP transform coding of the 3-D chunk.  Lossless uses ZFP's reversible mode
    (integers widened to int32 after an exact offset); ``max_error`` uses fixed-accuracy
    mode; bpp/PSNR targets search the tolerance."""

    codec_id = "zfp"
    description = "ZFP (LLNL): reversible lossless or fixed-accuracy lossy, 3-D blocks"
    exact_dtypes = ("int32", "int64", "float32", "float64")

    def _knob(self, work: np.ndarray) -> Knob:
        # ZFP's tolerance is conservative (actual errors are several times smaller)
        base = super()._knob(work)
        return Knob(lo=base.lo, hi=base.hi * 64, is_error_bound=True)

    def _encode_exact(self, work: np.ndarray) -> bytes:
        return bytes(zfpy.compress_numpy(np.ascontiguousarray(work)))

    def _encode_lossy(self, work: np.ndarray, knob: float) -> bytes:
        return bytes(zfpy.compress_numpy(work, tolerance=float(knob)))

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        return np.asarray(zfpy.decompress_numpy(stream)).reshape(shape)
