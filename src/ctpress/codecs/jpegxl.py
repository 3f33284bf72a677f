"""JPEG XL (libjxl via imagecodecs), lossless modular mode."""

from __future__ import annotations

from typing import Any, ClassVar

import imagecodecs
import numpy as np

from ._image import ImageCodec, find_box
from .registry import register_codec
from .settings import int_setting

#: libjxl's encoder efforts (fastest, smallest).
_EFFORTS = (1, 10)


@register_codec
class JpegXl(ImageCodec):
    """JPEG XL lossless per projection.  Its lossy (VarDCT) mode is tuned for 8-bit
    visual content and poor on 16-bit detector data, so error-bounded and rate-targeted
    modes use explicit quantisation (step 2E) followed by lossless coding."""

    codec_id = "jpegxl"
    description = "JPEG XL (libjxl) lossless; lossy via explicit quantisation"
    exact_dtypes = ("uint8", "uint16")
    #: The size header is checked, but a frame may still declare thousands of extra
    #: channels or animation frames of that size: decode in the worker process.
    isolated = True
    #: libjxl clamped efforts outside 1..10.
    _clamped_settings: ClassVar[dict[str, tuple[int, int]]] = {"effort": _EFFORTS}

    def __init__(
        self,
        *,
        effort: int = 7,
        **rate: Any,
    ) -> None:
        super().__init__(**rate)
        self.effort = int_setting(self.codec_id, "effort", effort, *_EFFORTS)

    def _options(self) -> dict[str, int]:
        return {"effort": self.effort}

    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        return bytes(imagecodecs.jpegxl_encode(image, lossless=True, effort=self.effort))

    def _decode_image(self, data: bytes) -> np.ndarray:
        return np.asarray(imagecodecs.jpegxl_decode(data))

    def _image_size(self, data: bytes) -> tuple[int, int]:
        return jpegxl_size(data)


_CODESTREAM = b"\xff\x0a"
_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
#: Widths of JPEG XL's U32(1 + u(9), 1 + u(13), 1 + u(18), 1 + u(30)) image sizes.
_SIZE_BITS = (9, 13, 18, 30)
#: Width / height of JPEG XL's size ratio codes 1..7.
_RATIOS = ((1, 1), (12, 10), (4, 3), (3, 2), (16, 9), (5, 4), (2, 1))


def jpegxl_size(data: bytes) -> tuple[int, int]:
    """(rows, cols) of a JPEG XL image (a bare codestream or the ISO BMFF container) from
    the codestream's SizeHeader (ISO 18181-1, A.2)."""
    codestream = _jxl_codestream(data) if data.startswith(_CONTAINER) else data
    if not codestream.startswith(_CODESTREAM):
        raise ValueError("not a JPEG XL codestream")
    bits = int.from_bytes(codestream[2:12], "little")  # the header needs at most 68 bits
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        value = (bits >> pos) & ((1 << n) - 1)
        pos += n
        return value

    def size(small: bool) -> int:
        return 8 * (read(5) + 1) if small else 1 + read(_SIZE_BITS[read(2)])

    small = bool(read(1))
    rows = size(small)
    ratio = read(3)
    if ratio == 0:
        return rows, size(small)
    num, den = _RATIOS[ratio - 1]
    return rows, rows * num // den


def _jxl_codestream(data: bytes) -> bytes:
    """The start of the codestream in a JPEG XL container (``jxlc`` or first ``jxlp`` box)."""
    kind, payload = find_box(data, (b"jxlc", b"jxlp"))
    return payload if kind == b"jxlc" else payload[4:]  # a jxlp part starts with its index
