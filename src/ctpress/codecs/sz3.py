"""SZ3 (pysz): prediction-based error-bounded lossy compression."""

from __future__ import annotations

import functools

import numpy as np
import pysz

from ._float import ErrorBoundedCodec
from ._isolate import decode_isolated
from .registry import register_codec


@register_codec
class Sz3(ErrorBoundedCodec):
    """SZ3 with an absolute error bound (``max_error``); bpp/PSNR targets search the
    bound.  SZ3 has no lossless mode."""

    codec_id = "sz3"
    description = "SZ3 (Argonne): error-bounded prediction + quantisation"

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
