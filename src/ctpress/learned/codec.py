"""The learned models as ctpress codecs (shared by ``hyperprior`` and ``vqvae``).

A chunk (n_views, rows, cols) becomes single-channel images: one per projection, or one
(n_views * rows, cols) mosaic when projections have fewer than 8 rows (sinograms, same
rule as the classical image codecs).  The images are normalised with the chunk's own
offset and scale (stored in the stream), padded (replicate) to the model's downsampling,
coded, and cropped back.

Operating point = (rate point, quantisation gain, residual step):

- ``bpp``: the rate point whose gain range reaches the target (the one trained nearest
  to it), its gain searched; beyond the richest operating point (or for models without
  a gain, between rate points) the residual layer (:mod:`ctpress.learned.residual`)
  fills the remaining budget;
- ``psnr``: the coarsest rate point that meets the target, its gain searched; beyond the
  richest, the residual layer;
- ``max_error`` E: learned reconstruction + residual with step 2E (odd integer step on
  integer data), the rate point giving the smallest stream;
- ``lossless`` (integer data): the same with step 1.

Determinism: the decoder rebuilds the learned reconstruction in float64 and rounds it to
a grid of 2**-20 of the chunk's range; the encoder stores the CRC-32 of that integer grid
and of the decoder-side table indexes, so a decoder whose arithmetic or weights differ
fails loudly (CorruptFileError) instead of returning wrong values.  The stream also holds
the first 8 bytes of the SHA-256 of the weights; a mismatch is refused with a message
naming both.

Searches (:func:`_solve`): the rate (or MSE) is close to a power law of the gain and of
the residual step, so a safeguarded regula falsi on log rate against log gain lands
within 2 % below a bpp target (0.1 dB above a PSNR target) in two to four codings; the
residual step starts from the rate of a Laplace law fitted per block to the residual
(:func:`_residual_bits_model`), and under a PSNR target the residual's error is measured
without entropy coding.

Stream: side information (``_SIDE``), the model's latent payload, the residual stream.
Version 2 added the hyperprior's table shifts to its payload; version-1 streams of the
other methods are still read.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..codecs._image import MIN_FRAME_ROWS
from ..codecs.base import Codec, _Encoded
from ..codecs.settings import int_setting
from ..errors import CorruptFileError, InputError, RateControlError
from . import residual, zoo
from .layers import pad_to_multiple
from .models.base import Coded, LearnedModel

_MAGIC = b"CTLN"
_VERSION = 2
#: Methods whose version-1 streams this decoder still reads (payload unchanged).
_V1_METHODS = ("vqvae",)
# magic, version, rate point, flags, gain, offset, scale, residual step, weights sha256[:8],
# latent check, reconstruction check, latent payload length
_SIDE = struct.Struct("<4sBBBxdddd8sIII")
_FLAG_INTEGER = 1
_FLAG_RESIDUAL = 2
#: The learned reconstruction is rounded to 2**-GRID_BITS of the chunk's range.
GRID_BITS = 20
#: bpp targets: accept a rate point (or gain) this close below the target without a residual.
_BPP_CLOSE = 0.05
_BPP_TOLERANCE = 0.10
#: Searches stop once the rate lands this close below a bpp target (half as close for
#: the residual step: a residual is cheap to code again) ...
_BPP_ACCEPT = 0.02
#: ... or the MSE this close below an MSE target (0.1 dB above a PSNR target).
_MSE_ACCEPT = 1 - 10 ** (-0.1 / 10)
#: Most codings (or error measurements) of one search.
_MAX_PROBES = 8
#: Starting guesses of d log(bits) / d log(gain) and d log(MSE) / d log(gain or step).
_RATE_SLOPE = -0.7
_MSE_SLOPE = 1.5

ModelLoader = Callable[[str, int], tuple[LearnedModel, str]]


def to_images(x: np.ndarray) -> np.ndarray:
    """(n, rows, cols) chunk -> (m, H, W) images (a mosaic when rows < 8)."""
    n, rows, cols = x.shape
    return x if rows >= MIN_FRAME_ROWS else x.reshape(1, n * rows, cols)


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Shape of :func:`to_images` of a chunk of ``shape`` (n, rows, cols)."""
    n, rows, cols = shape
    return (n, rows, cols) if rows >= MIN_FRAME_ROWS else (1, n * rows, cols)


