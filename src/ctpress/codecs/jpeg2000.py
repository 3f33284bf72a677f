"""JPEG 2000 (OpenJPEG) and High-Throughput JPEG 2000 (OpenJPH), via imagecodecs."""

from __future__ import annotations

import imagecodecs
import numpy as np

from ._image import ImageCodec
from .base import Knob
from .registry import register_codec


@register_codec
class Jpeg2000(ImageCodec):
    """JPEG 2000 Part 1 per projection: reversible 5/3 wavelet for lossless, irreversible
    9/7 for lossy.  The lossy knob is OpenJPEG's per-layer PSNR target in whole dB (relative to
    the 16-bit peak), searched for bpp/PSNR targets; ``max_error`` quantises explicitly
    and codes losslessly.

    Frames are bare JPEG 2000 codestreams (``.j2k``): the JP2 file boxes would add 85
    bytes per projection that the container already holds (shape, dtype).  Frames written
    as JP2 files by earlier ctpress versions still decode (the decoder detects the format).
    """

    codec_id = "jpeg2000"
    description = "JPEG 2000 (OpenJPEG): lossless and lossy, up to 16-bit integers"
    exact_dtypes = ("uint8", "uint16")
    has_native_lossy = True

    def _knob(self, work: np.ndarray) -> Knob:
        return Knob(lo=20.0, hi=140.0, rate_increases=True, log=False, integer=True)

    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        level, reversible = (0, True) if knob is None else (round(knob), False)
        return bytes(
            imagecodecs.jpeg2k_encode(image, level=level, reversible=reversible, codecformat="J2K")
        )

    def _decode_image(self, data: bytes) -> np.ndarray:
        return np.asarray(imagecodecs.jpeg2k_decode(data))


@register_codec
class HtJ2k(ImageCodec):
    """HTJ2K (JPEG 2000 Part 15, OpenJPH) per projection: much faster block coder.  The
    lossy knob is the relative quantisation step (smaller = more bits)."""

    codec_id = "htj2k"
    description = "High-Throughput JPEG 2000 (OpenJPH): lossless and lossy"
    exact_dtypes = ("uint8", "uint16")
    has_native_lossy = True

    def _knob(self, work: np.ndarray) -> Knob:
        return Knob(lo=1e-6, hi=0.5)

    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        if knob is None:
            return bytes(imagecodecs.htj2k_encode(image, reversible=True))
        return bytes(imagecodecs.htj2k_encode(image, level=float(knob), reversible=False))

    def _decode_image(self, data: bytes) -> np.ndarray:
        return np.asarray(imagecodecs.htj2k_decode(data))
