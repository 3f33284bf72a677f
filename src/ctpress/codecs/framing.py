"""Chunk framing: the self-describing header before every codec stream.

Each encoded chunk records the input dtype and shape, the exact transform applied
before the inner coder (integer offset, or the quantisation step of float data), the
stream length and its CRC-32, so a chunk decodes from the codec config and its bytes
alone (also outside the ``.ctpz`` container, e.g. in a Zarr store).  The header is a
compact binary struct ("CPC2"); chunks with the older JSON header ("CPC1") still decode.
See ``docs/format.md``.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

import numpy as np

from .._compact import get_varint, put_varint
from ..errors import CorruptFileError
from .settings import finite

_CHUNK_MAGIC = b"CPC1"  # JSON chunk header (written by ctpress <= 0.1 and as a fallback)
_CHUNK_MAGIC_2 = b"CPC2"  # binary chunk header
#: Codes of the CPC2 header (part of the format: append only).
_CPC2_DTYPES = ("|u1", "<u2", "<i2", "<u4", "<i4", "<f4", "<f8", "|i1", "<i8", "<u8", "<f2")
_CPC2_TRANSFORMS = ("none", "quant", "affine")
_CPC2_FLOATS = ("o", "q", "k")  # optional float64 fields, flag bits 1, 2, 4
_CPC2_EXTRA = 8  # flag bit: a JSON object of further keys follows
_CPC2_FIXED = struct.Struct("<4sBBBBB")  # magic, dtype, work dtype, transform, flags, ndim
_DTYPE_STR = re.compile(r"[<>|=]?[uif][1248]")  # what dtype.str gives for numeric dtypes
#: Largest decoded chunk (bytes of its output or work array) a chunk header may declare:
#: anything larger is a damaged header, refused before a decoder allocates it.
MAX_CHUNK_BYTES = 1 << 36


def chunk_header(header: dict[str, Any]) -> bytes:
    """Chunk framing of ``header``: the binary CPC2 form, or CPC1 (JSON) for what CPC2
    cannot hold bit-exactly (checked by parsing it back)."""
    packed = _pack_cpc2(header)
    if packed is not None:
        try:
            parsed, end = parse_chunk_header(packed)
        except (ValueError, KeyError, TypeError, IndexError, struct.error):
            parsed, end = {}, -1
        if end == len(packed) and _canonical(parsed) == _canonical(header):
            return packed
    text = json.dumps(header, separators=(",", ":")).encode()
    return _CHUNK_MAGIC + struct.pack("<I", len(text)) + text


def _canonical(header: dict[str, Any]) -> str:
    return json.dumps(header, sort_keys=True)


def _pack_cpc2(header: dict[str, Any]) -> bytes | None:
    """CPC2 header bytes, or None if a field does not fit the binary form::

    "CPC2" | u8 dtype | u8 work dtype | u8 transform | u8 flags | u8 ndim
    | varint shape[ndim] | lo, hi (input dtype) | varint n | u32 crc
    | f64 o, q, k (flags 1, 2, 4 when present) | [varint J | J bytes JSON] (flag 8)
    """
    try:
        dtype = _CPC2_DTYPES.index(header["dtype"])
        work = _CPC2_DTYPES.index(header["w"])
        transform = _CPC2_TRANSFORMS.index(header["t"])
        shape = [int(s) for s in header["shape"]]
        limits = np.array([header["lo"], header["hi"]], dtype=np.dtype(header["dtype"]))
        n, crc = int(header["n"]), int(header["crc"])
    except (KeyError, ValueError, TypeError, OverflowError):
        return None
    if len(shape) > 255 or min(shape, default=0) < 0 or not 0 <= crc < 1 << 32:
        return None
    flags = 0
    floats = b""
    for bit, key in enumerate(_CPC2_FLOATS):
        if type(header.get(key)) is float:
            flags |= 1 << bit
            floats += struct.pack("<d", header[key])
    known = {"dtype", "w", "t", "shape", "lo", "hi", "n", "crc"}
    known.update(key for bit, key in enumerate(_CPC2_FLOATS) if flags & (1 << bit))
    extra = {k: v for k, v in header.items() if k not in known}
    tail = b""
    if extra:
        flags |= _CPC2_EXTRA
        text = json.dumps(extra, separators=(",", ":")).encode()
        tail = put_varint(len(text)) + text
    out = bytearray(_CPC2_FIXED.pack(_CHUNK_MAGIC_2, dtype, work, transform, flags, len(shape)))
    for size in shape:
        out += put_varint(size)
    out += limits.astype(limits.dtype.newbyteorder("<")).tobytes()
    out += put_varint(n) + struct.pack("<I", crc) + floats + tail
    return bytes(out)


def parse_chunk_header(data: bytes) -> tuple[dict[str, Any], int]:
    """Chunk header dict (the keys CPC1 stores) and the offset of the stream."""
    if data[:4] == _CHUNK_MAGIC and len(data) >= 8:
        (n,) = struct.unpack_from("<I", data, 4)
        parsed = json.loads(data[8 : 8 + n])
        if not isinstance(parsed, dict):
            raise ValueError("chunk header is not a JSON object")
        return parsed, 8 + n
    if data[:4] != _CHUNK_MAGIC_2 or len(data) < _CPC2_FIXED.size:
        raise ValueError("not a ctpress chunk (bad magic)")
    _, dtype_code, work_code, transform, flags, ndim = _CPC2_FIXED.unpack_from(data)
    dtype = np.dtype(_CPC2_DTYPES[dtype_code])
    pos = _CPC2_FIXED.size
    shape = []
    for _ in range(ndim):
        size, pos = get_varint(data, pos)
        shape.append(size)
    limits = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=2, offset=pos)
    pos += 2 * dtype.itemsize
    n, pos = get_varint(data, pos)
    (crc,) = struct.unpack_from("<I", data, pos)
    pos += 4
    header: dict[str, Any] = {
        "t": _CPC2_TRANSFORMS[transform],
        "w": _CPC2_DTYPES[work_code],
    }
    for bit, key in enumerate(_CPC2_FLOATS):
        if flags & (1 << bit):
            (header[key],) = struct.unpack_from("<d", data, pos)
            pos += 8
    if flags & _CPC2_EXTRA:
        size, pos = get_varint(data, pos)
        if pos + size > len(data):
            raise ValueError("truncated chunk header")
        extra = json.loads(data[pos : pos + size])
        if not isinstance(extra, dict):
            raise ValueError("chunk header extra is not a JSON object")
        header.update(extra)
        pos += size
    header.update(
        dtype=_CPC2_DTYPES[dtype_code],
        shape=shape,
        lo=limits[0].item(),
        hi=limits[1].item(),
        n=n,
        crc=crc,
    )
    return header, pos


def read_chunk_header(buf: bytes | bytearray | memoryview) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype a chunk declares, read from its header alone (nothing is decoded or
    allocated), so a reader can check them against what it expects first.

    Raises
    ------
    CorruptFileError
        If the bytes do not start with a readable chunk header.
    """
    _, _, shape, dtype = checked_chunk_header(bytes(buf[:65536]))
    return shape, dtype


