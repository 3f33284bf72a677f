"""Compact encodings shared by the ``.ctpz`` v2 container and the CPC2 chunk header.

- LEB128 varints (``put_varint`` / ``get_varint``);
- bit-exact compact float64 arrays for JSON (``pack_floats`` / ``unpack_floats``):
  a per-view angle list of 360 floats (about 7 KB of JSON) becomes
  ``{"f8": 360, "start": 0.0, "step": 0.017453292519943295}`` when
  ``start + step * np.arange(n)`` reproduces it bit for bit; otherwise the difference
  to that line is stored in units of the float's last place (zigzag varints, zstd,
  base64), or the raw little-endian float64 bytes (zstd, base64), whichever is shorter.

Everything here is part of the file format (see ``docs/format.md``): change nothing that
alters how stored bytes decode.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import zstandard

#: Key marking a packed float array in JSON (its value is the array's length).
ARRAY_KEY = "f8"
_MASK = np.uint64(0x7FFF_FFFF_FFFF_FFFF)


# ------------------------------------------------------------------- varints
def put_varint(value: int) -> bytes:
    """Unsigned LEB128 encoding of ``value`` (7 bits per byte, low bits first)."""
    if value < 0:
        raise ValueError(f"varint must be >= 0, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def get_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the varint at ``buf[pos:]``: ``(value, position after it)``.

    Raises ValueError when the buffer ends inside it or it is longer than 10 bytes.
    """
    value = shift = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("varint longer than 10 bytes")


# ------------------------------------------------------------- float arrays
def _linear(start: float, step: float, n: int) -> np.ndarray:
    """``start + step * arange(n)`` in float64 (IEEE operations only: the same bits on
    every platform)."""
    return np.float64(start) + np.float64(step) * np.arange(n, dtype=np.float64)


def _ordered(bits: np.ndarray) -> np.ndarray:
    """Float64 bit patterns (uint64) mapped so that their order as signed integers is the
    floats' order; the map is its own inverse.  The difference of two such values counts
    units in the last place between the floats, also across zero."""
    return bits ^ ((bits >> np.uint64(63)) * _MASK)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype="<f8").view("<u8")


def _b64z(raw: bytes) -> str:
    return base64.b64encode(zstandard.ZstdCompressor(level=19).compress(raw)).decode("ascii")


def _unb64z(text: Any, low: int, high: int) -> bytes:
    """Inverse of :func:`_b64z`, for a frame that declares between ``low`` and ``high``
    bytes of content: the declared size is checked before anything is decompressed, and
    decompression stops at it."""
    if not isinstance(text, str):
        raise ValueError(f"expected base64 text, got {type(text).__name__}")
    frame = base64.b64decode(text.encode("ascii"), validate=True)
    size = zstandard.frame_content_size(frame)
    if not low <= size <= high:  # -1: size not declared
        raise ValueError(f"compressed part declares {size} bytes, expected {low} to {high}")
    raw = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    if len(raw) != size:
        raise ValueError(f"compressed part holds {len(raw)} bytes, declared {size}")
    return raw


def _put_varints(values: np.ndarray) -> bytes:
    return b"".join(put_varint(v) for v in values.tolist())


def _get_varints(data: bytes, n: int) -> np.ndarray:
    """``n`` varints from ``data`` (all of it) as uint64."""
    b = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if n == 0 or len(ends) != n or ends[-1] != len(b) - 1:
        raise ValueError(f"packed array does not hold {n} varints")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise ValueError("varint longer than 10 bytes")
    place = np.arange(len(b)) - np.repeat(starts, lengths)
    parts = (b & 0x7F).astype(np.uint64) << (7 * place).astype(np.uint64)
    return np.add.reduceat(parts, starts)


def _json_len(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def pack_floats(values: Sequence[float]) -> list[float] | dict[str, Any]:
    """Shortest bit-exact JSON form of a float64 sequence: the list itself, or a dict
    (see the module docstring) that :func:`unpack_floats` turns back into it."""
    plain = [float(v) for v in values]
    a = np.asarray(plain, dtype=np.float64)
    n = int(a.size)
    options: list[list[float] | dict[str, Any]] = [plain]
    if n and math.isfinite(plain[0]):
        steps = [0.0]
        if n >= 2:
            steps += [float(a[1] - a[0]), float((a[-1] - a[0]) / (n - 1))]
        for step in dict.fromkeys(s for s in steps if math.isfinite(s)):
            residual = _ordered(_bits(a)) - _ordered(
                _bits(_linear(plain[0], step, n))
            )  # wraps mod 2**64
            packed: dict[str, Any] = {ARRAY_KEY: n, "start": plain[0], "step": step}
            if residual.any():
                signed = residual.view("<i8")
                zigzag = (residual << np.uint64(1)) ^ (signed >> np.int64(63)).view("<u8")
                packed["ulp"] = _b64z(_put_varints(zigzag))
            options.append(packed)
    if n:
        options.append({ARRAY_KEY: n, "raw": _b64z(a.astype("<f8").tobytes())})
    return min(options, key=_json_len)  # first of equal lengths: the plain list


def unpack_floats(packed: dict[str, Any], n: int | None = None) -> list[float]:
    """Inverse of :func:`pack_floats` for its dict forms (ValueError if malformed).

    ``n``: the number of values the array must hold (e.g. the number of views), checked
    before anything is decompressed; None accepts any count up to 2**28.
    """
    try:
        claimed = packed[ARRAY_KEY]
        if n is None:
            count_ok, expected = _is_int(claimed) and 0 <= claimed <= 1 << 28, "up to 2**28"
        else:
            count_ok, expected = _is_int(claimed) and claimed == n, f"{n} (one per view)"
        if not count_ok:
            raise ValueError(f"it claims {claimed!r} values, expected {expected}")
        if "raw" in packed:
            raw = _unb64z(packed["raw"], 8 * claimed, 8 * claimed)
            return np.frombuffer(raw, dtype="<f8").tolist()
        start, step = packed["start"], packed["step"]
        if not all(_is_int(v) or isinstance(v, float) for v in (start, step)):
            raise ValueError("start and step must be numbers")
        a = _linear(float(start), float(step), claimed)
        if "ulp" in packed:  # one varint (1 to 10 bytes) per value
            zigzag = _get_varints(_unb64z(packed["ulp"], claimed, 10 * claimed), claimed)
            residual = (zigzag >> np.uint64(1)) ^ (np.uint64(0) - (zigzag & np.uint64(1)))
            a = _ordered(_ordered(_bits(a)) + residual).view("<f8")
        result: list[float] = a.tolist()
        return result
    except (KeyError, TypeError, ValueError, zstandard.ZstdError) as exc:
        raise ValueError(f"damaged packed float array: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def pack_float_lists(mapping: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``mapping`` with every value that is a list of floats packed."""
    return {
        key: pack_floats(value)
        if isinstance(value, list) and value and all(type(v) is float for v in value)
        else value
        for key, value in mapping.items()
    }


def unpack_float_lists(mapping: dict[str, Any], n: int | None = None) -> dict[str, Any]:
    """Inverse of :func:`pack_float_lists`; ``n``: the number of values every packed array
    must hold (see :func:`unpack_floats`)."""
    return {
        key: unpack_floats(value, n) if isinstance(value, dict) and ARRAY_KEY in value else value
        for key, value in mapping.items()
    }
