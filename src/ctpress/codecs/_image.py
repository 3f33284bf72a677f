"""Shared framing for 2-D image codecs (JPEG-LS, JPEG 2000, HTJ2K, JPEG XL).

A chunk (n_views, rows, cols) is coded as one image per projection when projections
have at least ``MIN_FRAME_ROWS`` rows; flatter chunks (sinogram-like, e.g. rows=1) are
coded as a single (n_views*rows, cols) mosaic, which keeps the view-to-view
correlation that a 1-row image would lose.  The stream is ``u32 n_frames``, ``u32``
length of each frame, then the frames.
"""

from __future__ import annotations

import struct
from abc import abstractmethod

import numpy as np

from ..errors import CorruptFileError
from .base import Codec

MIN_FRAME_ROWS = 8


class ImageCodec(Codec):
    """A codec built from a 2-D image encoder/decoder."""

    @abstractmethod
    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        """Encode one 2-D image; ``knob`` None means lossless."""

    @abstractmethod
    def _decode_image(self, data: bytes) -> np.ndarray:
        """Decode one 2-D image."""

    def _encode_frames(self, work: np.ndarray, knob: float | None) -> bytes:
        n, rows, cols = work.shape
        frames = list(work) if rows >= MIN_FRAME_ROWS else [work.reshape(n * rows, cols)]
        encoded = [self._encode_image(np.ascontiguousarray(f), knob) for f in frames]
        head = struct.pack(f"<I{len(encoded)}I", len(encoded), *(len(e) for e in encoded))
        return head + b"".join(encoded)

    def _encode_exact(self, work: np.ndarray) -> bytes:
        return self._encode_frames(work, None)

    def _encode_lossy(self, work: np.ndarray, knob: float) -> bytes:
        return self._encode_frames(work, knob)

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        (count,) = struct.unpack_from("<I", stream)
        lengths = struct.unpack_from(f"<{count}I", stream, 4)
        if 4 + 4 * count + sum(lengths) != len(stream):
            raise CorruptFileError(f"{self.codec_id} stream length does not match its frame table")
        pos = 4 + 4 * count
        frames = []
        for length in lengths:
            frames.append(self._decode_image(stream[pos : pos + length]))
            pos += length
        return np.stack(frames).reshape(shape).astype(work_dtype, copy=False)

    def _lossy_work(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, object]] | None:
        return to_uint16_work(x)


def to_uint16_work(x: np.ndarray) -> tuple[np.ndarray, dict[str, object]]:
    """Map ``x`` into uint16 for an integer image codec's lossy mode.

    Integer data whose range fits 16 bits is offset exactly (step 1).  Anything else is
    mapped affinely onto the full 0..65535 span (step = range / 65535, so the mapping
    itself adds at most half a step of error); the offset and step are stored.
    """
    lo, hi = float(x.min()), float(x.max())
    if x.dtype.kind in "ui" and hi - lo <= 65535:
        return (x.astype(np.int64) - int(lo)).astype(np.uint16), {
            "t": "quant",
            "w": "<u2",
            "o": lo,
            "q": 1.0,
        }
    step = (hi - lo) / 65535 if hi > lo else 1.0
    work = np.floor((x.astype(np.float64) - lo) / step + 0.5).astype(np.uint16)
    return work, {"t": "affine", "w": "<u2", "o": lo, "q": step}
