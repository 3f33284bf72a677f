"""Shared framing for 2-D image codecs (JPEG-LS, JPEG 2000, HTJ2K, JPEG XL).

A chunk (n_views, rows, cols) is coded as one image per projection when projections
have at least ``MIN_FRAME_ROWS`` rows; flatter chunks (sinogram-like, e.g. rows=1) are
coded as a single (n_views*rows, cols) mosaic, which keeps the view-to-view
correlation that a 1-row image would lose.  The stream is ``u32 n_frames``, ``u32``
length of each frame, then the frames.

Decoding checks the frame table and every frame's own header (its image size, one
component of at most 16 bits) against the chunk header before any frame is decoded, and
decodes into one preallocated array: at most the declared output plus one frame.
"""

from __future__ import annotations

import functools
import struct
from abc import abstractmethod
from typing import ClassVar

import numpy as np

from ..errors import CorruptFileError
from ..frames import MIN_FRAME_ROWS
from ._isolate import decode_isolated
from .base import Codec
from .settings import check_declared


class ImageCodec(Codec):
    """A codec built from a 2-D image encoder/decoder."""

    @abstractmethod
    def _encode_image(self, image: np.ndarray, knob: float | None) -> bytes:
        """Encode one 2-D image; ``knob`` None means lossless."""

    #: Decode in the worker process (:mod:`._isolate`): for libraries that can allocate
    #: without bound on crafted frames whose headers :meth:`_image_size` does not cover.
    isolated: ClassVar[bool] = False

    @abstractmethod
    def _decode_image(self, data: bytes) -> np.ndarray:
        """Decode one 2-D image."""

    @abstractmethod
    def _image_size(self, data: bytes) -> tuple[int, int]:
        """(rows, cols) that a frame's own header declares, read without decoding it.

        Raises ValueError (or IndexError, struct.error) if the header is damaged or does
        not describe one component of at most 16 bits.
        """

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
        frame_shape = _frame_shape(shape)
        for i, frame in enumerate(self._frames(stream, shape)):
            try:
                size = self._image_size(frame)
            except (ValueError, IndexError, struct.error) as exc:
                raise CorruptFileError(f"{self.codec_id} frame {i}: {exc}") from None
            check_declared(f"{self.codec_id} frame {i}'s image size", size, frame_shape)
        if self.isolated:
            decode = functools.partial(self._decode_frames, shape=shape, work_dtype=work_dtype)
            return decode_isolated(decode, stream, shape, work_dtype, self.codec_id)
        return self._decode_frames(stream, shape, work_dtype)

    def _frames(self, stream: bytes, shape: tuple[int, ...]) -> list[bytes]:
        """The frames of a stream, its frame table checked against the chunk's shape."""
        if len(stream) < 4:
            raise CorruptFileError(f"{self.codec_id} stream is truncated")
        (count,) = struct.unpack_from("<I", stream)
        n, rows, _ = shape
        check_declared(f"{self.codec_id} frame count", count, n if rows >= MIN_FRAME_ROWS else 1)
        pos = 4 + 4 * count
        if pos > len(stream):
            raise CorruptFileError(f"{self.codec_id} stream is truncated")
        lengths = struct.unpack_from(f"<{count}I", stream, 4)
        if pos + sum(lengths) != len(stream):
            raise CorruptFileError(f"{self.codec_id} stream length does not match its frame table")
        frames = []
        for length in lengths:
            frames.append(stream[pos : pos + length])
            pos += length
        return frames

    def _decode_frames(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        """Decode every frame into one array of ``shape`` (headers checked already)."""
        frame_shape = _frame_shape(shape)
        frames = self._frames(stream, shape)
        out = np.empty((len(frames), *frame_shape), dtype=work_dtype)
        for i, frame in enumerate(frames):
            image = np.asarray(self._decode_image(frame))
            check_declared(f"{self.codec_id} frame {i}'s decoded shape", image.shape, frame_shape)
            out[i] = image
        return out.reshape(shape)

    def _lossy_work(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, object]] | None:
        return to_uint16_work(x)


def _frame_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of each frame of a chunk of ``shape`` (n, rows, cols)."""
    n, rows, cols = shape
    return (rows, cols) if rows >= MIN_FRAME_ROWS else (n * rows, cols)


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


def find_box(data: bytes, kinds: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """``(kind, payload)`` of the first top-level ISO-BMFF box (the JP2 and JPEG XL
    containers) whose 4-byte type is one of ``kinds``; ValueError if there is none."""
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            (length,), header = struct.unpack_from(">Q", data, pos + 8), 16
        elif length == 0:
            length = len(data) - pos
        if length < header:
            break
        if kind in kinds:
            return kind, data[pos + header : pos + length]
        pos += length
    raise ValueError(f"container has no {' or '.join(k.decode() for k in kinds)} box")
