"""The one interface every ctpress method implements.

A codec is a small class in the style of numcodecs: a stable ``codec_id``, a
constructor of plain JSON-serialisable settings, ``encode(array, context) -> bytes``,
``decode(bytes) -> array``, ``compress(array, context) -> (bytes, reconstruction)`` and
``get_config()`` / ``from_config()``.  The rate control (a :class:`~ctpress.rate.RateControl`:
lossless, max abs error, target bits per value, target PSNR, or an error bounded by the
quantum noise) is part of the config.

Each encoded chunk is self-describing: a short header records the input dtype and
shape and the exact transform applied before the inner coder (integer offset, or the
quantisation step of float data), so ``decode`` needs nothing but the codec config and
the bytes; a CRC-32 of the stream in that header catches damage even outside the
``.ctpz`` container (e.g. in a Zarr store).  The chunk header is a compact binary
struct ("CPC2"); chunks with the older JSON header ("CPC1") still decode.  Concrete
codecs implement a handful of hooks:

- ``_encode_exact(work)`` / ``_decode_stream(stream, shape, work_dtype)``: lossless
  coding of an array whose dtype is in ``exact_dtypes``;
- optionally ``_lossy_work(x)``, ``_knob(work)`` and ``_encode_lossy(work, knob)``: the
  codec's native lossy mode, steered by one scalar knob;
- optionally ``decode_views(buf, start, stop)``: decode only some views of a chunk
  (the default decodes the chunk and slices it).

The base class builds every rate control from those: error bounds on codecs without
a native one come from explicit uniform quantisation (step ``2E``) followed by
lossless coding; bpp/PSNR targets come from the codec's own rate mode
(``_rate_model``) or the one search routine (:mod:`ctpress.codecs.search`) over the knob,
probing a subsample of views first; the noise-bounded mode wraps the max-error mode
(:mod:`ctpress.codecs.noise_bound`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import CorruptFileError, FormatError, InputError, RateControlError
from ..noise import NoiseModel
from ..rate import RateControl
from ._isolate import own_streams
from .context import ChunkContext
from .framing import _CHUNK_MAGIC, _CHUNK_MAGIC_2, checked_chunk_header, chunk_header
from .noise_bound import decode_noise_bounded, encode_noise_bounded
from .search import Probe, estimate, solve

_BPP_TOLERANCE = 0.10  # relative; --bpp must land within 10 %
#: A search on the whole chunk stops at a probe this close to the target (bits: relative;
#: PSNR: in units of 10 dB above it) ...
_FULL_TOLERANCE = 0.04
#: ... and one on the probe subsample at a probe this close.
_SAMPLE_TOLERANCE = 0.02
_SEARCH_STEPS = 18
#: A whole knob within this of a bpp target is preferred to a mixed one (margin left
#: within the 10 % for the container's own bytes).
_WHOLE_BPP_TOLERANCE = 0.08
#: Fewest values of a probe subsample (smaller chunks are probed whole).
_MIN_PROBE_VALUES = 1 << 15


@dataclass(frozen=True)
class Knob:
    """The scalar that steers a codec's native lossy mode.

    ``lo``..``hi`` is the search interval; ``rate_increases`` says whether a larger knob
    gives more bits (a quality level) or fewer (a tolerance); ``log`` searches in log
    space; ``integer`` rounds the knob; ``is_error_bound`` marks a knob that is a max abs
    error in the units of the work array.
    """

    lo: float
    hi: float
    rate_increases: bool = False
    log: bool = True
    integer: bool = False
    is_error_bound: bool = False


@dataclass(frozen=True)
class RateModel:
    """How a codec meets a bpp or PSNR target without a search from scratch: its own rate
    mode (SPERR's ``bpp`` mode at the target bits per value) or a model of its knob (SZ3's
    MSE from its error bound).  ``encode(work, k)`` codes at knob ``k`` in ``knob``'s
    interval, ``start`` should meet the target, and ``slope`` is the expected
    d(log value)/d(knob) (knob in log space if ``knob.log``) that steers a correction."""

    knob: Knob
    start: float
    encode: Callable[[np.ndarray, float], bytes]
    slope: float


#: d ln(MSE) / d(PSNR in dB): the slope of a rate model whose knob is a PSNR level.
MSE_PER_DB = -math.log(10) / 10


def near_lossless_rate_model(
    knob: Knob, target_mse: float | None, encode: Callable[[np.ndarray, float], bytes]
) -> RateModel | None:
    """The rate model of a near-lossless knob NEAR (every integer value within NEAR): a PSNR
    target starts at the NEAR whose error, uniform on -NEAR..NEAR, has the target MSE
    (``NEAR (NEAR + 1) / 3``); bpp targets (``target_mse`` None) are searched."""
    if target_mse is None or target_mse <= 0:
        return None
    near = min(max((math.sqrt(1 + 12 * target_mse) - 1) / 2, knob.lo), knob.hi)
    slope = (2 * near + 1) / max(near * (near + 1), 0.5)  # d ln(MSE) / d NEAR
    return RateModel(knob, near, encode, slope)


@dataclass
class _Encoded:
    stream: bytes
    info: dict[str, Any]
    decoded: np.ndarray | None = None


class Codec(ABC):
    """Base class of every ctpress codec (classical or learned).

    Parameters
    ----------
    mode : {"lossless", "max_error", "bpp", "psnr", "noise"}
        Rate control (a key of :data:`ctpress.rate.RATE_MODES`).  ``max_error``: every
        decoded value within ``value`` of the input (absolute, in data units).  ``bpp``:
        about ``value`` bits per value (within 10 %).  ``psnr``: at least ``value`` dB
        against ``data_range``.  ``noise``: every value within ``value`` times its
        quantum-noise std under ``noise``.
    value : float or None
        The target of the rate control (unused for ``lossless``).
    data_range : float or None
        Peak value of PSNR (default: max - min of each encoded chunk).  The container
        sets it to the range of the whole scan so every chunk aims at the same MSE.
    noise : NoiseModel or dict or None
        The noise model of ``mode="noise"`` (its :meth:`~ctpress.noise.NoiseModel.to_dict`
        form in configs).
    """

    codec_id: ClassVar[str]
    description: ClassVar[str] = ""
    #: dtypes this codec stores bit-exactly.
    exact_dtypes: ClassVar[tuple[str, ...]] = ()
    #: Whether the codec has a native lossy mode (``_encode_lossy``).
    has_native_lossy: ClassVar[bool] = False
    #: Input bytes per container chunk this codec works best with (None: the default).
    preferred_chunk_bytes: ClassVar[int | None] = None
    #: Views per container chunk this codec works best with (a GOP, a segment), or None
    #: to chunk by :attr:`preferred_chunk_bytes`.
    preferred_chunk_views: ClassVar[int | None] = None
    #: Whether a fractional knob k + f codes the first round(f * n_views) views at k + 1
    #: and the rest at k: an integer knob whose steps are far apart in rate (JPEG-LS
    #: NEAR) then reaches every rate in between (see :meth:`_mixing_restarts`).
    mixes_knob: ClassVar[bool] = False
    #: Fewest views of a probe subsample (:meth:`_probe_views`): more for coders whose
    #: prediction across views needs a deep slab to behave as on the whole chunk.
    probe_min_views: ClassVar[int] = 1
    #: "classical" or "learned" (the report styles and ranks the families apart).
    family: ClassVar[str] = "classical"
    #: Whether a reader decodes several chunks at once in threads.  A decoder made of
    #: many small steps that hold the GIL (``dvc``, view by view) runs faster alone.
    parallel_decode: ClassVar[bool] = True
    #: Whether a writer encodes several chunks at once in threads (likewise; the bytes
    #: are the same either way).
    parallel_encode: ClassVar[bool] = True

    def __init__(
        self,
        mode: str = "lossless",
        value: float | None = None,
        data_range: float | None = None,
        noise: NoiseModel | dict[str, Any] | None = None,
    ) -> None:
        if isinstance(noise, dict):
            noise = NoiseModel.from_dict(noise)
        rate = RateControl(mode, value, data_range, noise)
        if mode not in self.rate_modes():
            raise InputError(
                f"codec {self.codec_id!r} does not support {mode!r} rate control; it supports "
                f"{', '.join(self.rate_modes())}"
            )
        self.rate = rate

    @property
    def mode(self) -> str:
        return self.rate.mode

    @property
    def value(self) -> float | None:
        return self.rate.value

    @property
    def data_range(self) -> float | None:
        return self.rate.data_range

    # ------------------------------------------------------------------ config
    @classmethod
    def rate_modes(cls) -> tuple[str, ...]:
        """Rate controls this codec supports."""
        modes = []
        if cls.exact_dtypes:
            modes.append("lossless")
        modes.append("max_error")  # native bound, or quantisation + lossless
        modes += ["bpp", "psnr", "noise"]
        return tuple(modes)

    def _options(self) -> dict[str, Any]:
        """Codec-specific constructor settings (override with the extra parameters)."""
        return {}

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable settings; ``from_config(get_config())`` rebuilds the codec."""
        config: dict[str, Any] = {"id": self.codec_id, **self.rate.to_dict()}
        config.update(self._options())
        return config

    #: Integer settings that earlier ctpress versions accepted beyond today's range (the
    #: library clamped them): :meth:`from_config` clamps them the same way, so files
    #: written with them still open.
    _clamped_settings: ClassVar[dict[str, tuple[int, int]]] = {}

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """Names a config may hold: the rate control's (``mode``, ``value``,
        ``data_range``, ``noise``), then the codec's own settings (ctpress's codecs take
        theirs by keyword and pass ``**rate`` up)."""
        names = ["mode", "value", "data_range", "noise"]
        for klass in reversed(cls.__mro__):
            init = vars(klass).get("__init__")
            if init is None or klass is Codec or not issubclass(klass, Codec):
                continue
            for name, parameter in inspect.signature(init).parameters.items():
                named = parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
                if named and name != "self" and name not in names:
                    names.append(name)
        return tuple(names)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        """Build a codec from :meth:`get_config` output (InputError for anything else)."""
        if not isinstance(config, dict):
            raise InputError(f"codec {cls.codec_id!r} config must be an object, got {config!r}")
        kwargs = {k: v for k, v in config.items() if k != "id"}
        settings = cls.settings()
        unknown = [k for k in kwargs if k not in settings]
        if unknown:
            raise InputError(
                f"bad config for codec {cls.codec_id!r}: no setting "
                f"{', '.join(map(repr, unknown))}; its settings are {', '.join(settings)}"
            )
        for name, (lo, hi) in cls._clamped_settings.items():
            if type(kwargs.get(name)) is int:
                kwargs[name] = min(max(kwargs[name], lo), hi)
        return cls(**kwargs)

    def with_rate(self, rate: RateControl) -> Codec:
        """Copy of this codec with another rate control (same options)."""
        config = {k: v for k, v in self.get_config().items() if k != "noise"}
        config.update(rate.to_dict())
        return type(self).from_config(config)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({settings})"

    def stored_views(self, n_views: int) -> np.ndarray:
        """Mask (n_views,) of the views a chunk of ``n_views`` stores: every one, except in
        codecs that synthesise some views on decoding (sparse views)."""
        return np.ones(n_views, dtype=bool)

    def decode_stored(self, buf: bytes | bytearray | memoryview) -> np.ndarray:
        """The views of a chunk that it stores (:meth:`stored_views`), shape
        (n_stored, rows, cols), without synthesising the others."""
        full = self.decode(buf)
        full = full.reshape(-1, *full.shape[-2:])
        return full[self.stored_views(full.shape[0])]

    # ------------------------------------------------------------------- hooks
    @abstractmethod
    def _encode_exact(self, work: np.ndarray) -> bytes:
        """Lossless stream of ``work`` (dtype in ``exact_dtypes``, shape (n, rows, cols))."""

    @abstractmethod
    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        """Inverse of ``_encode_exact`` / ``_encode_lossy``: array of ``shape``."""

    def _lossy_work(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Array handed to the native lossy mode plus its transform info, or None if the
        native lossy mode does not apply to this dtype (the quantised path is used)."""
        return None

    def _knob(self, work: np.ndarray) -> Knob:
        """Search interval and meaning of the native lossy knob for ``work``."""
        raise NotImplementedError

    def _encode_lossy(self, work: np.ndarray, knob: float) -> bytes:
        """Native lossy stream of ``work`` at knob value ``knob``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ encode
    def encode(self, array: np.ndarray, context: ChunkContext | None = None) -> bytes:
        """Encode an array of shape (n_views, rows, cols) (or (rows, cols)) to bytes.

        ``context`` tells the codec where the chunk sits in its scan (views, angles,
        geometry, scan-wide statistics); whatever the decoder needs of it goes into
        the stream.
        """
        return self._framed(array, context)[0]

    def compress(
        self, array: np.ndarray, context: ChunkContext | None = None
    ) -> tuple[bytes, np.ndarray]:
        """:meth:`encode`, plus the decoder-side reconstruction: exactly what
        :meth:`decode` returns for the bytes (CompressAI's ``compress``).  Where the
        encoder already decoded its stream (an error bound or a PSNR target checked it)
        that array is returned; otherwise the bytes are decoded."""
        data, enc, x = self._framed(array, context)
        if self.mode == "lossless":
            return data, np.array(array)
        if enc.decoded is None or enc.decoded.shape != x.shape or enc.decoded.dtype != x.dtype:
            return data, self.decode(data)
        decoded = enc.decoded
        if not (enc.info.get("t", "none") == "none" and np.dtype(enc.info["w"]) == x.dtype):
            # as _to_output does when decoding; clipping to the chunk's (integer, or for
            # floats representable) limits after rounding gives the same values as before
            decoded = np.clip(decoded, x.min(), x.max()).astype(x.dtype, copy=False)
        return data, decoded.reshape(np.shape(array))

    def _framed(
        self, array: np.ndarray, context: ChunkContext | None
    ) -> tuple[bytes, _Encoded, np.ndarray]:
        """(chunk bytes, the codec's stream and info, the validated (n, rows, cols) input)."""
        x = np.ascontiguousarray(array)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.size == 0:
            raise InputError(f"codec input must be a non-empty 2-D or 3-D array, got {x.shape}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InputError("codec input contains NaN or inf")
        if x.dtype.kind not in "uif":
            raise InputError(f"unsupported dtype {x.dtype}")
        enc = self._encode_chunk(x, context)
        header = dict(enc.info)
        header.update(
            dtype=x.dtype.str,
            shape=list(array.shape),
            lo=_py(x.min()),
            hi=_py(x.max()),
            n=len(enc.stream),
            crc=zlib.crc32(enc.stream),
        )
        return chunk_header(header) + enc.stream, enc, x

    def _encode_chunk(self, x: np.ndarray, context: ChunkContext | None) -> _Encoded:
        """Stream + header info of a validated (n, rows, cols) chunk under the codec's
        rate control.  Codecs that use the chunk's context override this."""
        if self.mode == "lossless":
            return self._encode_lossless(x)
        if self.mode == "max_error":
            assert self.value is not None
            return self._encode_max_error(x, self.value)
        if self.mode == "noise":
            return self._encode_noise(x)
        return self._encode_search(x)

    def _encode_lossless(self, x: np.ndarray) -> _Encoded:
        work, info = self._exact_work(x, step=None)
        return _Encoded(self._encode_exact(work), info)

    def _encode_noise(self, x: np.ndarray) -> _Encoded:
        """Noise-bounded stream (see :mod:`ctpress.codecs.noise_bound`)."""
        assert self.rate.noise is not None and self.value is not None
        limits = {"lo": _py(x.min()), "hi": _py(x.max())}
        stream = encode_noise_bounded(
            x,
            self.rate.noise,
            self.value,
            lambda y, bound: self.with_rate(RateControl("max_error", bound)).encode(y),
            self._inner_decode,
            lambda v: _to_output(v, limits, x.dtype),
        )
        return _Encoded(stream, {"t": "none", "w": x.dtype.str, "nb": 1})

    def _inner_decode(self, chunk: bytes) -> np.ndarray:
        """Decode a framed chunk this codec wrote under any rate control (decoding does
        not depend on the rate)."""
        return self.with_rate(RateControl("max_error", 1.0)).decode(chunk)

    def _exact_work(
        self, x: np.ndarray, step: float | None, odd_steps: bool = True
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Map ``x`` to an array in ``exact_dtypes``: as is, offset into unsigned, or (with
        ``step``) uniformly quantised ``round((x - lo) / step)``.  Integer data take odd
        integer steps (an exact error bound of ``step // 2``) unless ``odd_steps`` is
        False (any real step >= 1; the decoder rounds)."""
        if not self.exact_dtypes:
            raise RateControlError(f"codec {self.codec_id!r} has no lossless mode")
        if step is None:
            if x.dtype.name in self.exact_dtypes:
                return x, {"t": "none", "w": x.dtype.str}
            if x.dtype.kind == "f":
                raise RateControlError(
                    f"codec {self.codec_id!r} cannot store {x.dtype} data losslessly; use "
                    "--max-error E, or a codec that stores floats losslessly (see 'ctpress codecs')"
                )
            step = 1.0
        lo = float(x.min())
        if x.dtype.kind in "ui" and (odd_steps or step <= 1):
            step = odd_step(step, integer=True)
            q = (x.astype(np.int64) - int(lo) + int(step) // 2) // int(step)
        else:
            q = np.floor((x.astype(np.float64) - lo) / step + 0.5)
        top = float(q.max())
        for name in ("uint8", "uint16", "int32", "uint32", "int64", "float64"):
            if name in self.exact_dtypes and top <= _max_exact(name):
                return q.astype(name), {"t": "quant", "w": np.dtype(name).str, "o": lo, "q": step}
        most = _max_exact(self.exact_dtypes[-1])
        raise RateControlError(
            f"codec {self.codec_id!r} stores at most {most:.0f} levels "
            f"but this data needs {top + 1:.0f} at step {step:g}; ask for a larger error bound or "
            "use zstd/blosc2/zfp"
        )

    def _encode_max_error(self, x: np.ndarray, bound: float) -> _Encoded:
        integer = x.dtype.kind in "ui"
        if integer and bound < 1:
            return self._encode_lossless(x) if self.exact_dtypes else self._bounded_native(x, 0.49)
        native = self._lossy_work(x) if self.has_native_lossy else None
        if native is not None and self._knob(native[0]).is_error_bound:
            # integer data decodes by rounding, so a float error < k + 0.5 rounds to <= k
            tol = math.floor(bound) + 0.49 if integer and native[0].dtype.kind == "f" else bound
            return self._bounded_native(x, tol, bound)
        step = 2 * math.floor(bound) + 1 if integer else 2.0 * bound
        for _ in range(6):  # float rounding can push an error a hair over the bound
            work, info = self._exact_work(x, step)
            enc = _Encoded(self._encode_exact(work), info)
            if integer:
                return enc
            with own_streams():
                decoded = self._decode_parts(enc, x)
            if _max_abs_err(x, decoded) <= bound:
                return enc
            step *= 0.999
        raise RateControlError(f"cannot guarantee max error {bound:g} on {x.dtype} data")

    def _bounded_native(self, x: np.ndarray, tol: float, bound: float | None = None) -> _Encoded:
        bound = tol if bound is None else bound
        work, info = self._lossy_work(x) or (None, {})
        assert work is not None
        scale = float(info.get("q", 1.0))
        # an affine map to integers already costs half a step of error
        offset = 0.5 if info.get("t") == "affine" else 0.0

        def attempt(t: float) -> _Encoded | None:
            k = t / scale - offset
            if work.dtype.kind in "ui":  # errors on integer work are integers
                k = float(math.floor(k))
            enc = _Encoded(self._encode_lossy(work, k), dict(info, k=k))
            with own_streams():
                enc.decoded = self._decode_parts(enc, x)
            return enc if _max_abs_err(x, enc.decoded) <= bound else None

        best = None
        for _ in range(8):  # shrink until the bound holds ...
            best = attempt(tol)
            if best is not None:
                break
            tol *= 0.5
        if best is None:
            raise RateControlError(
                f"codec {self.codec_id!r} could not meet max error {bound:g} on this data"
            )
        for _ in range(4):  # ... then take the slack of conservative coders (e.g. ZFP)
            looser = attempt(tol * 2)
            if looser is None or len(looser.stream) >= len(best.stream):
                break
            best, tol = looser, tol * 2
        return best

    def _encode_search(self, x: np.ndarray) -> _Encoded:
        """Meet a bpp or PSNR target: with the codec's native rate mode where it has one
        (:meth:`_rate_model`), else by searching the lossy knob (probes on a subsample of
        views first where :meth:`_probe_views` gives one)."""
        assert self.value is not None
        native = self._lossy_work(x) if self.has_native_lossy else None
        if native is None:
            span = float(x.max()) - float(x.min())
            span = span if span > 0 else 1.0
            # integer data: steps >= 1 (step 1 is lossless); real steps keep the rate
            # continuous (the decoder rounds), unlike the odd steps of max_error
            knob = Knob(lo=0.5 if x.dtype.kind in "ui" else span * 1e-7, hi=span)

            def quantised(views: np.ndarray | slice, k: float) -> _Encoded:
                work_q, info_q = self._exact_work(x[views], 2.0 * k, odd_steps=False)
                return _Encoded(self._encode_exact(work_q), info_q)

            return _search_knob(self, x, knob, quantised, sample=self._probe_views(x.shape))
        work, info = native
        target_mse = self._target_mse(x)
        aim = None if target_mse is None else target_mse * 10 ** (-_FULL_TOLERANCE / 2)
        rate = self._rate_model(work, aim)
        encode = self._encode_lossy if rate is None else rate.encode

        def attempt(views: np.ndarray | slice, k: float) -> _Encoded:
            return _Encoded(encode(work[views], k), dict(info, k=k))

        if rate is not None:
            return _search_knob(self, x, rate.knob, attempt, rate.start, rate.slope)
        sample = self._probe_views(x.shape)
        return _search_knob(self, x, self._knob(work), attempt, sample=sample)

    def _target_mse(self, x: np.ndarray) -> float | None:
        """The MSE a PSNR target allows on ``x`` (None for a bpp target)."""
        if self.mode != "psnr":
            return None
        assert self.value is not None
        data_range = self.data_range or float(x.max()) - float(x.min()) or 1.0
        return data_range**2 / 10 ** (self.value / 10)

    def _rate_model(self, work: np.ndarray, target_mse: float | None) -> RateModel | None:
        """The codec's rate mode or model for :attr:`mode` ("bpp", or "psnr" with the MSE
        to aim at): a knob whose start should meet the target in one encode, or None to
        search :meth:`_knob` (probing a subsample of views first)."""
        return None

    def _mixing_restarts(self, shape: tuple[int, ...]) -> bool:
        """Whether a knob that mixes two settings across views costs something on a chunk
        of ``shape`` (a restart of the coder's adaptation; an error far from both), so
        that a whole knob (:meth:`_whole_knobs`) close enough to the target is preferred
        (bpp targets: within :data:`_WHOLE_BPP_TOLERANCE`)."""
        return False

    def _whole_knobs(self, knob: float, shape: tuple[int, ...]) -> tuple[float, ...]:
        """The unmixed knobs next to ``knob`` on a chunk of ``shape`` (a knob is whole if
        it is among its own)."""
        return (float(round(knob)),)

    def _probe_views(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """Views of a chunk of ``shape`` whose rate and error predict the whole chunk's:
        a contiguous slab in the middle (codecs that use view-to-view correlation), about
        1/8 of the chunk and at least :data:`_MIN_PROBE_VALUES` values; None when the
        chunk is too small to gain from probing a part."""
        count = _probe_count(shape, self.probe_min_views)
        if count is None:
            return None
        first = (shape[0] - count) // 2
        return np.arange(first, first + count)

    # ------------------------------------------------------------------ decode
    def decode(
        self, buf: bytes | bytearray | memoryview, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Decode bytes from :meth:`encode` to an array of the original dtype and shape."""
        enc, shape, dtype = self._read_chunk(buf)
        if out is not None and out.shape != shape:
            raise InputError(f"out must have the chunk's shape {shape}, got {out.shape}")
        shape3 = shape if len(shape) == 3 else (1, *shape)
        with self._stream_errors():
            result = self._decode_parts(enc, np.empty(0, dtype), shape3)
        result = result.reshape(shape)
        if out is not None:
            out[...] = result
            return out
        return result

    @contextlib.contextmanager
    def _stream_errors(self) -> Iterator[None]:
        """Any error of decoding a stream (a damaged stream fails inside a C library) as
        CorruptFileError."""
        try:
            yield
        except (FormatError, RateControlError):  # damaged, or made with other weights
            raise
        except Exception as exc:
            raise CorruptFileError(f"{self.codec_id} stream could not be decoded: {exc}") from None

    def decode_views(
        self, buf: bytes | bytearray | memoryview, start: int, stop: int
    ) -> np.ndarray:
        """Decode views ``start:stop`` (along the first axis) of the chunk in ``buf``.

        Returns shape ``(stop - start, rows, cols)``.  The default decodes the whole chunk
        and slices it; codecs that can evaluate a subset of views (e.g. an implicit
        neural representation) override it, reading the checked header and stream with
        :meth:`_read_chunk` so the checksum is still verified.
        """
        full = self.decode(buf)
        if full.ndim == 2:
            full = full[None]
        if not 0 <= start < stop <= full.shape[0]:
            raise InputError(f"view range {start}:{stop} is outside the chunk's 0:{full.shape[0]}")
        return full[start:stop]

    def _read_chunk(
        self, buf: bytes | bytearray | memoryview
    ) -> tuple[_Encoded, tuple[int, ...], np.dtype]:
        """Parse a chunk: ``(stream + header info, stored shape, dtype)``, with the stream's
        length and CRC-32 checked (CorruptFileError otherwise)."""
        data = bytes(buf)
        if data[:4] not in (_CHUNK_MAGIC, _CHUNK_MAGIC_2):
            raise CorruptFileError("not a ctpress chunk (bad magic)")
        header, offset, shape, dtype = checked_chunk_header(data)
        enc = _Encoded(data[offset:], header)
        if len(enc.stream) != header.get("n") or zlib.crc32(enc.stream) != header.get("crc"):
            raise CorruptFileError(f"{self.codec_id} chunk is truncated or damaged (checksum)")
        return enc, shape, dtype

    def _decode_parts(
        self, enc: _Encoded, like: np.ndarray, shape: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """Decode stream + transform info to ``like``'s dtype (shape from ``like`` if given)."""
        info = enc.info
        shape = like.shape if shape is None else shape
        if info.get("nb"):
            if self.rate.noise is None:
                raise CorruptFileError("a noise-bounded chunk needs the codec's noise model")
            return decode_noise_bounded(
                enc.stream,
                tuple(shape),
                like.dtype,
                self.rate.noise,
                self._inner_decode,
                lambda v: _to_output(v, info, like.dtype),
            )
        work = self._decode_stream(enc.stream, tuple(shape), np.dtype(info["w"]).name)
        if work.shape != tuple(shape):
            raise CorruptFileError(f"decoded shape {work.shape} differs from stored {shape}")
        return _to_output(work, info, like.dtype)


def odd_step(step: float, integer: bool) -> float:
    """A quantisation step as coded: on integer data an odd integer (at least 1), so the
    error bound ``step // 2`` is symmetric; on float data as given."""
    if not integer:
        return step
    return float(2 * math.floor(max(step, 1.0) / 2) + 1)


def decoded_like(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What :meth:`Codec.decode` makes of float64 ``values`` reconstructing ``x`` (a chunk
    coded without transform): the decoder's own :func:`_to_output` with ``x``'s range."""
    info = {"t": "none", "w": "<f8", "lo": _py(x.min()), "hi": _py(x.max())}
    return _to_output(values, info, x.dtype)


def _to_output(work: np.ndarray, info: dict[str, Any], dtype: np.dtype) -> np.ndarray:
    """Decoded work array -> the stored dtype: undo the chunk's transform (``info``), clip
    to the chunk's range, round integers."""
    t = info.get("t", "none")
    if t == "none" and work.dtype == dtype:
        return work
    values = work.astype(np.float64)  # a copy: everything below works in place on it
    if t in ("quant", "affine"):
        np.multiply(values, float(info["q"]), out=values)
        np.add(values, float(info["o"]), out=values)
    if "lo" in info:
        np.clip(values, info["lo"], info["hi"], out=values)
    if dtype.kind in "ui":
        if not np.isfinite(values).all():  # never from a stream an encoder wrote
            raise CorruptFileError("decoded values are not finite (the stream is damaged)")
        info_lim = np.iinfo(dtype)
        np.rint(values, out=values)
        np.clip(values, info_lim.min, info_lim.max, out=values)
    return values.astype(dtype)


def _search_knob(
    codec: Codec,
    x: np.ndarray,
    knob: Knob,
    attempt: Callable[[np.ndarray | slice, float], _Encoded],
    start: float | None = None,
    slope: float | None = None,
    *,
    sample: np.ndarray | None = None,
    whole_knobs: Callable[[float], tuple[float, ...]] | None = None,
) -> _Encoded:
    """Meet ``codec.mode`` ("bpp" or "psnr") by steering ``knob`` with :func:`solve`.

    ``whole_knobs(k)``, where a knob mixes two settings across views at a cost, gives
    the unmixed knobs next to ``k``: one of them close enough to the target wins (bpp:
    within :data:`_WHOLE_BPP_TOLERANCE`).  By default the codec's own
    (:meth:`Codec._whole_knobs`) where :meth:`Codec._mixing_restarts` says so.

    ``attempt(views, k)`` encodes the chunk's ``views`` at knob ``k``.  With a ``sample``
    of views the search runs on them first and the whole chunk is then encoded at the
    knob they predict, with at most a correction or two (the sample's slope steers it);
    ``start`` is a first knob known to be close (a native rate mode's target) and
    ``slope`` the expected d(log value)/d(knob) there.
    """
    assert codec.value is not None
    target_mse = codec._target_mse(x)
    bpp = target_mse is None
    target = codec.value if bpp else target_mse
    assert target is not None
    increasing = knob.rate_increases == bpp  # value: bits rise, MSE falls with the rate

    def measure(views: np.ndarray | slice) -> Callable[[float], tuple[float, _Encoded]]:
        """Probe of ``views``: (bits per value or MSE, encoded)."""
        part = x[views]

        def evaluate(k: float) -> tuple[float, _Encoded]:
            enc = attempt(views, k)
            if bpp:
                return 8.0 * len(enc.stream) / part.size, enc
            with own_streams():
                enc.decoded = codec._decode_parts(enc, part)
            diff = enc.decoded.astype(np.float64) - part.astype(np.float64)
            return float(np.mean(diff * diff)), enc

        return evaluate

    def window(tolerance: float) -> tuple[float, Callable[[float], bool]]:
        """(value aimed at, test of a probe close enough): bits within ``tolerance``
        (relative) of the target; an MSE that meets the PSNR target by at most
        ``tolerance`` x 10 dB."""
        if bpp:
            return target, lambda bits: abs(bits - target) <= tolerance * target
        floor = target * 10**-tolerance
        return target * 10 ** (-tolerance / 2), lambda mse: floor <= mse <= target

    options = dict(increasing=increasing, log_knob=knob.log, log_value=True, integer=knob.integer)
    if sample is not None:
        aim, done = window(_SAMPLE_TOLERANCE)
        probes = solve(measure(sample), aim, knob.lo, knob.hi, done=done, start=start, **options)
        start, slope = estimate(probes, aim, log_knob=knob.log, log_value=True)
    aim, done = window(_FULL_TOLERANCE)
    evaluate = measure(slice(None))
    probes = solve(
        evaluate,
        aim,
        knob.lo,
        knob.hi,
        done=done,
        start=start,
        slope=slope,
        max_probes=_SEARCH_STEPS,
        **options,
    )
    if whole_knobs is None and codec._mixing_restarts(x.shape):
        whole_knobs = functools.partial(codec._whole_knobs, shape=x.shape)
    if whole_knobs is not None:  # a whole knob close enough to the target wins
        nearest = min(probes, key=lambda p: abs(math.log(max(p.value, 1e-300) / aim)))
        for whole in whole_knobs(nearest.knob):
            if knob.lo <= whole <= knob.hi and whole not in {p.knob for p in probes}:
                probes.append(Probe(whole, *evaluate(whole)))

        def close(value: float) -> bool:
            return abs(value - target) <= _WHOLE_BPP_TOLERANCE * target if bpp else done(value)

        met = [p for p in probes if p.knob in whole_knobs(p.knob) and close(p.value)]
        if met:
            return min(met, key=lambda p: abs(math.log(max(p.value, 1e-300) / aim))).result
    if bpp:
        best = min(probes, key=lambda p: abs(p.value - target))
        if abs(best.value - target) > _BPP_TOLERANCE * target:
            reach = sorted(p.value for p in probes)
            raise RateControlError(
                f"codec {codec.codec_id!r} cannot reach {target:g} bits/value on this data "
                f"(nearest: {best.value:.3g}; tried {reach[0]:.3g} to {reach[-1]:.3g}); "
                "choose another target or codec"
            )
        return best.result
    ok = [p for p in probes if p.value <= target]
    if not ok:
        data_range = math.sqrt(target * 10 ** (codec.value / 10))
        best_psnr = 10 * math.log10(data_range**2 / max(min(p.value for p in probes), 1e-300))
        raise RateControlError(
            f"codec {codec.codec_id!r} cannot reach {codec.value:g} dB PSNR on this data "
            f"(best: {best_psnr:.2f} dB at data range {data_range:g}); use --lossless"
        )
    return min(ok, key=lambda p: len(p.result.stream)).result


def _probe_count(shape: tuple[int, ...], min_views: int) -> int | None:
    """Views in the probe subsample of a chunk of ``shape`` (about 1/8 of it, at least
    :data:`_MIN_PROBE_VALUES` values and ``min_views`` views), or None when that would
    be most of the chunk."""
    n_views = shape[0]
    per_view = max(1, math.prod(shape[1:]))
    count = max(-(-n_views // 8), -(-_MIN_PROBE_VALUES // per_view), min_views)
    return count if 3 * count <= n_views else None


def _max_exact(dtype_name: str) -> float:
    dtype = np.dtype(dtype_name)
    if dtype.kind == "f":
        return float(2 ** (np.finfo(dtype).nmant + 1))
    return float(np.iinfo(dtype).max)


def _max_abs_err(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))


def _py(value: Any) -> float | int:
    return value.item() if hasattr(value, "item") else value
