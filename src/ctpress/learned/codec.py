"""The learned models as ctpress codecs (shared by ``hyperprior`` and ``vqvae``).

A chunk (n_views, rows, cols) becomes single-channel images: one per projection, or one
(n_views * rows, cols) mosaic when projections have fewer than 8 rows (sinograms, same
rule as the classical image codecs).  The images are normalised with the chunk's own
offset and scale (stored in the stream), padded (replicate) to the model's downsampling,
coded, and cropped back.

Operating point = (rate point, quantisation gain, residual step):

- ``bpp``: the rate point whose gain range reaches the target (the one trained nearest
  to it), its gain bisected; beyond the richest operating point (or for models without
  a gain, between rate points) the residual layer (:mod:`ctpress.learned.residual`)
  fills the remaining budget;
- ``psnr``: the coarsest rate point that meets the target, its gain bisected; beyond the
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

Stream: side information (``_SIDE``), the model's latent payload, the residual stream.
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
from ..errors import CorruptFileError, InputError, RateControlError
from . import residual, zoo
from .layers import pad_to_multiple
from .models.base import Coded, LearnedModel

_MAGIC = b"CTLN"
_VERSION = 1
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
_BISECT_STEPS = 7

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
    if magic != _MAGIC or version != _VERSION:
        raise CorruptFileError(f"not a version-{_VERSION} learned stream")
    model, sha = loader(method, rate_point)
    if bytes.fromhex(sha)[:8] != sha8:
        raise zoo.WeightsMismatchError(
            f"file was made with {method} rate point {rate_point} weights {sha8.hex()}..., "
            f"this ctpress has {sha[:16]}...: install the ctpress version that wrote it"
        )
    if _SIDE.size + n_latent > len(stream):
        raise CorruptFileError(f"{method} stream is truncated")
    images = image_shape(tuple(shape))
    payload = stream[_SIDE.size : _SIDE.size + n_latent]
    coded = model.decode(payload, _padded(images, model.downsampling), gain, latent_check)
    recon, check = reconstruct(model, coded, images, offset, scale, bool(flags & _FLAG_INTEGER))
    if check != recon_check:
        raise CorruptFileError(
            f"{method} reconstruction mismatch: this decoder's learned reconstruction differs "
            "from the encoder's (different weights or non-reproducible arithmetic)"
        )
    values = recon
    if flags & _FLAG_RESIDUAL:
        q = residual.decode_residual(stream[_SIDE.size + n_latent :], images)
        values = residual.dequantise(recon, q, step)
    elif _SIDE.size + n_latent != len(stream):
        raise CorruptFileError(f"{method} stream has trailing bytes")
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

    def stream(self, rate_point: int, gain: float, step: float | None) -> tuple[bytes, np.ndarray]:
        """The chunk stream at this operating point and its decoded values (data units,
        shape of the chunk, before the final clip/round/cast of the base class)."""
        prep = self.prepared(rate_point)
        coded = self.latents(rate_point, gain)
        recon, recon_check = self.recon(rate_point, gain)
        flags = _FLAG_INTEGER if self.integer else 0
        tail = b""
        values = recon
        if step is not None:
            q = residual.quantise(self.images, recon, step, self.integer)
            tail = residual.encode_residual(q)
            values = residual.dequantise(recon, q, step)
            flags |= _FLAG_RESIDUAL
        side = _SIDE.pack(
            _MAGIC, _VERSION, rate_point, flags, gain, self.offset, self.scale, step or 0.0,
            bytes.fromhex(prep.sha)[:8], coded.check, recon_check, len(coded.payload),
        )  # fmt: skip
        return side + coded.payload + tail, values.reshape(self.shape)


def _finish(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What the base class's decoder makes of float64 ``values`` for input ``x``."""
    out = np.clip(values, float(x.min()), float(x.max()))
    if x.dtype.kind in "ui":
        out = np.rint(out)
    return out.astype(x.dtype)


