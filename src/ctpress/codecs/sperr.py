"""SPERR (imagecodecs): wavelet + SPECK coding with a point-wise error bound, a bit rate
or a PSNR target."""

from __future__ import annotations

import math
import struct
from typing import Literal

import imagecodecs
import numpy as np

from ..errors import CorruptFileError
from ._float import ErrorBoundedCodec, coded_shape
from ._isolate import decode_isolated
from .base import MSE_PER_DB, Knob, RateModel
from .registry import register_codec
from .settings import check_declared

# SPERR header: u8 version, u8 flags (bit 7: a portion of a volume, 6: 3-D, 5: float32,
# 4: several chunks), u32 sizes x, y (and z when 3-D)
_FLAG_PORTION, _FLAG_3D, _FLAG_FLOAT32 = 0x80, 0x40, 0x20
#: SPERR's bits-per-value levels (it refuses 0 and more than 64).
_BPP_LEVELS = (1e-4, 64.0)
#: SPERR's ``psnr`` mode lands up to ~0.3 dB below the level asked at high quality (and
#: above it, by up to several dB, at low quality): asking this much more meets most
#: targets in one encode (Savu projections and neutron sinogram, 45-70 dB).
PSNR_BIAS_DB = 0.3
#: SPERR's PSNR levels searched (dB, relative to the coded array's own range).
_PSNR_LEVELS = (1.0, 400.0)


@register_codec
class Sperr(ErrorBoundedCodec):
    """SPERR: ``max_error`` in its point-wise-error (``pwe``) mode, bpp targets in its
    ``bpp`` mode and PSNR targets in its ``psnr`` mode (each checked and corrected if
    off).  Works on float64 without the chunk's length-1 axes (a sinogram is a 2-D
    image; SPERR aborts the process on a 3-D array whose first axis is 1); no lossless
    mode."""

    codec_id = "sperr"
    description = "SPERR (NCAR): wavelet coding with a point-wise error bound or a bit rate"

    def _lossy_work(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
        work = np.ascontiguousarray(x, dtype=np.float64)
        return work, {"t": "none", "w": "<f8"}

    def _encode_exact(self, work: np.ndarray) -> bytes:
        raise NotImplementedError("SPERR has no lossless mode")  # never called: no exact dtypes

    def _encode_lossy(self, work: np.ndarray, knob: float) -> bytes:
        return _encode(work, "pwe", knob)

    def _rate_model(self, work: np.ndarray, target_mse: float | None) -> RateModel | None:
        if target_mse is None:
            assert self.value is not None
            return RateModel(Knob(*_BPP_LEVELS, rate_increases=True), self.value, _bpp, 1.0)
        span = float(work.max()) - float(work.min())
        if span <= 0 or target_mse <= 0:
            return None
        level = 10 * math.log10(span**2 / target_mse) + PSNR_BIAS_DB
        knob = Knob(*_PSNR_LEVELS, rate_increases=True, log=False)
        return RateModel(knob, min(max(level, _PSNR_LEVELS[0]), _PSNR_LEVELS[1]), _psnr, MSE_PER_DB)

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        """The header's sizes are checked here; the stream is decoded in the worker
        process, since SPERR aborts the process (an uncaught C++ exception) on some
        damaged streams."""
        declared = sperr_shape(stream)
        if declared != _legacy_shape(shape):
            check_declared("sperr stream's shape", declared, coded_shape(shape, 2))
        return decode_isolated(_decompress, stream, shape, work_dtype, self.codec_id)


def _encode(work: np.ndarray, mode: Literal["bpp", "psnr", "pwe"], level: float) -> bytes:
    """SPERR stream of ``work`` without its length-1 axes."""
    image = work.reshape(coded_shape(work.shape, 2))
    return bytes(imagecodecs.sperr_encode(image, level=float(level), mode=mode))


def _bpp(work: np.ndarray, bits: float) -> bytes:
    return _encode(work, "bpp", bits)


def _psnr(work: np.ndarray, level: float) -> bytes:
    return _encode(work, "psnr", level)


def _decompress(stream: bytes) -> np.ndarray:
    return np.asarray(imagecodecs.sperr_decode(stream))


def _legacy_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape earlier ctpress versions coded a chunk of ``shape`` as (one view: 2-D, else
    3-D with any length-1 axes); such streams still decode."""
    return tuple(shape[1:]) if shape[0] == 1 else tuple(shape)


def sperr_shape(stream: bytes) -> tuple[int, ...]:
    """Shape (NumPy order) in a SPERR stream's header; CorruptFileError unless it is a
    whole float64 field (what ctpress writes)."""
    flags = stream[1] if len(stream) > 1 else 0
    layout = "<3I" if flags & _FLAG_3D else "<2I"
    if len(stream) < 2 + struct.calcsize(layout):
        raise CorruptFileError("sperr stream is shorter than its header")
    if flags & (_FLAG_PORTION | _FLAG_FLOAT32):
        raise CorruptFileError("sperr stream is not a whole float64 field")
    return tuple(reversed(struct.unpack_from(layout, stream, 2)))
