"""The noise-bounded rate control (``mode="noise"``), for every lossy codec.

Every decoded value is within ``f x sigma(x)`` of the original ``x``, ``sigma`` from the
rate control's :class:`~ctpress.noise.NoiseModel`; zeros and saturated values are kept
exactly.  How: the generalised Anscombe transform maps the data to a variable of unit
noise, the codec codes it with its own max-error mode at a bound of ``f x margin``, and
the encoder decodes the result, checks every value and stores the few it misses
(rounding, the transform's curvature, exact values) as exceptions.  The bound holds by
construction, whatever the inner codec does.

Stream::

    varint L | L bytes: the inner chunk (a framed max-error chunk of the transformed data)
    varint M | M bytes: zstd of the exception mask (packbits, C order)
    varint V | V bytes: zstd of the exception values (the input dtype, little-endian)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import zstandard

from .._compact import get_varint, put_varint
from ..errors import CorruptFileError
from ..noise import NoiseModel

#: Margins (fraction of the bound handed to the inner codec) tried in turn; the first
#: whose exceptions are at most :data:`MAX_EXCEPTION_FRACTION` of the values is kept.
MARGINS = (0.9, 0.7, 0.5, 0.3, 0.15)
MAX_EXCEPTION_FRACTION = 0.002


def exact_values(x: np.ndarray, model: NoiseModel) -> np.ndarray:
    """Mask of the values kept exactly: zeros, the dtype's maximum (integer data) and the
    model's saturation value."""
    mask = x == 0
    if x.dtype.kind in "ui":
        mask |= x == np.iinfo(x.dtype).max
    if model.saturation is not None:
        mask |= x >= model.saturation
    return mask


def allowed_error(x: np.ndarray, model: NoiseModel, fraction: float) -> np.ndarray:
    """Per-value error bound ``fraction x sigma(x)`` (0 where values are kept exactly)."""
    bound = fraction * model.sigma(x)
    bound[exact_values(x, model)] = 0.0
    return bound


def encode_noise_bounded(
    x: np.ndarray,
    model: NoiseModel,
    fraction: float,
    encode_bounded: Callable[[np.ndarray, float], bytes],
    decode_chunk: Callable[[bytes], np.ndarray],
    to_dtype: Callable[[np.ndarray], np.ndarray],
) -> bytes:
    """Noise-bounded stream of ``x`` (n, rows, cols).

    ``encode_bounded(y, bound)`` is the codec's framed max-error chunk of float64 ``y``,
    ``decode_chunk`` its inverse, ``to_dtype`` rounds and clips float values to ``x``'s
    dtype.
    """
    y = model.stabilise(x)
    bound = allowed_error(x, model, fraction)
    best: bytes | None = None
    for margin in MARGINS:
        inner = encode_bounded(y, fraction * margin)
        decoded = to_dtype(model.unstabilise(decode_chunk(inner), cols=x.shape[-1]))
        miss = np.abs(decoded.astype(np.float64) - x.astype(np.float64)) > bound
        stream = _pack(inner, miss, x)
        if best is None or len(stream) < len(best):
            best = stream
        if miss.mean() <= MAX_EXCEPTION_FRACTION:
            break
    assert best is not None
    return best


def _pack(inner: bytes, miss: np.ndarray, x: np.ndarray) -> bytes:
    mask = zstandard.ZstdCompressor(level=19).compress(np.packbits(miss.ravel()).tobytes())
    values = np.ascontiguousarray(x[miss], dtype=x.dtype.newbyteorder("<"))
    packed = zstandard.ZstdCompressor(level=19).compress(values.tobytes())
    return b"".join(put_varint(len(p)) + p for p in (inner, mask, packed))


def decode_noise_bounded(
    stream: bytes,
    shape: tuple[int, ...],
    dtype: np.dtype,
    model: NoiseModel,
    decode_chunk: Callable[[bytes], np.ndarray],
    to_dtype: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Inverse of :func:`encode_noise_bounded` (CorruptFileError for a damaged stream)."""
    parts = []
    pos = 0
    try:
        for _ in range(3):
            size, pos = get_varint(stream, pos)
            if pos + size > len(stream):
                raise CorruptFileError("noise-bounded stream is truncated")
            parts.append(stream[pos : pos + size])
            pos += size
    except (ValueError, IndexError) as exc:
        raise CorruptFileError(f"noise-bounded stream is damaged: {exc}") from None
    if pos != len(stream):
        raise CorruptFileError("noise-bounded stream has trailing bytes")
    inner, mask_z, values_z = parts
    y = decode_chunk(inner)
    if y.shape != tuple(shape):
        raise CorruptFileError(f"noise-bounded inner chunk is {y.shape}, expected {shape}")
    out = to_dtype(model.unstabilise(y, cols=shape[-1]))
    n = int(np.prod(shape))
    dctx = zstandard.ZstdDecompressor()
    try:
        mask_bytes = dctx.decompress(mask_z, max_output_size=(n + 7) // 8)
        if len(mask_bytes) != (n + 7) // 8:
            raise CorruptFileError("noise-bounded exception mask has the wrong size")
        miss = np.unpackbits(np.frombuffer(mask_bytes, np.uint8), count=n).astype(bool)
        count = int(miss.sum())
        raw = dctx.decompress(values_z, max_output_size=max(1, count * dtype.itemsize))
    except zstandard.ZstdError as exc:
        raise CorruptFileError(f"noise-bounded exceptions are damaged: {exc}") from None
    if len(raw) != count * dtype.itemsize:
        raise CorruptFileError("noise-bounded exception values have the wrong size")
    flat = out.reshape(-1)
    flat[miss] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    return out
