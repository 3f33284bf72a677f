"""Every ctpress codec as a numcodecs codec and as a Zarr v3 array-to-bytes codec.

Ids and names carry the ``ctpress.`` prefix (``ctpress.zstd``, not numcodecs' own
``zstd``); the configuration is the ctpress codec config without its ``id`` (rate control
and settings).  Both are registered through entry points (``numcodecs.codecs`` and
``zarr.codecs`` in ``pyproject.toml``), so a store written with them opens with plain
``zarr.open(path)[a:b]`` in any process where ctpress is installed, decoding lazily, and
torch is imported only for a learned codec.

A Zarr chunk is one ctpress chunk: its stream is self-describing (shape, dtype, transform,
CRC), which is what Zarr needs, since it tells a codec nothing about which chunk it
decodes; Zarr pads the last chunk along each axis with the fill value and the codec codes
the padded array.  Codecs that use context across views (a GOP, a segment, a whole scan)
get it only within a chunk: chunk the array along the views in their preferred length.

This module imports numcodecs and zarr: it is loaded by their entry points or by
:func:`ctpress.io` writers, never by ``import ctpress``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numcodecs
import numcodecs.abc
import numpy as np
from numcodecs.compat import ensure_bytes, ensure_ndarray_like, ndarray_copy
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

from .codecs import Codec, get_codec, list_codec_ids

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

#: Prefix of ctpress's codec ids in the numcodecs and Zarr registries.
PREFIX = "ctpress."


def _ctpress_codec(codec_id: str, configuration: dict[str, Any]) -> Codec:
    """The ctpress codec ``codec_id`` (with the prefix) built from ``configuration``."""
    return get_codec({"id": codec_id.removeprefix(PREFIX), **configuration})


def _configuration(codec: Codec) -> dict[str, Any]:
    """A ctpress codec's config without its ``id``."""
    return {k: v for k, v in codec.get_config().items() if k != "id"}


class CtpressNumcodec(numcodecs.abc.Codec):
    """A ctpress codec as a numcodecs codec: ``encode(ndarray) -> bytes``,
    ``decode(bytes, out=None) -> ndarray`` of the chunk's shape and dtype."""

    codec_id: ClassVar[str]

    def __init__(self, **configuration: Any) -> None:
        self.codec = _ctpress_codec(self.codec_id, configuration)

    def encode(self, buf: Any) -> bytes:
        return self.codec.encode(np.ascontiguousarray(ensure_ndarray_like(buf)))

    def decode(self, buf: Any, out: Any = None) -> Any:
        decoded = self.codec.decode(ensure_bytes(buf))
        if out is None:
            return decoded
        return ndarray_copy(decoded, out)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, **_configuration(self.codec)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.codec!r})"


@dataclass(frozen=True)
class CtpressZarrCodec(ArrayBytesCodec):
    """A ctpress codec as a Zarr v3 array-to-bytes codec named ``ctpress.<id>``."""

    codec_name: ClassVar[str]
    is_fixed_size = False
    configuration: dict[str, Any] = field(default_factory=dict)

    def __init__(self, **configuration: Any) -> None:
        codec = _ctpress_codec(self.codec_name, configuration)  # checks the settings now
        object.__setattr__(self, "configuration", _configuration(codec))

    @cached_property
    def codec(self) -> Codec:
        return _ctpress_codec(self.codec_name, self.configuration)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, configuration = parse_named_configuration(data, cls.codec_name)
        return cls(**(configuration or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.codec_name, "configuration": dict(self.configuration)}

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("ctpress streams have no fixed size")

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        array = np.ascontiguousarray(chunk_array.as_numpy_array())
        data = await asyncio.to_thread(self.codec.encode, array)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        decoded = await asyncio.to_thread(self.codec.decode, chunk_bytes.to_bytes())
        array = decoded.reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(array)


def _class_name(codec_id: str) -> str:
    return "".join(part.capitalize() for part in codec_id.replace("-", "_").split("_"))


def _make_classes() -> dict[str, type]:
    """One numcodecs and one Zarr class per built-in codec id, named ``<Id>Numcodec`` and
    ``<Id>ZarrCodec`` (the entry points name them)."""
    classes: dict[str, type] = {}
    for codec_id in list_codec_ids():
        name = _class_name(codec_id)
        classes[f"{name}Numcodec"] = type(
            f"{name}Numcodec", (CtpressNumcodec,), {"codec_id": PREFIX + codec_id}
        )
        classes[f"{name}ZarrCodec"] = type(
            f"{name}ZarrCodec", (CtpressZarrCodec,), {"codec_name": PREFIX + codec_id}
        )
    return classes


globals().update(_make_classes())


def numcodec(codec: Codec) -> CtpressNumcodec:
    """The numcodecs codec of a configured ctpress codec."""
    config = codec.get_config()
    numcodec_class: type[CtpressNumcodec] = globals()[f"{_class_name(config['id'])}Numcodec"]
    return numcodec_class(**_configuration(codec))


def zarr_codec(codec: Codec) -> CtpressZarrCodec:
    """The Zarr v3 array-to-bytes codec of a configured ctpress codec."""
    config = codec.get_config()
    zarr_class: type[CtpressZarrCodec] = globals()[f"{_class_name(config['id'])}ZarrCodec"]
    return zarr_class(**_configuration(codec))
