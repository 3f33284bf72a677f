"""SZ3 (pysz): prediction-based error-bounded lossy compression."""

from __future__ import annotations

import functools
import math

import numpy as np
import pysz

from ._float import ErrorBoundedCodec
from ._isolate import decode_isolated
from .base import RateModel
from .registry import register_codec

#: d ln(MSE) / d ln(error bound).
_MSE_PER_LOG_BOUND = 2.0


@register_codec
class Sz3(ErrorBoundedCodec):
    """SZ3 with an absolute error bound (``max_error``); bpp/PSNR targets search the
    bound.  SZ3 drops length-1 axes itself (a (views, 1, cols) chunk gives the same
    bytes as the 2-D array).  SZ3 has no lossless mode."""

    codec_id = "sz3"
    description = "SZ3 (Argonne): error-bounded prediction + quantisation"

    def _rate_model(self, work: np.ndarray, target_mse: float | None) -> RateModel | None:
        """PSNR: SZ3's errors are close to uniform on [-bound, bound], so the bound
        sqrt(3 MSE) meets an MSE target (bpp targets search the bound on a subsample)."""
        if target_mse is None:
            return None
        start = math.sqrt(3 * max(target_mse, 1e-300))
        return RateModel(self._knob(work), start, self._encode_lossy, _MSE_PER_LOG_BOUND)

    def _encode_exact(self, work: np.ndarray) -> bytes:
        raise NotImplementedError("SZ3 has no lossless mode")  # never called: no exact dtypes

    def _encode_lossy(self, work: np.ndarray, knob: float) -> bytes:
        config = pysz.szConfig()
        config.errorBoundMode = pysz.szErrorBoundMode.ABS
        config.absErrorBound = float(knob)
        compressed, _ = pysz.sz.compress(work, config)
        return compressed.tobytes()

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        """Decoded in the worker process: pysz checks the value count stored in the stream
        against ``shape`` before allocating, but SZ3's inner stages (Huffman tables, its
        zstd stage) trust size fields deep inside the stream."""
        decode = functools.partial(_decompress, shape=tuple(shape), work_dtype=work_dtype)
        return decode_isolated(decode, stream, shape, work_dtype, self.codec_id)


def _decompress(stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
    data = np.frombuffer(stream, dtype=np.uint8).copy()
    decoded, _ = pysz.sz.decompress(data, np.dtype(work_dtype), shape)
    return np.asarray(decoded)