def checked_chunk_header(data: bytes) -> tuple[dict[str, Any], int, tuple[int, ...], np.dtype]:
    """``(header, stream offset, shape, dtype)`` of the chunk header at the start of
    ``data``, every field a decoder uses checked (CorruptFileError otherwise): a 2-D or
    3-D shape of at most :data:`MAX_CHUNK_BYTES`, numeric dtypes, a known transform with
    finite parameters."""
    try:
        header, offset = parse_chunk_header(data)
        shape = tuple(_count(s) for s in header["shape"])
        dtype, work = _numeric_dtype(header["dtype"]), _numeric_dtype(header["w"])
        transform = header.get("t", "none")
        if transform not in _CPC2_TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}")
        if transform != "none" and not (
            finite(header["o"]) and finite(header["q"]) and header["q"] > 0
        ):
            raise ValueError("bad transform parameters")
        if "lo" in header and not (
            finite(header["lo"]) and finite(header["hi"]) and header["lo"] <= header["hi"]
        ):
            raise ValueError("bad value range")
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError,
            struct.error) as exc:  # fmt: skip
        raise CorruptFileError(f"damaged chunk header: {exc}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise CorruptFileError(
            f"damaged chunk header: shape {shape} is not 2-D or 3-D with sizes of at least 1"
        )
    if math.prod(shape) * max(dtype.itemsize, work.itemsize) > MAX_CHUNK_BYTES:
        raise CorruptFileError(
            f"chunk header declares {shape} {dtype} values, more than {MAX_CHUNK_BYTES >> 30} "
            "GiB (the file is damaged)"
        )
    return header, offset, shape, dtype


def _count(value: Any) -> int:
    if type(value) is not int:  # JSON (CPC1) may hold anything
        raise ValueError(f"bad dimension {value!r}")
    return value


def _numeric_dtype(name: Any) -> np.dtype:
    """The dtype of a header's ``dtype.str`` (byte order, kind u/i/f, 1-8 bytes)."""
    if not isinstance(name, str) or not _DTYPE_STR.fullmatch(name):
        raise ValueError(f"unsupported dtype {name!r:.40}")
    return np.dtype(name)


def chunk_header_bound(shape: tuple[int, ...], dtype: np.dtype, stream_bytes: int) -> int:
    """Upper bound of the framing bytes :meth:`Codec.encode` puts before a stream of about
    ``stream_bytes`` for a chunk of ``shape`` and ``dtype`` (all optional floats present,
    no codec-specific extra keys)."""
    dtype = np.dtype(dtype)
    zero: float | int = 0.0 if dtype.kind == "f" else 0
    header = {
        "t": "affine",
        "w": "<u2",
        "o": 0.5,
        "q": 0.5,
        "k": 0.5,
        "dtype": dtype.str,
        "shape": list(shape),
        "lo": zero,
        "hi": zero,
        "n": max(0, int(stream_bytes)),
        "crc": 0xFFFFFFFF,
    }
    return len(chunk_header(header))
