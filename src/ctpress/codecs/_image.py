"""Shared framing for 2-D image codecs (JPEG-LS, JPEG 2000, HTJ2K, JPEG XL).

A chunk (n_views, rows, cols) is coded as one image per projection when projections
have at least ``MIN_FRAME_ROWS`` rows; flatter chunks (sinogram-like, e.g. rows=1) are
coded as a (n_views*rows, cols) mosaic, which keeps the view-to-view correlation that a
1-row image would lose: one image, or two horizontal strips (whole views each) when the
codec codes two parts at different settings (:attr:`Codec.mixes_knob`).  The
stream is ``u32 n_frames``, ``u32`` length of each frame, then the frames, top to bottom.

Decoding checks the frame table and every frame's own header (its image size, one
component of at most 16 bits) against the chunk header before any frame is decoded, and
decodes into one preallocated array: at most the declared output plus one frame.
"""

from __future__ import annotations

import functools
import math
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

    def encode_image(self, image: np.ndarray, knob: float | None = None) -> bytes:
        """One 2-D image as the codec's bare codestream (what a DICOM file encapsulates):
        exact when ``knob`` is None, else at that value of the codec's lossy knob."""
        return self._encode_image(np.ascontiguousarray(image), knob)

    def decode_image(self, data: bytes, shape: tuple[int, int], dtype: str) -> np.ndarray:
        """One bare codestream from outside ctpress (a DICOM frame) as a ``shape`` array of
        ``dtype``: its own header is checked against ``shape`` before anything is decoded,
        and it is decoded in the worker process where the codec is :attr:`isolated`.

        Raises CorruptFileError when the header disagrees or the stream does not decode.
        """
        try:
            size = self._image_size(data)
        except (ValueError, IndexError, struct.error) as exc:
            raise CorruptFileError(f"{self.codec_id} image: {exc}") from None
        if size != shape:
            raise CorruptFileError(
                f"{self.codec_id} image is {size[0]} x {size[1]}, but the file declares "
                f"{shape[0]} x {shape[1]}"
            )
        if self.isolated:
            return decode_isolated(self._decode_image, data, shape, dtype, self.codec_id)
        try:
            image = self._decode_image(data)
        except (ValueError, RuntimeError) as exc:  # imagecodecs' errors derive from these
            raise CorruptFileError(f"{self.codec_id} image could not be decoded: {exc}") from None
        if image.dtype != np.dtype(dtype) or image.shape != shape:
            raise CorruptFileError(
                f"{self.codec_id} image decoded to {image.shape} {image.dtype}, not {shape} {dtype}"
            )
        return image

    def _mixing_restarts(self, shape: tuple[int, ...]) -> bool:
        """A mosaic split into two strips restarts the coder's adaptation (JPEG-LS: about
        0.2 bits/value on a 256 x 384 sinogram); views coded as their own frames do not."""
        return self.mixes_knob and shape[1] < MIN_FRAME_ROWS

    def _encode_frames(self, work: np.ndarray, knob: float | None) -> bytes:
        n, rows, cols = work.shape
        parts = [(work, knob)]
        if self.mixes_knob and knob is not None and knob != math.floor(knob):
            coarser = round((knob - math.floor(knob)) * n)  # views at the larger knob
            parts = [(work[:coarser], math.floor(knob) + 1.0), (work[coarser:], math.floor(knob))]
            parts = [(views, k) for views, k in parts if len(views)]
        frames = []
        for views, k in parts:
            if rows >= MIN_FRAME_ROWS:
                frames += [(image, k) for image in views]
            else:
                frames.append((views.reshape(-1, cols), k))
        encoded = [self._encode_image(np.ascontiguousarray(f), k) for f, k in frames]
        head = struct.pack(f"<I{len(encoded)}I", len(encoded), *(len(e) for e in encoded))
        return head + b"".join(encoded)

    def _encode_exact(self, work: np.ndarray) -> bytes:
        return self._encode_frames(work, None)

    def _encode_lossy(self, work: np.ndarray, knob: float) -> bytes:
        return self._encode_frames(work, knob)

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        sizes = []
        for i, frame in enumerate(self._frames(stream, shape)):
            try:
                sizes.append(self._image_size(frame))
            except (ValueError, IndexError, struct.error) as exc:
                raise CorruptFileError(f"{self.codec_id} frame {i}: {exc}") from None
        _check_frame_sizes(self.codec_id, sizes, shape)
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
        if rows >= MIN_FRAME_ROWS:
            check_declared(f"{self.codec_id} frame count", count, n)
        elif count not in (1, 2) or count > n:
            raise CorruptFileError(
                f"{self.codec_id} stream has {count} strips, not 1 or 2 of a {n}-view chunk"
            )
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
        """Decode every frame, top to bottom, into one array of ``shape`` (frame sizes
        checked already; each decoded frame is checked against its own header)."""
        n, rows, cols = shape
        out = np.empty((n * rows, cols), dtype=work_dtype)
        top = 0
        for i, frame in enumerate(self._frames(stream, shape)):
            image = np.asarray(self._decode_image(frame))
            size = self._image_size(frame)
            check_declared(f"{self.codec_id} frame {i}'s decoded shape", image.shape, size)
            out[top : top + size[0]] = image
            top += size[0]
        return out.reshape(shape)

    def _lossy_work(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, object]] | None:
        return to_uint16_work(x)


def _check_frame_sizes(codec_id: str, sizes: list[tuple[int, int]], shape: tuple[int, ...]) -> None:
    """CorruptFileError unless the frames' own (rows, cols) tile a chunk of ``shape``:
    one frame per view, or strips of whole views that together make the mosaic."""
    n, rows, cols = shape
    for i, (height, width) in enumerate(sizes):
        if rows >= MIN_FRAME_ROWS:
            check_declared(f"{codec_id} frame {i}'s image size", (height, width), (rows, cols))
        elif width != cols or height <= 0 or height % rows:
            raise CorruptFileError(
                f"{codec_id} strip {i} is {height}x{width}, not whole {rows}x{cols} views"
            )
    if rows < MIN_FRAME_ROWS:
        check_declared(f"{codec_id} mosaic's rows", sum(h for h, _ in sizes), n * rows)


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