def _padded(shape: tuple[int, int, int], multiple: int) -> tuple[int, int, int]:
    m, h, w = shape
    return (m, -(-h // multiple) * multiple, -(-w // multiple) * multiple)


def reconstruct(
    model: LearnedModel,
    coded: Coded,
    shape: tuple[int, int, int],
    offset: float,
    scale: float,
    integer: bool,
) -> tuple[np.ndarray, int]:
    """Learned reconstruction in data units on the stored grid, and its CRC-32.

    Returns
    -------
    recon : ndarray (m, H, W), float64
        ``offset + scale * g / 2**20`` with ``g`` the rounded float64 synthesis output
        (then rounded to integers and clipped to the chunk's range on integer data).
    check : int
        CRC-32 of ``g`` (int32 little-endian).
    """
    _, h, w = shape
    out = model.synthesise(coded.latent)[:, 0, :h, :w].numpy()
    grid = np.clip(np.rint(out * 2.0**GRID_BITS), -(2**30), 2**30).astype("<i4")
    check = zlib.crc32(grid.tobytes())
    recon = offset + scale * (grid.astype(np.float64) * 2.0**-GRID_BITS)
    if integer:
        recon = np.rint(recon)
    return np.clip(recon, offset, offset + scale), check


def decode_learned(
    method: str,
    stream: bytes,
    shape: tuple[int, ...],
    work_dtype: str,
    loader: ModelLoader = zoo.load_model,
) -> np.ndarray:
    """Decode a learned chunk stream to an array of ``shape`` and ``work_dtype``.

    ``loader(method, rate_point) -> (model, sha256)`` provides the weights (the zoo).
    """
    if len(stream) < _SIDE.size:
        raise CorruptFileError(f"{method} stream is truncated")
    (magic, version, rate_point, flags, gain, offset, scale, step, sha8, latent_check,
     recon_check, n_latent) = _SIDE.unpack_from(stream)  # fmt: skip
    if magic != _MAGIC or version not in (1, _VERSION):
        raise CorruptFileError(f"not a version-{_VERSION} learned stream")
    if flags & ~(_FLAG_INTEGER | _FLAG_RESIDUAL):
        raise CorruptFileError(f"{method} stream has unknown flags {flags:#04x}")
    if not all(math.isfinite(v) for v in (gain, offset, scale, step)) or not scale > 0:
        raise CorruptFileError(f"{method} stream has an invalid value range or step")
    if flags & _FLAG_RESIDUAL and not step > 0:
        raise CorruptFileError(f"{method} stream has an invalid residual step")
    if version == 1 and method not in _V1_METHODS:
        raise zoo.WeightsMismatchError(
            f"this {method} stream was written by an earlier ctpress (learned stream version 1)"
            ": decode it with the ctpress version that wrote it"
        )
    model, sha = loader(method, rate_point)
    if bytes.fromhex(sha)[:8] != sha8:
        raise zoo.WeightsMismatchError(
            f"file was made with {method} rate point {rate_point} weights {sha8.hex()}..., "
            f"this ctpress has {sha[:16]}...: install the ctpress version that wrote it"
        )
    if not model.gain_range[0] <= gain <= model.gain_range[1]:
        raise CorruptFileError(f"{method} stream has a quantisation gain {gain:g} out of range")
    if _SIDE.size + n_latent > len(stream):
        raise CorruptFileError(f"{method} stream is truncated")
    images = image_shape(tuple(shape))
    # the residual first: its block table is checked against the shape before the model
    # decodes latents of that shape
    q = None
    if flags & _FLAG_RESIDUAL:
        q = residual.decode_residual(stream[_SIDE.size + n_latent :], images)
    elif _SIDE.size + n_latent != len(stream):
        raise CorruptFileError(f"{method} stream has trailing bytes")
    payload = stream[_SIDE.size : _SIDE.size + n_latent]
    coded = model.decode(payload, _padded(images, model.downsampling), gain, latent_check)
    recon, check = reconstruct(model, coded, images, offset, scale, bool(flags & _FLAG_INTEGER))
    if check != recon_check:
        raise CorruptFileError(
            f"{method} reconstruction mismatch: this decoder's learned reconstruction differs "
            "from the encoder's (different weights or non-reproducible arithmetic)"
        )
    values = recon if q is None else residual.dequantise(recon, q, step)
    return values.reshape(shape).astype(work_dtype)


@dataclass
class _Prepared:
    """One rate point's model and encoder analysis of a chunk."""

    model: LearnedModel
    sha: str
    analysis: Any


class _Session:
    """Encoder state of one chunk: images, normalisation and cached attempts."""

    def __init__(self, method: str, x: np.ndarray, loader: ModelLoader = zoo.load_model) -> None:
        self.method = method
        self.loader = loader
        self.shape = x.shape
        self.integer = x.dtype.kind in "ui"
        self.images = to_images(x).astype(np.float64)
        lo, hi = float(self.images.min()), float(self.images.max())
        if self.integer and hi - lo > 2**52:
            raise RateControlError(f"{method} cannot hold integer data spanning over 2**52")
        self.offset, self.scale = lo, (hi - lo if hi > lo else 1.0)
        self._prepared: dict[int, _Prepared] = {}
        self._latents: dict[tuple[int, float], Coded] = {}
        self._recons: dict[tuple[int, float], tuple[np.ndarray, int]] = {}
        self._last: tuple[tuple[int, float, float | None], tuple[bytes, np.ndarray]] | None = None

    def prepared(self, rate_point: int) -> _Prepared:
        if rate_point not in self._prepared:
            model, sha = self.loader(self.method, rate_point)
            xn = (self.images - self.offset) / self.scale
            t = pad_to_multiple(torch.from_numpy(xn[:, None]), model.downsampling)
            self._prepared[rate_point] = _Prepared(model, sha, model.analyse(t))
        return self._prepared[rate_point]

    def gain_range(self, rate_point: int) -> tuple[float, float]:
        return self.prepared(rate_point).model.gain_range

    def latents(self, rate_point: int, gain: float) -> Coded:
        key = (rate_point, gain)
        if key not in self._latents:
            prep = self.prepared(rate_point)
            self._latents[key] = prep.model.code(prep.analysis, gain)
        return self._latents[key]

    def latent_bits(self, rate_point: int, gain: float) -> float:
        """Bits/value of the stream without residual (no synthesis needed)."""
        return 8.0 * (_SIDE.size + len(self.latents(rate_point, gain).payload)) / self.images.size

    def recon(self, rate_point: int, gain: float) -> tuple[np.ndarray, int]:
        key = (rate_point, gain)
        if key not in self._recons:
            prep = self.prepared(rate_point)
            self._recons[key] = reconstruct(
                prep.model,
                self.latents(rate_point, gain),
                self.images.shape,
                self.offset,
                self.scale,
                self.integer,
            )
        return self._recons[key]

    def residual(self, rate_point: int, gain: float, step: float) -> tuple[np.ndarray, np.ndarray]:
        """Residual symbols at this operating point and the decoded values they give
        (images' shape; no entropy coding)."""
        recon, _ = self.recon(rate_point, gain)
        q = residual.quantise(self.images, recon, step, self.integer)
        return q, residual.dequantise(recon, q, step)

    def stream(self, rate_point: int, gain: float, step: float | None) -> tuple[bytes, np.ndarray]:
        """The chunk stream at this operating point and its decoded values (data units,
        shape of the chunk, before the final clip/round/cast of the base class).

        The last result is kept, so a search that ends on the operating point it coded
        last does not code it again.
        """
        key = (rate_point, gain, step)
        if self._last is None or self._last[0] != key:
            self._last = key, self._stream(rate_point, gain, step)
        return self._last[1]

    def _stream(self, rate_point: int, gain: float, step: float | None) -> tuple[bytes, np.ndarray]:
        prep = self.prepared(rate_point)
        coded = self.latents(rate_point, gain)
        recon, recon_check = self.recon(rate_point, gain)
        flags = _FLAG_INTEGER if self.integer else 0
        tail = b""
        values = recon
        if step is not None:
            q, values = self.residual(rate_point, gain, step)
            tail = residual.encode_residual(q)
            flags |= _FLAG_RESIDUAL
        side = _SIDE.pack(
            _MAGIC, _VERSION, rate_point, flags, gain, self.offset, self.scale, step or 0.0,
            bytes.fromhex(prep.sha)[:8], coded.check, recon_check, len(coded.payload),
        )  # fmt: skip
        return side + coded.payload + tail, values.reshape(self.shape)

    def bits(self, rate_point: int, gain: float, step: float | None) -> float:
        """Bits/value of the whole chunk stream at this operating point."""
        return 8.0 * len(self.stream(rate_point, gain, step)[0]) / self.images.size

    def finest_step(self) -> float:
        """The finest useful residual step: 1 on integer data, the reconstruction grid's
        spacing on float data."""
        return 1.0 if self.integer else self.scale * 2.0**-GRID_BITS

    def coarsest_step(self, rate_point: int, gain: float) -> float:
        """A residual step that quantises every residual value to 0."""
        recon, _ = self.recon(rate_point, gain)
        worst = float(np.max(np.abs(self.images - recon)))
        return max(residual.residual_step(worst + 1, self.integer), self.finest_step())


def _finish(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What the base class's decoder makes of float64 ``values`` for input ``x``."""
    out = np.clip(values, float(x.min()), float(x.max()))
    if x.dtype.kind in "ui":
        out = np.rint(out)
    return out.astype(x.dtype)


def encode_error_bounded(
    x: np.ndarray, bound: float, stream_at: Callable[[float], tuple[bytes, np.ndarray]]
) -> _Encoded:
    """The residual-layer stream that keeps every decoded value of ``x`` within ``bound``.

    ``stream_at(step)`` gives (stream, decoded float64 values) with residual step
    ``step``; the step starts at :func:`residual.residual_step` and shrinks a hair when
    float rounding pushes an error over the bound."""
    step = residual.residual_step(bound, x.dtype.kind in "ui")
    for _ in range(6):
        stream, values = stream_at(step)
        decoded = _finish(values, x)
        if np.max(np.abs(decoded.astype(np.float64) - x.astype(np.float64))) <= bound:
            return _Encoded(stream, {"t": "none", "w": "<f8"}, decoded)
        step *= 0.999
    raise RateControlError(f"cannot guarantee max error {bound:g} on {x.dtype} data")


def finish_search(codec: Codec, x: np.ndarray, stream: bytes, values: np.ndarray) -> _Encoded:
    """The chunk of a bpp / PSNR search's operating point, refused (RateControlError)
    when a bpp target is missed by more than 10 %."""
    bits = 8.0 * len(stream) / x.size
    if codec.mode == "bpp" and codec.value is not None:
        if abs(bits - codec.value) > _BPP_TOLERANCE * codec.value:
            raise RateControlError(
                f"codec {codec.codec_id!r} cannot reach {codec.value:g} bits/value on this "
                f"data (nearest: {bits:.3g}); choose another target or codec"
            )
    return _Encoded(stream, {"t": "none", "w": "<f8"}, _finish(values, x))


def _bisect(ok: Callable[[float], bool], good: float, bad: float, steps: int) -> float:
    """Geometric bisection between ``good`` (``ok``) and ``bad`` (not ``ok``); returns the
    ``ok`` value found closest to ``bad``.  (For searches without a rate to interpolate,
    e.g. the SIREN codec's; the searches here use :func:`_solve`.)"""
    for _ in range(steps):
        mid = math.sqrt(good * bad)
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


def _solve(
    measure: Callable[[float], float],
    target: float,
    bounds: tuple[float, float],
    start: float,
    slope: float,
    accept: float,
    snap: Callable[[float], float] = float,
) -> tuple[float, float] | None:
    """The largest ``measure(x) <= target`` found over ``x`` in ``bounds``, for a
    monotone ``measure`` close to a power law of ``x``.

    Safeguarded regula falsi on ``log measure`` against ``log x``: the first probe is
    ``start``; until the target is bracketed, the next probe is extrapolated with the
    slope of the last two probes (``slope``, d log measure / d log x, before there are
    two; at most a factor e**3 per probe, farther when ``snap`` maps it onto a probe
    made already); then it is interpolated between the bracket's ends (kept 5 % of the
    bracket away from them, else their midpoint).  Probes aim at
    ``target * (1 - accept / 2)``.  The search stops when a probe lands in
    ``[target * (1 - accept), target]``, after :data:`_MAX_PROBES` probes, or when no new
    probe is possible (the bracket cannot shrink, or the target lies beyond a bound).
    ``snap`` maps a probe to the values allowed (odd integers for residual steps on
    integer data).

    Returns
    -------
    (x, measure(x)) or None
        The feasible probe with the largest measure, None when no probe was feasible.
    """
    log_target = math.log(target)
    aim = log_target + math.log1p(-accept / 2)
    seen: dict[float, float] = {}  # x -> log measure
    good: float | None = None  # the feasible probe with the largest measure
    bad: float | None = None  # the infeasible probe with the smallest measure
    previous: float | None = None
    x: float | None = min(max(snap(start), bounds[0]), bounds[1])
    while x is not None and len(seen) < _MAX_PROBES:
        v = seen[x] = math.log(max(measure(x), 1e-300))
        if v <= log_target:
            if good is None or v > seen[good]:
                good = x
            if v >= log_target + math.log1p(-accept):
                break
        elif bad is None or v < seen[bad]:
            bad = x
        guesses: tuple[float, ...]
        if good is not None and bad is not None:
            ug, ub = math.log(good), math.log(bad)
            t = (aim - seen[good]) / (seen[bad] - seen[good])
            guesses = (ug + min(max(t, 0.05), 0.95) * (ub - ug), 0.5 * (ug + ub))
        else:
            s = slope
            if previous is not None:
                secant = (v - seen[previous]) / math.log(x / previous)
                s = secant if secant * slope > 0 else slope  # trust it if it points the same way
            move = (aim - v) / s
            # farther out (at most e**3) when that probe snaps onto one made already
            ladder = (max(min(move * k, 3.0), -3.0) for k in (1, 2, 4, 8, 16, 32, 64))
            guesses = tuple(math.log(x) + m for m in ladder)
        previous = x
        x = next((g for g in _snapped(guesses, bounds, snap) if g not in seen), None)
    return None if good is None else (good, math.exp(seen[good]))


def _snapped(
    guesses: tuple[float, ...], bounds: tuple[float, float], snap: Callable[[float], float]
) -> list[float]:
    """The allowed probes nearest ``exp(guess)`` of the ``guesses`` (log x) within
    ``bounds``."""
    return [min(max(snap(math.exp(g)), bounds[0]), bounds[1]) for g in guesses]


def _nearest_point(points: list[int], rate: Callable[[int], float], target: float) -> int:
    """Index of the rate point whose ``rate`` (increasing along ``points``) is nearest to
    ``target`` in ratio, walking from the middle so that only the points next to the
    target are measured."""
    i = len(points) // 2
    r = rate(points[i])
    step = 1 if r < target else -1
    while 0 <= i + step < len(points):
        r_next = rate(points[i + step])
        if (r_next < target) != (r < target):
            nearer = abs(math.log(r_next / target)) < abs(math.log(r / target))
            return i + step if nearer else i
        i, r = i + step, r_next
    return i


def _first_meeting(points: list[int], meets: Callable[[int], bool]) -> int:
    """Index of the first point that ``meets`` (monotone along ``points``: false, ...,
    false, true, ...), ``len(points)`` when none does; binary search."""
    lo, hi = 0, len(points)
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(points[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _residual_bits_model(r: np.ndarray) -> Callable[[float], float]:
    """Predicted bits/value of the residual ``r`` (m, H, W) quantised with a step.

    Per block of the residual coder, ``r`` is taken as Laplace with the block's mean
    magnitude ``b``; rounding with step ``d`` gives ``P(0) = 1 - sqrt(a)`` and
    ``P(+-k) = sqrt(a) (1 - a) a**(k - 1) / 2`` (``a = exp(-d / b)``), whose entropy is
    summed over the blocks.  A guess for the search (the coder's overheads are not in it).
    """
    n, h, w = r.shape
    k = residual.BLOCK
    pad = ((0, 0), (0, -h % k), (0, -w % k))
    blocks = (n, (h + pad[1][1]) // k, k, (w + pad[2][1]) // k, k)
    total = np.pad(np.abs(r), pad).reshape(blocks).sum(axis=(2, 4))
    count = np.pad(np.ones((1, h, w)), pad).reshape((1, *blocks[1:])).sum(axis=(2, 4))
    count = np.broadcast_to(count, total.shape)
    b = total[total > 0] / count[total > 0]
    weight = count[total > 0] / r.size

    def bits(step: float) -> float:
        t = step / b
        sa = np.exp(-t / 2)  # sqrt(a)
        p0 = -np.expm1(-t / 2)
        one_a = -np.expm1(-t)
        with np.errstate(divide="ignore", invalid="ignore"):
            h0 = -p0 * np.log2(p0)
            rest = -sa * (np.log2(sa) + np.log2(one_a) - 1) + t * np.log2(np.e) * sa**3 / one_a
        entropy = h0 + np.where(sa > 0, np.nan_to_num(rest), 0.0)
        return float(np.sum(weight * entropy))

    return bits


class LearnedCodec(Codec):
    """Base class of the learned codecs (see the module docstring).

    Parameters
    ----------
    mode, value, data_range
        Rate control, as for every codec.
    rate_point : int, optional
        Use only this rate point of the method's zoo (default: choose per chunk).
    """

    method: ClassVar[str]
    family = "learned"
    exact_dtypes = ("uint8", "uint16", "int32")
    has_native_lossy = False

    def __init__(
        self,
        mode: str = "lossless",
        value: float | None = None,
        data_range: float | None = None,
        noise: dict[str, Any] | None = None,
        rate_point: int | None = None,
    ) -> None:
        super().__init__(mode, value, data_range, noise)
        if rate_point is not None:
            last = max(len(zoo.rate_points(self.method)) - 1, 0)  # none installed: encode says
            rate_point = int_setting(self.codec_id, "rate_point", rate_point, 0, last)
        self.rate_point = rate_point

    def _options(self) -> dict[str, Any]:
        return {"rate_point": self.rate_point}

    def _points(self) -> list[int]:
        n = len(zoo.rate_points(self.method))
        if n == 0:
            raise RateControlError(f"no {self.method} weights are installed")
        if self.rate_point is None:
            return list(range(n))
        if self.rate_point >= n:
            raise InputError(f"{self.method} has rate points 0..{n - 1}, not {self.rate_point}")
        return [self.rate_point]

    # ---------------------------------------------------------------- decoding
    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        return decode_learned(self.method, stream, shape, work_dtype)

    # ---------------------------------------------------------------- encoding
    def _encode_exact(self, work: np.ndarray) -> bytes:
        session = _Session(self.method, work)
        return min((session.stream(rp, 1.0, 1.0)[0] for rp in self._points()), key=len)

    def _encode_max_error(self, x: np.ndarray, bound: float) -> _Encoded:
        integer = x.dtype.kind in "ui"
        if integer and bound < 1:
            return self._encode_lossless(x)
        session = _Session(self.method, x)

        def smallest(step: float) -> tuple[bytes, np.ndarray]:
            streams = (session.stream(rp, 1.0, step) for rp in self._points())
            return min(streams, key=lambda r: len(r[0]))

        return encode_error_bounded(x, bound, smallest)

    def _encode_search(self, x: np.ndarray) -> _Encoded:
        assert self.value is not None
        session = _Session(self.method, x)
        if self.mode == "bpp":
            rp, gain, step = self._search_bpp(session, self.value)
        else:
            data_range = self.data_range or float(x.max()) - float(x.min()) or 1.0
            rp, gain, step = self._search_psnr(session, x, data_range**2 / 10 ** (self.value / 10))
        return finish_search(self, x, *session.stream(rp, gain, step))

    def _search_bpp(self, s: _Session, target: float) -> tuple[int, float, float | None]:
        """Operating point for ``target`` bits/value (see the module docstring)."""
        points = self._points()

        def solve(rp: int) -> tuple[float, float] | None:
            g_lo, g_hi = s.gain_range(rp)
            return _solve(
                lambda g: s.latent_bits(rp, g), target, (g_lo, g_hi), min(max(1.0, g_lo), g_hi),
                _RATE_SLOPE, _BPP_ACCEPT,
            )  # fmt: skip

        # the rate point trained nearest to the target (rates at gain 1) ...
        i = _nearest_point(points, lambda rp: s.latent_bits(rp, 1.0), target)
        found = solve(points[i])
        # ... else the next coarser one while it cannot get down to the target ...
        while found is None and i > 0:
            i -= 1
            found = solve(points[i])
        # ... or the next richer one while its richest gain stays well below the target
        while (
            found is not None
            and found[1] < target * (1 - _BPP_CLOSE)
            and found[0] == s.gain_range(points[i])[0]
            and i + 1 < len(points)
        ):
            richer = solve(points[i + 1])
            if richer is None:  # the target falls between two rate points: the residual
                break
            i, found = i + 1, richer
        rp = points[i]
        if found is None:  # even the coarsest operating point is above the target
            gain = s.gain_range(rp)[1]
            bits = s.latent_bits(rp, gain)
            if bits <= target * (1 + _BPP_TOLERANCE):
                return rp, gain, None
            raise RateControlError(
                f"codec {self.codec_id!r} cannot reach {target:g} bits/value on this data "
                f"(its lowest rate point needs {bits:.3g}); choose another target or codec"
            )
        gain, bits = found
        if bits >= target * (1 - _BPP_CLOSE):
            return rp, gain, None
        # fill the remaining budget with the residual layer
        recon, _ = s.recon(rp, gain)
        model = _residual_bits_model(s.images - recon)
        finest, coarsest = s.finest_step(), s.coarsest_step(rp, gain)
        steps = np.geomspace(finest, coarsest, 65)
        predicted = np.array([bits + model(step) for step in steps])  # decreasing
        aim = target * (1 - _BPP_ACCEPT / 4)
        k = int(np.clip(np.searchsorted(-predicted, -aim), 1, len(steps) - 1))
        start = float(steps[k])
        slope = math.log(predicted[k] / predicted[k - 1]) / math.log(steps[k] / steps[k - 1])
        snap = functools.partial(_odd, integer=s.integer)
        filled = _solve(
            lambda step: s.bits(rp, gain, step), target, (finest, coarsest), start,
            min(slope, -1e-3), _BPP_ACCEPT / 2, snap,
        )  # fmt: skip
        return rp, gain, None if filled is None else filled[0]

    def _search_psnr(
        self, s: _Session, x: np.ndarray, mse_target: float
    ) -> tuple[int, float, float | None]:
        """Operating point whose MSE is at most ``mse_target`` (see the module docstring)."""
        points = self._points()
        reference = x.astype(np.float64)

        def mse_of(values: np.ndarray) -> float:
            err = _finish(values.reshape(x.shape), x).astype(np.float64) - reference
            return float(np.mean(err * err))

        @functools.cache
        def mse_at(rp: int, gain: float) -> float:
            return mse_of(s.recon(rp, gain)[0])

        # the coarsest rate point that meets the target at its richest gain
        i = _first_meeting(points, lambda rp: mse_at(rp, s.gain_range(rp)[0]) <= mse_target)
        if i < len(points):
            rp = points[i]
            g_lo, g_hi = s.gain_range(rp)
            found = _solve(
                functools.partial(mse_at, rp), mse_target, (g_lo, g_hi), g_lo, _MSE_SLOPE,
                _MSE_ACCEPT,
            )  # fmt: skip
            assert found is not None  # g_lo meets the target
            return rp, found[0], None
        # beyond the richest rate point: the residual layer
        rp = points[-1]
        gain = s.gain_range(rp)[0]
        finest, coarsest = s.finest_step(), s.coarsest_step(rp, gain)
        uniform = math.sqrt(12 * mse_target + (1 if s.integer else 0))  # uniform error
        found = _solve(
            lambda step: mse_of(s.residual(rp, gain, step)[1]), mse_target, (finest, coarsest),
            uniform, _MSE_SLOPE, _MSE_ACCEPT, functools.partial(_odd, integer=s.integer),
        )  # fmt: skip
        if found is None:
            raise RateControlError(
                f"codec {self.codec_id!r} cannot reach {self.value:g} dB PSNR on this data; "
                "use --lossless"
            )
        return rp, gain, found[0]


def _odd(step: float, integer: bool) -> float:
    """Residual steps on integer data are odd integers (symmetric error bound)."""
    if not integer:
        return step
    return float(2 * math.floor(max(step, 1.0) / 2) + 1)
