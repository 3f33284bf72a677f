"""JPEG 2000 (OpenJPEG) and High-Throughput JPEG 2000 (OpenJPH), via imagecodecs."""

from __future__ import annotations

import math
import struct

import imagecodecs
import numpy as np

from ._image import ImageCodec, find_box
from .base import MSE_PER_DB, Knob, RateModel
from .registry import register_codec


@register_codec
class Jpeg2000(ImageCodec):
    """JPEG 2000 Part 1 per projection: reversible 5/3 wavelet for lossless, irreversible
    9/7 for lossy.  The lossy knob is OpenJPEG's per-layer PSNR target in dB (relative to
    the 16-bit peak; fractional, so the rate is continuous in it), searched for bpp/PSNR
    targets; ``max_error`` quantises explicitly and codes losslessly.

    Frames are bare JPEG 2000 codestreams (``.j2k``): the JP2 file boxes would add 85
    bytes per projection that the container already holds (shape, dtype).  Frames written
    as JP2 files by earlier ctpress versions still decode (the decoder detects the format).
    """

    codec_id = "jpeg2000"
    description = "JPEG 2000 (OpenJPEG): lossless and lossy, up to 16-bit integers"
    exact_dtypes = ("uint8", "uint16")
    has_native_lossy = True

    def _knob(self, work: np.ndarray) -> Knob:
        return Knob(lo=20.0, hi=140.0, rate_increases=True, log=False)

    def _rate_model(self, work: np.ndarray, target_mse: float | None) -> RateModel | None:
        """PSNR targets: the knob is OpenJPEG's own PSNR target against the work dtype's
        peak (met within about 0.2 dB per frame), so the level for the target MSE is the
        start; bpp targets are searched."""
        if target_mse is None or target_mse <= 0:
            return None
        knob = self._knob(work)
        peak = float(np.iinfo(work.dtype).max)
        level = min(max(10 * math.log10(peak**2 / target_mse), knob.lo), knob.hi)
        return RateModel(knob, level, self._encode_lossy, MSE_PER_DB)

    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        level, reversible = (0.0, True) if knob is None else (float(knob), False)
        # OpenJPEG takes fractional PSNR levels (imagecodecs' stub says int)
        return bytes(
            imagecodecs.jpeg2k_encode(
                image,
                level=level,  # type: ignore[arg-type]
                reversible=reversible,
                codecformat="J2K",
            )
        )

    def _decode_image(self, data: bytes) -> np.ndarray:
        return np.asarray(imagecodecs.jpeg2k_decode(data))

    def _image_size(self, data: bytes) -> tuple[int, int]:
        return j2k_size(data)


@register_codec
class HtJ2k(ImageCodec):
    """HTJ2K (JPEG 2000 Part 15, OpenJPH) per projection: much faster block coder.  The
    lossy knob is the relative quantisation step (smaller = more bits)."""

    codec_id = "htj2k"
    description = "High-Throughput JPEG 2000 (OpenJPH): lossless and lossy"
    exact_dtypes = ("uint8", "uint16")
    has_native_lossy = True
    #: OpenJPH crashes (SIGSEGV) on some damaged code blocks: decode in the worker process.
    isolated = True

    def _knob(self, work: np.ndarray) -> Knob:
        return Knob(lo=1e-6, hi=0.5)

    def _rate_model(self, work: np.ndarray, target_mse: float | None) -> RateModel | None:
        """PSNR targets start at the step whose quantisation noise gives the target MSE:
        about :data:`_HTJ2K_MSE_GAIN` x (step x peak)^2 / 12 on projections (measured on
        the Savu projections, steps 1e-4 to 1e-2); MSE grows as the step squared."""
        if target_mse is None or target_mse <= 0:
            return None
        knob = self._knob(work)
        peak = float(np.iinfo(work.dtype).max)
        step = math.sqrt(12 * target_mse / _HTJ2K_MSE_GAIN) / peak
        return RateModel(knob, min(max(step, knob.lo), knob.hi), self._encode_lossy, 2.0)

    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        if knob is None:
            return bytes(imagecodecs.htj2k_encode(image, reversible=True))
        return bytes(imagecodecs.htj2k_encode(image, level=float(knob), reversible=False))

    def _decode_image(self, data: bytes) -> np.ndarray:
        return np.asarray(imagecodecs.htj2k_decode(data))

    def _image_size(self, data: bytes) -> tuple[int, int]:
        return j2k_size(data)


#: MSE of HTJ2K over the uniform-quantisation noise (step x peak)^2 / 12 of its step.
_HTJ2K_MSE_GAIN = 1.5
_SOC_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the image and tile size marker
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz, Ssiz, XRsiz, YRsiz
_SIZ = struct.Struct(">HHIIIIIIIIHBBB")


def j2k_size(data: bytes) -> tuple[int, int]:
    """(rows, cols) of a JPEG 2000 image (a bare codestream or a JP2 file) from its SIZ
    marker segment.  ValueError unless it is what ctpress writes: one unsigned component
    of at most 16 bits, no image or tile offset, one tile (OpenJPH loops for ever on an
    image offset beyond the image; a tiny tile size makes OpenJPEG allocate per tile)."""
    codestream = _jp2_codestream(data) if data.startswith(_JP2_SIGNATURE) else data
    if not codestream.startswith(_SOC_SIZ):
        raise ValueError("not a JPEG 2000 codestream")
    (_, _, width, height, x0, y0, tile_w, tile_h, tile_x0, tile_y0, components, depth, dx,
     dy) = _SIZ.unpack_from(codestream, len(_SOC_SIZ))  # fmt: skip
    if components != 1 or depth > 15 or (dx, dy) != (1, 1):  # depth: bits - 1, bit 7 signed
        raise ValueError("JPEG 2000 image is not one unsigned component of at most 16 bits")
    if (x0, y0, tile_x0, tile_y0) != (0, 0, 0, 0) or tile_w < width or tile_h < height:
        raise ValueError("JPEG 2000 image has offsets or more than one tile")
    return height, width


def _jp2_codestream(data: bytes) -> bytes:
    """The contiguous codestream box (``jp2c``) of a JP2 file."""
    return find_box(data, (b"jp2c",))[1]
