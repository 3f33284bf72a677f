"""ZFP (zfpy): reversible lossless mode, fixed-accuracy (max abs error) mode and
fixed-rate mode (bits per value)."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import zfpy

from ..errors import CorruptFileError, RateControlError
from ._float import ErrorBoundedCodec, coded_shape
from ._isolate import decode_isolated, own_streams
from .base import Knob, RateModel, _Encoded, _search_knob
from .registry import register_codec
from .settings import check_declared

#: zfp's scalar type codes (its header's 2-bit type field plus 1) of the work dtypes.
_ZFP_TYPES = {"int32": 1, "int64": 2, "float32": 3, "float64": 4}
#: Bits per dimension in zfp's 52-bit field metadata, by number of dimensions.
_ZFP_DIM_BITS = {1: 48, 2: 24, 3: 16, 4: 12}
#: Fewest bits per block of fixed-rate mode: the block's sign and exponent.  zfp raises
#: smaller budgets to this while zfpy sizes its buffer for the budget asked, so it
#: writes past the buffer's end: ctpress never asks for less.
_MIN_BLOCK_BITS = {"float32": 1 + 8, "float64": 1 + 11}
#: A chunk coded as two view slabs at adjacent fixed-accuracy exponents starts with this
#: header: magic, views of the first slab (coded at the larger tolerance), its bytes.
_MIX_MAGIC = b"ZFPM"
_MIX_HEADER = struct.Struct("<4sII")
#: Views of the first slab are a multiple of zfp's block edge.
_MIX_BLOCK = 4
#: Fixed-accuracy tolerance over the RMS error it gives (about 15-30 on CT projections).
_TOLERANCE_PER_RMS = 20.0
#: d ln(MSE) / d(log2 tolerance): the MSE goes with the tolerance squared.
_MSE_PER_EXPONENT = 2 * math.log(2)


@register_codec
class Zfp(ErrorBoundedCodec):
    """ZFP transform coding of the chunk without its length-1 axes (4^d-value blocks: a
    length-1 axis would waste three quarters of every block).  Lossless uses ZFP's
    reversible mode (integers widened to int32 after an exact offset); ``max_error`` uses
    fixed-accuracy mode; bpp targets use fixed-rate mode (from 12 bits per block of
    float64 values, e.g. 0.75 bits/value in 2-D, 0.19 in 3-D) or fixed-accuracy mode,
    whichever gives the smaller error; PSNR targets search the fixed-accuracy exponent.
    Fractional exponents code some views at the next power of two (two zfp streams), so
    rate and error are continuous in the exponent."""

    codec_id = "zfp"
    description = "ZFP (LLNL): reversible lossless, fixed-accuracy or fixed-rate, 3-D blocks"
    exact_dtypes = ("int32", "int64", "float32", "float64")

    def _knob(self, work: np.ndarray) -> Knob:
        # ZFP's tolerance is conservative (actual errors are several times smaller)
        base = super()._knob(work)
        return Knob(lo=base.lo, hi=base.hi * 64, is_error_bound=True)

    def _encode_search(self, x: np.ndarray) -> _Encoded:
        """bpp targets: fixed-rate mode at the target, or fixed-accuracy mode where one of
        its tolerances (powers of two) lands within the target's 10 % and gives a smaller
        MSE (fixed-rate mode spends the same bits on every block, so it is often several
        dB worse: 10 vs 22 dB at 0.2 bits/value on a cone-beam crop)."""
        if self.mode != "bpp":
            return super()._encode_search(x)
        work, info = self._lossy_work(x)
        try:
            fixed: _Encoded | None = super()._encode_search(x)
        except RateControlError:  # below fixed rate's 12 bits per block
            fixed = None
        fixed_mse = math.inf
        if fixed is not None:
            with own_streams():
                fixed_mse = _mse(x, self._decode_parts(fixed, x))
        steps = _steps_per_exponent(work)
        rms = math.sqrt(fixed_mse) if fixed is not None else _rms_guess(work, self.value or 1.0)
        start = steps * math.log2(_TOLERANCE_PER_RMS * max(rms, 1e-150))
        # "za": this bpp chunk is in fixed-accuracy mode, "k" its knob (informational)
        attempt = _attempt(work, dict(info, za=1), _fixed_accuracy)
        try:
            knob = self._exponents(work)
            # a whole exponent near the target wins over a mix: the mix's error is the
            # views' average, dominated by its coarser part (2^(e+1): about 4x the MSE)
            accurate = _search_knob(
                self,
                x,
                knob,
                attempt,
                start,
                -0.5 / steps,
                whole_knobs=lambda k: (steps * math.floor(k / steps), steps * math.ceil(k / steps)),
            )
        except RateControlError:
            if fixed is None:
                raise
            return fixed
        if fixed is None:
            return accurate
        with own_streams():
            accurate_mse = _mse(x, self._decode_parts(accurate, x))
        return accurate if accurate_mse < fixed_mse else fixed

    def _rate_model(self, work: np.ndarray, target_mse: float | None) -> RateModel | None:
        """bpp: fixed-rate mode at the target.  PSNR: fixed-accuracy mode, whose tolerance
        acts only through its power of two (so the search runs over that exponent, from
        a tolerance of :data:`_TOLERANCE_PER_RMS` times the RMS error aimed at)."""
        if target_mse is None:
            assert self.value is not None
            block = 4 ** len(coded_shape(work.shape, 1))
            knob = Knob(_MIN_BLOCK_BITS[work.dtype.name] / block, 8.0 * work.itemsize, True)
            return RateModel(knob, self.value, _fixed_rate, 1.0)
        steps = _steps_per_exponent(work)
        start = steps * math.log2(_TOLERANCE_PER_RMS * math.sqrt(max(target_mse, 1e-300)))
        knob = self._exponents(work)
        return RateModel(knob, start, _fixed_accuracy, _MSE_PER_EXPONENT / steps)

    def _exponents(self, work: np.ndarray) -> Knob:
        """The fixed-accuracy knob worth trying on ``work``: ``e x J + j`` codes the first
        ``4 j`` views at tolerance 2^(e+1) and the rest at 2^e, ``J`` =
        :func:`_steps_per_exponent` (so the rate is nearly continuous in it; the search
        ends when two adjacent values bracket the target)."""
        bounds = self._knob(work)
        lo, hi = math.floor(math.log2(bounds.lo)), math.ceil(math.log2(bounds.hi))
        steps = _steps_per_exponent(work)
        return Knob(lo * steps, hi * steps, log=False, integer=True)

    def _encode_exact(self, work: np.ndarray) -> bytes:
        return bytes(zfpy.compress_numpy(_squeezed(work)))

    def _encode_lossy(self, work: np.ndarray, knob: float) -> bytes:
        return bytes(zfpy.compress_numpy(_squeezed(work), tolerance=float(knob)))

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        """The zfp header's scalar type and dimensions are checked here (the chunk's shape
        without its length-1 axes, or, from earlier versions, with them); the stream is
        decoded in the worker process, since zfp reads past the end of a truncated or
        crafted stream (by up to a block's maximum bits per block)."""
        mixed = _mixed_parts(stream, shape[0])
        if mixed is None:
            return self._decode_part(stream, shape, work_dtype, legacy=True)
        views, first, rest = mixed
        return np.concatenate(
            [
                self._decode_part(first, (views, *shape[1:]), work_dtype),
                self._decode_part(rest, (shape[0] - views, *shape[1:]), work_dtype),
            ]
        )

    def _decode_part(
        self, stream: bytes, shape: tuple[int, ...], work_dtype: str, *, legacy: bool = False
    ) -> np.ndarray:
        """One zfp stream of ``shape`` (with ``legacy``, also in the unsqueezed layout of
        earlier versions), header checked, decoded in the worker process."""
        ztype, dims = zfp_field(stream)
        check_declared("zfp stream's scalar type", ztype, _ZFP_TYPES.get(work_dtype))
        if not (legacy and dims == tuple(shape)):
            check_declared("zfp stream's shape", dims, coded_shape(shape, 1))
        return decode_isolated(_decompress, stream, shape, work_dtype, self.codec_id)


def _rms_guess(work: np.ndarray, bits: float) -> float:
    """A first guess of the RMS error at ``bits`` per value: the data's spread halved
    for every bit (6 dB per bit/value)."""
    return float(np.std(work)) * 2.0**-bits


def _squeezed(work: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(work).reshape(coded_shape(work.shape, 1))


def _fixed_rate(work: np.ndarray, bits: float) -> bytes:
    """Fixed-rate stream of ``work`` at ``bits`` per value (at least the minimum)."""
    return bytes(zfpy.compress_numpy(_squeezed(work), rate=float(bits)))


def _attempt(
    work: np.ndarray, info: dict[str, Any], encode: Callable[[np.ndarray, float], bytes]
) -> Callable[[np.ndarray | slice, float], _Encoded]:
    """A search probe: views of ``work`` coded by ``encode`` at a knob."""

    def attempt(views: np.ndarray | slice, knob: float) -> _Encoded:
        return _Encoded(encode(work[views], knob), dict(info, k=knob))

    return attempt


def _mse(x: np.ndarray, y: np.ndarray) -> float:
    diff = x.astype(np.float64) - y.astype(np.float64)
    return float(np.mean(diff * diff))


def _steps_per_exponent(work: np.ndarray) -> int:
    """Knob values per power of two of the tolerance on ``work`` (n_views, rows, cols):
    one per :data:`_MIX_BLOCK` views (1 where the chunk is too short to split)."""
    views = work.shape[0]
    return -(-views // _MIX_BLOCK) if views >= 2 * _MIX_BLOCK else 1


def _fixed_accuracy(work: np.ndarray, knob: float) -> bytes:
    """Fixed-accuracy stream of ``work`` (n_views, rows, cols) at ``knob`` = ``e x J + j``
    (:meth:`Zfp._exponents`): tolerance 2^e, or, for ``j > 0``, the first ``4 j`` views
    (whole zfp blocks) at 2^(e+1) and the rest at 2^e, as two zfp streams after the
    :data:`_MIX_MAGIC` header (zfp's tolerance acts only through its power of two: without
    the mix the rate would jump by about 1 bit/value per step)."""
    exponent, coarse_blocks = divmod(int(knob), _steps_per_exponent(work))
    if coarse_blocks == 0:
        return bytes(zfpy.compress_numpy(_squeezed(work), tolerance=math.ldexp(1.0, exponent)))
    coarse = _MIX_BLOCK * coarse_blocks
    first = zfpy.compress_numpy(_squeezed(work[:coarse]), tolerance=math.ldexp(1.0, exponent + 1))
    rest = zfpy.compress_numpy(_squeezed(work[coarse:]), tolerance=math.ldexp(1.0, exponent))
    return _MIX_HEADER.pack(_MIX_MAGIC, coarse, len(first)) + bytes(first) + bytes(rest)


def _mixed_parts(stream: bytes, n_views: int) -> tuple[int, bytes, bytes] | None:
    """(views of the first part, its stream, the rest's stream) of a mixed stream, None
    for a single zfp stream; CorruptFileError when the mix header is inconsistent."""
    if not stream.startswith(_MIX_MAGIC):
        return None
    if len(stream) < _MIX_HEADER.size:
        raise CorruptFileError("zfp mixed stream is shorter than its header")
    _, views, length = _MIX_HEADER.unpack_from(stream)
    if not 0 < views < n_views or _MIX_HEADER.size + length >= len(stream):
        raise CorruptFileError(
            f"zfp mixed stream splits {n_views} views at {views} with a first part of "
            f"{length} bytes in {len(stream)}"
        )
    first = stream[_MIX_HEADER.size : _MIX_HEADER.size + length]
    return views, first, stream[_MIX_HEADER.size + length :]


def _decompress(stream: bytes) -> np.ndarray:
    return np.asarray(zfpy.decompress_numpy(stream))


def zfp_field(stream: bytes) -> tuple[int, tuple[int, ...]]:
    """(scalar type code, shape in NumPy order) from a zfp stream's full header: magic
    "zfp" and codec version (32 bits), then the 52-bit field metadata (bits 0-1: type - 1,
    2-3: dimensions - 1, then each size - 1, x first), least significant bit first."""
    if len(stream) < 12 or stream[:3] != b"zfp":
        raise CorruptFileError("zfp stream has no zfp header")
    meta = int.from_bytes(stream[4:11], "little") & ((1 << 52) - 1)
    ztype, ndim = (meta & 3) + 1, ((meta >> 2) & 3) + 1
    width = _ZFP_DIM_BITS[ndim]
    sizes = [((meta >> (4 + width * k)) & ((1 << width) - 1)) + 1 for k in range(ndim)]
    return ztype, tuple(reversed(sizes))
