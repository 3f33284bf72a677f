"""SPERR (imagecodecs): wavelet + SPECK coding with a point-wise error bound."""

from __future__ import annotations

import imagecodecs
import numpy as np

from ._float import ErrorBoundedCodec
from .registry import register_codec


@register_codec
class Sperr(ErrorBoundedCodec):
    """SPERR in point-wise-error (``pwe``) mode for ``max_error``; bpp/PSNR targets search
    the bound.  Works on float64; no lossless mode."""

    codec_id = "sperr"
    description = "SPERR (NCAR): wavelet coding with a point-wise error bound"

    def _lossy_work(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
        work = np.ascontiguousarray(x, dtype=np.float64)
        return work, {"t": "none", "w": "<f8"}

    def _encode_exact(self, work: np.ndarray) -> bytes:
        raise NotImplementedError("SPERR has no lossless mode")  # never called: no exact dtypes

    def _encode_lossy(self, work: np.ndarray, knob: float) -> bytes:
        return bytes(imagecodecs.sperr_encode(work, level=float(knob), mode="pwe"))

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        return np.asarray(imagecodecs.sperr_decode(stream)).reshape(shape)
