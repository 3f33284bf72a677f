"""JPEG-LS (CharLS via imagecodecs): lossless and near-lossless (max abs error)."""

from __future__ import annotations

import struct

import imagecodecs
import numpy as np

from ._image import ImageCodec
from .base import Knob, RateModel, near_lossless_rate_model
from .registry import register_codec


@register_codec
class JpegLs(ImageCodec):
    """JPEG-LS per projection.  ``max_error`` uses the native NEAR parameter (exact
    bound on integer data); bpp/PSNR targets search NEAR, with fractional values coding
    some views at the next NEAR (NEAR 0 and 1 differ by about 25 % in rate, so whole
    values alone would leave most targets between them unreachable)."""

    codec_id = "jpegls"
    description = "JPEG-LS (ISO 14495): lossless / near-lossless, 2-16 bit integers"
    exact_dtypes = ("uint8", "uint16")
    has_native_lossy = True
    mixes_knob = True

    def _knob(self, work: np.ndarray) -> Knob:
        span = float(work.max()) - float(work.min())
        return Knob(lo=0.0, hi=max(2.0, min(span / 2, 255.0)), log=False, is_error_bound=True)

    def _rate_model(self, work: np.ndarray, target_mse: float | None) -> RateModel | None:
        return near_lossless_rate_model(self._knob(work), target_mse, self._encode_lossy)

    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        near = 0 if knob is None else min(255, int(np.floor(knob)))  # CharLS: NEAR <= 255
        return bytes(imagecodecs.jpegls_encode(image, level=near))

    def _decode_image(self, data: bytes) -> np.ndarray:
        return np.asarray(imagecodecs.jpegls_decode(data))

    def _image_size(self, data: bytes) -> tuple[int, int]:
        return jpegls_size(data)


_SOI, _SOF55, _LSE, _SOS = 0xD8, 0xF7, 0xF8, 0xDA
_LSE_OVERSIZE = 4  # LSE id of the 32-bit image size (images over 65535 rows or columns)


def jpegls_size(data: bytes) -> tuple[int, int]:
    """(rows, cols) of a JPEG-LS image (ISO 14495-1) from its marker segments up to the
    first scan: the SOF55 frame header, or its oversize LSE segment where the frame header
    holds 0.  ValueError unless it is one component of 2-16 bits."""
    if data[:2] != bytes((0xFF, _SOI)):
        raise ValueError("not a JPEG-LS image")
    pos, frame, oversize = 2, None, None
    while data[pos : pos + 1] == b"\xff" and data[pos + 1] != _SOS:
        marker, length = data[pos + 1], struct.unpack_from(">H", data, pos + 2)[0]
        if marker == _SOF55:
            frame = struct.unpack_from(">BHHB", data, pos + 4)
        elif marker == _LSE and data[pos + 4] == _LSE_OVERSIZE:
            width = data[pos + 5]
            fields = data[pos + 6 : pos + 6 + 2 * width]
            oversize = (int.from_bytes(fields[:width]), int.from_bytes(fields[width:]))
        pos += 2 + length
    if frame is None:
        raise ValueError("JPEG-LS image has no frame header before its scan")
    bits, rows, cols, components = frame
    if components != 1 or not 2 <= bits <= 16:
        raise ValueError(f"JPEG-LS image has {components} components of {bits} bits, not 1")
    if (rows == 0 or cols == 0) and oversize is not None:
        rows, cols = oversize
    return rows, cols
