"""Sparse views plus U-Net restoration: compression by storing fewer projections.

A chunk stores every ``keep_every``-th view (from its first, and its last view) with an
inner codec, any ctpress codec under the file's rate control (lossless by default: the
inner rate applies to the stored views; a bpp target is in bits per *stored* value),
and nothing of the other views.  Decoding returns the full-view chunk: the stored views
as the inner codec decodes them and the others synthesised in the sinogram domain by the
shipped U-Net (restoration (a), :func:`ctpress.learned.sparse.synthesise_views`, integer
arithmetic, the same on every machine) or, with ``restoration="linear"``, by linear
interpolation between the stored views.  ``ctpress recon --restore`` reconstructs the
stored views and applies restoration (b) in the image domain.

Chunks are :attr:`SparseUnet.preferred_chunk_views` (1024) views, a multiple of every
trained ``keep_every``, so the stored views are every k-th of the whole scan plus the
last view of each chunk.  The values are interpolated in a domain linear in attenuation:
raw counts (``log_counts=True``, or by default when the scan's metadata says ``units:
counts``) through an exact log table, anything else as stored.  Helical scans are refused.

Stream (after the chunk header), little-endian: ``u8`` version (1), ``u8`` keep_every,
``u8`` flags (bit 0: counts domain; bit 1: U-Net restoration; bit 2: a conjugate-ray
table follows), ``u8`` 0, ``u32`` views of the chunk, 8 bytes of the SHA-256 of the U-Net
weights (zeros for linear), the conjugate-ray table if flagged
(:meth:`~ctpress.learned.conjugate.ConjugateRays.to_bytes`), then the inner codec's
framed chunk of the stored views (its own header and CRC-32).

In a full rotation the U-Net also sees the conjugate rays (each missing view sampled
again by the stored views half a turn away); the encoder computes their table from the
chunk's angles and geometry and stores it, so decoding needs no geometry.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np

from ..errors import CorruptFileError, InputError
from ..learned.conjugate import ConjugateRays
from ..learned.sparse import (
    MAX_KEEP_EVERY,
    choose_conjugate_rays,
    sinogram_unet,
    sinogram_unet_with_id,
    stored_views,
    synthesise,
)
from .base import Codec, _Encoded
from .context import ChunkContext
from .framing import checked_chunk_header
from .registry import get_codec, register_codec
from .settings import check_declared, int_setting

_VERSION = 1
_HEAD = struct.Struct("<BBBBI8s")
_COUNTS = 1
_UNET = 2
_CONJUGATE = 4
RESTORATIONS = ("unet", "linear")


@register_codec
class SparseUnet(Codec):
    """Every k-th view by an inner codec; the others synthesised by a U-Net (see the module
    docstring).

    Parameters
    ----------
    keep_every : int
        k, from 2 to 64 (the U-Net is trained at 2, 4, 8 and 16).
    inner : str
        Codec id of the stored views (any codec but sparse-unet).
    inner_settings : dict, optional
        Settings of the inner codec (e.g. ``{"effort": 7}`` for jpegxl).
    restoration : {"unet", "linear"}
        How missing views are synthesised.
    log_counts : bool or None
        Interpolate integer raw counts in the log domain (True) or the values as stored
        (False); None: True when the scan's metadata says ``units: counts``.
    """

    codec_id = "sparse-unet"
    description = "every k-th view by an inner codec, the rest synthesised by a U-Net (lossy)"
    family = "learned"
    preferred_chunk_views = 1024

    def __init__(
        self,
        *,
        keep_every: int = 4,
        inner: str = "jpegls",
        inner_settings: dict[str, Any] | None = None,
        restoration: str = "unet",
        log_counts: bool | None = None,
        **rate: Any,
    ) -> None:
        super().__init__(**rate)
        self.keep_every = int_setting(self.codec_id, "keep_every", keep_every, 2, MAX_KEEP_EVERY)
        if inner == self.codec_id:
            raise InputError("sparse-unet cannot be its own inner codec")
        if restoration not in RESTORATIONS:
            raise InputError(
                f"sparse-unet restoration must be one of {RESTORATIONS}, got {restoration!r}"
            )
        if log_counts not in (None, True, False):
            raise InputError(f"sparse-unet log_counts must be true or false, got {log_counts!r}")
        if inner_settings is not None and not isinstance(inner_settings, dict):
            raise InputError(
                f"sparse-unet inner_settings must be an object, got {inner_settings!r}"
            )
        self.inner = inner
        self.inner_settings = dict(inner_settings or {})
        self.restoration = restoration
        self.log_counts = log_counts
        self.inner_codec = get_codec({"id": inner, **self.inner_settings, **self.rate.to_dict()})

    @classmethod
    def rate_modes(cls) -> tuple[str, ...]:
        """Every mode: the inner codec refuses the ones it lacks."""
        return ("lossless", "max_error", "bpp", "psnr", "noise")

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "keep_every": self.keep_every,
            "inner": self.inner,
            "restoration": self.restoration,
        }
        if self.log_counts is not None:
            options["log_counts"] = self.log_counts
        if self.inner_settings:
            options["inner_settings"] = self.inner_settings
        return options

    def stored_views(self, n_views: int) -> np.ndarray:
        """Mask (n_views,) of the views a chunk of ``n_views`` stores."""
        mask = np.zeros(n_views, dtype=bool)
        mask[stored_views(n_views, self.keep_every)] = True
        return mask

    # ------------------------------------------------------------------ coding
    def _encode_exact(self, work: np.ndarray) -> bytes:
        raise NotImplementedError("sparse-unet codes through _encode_chunk")

    def _encode_chunk(self, x: np.ndarray, context: ChunkContext | None) -> _Encoded:
        context = context or ChunkContext()
        if context.geometry is not None and context.geometry.kind == "helical":
            raise InputError(
                "sparse-unet does not support helical scans (their views are not a circular "
                "sinogram); use another codec"
            )
        n_views = x.shape[0]
        kept = stored_views(n_views, self.keep_every)
        counts = self._counts(x, context)
        angles = None if context.angles is None else context.angles[kept]
        inner_context = dataclasses.replace(context, stop=context.start + len(kept), angles=angles)
        inner_chunk, kept_decoded = self.inner_codec.compress(
            np.ascontiguousarray(x[kept]), inner_context
        )
        network = sinogram_unet() if self.restoration == "unet" else None
        weights_id = bytes(8) if network is None else network.weights_id
        rays = None
        if network is not None:
            rays = choose_conjugate_rays(x, kept, counts, context.geometry, context.angles)
        flags = (_COUNTS if counts else 0) | (0 if network is None else _UNET)
        flags |= _CONJUGATE if rays is not None else 0
        head = _HEAD.pack(_VERSION, self.keep_every, flags, 0, n_views, weights_id)
        table = b"" if rays is None else rays.to_bytes()
        full = synthesise(
            kept_decoded.reshape(len(kept), *x.shape[1:]), kept, n_views, counts, network, rays
        )
        return _Encoded(head + table + inner_chunk, {"t": "none", "w": x.dtype.str}, full)

    def _counts(self, x: np.ndarray, context: ChunkContext) -> bool:
        if x.dtype.kind not in "ui" or x.dtype.itemsize > 4:
            if self.log_counts:
                raise InputError("sparse-unet log_counts needs integer raw counts")
            return False
        if self.log_counts is not None:
            return self.log_counts
        return (context.metadata or {}).get("units") == "counts"

    def compress(
        self, array: np.ndarray, context: ChunkContext | None = None
    ) -> tuple[bytes, np.ndarray]:
        """The chunk's bytes and the full-view chunk a decoder returns for them (never the
        input: the synthesised views are not stored)."""
        data, enc, _ = self._framed(array, context)
        assert enc.decoded is not None
        return data, enc.decoded.reshape(np.shape(array))

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        kept, flags, rays, inner = self._parse(stream, shape, work_dtype)
        network = None
        if flags & _UNET:  # the weights that made the chunk, if installed
            network = sinogram_unet_with_id(_HEAD.unpack_from(stream)[5])
        kept_values = self.inner_codec.decode(inner).reshape(len(kept), *shape[1:])
        return synthesise(kept_values, kept, shape[0], bool(flags & _COUNTS), network, rays)

    def decode_stored(self, buf: bytes | bytearray | memoryview) -> np.ndarray:
        """The stored views of a chunk (n_stored, rows, cols), nothing synthesised."""
        enc, shape, dtype = self._read_chunk(buf)
        shape3 = shape if len(shape) == 3 else (1, *shape)
        with self._stream_errors():
            kept, _, _, inner = self._parse(enc.stream, shape3, dtype.name)
            return self.inner_codec.decode(inner).reshape(len(kept), *shape3[1:])

    def _parse(
        self, stream: bytes, shape: tuple[int, ...], work_dtype: str
    ) -> tuple[np.ndarray, int, ConjugateRays | None, bytes]:
        """(indices of the stored views, stream flags, the conjugate-ray table, the inner
        chunk), every field of the stream and of the inner chunk's header checked against
        the chunk's ``shape`` and ``work_dtype`` before anything is decoded."""
        if len(stream) < _HEAD.size:
            raise CorruptFileError("sparse-unet stream is truncated")
        version, keep_every, flags, _, n_views, _ = _HEAD.unpack_from(stream)
        conjugate_without_unet = flags & _CONJUGATE and not flags & _UNET
        if (
            version != _VERSION
            or not 2 <= keep_every <= MAX_KEEP_EVERY
            or flags > 7
            or conjugate_without_unet
        ):
            raise CorruptFileError(
                f"sparse-unet stream version {version}, keep_every {keep_every} or flags "
                f"{flags} is not one this ctpress writes"
            )
        check_declared("sparse-unet stream's view count", n_views, shape[0])
        kept = stored_views(n_views, keep_every)
        rays, end = None, _HEAD.size
        if flags & _CONJUGATE:
            rays, used = ConjugateRays.from_bytes(stream[end:], shape[-1], n_views)
            end += used
        inner = stream[end:]
        _, _, inner_shape, inner_dtype = checked_chunk_header(inner)
        check_declared(
            "sparse-unet inner chunk's shape", tuple(inner_shape), (len(kept), *shape[1:])
        )
        check_declared(
            "sparse-unet inner chunk's dtype", inner_dtype.name, np.dtype(work_dtype).name
        )
        return kept, flags, rays, inner
