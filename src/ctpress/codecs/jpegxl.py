"""JPEG XL (libjxl via imagecodecs), lossless modular mode."""

from __future__ import annotations

import imagecodecs
import numpy as np

from ._image import ImageCodec
from .registry import register_codec


@register_codec
class JpegXl(ImageCodec):
    """JPEG XL lossless per projection.  Its lossy (VarDCT) mode is tuned for 8-bit
    visual content and poor on 16-bit detector data, so error-bounded and rate-targeted
    modes use explicit quantisation (step 2E) followed by lossless coding."""

    codec_id = "jpegxl"
    description = "JPEG XL (libjxl) lossless; lossy via explicit quantisation"
    exact_dtypes = ("uint8", "uint16")

    def __init__(
        self,
        mode: str = "lossless",
        value: float | None = None,
        data_range: float | None = None,
        effort: int = 7,
    ) -> None:
        super().__init__(mode, value, data_range)
        self.effort = int(effort)

    def _options(self) -> dict[str, int]:
        return {"effort": self.effort}

    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        return bytes(imagecodecs.jpegxl_encode(image, lossless=True, effort=self.effort))

    def _decode_image(self, data: bytes) -> np.ndarray:
        return np.asarray(imagecodecs.jpegxl_decode(data))
