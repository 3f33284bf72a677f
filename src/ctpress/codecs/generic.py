"""General-purpose lossless compression: the byte-compressor base and zstd (Blosc2 is in
:mod:`ctpress.codecs.blosc`, so using zstd does not import blosc2)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import zstandard

from ..scan import SUPPORTED_DTYPES
from .base import Codec
from .registry import register_codec
from .settings import check_declared, declared_bytes, int_setting


class _ByteCodec(Codec):
    """Lossless byte compressor of the raw array; lossy modes quantise first."""

    exact_dtypes = SUPPORTED_DTYPES
    #: The compressor's compression levels (fastest, smallest).
    levels: ClassVar[tuple[int, int]]

    def __init__(self, *, level: int = 9, **rate: Any) -> None:
        super().__init__(**rate)
        self.level = int_setting(self.codec_id, "level", level, *self.levels)

    def _options(self) -> dict[str, int]:
        return {"level": self.level}

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        dtype = np.dtype(work_dtype).newbyteorder("<")
        self._check_size(stream, declared_bytes(shape, dtype))
        out = np.empty(shape, dtype=dtype)
        self._decompress_into(stream, out)
        return out.astype(work_dtype, copy=False)

    def _check_size(self, stream: bytes, nbytes: int) -> None:
        """CorruptFileError unless the stream's own header declares ``nbytes`` bytes."""
        raise NotImplementedError

    def _decompress_into(self, stream: bytes, out: np.ndarray) -> None:
        """Decompress ``stream`` (its size checked) into ``out``, allocating nothing larger."""
        raise NotImplementedError


@register_codec
class Zstd(_ByteCodec):
    """Zstandard on the raw little-endian bytes of the chunk."""

    codec_id = "zstd"
    description = "Zstandard on raw bytes (lossless); lossy via explicit quantisation"
    #: Negative levels are zstd's fast modes; 0 is its default (3).
    levels = (-131072, 22)
    #: zstd clamped levels below its fastest.
    _clamped_settings: ClassVar[dict[str, tuple[int, int]]] = {"level": levels}

    def _encode_exact(self, work: np.ndarray) -> bytes:
        data = np.ascontiguousarray(work, dtype=work.dtype.newbyteorder("<")).tobytes()
        return zstandard.ZstdCompressor(level=self.level).compress(data)

    def _check_size(self, stream: bytes, nbytes: int) -> None:
        size = zstandard.frame_content_size(stream)  # -1: not recorded (ctpress records it)
        check_declared("zstd frame content size", size, nbytes)

    def _decompress_into(self, stream: bytes, out: np.ndarray) -> None:
        raw = zstandard.ZstdDecompressor().decompress(
            stream, max_output_size=out.nbytes, allow_extra_data=False
        )
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
