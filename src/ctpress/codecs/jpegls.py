"""JPEG-LS (CharLS via imagecodecs): lossless and near-lossless (max abs error)."""

from __future__ import annotations

import imagecodecs
import numpy as np

from ._image import ImageCodec
from .base import Knob
from .registry import register_codec


@register_codec
class JpegLs(ImageCodec):
    """JPEG-LS per projection.  ``max_error`` uses the native NEAR parameter (exact
    bound on integer data); bpp/PSNR targets search NEAR."""

    codec_id = "jpegls"
    description = "JPEG-LS (ISO 14495): lossless / near-lossless, 2-16 bit integers"
    exact_dtypes = ("uint8", "uint16")
    has_native_lossy = True

    def _knob(self, work: np.ndarray) -> Knob:
        span = float(work.max()) - float(work.min())
        return Knob(lo=1.0, hi=max(2.0, min(span / 2, 255.0)), integer=True, is_error_bound=True)

    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        near = 0 if knob is None else min(255, int(np.floor(knob)))  # CharLS: NEAR <= 255
        return bytes(imagecodecs.jpegls_encode(image, level=near))

    def _decode_image(self, data: bytes) -> np.ndarray:
        return np.asarray(imagecodecs.jpegls_decode(data))