def _bisect(ok: Callable[[float], bool], good: float, bad: float, steps: int) -> float:
    """Geometric bisection between ``good`` (``ok``) and ``bad`` (not ``ok``); returns the
    ``ok`` value found closest to ``bad``."""
    for _ in range(steps):
        mid = math.sqrt(good * bad)
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


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
    exact_dtypes = ("uint8", "uint16", "int32")
    has_native_lossy = False

    def __init__(
        self,
        mode: str = "lossless",
        value: float | None = None,
        data_range: float | None = None,
        rate_point: int | None = None,
    ) -> None:
        super().__init__(mode, value, data_range)
        if rate_point is not None and (int(rate_point) != rate_point or rate_point < 0):
            raise InputError(f"rate_point must be an integer >= 0, got {rate_point!r}")
        self.rate_point = None if rate_point is None else int(rate_point)

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
        step = residual.residual_step(bound, integer)
        for _ in range(6):  # float rounding can push an error a hair over the bound
            stream, values = min(
                (session.stream(rp, 1.0, step) for rp in self._points()), key=lambda r: len(r[0])
            )
            decoded = _finish(values, x)
            if np.max(np.abs(decoded.astype(np.float64) - x.astype(np.float64))) <= bound:
                return _Encoded(stream, {"t": "none", "w": "<f8"}, decoded)
            step *= 0.999
        raise RateControlError(f"cannot guarantee max error {bound:g} on {x.dtype} data")

    def _encode_search(self, x: np.ndarray) -> _Encoded:
        assert self.value is not None
        session = _Session(self.method, x)
        if self.mode == "bpp":
            rp, gain, step = self._search_bpp(session, self.value)
        else:
            data_range = self.data_range or float(x.max()) - float(x.min()) or 1.0
            rp, gain, step = self._search_psnr(session, x, data_range**2 / 10 ** (self.value / 10))
        stream, values = session.stream(rp, gain, step)
        bits = 8.0 * len(stream) / x.size
        if self.mode == "bpp" and abs(bits - self.value) > _BPP_TOLERANCE * self.value:
            raise RateControlError(
                f"codec {self.codec_id!r} cannot reach {self.value:g} bits/value on this data "
                f"(nearest: {bits:.3g}); choose another target or codec"
            )
        return _Encoded(stream, {"t": "none", "w": "<f8"}, _finish(values, x))

    def _search_bpp(self, s: _Session, target: float) -> tuple[int, float, float | None]:
        points = self._points()
        ranges = {rp: s.gain_range(rp) for rp in points}

        def bits(rp: int, gain: float) -> float:
            return s.latent_bits(rp, gain)

        # rate points whose gain range reaches the target: the one trained nearest to it
        reach = [
            rp for rp in points if bits(rp, ranges[rp][1]) <= target <= bits(rp, ranges[rp][0])
        ]
        if reach:
            rp = min(reach, key=lambda r: abs(math.log(bits(r, 1.0) / target)))
            g_lo, g_hi = ranges[rp]
            gain = _bisect(lambda g: bits(rp, g) <= target, g_hi, g_lo, _BISECT_STEPS)
        else:
            under = [(rp, ranges[rp][0]) for rp in points if bits(rp, ranges[rp][0]) <= target]
            if not under:
                rp, gain = min(((r, ranges[r][1]) for r in points), key=lambda c: bits(*c))
                if bits(rp, gain) <= target * (1 + _BPP_TOLERANCE):
                    return rp, gain, None
                raise RateControlError(
                    f"codec {self.codec_id!r} cannot reach {target:g} bits/value on this data "
                    f"(its lowest rate point needs {bits(rp, gain):.3g}); choose another "
                    "target or codec"
                )
            rp, gain = max(under, key=lambda c: bits(*c))  # the richest one within budget
        if bits(rp, gain) >= target * (1 - _BPP_CLOSE):
            return rp, gain, None
        # fill the remaining budget with the residual layer
        recon, _ = s.recon(rp, gain)
        worst = float(np.max(np.abs(s.images - recon)))
        coarsest = residual.residual_step(worst + 1, s.integer)

        def fits(step: float) -> bool:
            return 8.0 * len(s.stream(rp, gain, _odd(step, s.integer))[0]) / s.images.size <= target

        finest = 1.0 if s.integer else s.scale * 2.0**-GRID_BITS
        if fits(finest):
            return rp, gain, _odd(finest, s.integer)
        step = _bisect(fits, coarsest, finest, 2 * _BISECT_STEPS)
        return rp, gain, _odd(step, s.integer)

    def _search_psnr(
        self, s: _Session, x: np.ndarray, mse_target: float
    ) -> tuple[int, float, float | None]:
        points = self._points()

        def mse_of(rp: int, gain: float, step: float | None = None) -> float:
            if step is None:
                values = s.recon(rp, gain)[0].reshape(x.shape)
            else:
                values = s.stream(rp, gain, step)[1]
            err = _finish(values, x).astype(np.float64) - x.astype(np.float64)
            return float(np.mean(err * err))

        def meets(rp: int, gain: float) -> bool:
            return mse_of(rp, gain) <= mse_target

        for rp in points:  # the coarsest rate point that can meet the target
            g_lo, g_hi = s.gain_range(rp)
            if meets(rp, g_lo):
                if meets(rp, g_hi):
                    return rp, g_hi, None
                return rp, _bisect(functools.partial(meets, rp), g_lo, g_hi, _BISECT_STEPS), None
        rp = points[-1]
        # beyond the richest rate point: the residual layer
        gain = s.gain_range(rp)[0]
        recon, _ = s.recon(rp, gain)
        worst = float(np.max(np.abs(s.images - recon)))
        finest = 1.0 if s.integer else s.scale * 2.0**-GRID_BITS
        coarsest = residual.residual_step(worst + 1, s.integer)

        def good(step: float) -> bool:
            return mse_of(rp, gain, _odd(step, s.integer)) <= mse_target

        if not good(finest):
            raise RateControlError(
                f"codec {self.codec_id!r} cannot reach {self.value:g} dB PSNR on this data; "
                "use --lossless"
            )
        return rp, gain, _odd(_bisect(good, finest, coarsest, 2 * _BISECT_STEPS), s.integer)


def _odd(step: float, integer: bool) -> float:
    """Residual steps on integer data are odd integers (symmetric error bound)."""
    if not integer:
        return step
    return float(2 * math.floor(max(step, 1.0) / 2) + 1)
