"""Blosc2: bit-shuffle then zstd, lossless (lossy modes quantise first)."""

from __future__ import annotations

from typing import Any, ClassVar

import blosc2
import numpy as np

from ..errors import CorruptFileError
from .generic import _ByteCodec
from .registry import register_codec
from .settings import check_declared

#: Bytes of the Blosc2 extended chunk header that ctpress's chunks start with (read in
#: full by blosc2's size query, which is given no length).
_BLOSC_MIN_HEADER = 32


@register_codec
class Blosc2(_ByteCodec):
    """Blosc2: bit-shuffle filter then zstd, with the item size of the data."""

    codec_id = "blosc2"
    description = "Blosc2 bit-shuffle + zstd (lossless); lossy via explicit quantisation"
    levels = (0, 9)
    #: ctpress 0.1 compressed levels above 9 at 9.
    _clamped_settings: ClassVar[dict[str, tuple[int, int]]] = {"level": levels}

    def __init__(self, *, level: int = 5, **rate: Any) -> None:
        super().__init__(level=level, **rate)

    def _encode_exact(self, work: np.ndarray) -> bytes:
        data = np.ascontiguousarray(work, dtype=work.dtype.newbyteorder("<"))
        return bytes(
            blosc2.compress2(
                data,
                typesize=data.dtype.itemsize,
                clevel=self.level,
                filters=[blosc2.Filter.BITSHUFFLE],
                codec=blosc2.Codec.ZSTD,
                nthreads=1,
            )
        )

    def _check_size(self, stream: bytes, nbytes: int) -> None:
        if len(stream) < _BLOSC_MIN_HEADER:
            raise CorruptFileError("blosc2 stream is shorter than its header")
        size, stored, _ = blosc2.get_cbuffer_sizes(stream)
        check_declared("blosc2 chunk size", size, nbytes)
        check_declared("blosc2 compressed size", stored, len(stream))

    def _decompress_into(self, stream: bytes, out: np.ndarray) -> None:
        blosc2.decompress2(stream, dst=out)
