"""Checks of codec settings and of what a stream declares (shared by every codec)."""

from __future__ import annotations

import math
import numbers
from typing import Any, TypeGuard

import numpy as np

from ..errors import CorruptFileError, InputError


def finite(value: Any) -> TypeGuard[float]:
    return is_number(value) and math.isfinite(value)


def int_setting(codec_id: str, name: str, value: Any, lo: int, hi: int) -> int:
    """A codec setting that must be an integer in ``lo..hi`` (integral floats pass, as
    JSON may give them; bools do not): the int, or an InputError naming it."""
    if not is_number(value) or not float(value).is_integer() or not lo <= value <= hi:
        raise InputError(
            f"{codec_id} setting {name}={value!r}: must be an integer from {lo} to {hi}"
        )
    return int(value)


def number_setting(
    codec_id: str, name: str, value: Any, lo: float, hi: float = math.inf, *, hi_open: bool = True
) -> float:
    """A codec setting that must be a number in ``(lo, hi)`` (``(lo, hi]`` when not
    ``hi_open``): the float, or an InputError naming it."""
    if not (is_number(value) and lo < value and (value < hi if hi_open else value <= hi)):
        span = f"> {lo:g}" if hi == math.inf else f"in ({lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise InputError(f"{codec_id} setting {name}={value!r}: must be a number {span}")
    return float(value)


def is_number(value: Any) -> TypeGuard[float]:
    """Whether ``value`` is a real number (Python or NumPy, not a bool) that converts to
    a float (inf and nan included)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def declared_bytes(shape: tuple[int, ...], dtype: str | np.dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype``: what a chunk header declares a decoder
    will produce, the unit of every decoder's memory bound."""
    return math.prod(shape) * np.dtype(dtype).itemsize


def check_declared(what: str, found: Any, declared: Any) -> None:
    """Refuse (CorruptFileError) a stream whose own header disagrees with its chunk
    header: ``found`` is read from the stream before anything is decoded or allocated,
    ``declared`` comes from the chunk header (tuples are shapes, shown as ``AxBxC``)."""
    if found != declared:
        raise CorruptFileError(
            f"{what} is {_shown(found)}, but the chunk header declares {_shown(declared)}"
        )


def _shown(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
