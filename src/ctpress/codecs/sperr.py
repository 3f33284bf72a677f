"""SPERR (imagecodecs): wavelet + SPECK coding with a point-wise error bound."""

from __future__ import annotations

import struct

import imagecodecs
import numpy as np

from ..errors import CorruptFileError
from ._float import ErrorBoundedCodec
from ._isolate import decode_isolated
from .registry import register_codec
from .settings import check_declared

# SPERR header: u8 version, u8 flags (bit 7: a portion of a volume, 6: 3-D, 5: float32,
# 4: several chunks), u32 sizes x, y (and z when 3-D)
_FLAG_PORTION, _FLAG_3D, _FLAG_FLOAT32 = 0x80, 0x40, 0x20


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
        # SPERR aborts the process on a 3-D array of one slice: one view is coded as 2-D
        image = work[0] if work.shape[0] == 1 else work
        return bytes(imagecodecs.sperr_encode(image, level=float(knob), mode="pwe"))

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        """The header's sizes are checked here; the stream is decoded in the worker
        process, since SPERR aborts the process (an uncaught C++ exception) on some
        damaged streams."""
        check_declared("sperr stream's shape", sperr_shape(stream), _coded_shape(shape))
        return decode_isolated(_decompress, stream, shape, work_dtype, self.codec_id)


def _decompress(stream: bytes) -> np.ndarray:
    return np.asarray(imagecodecs.sperr_decode(stream))


def _coded_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the array SPERR codes for a chunk of ``shape`` (one view: 2-D)."""
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
