"""General-purpose lossless compressors: zstd and Blosc2 (shuffle + zstd)."""

from __future__ import annotations

import blosc2
import numpy as np
import zstandard

from ..scan import SUPPORTED_DTYPES
from .base import Codec
from .registry import register_codec


class _ByteCodec(Codec):
    """Lossless byte compressor of the raw array; lossy modes quantise first."""

    exact_dtypes = SUPPORTED_DTYPES

    def __init__(
        self,
        mode: str = "lossless",
        value: float | None = None,
        data_range: float | None = None,
        level: int = 9,
    ) -> None:
        super().__init__(mode, value, data_range)
        self.level = int(level)

    def _options(self) -> dict[str, int]:
        return {"level": self.level}

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        raw = self._decompress_bytes(stream)
        return np.frombuffer(raw, dtype=work_dtype).reshape(shape).copy()

    def _decompress_bytes(self, stream: bytes) -> bytes:
        raise NotImplementedError


@register_codec
class Zstd(_ByteCodec):
    """Zstandard on the raw little-endian bytes of the chunk."""

    codec_id = "zstd"
    description = "Zstandard on raw bytes (lossless); lossy via explicit quantisation"

    def _encode_exact(self, work: np.ndarray) -> bytes:
        data = np.ascontiguousarray(work, dtype=work.dtype.newbyteorder("<")).tobytes()
        return zstandard.ZstdCompressor(level=self.level).compress(data)

    def _decompress_bytes(self, stream: bytes) -> bytes:
        return zstandard.ZstdDecompressor().decompress(stream)


@register_codec
class Blosc2(_ByteCodec):
    """Blosc2: bit-shuffle filter then zstd, with the item size of the data."""

    codec_id = "blosc2"
    description = "Blosc2 bit-shuffle + zstd (lossless); lossy via explicit quantisation"

    def __init__(
        self,
        mode: str = "lossless",
        value: float | None = None,
        data_range: float | None = None,
        level: int = 5,
    ) -> None:
        super().__init__(mode, value, data_range, level)

    def _encode_exact(self, work: np.ndarray) -> bytes:
        data = np.ascontiguousarray(work, dtype=work.dtype.newbyteorder("<"))
        return bytes(
            blosc2.compress2(
                data,
                typesize=data.dtype.itemsize,
                clevel=min(self.level, 9),
                filters=[blosc2.Filter.BITSHUFFLE],
                codec=blosc2.Codec.ZSTD,
                nthreads=1,
            )
        )

    def _decompress_bytes(self, stream: bytes) -> bytes:
        return bytes(blosc2.decompress2(stream))
