"""One base for codecs made of a learned reconstruction plus the error-bounded residual.

:class:`ReconstructionCodec` (and its encoder state :class:`ReconstructionSession`)
holds what every such codec shares, written once:

- **normalisation**: the chunk's own offset and scale (stored in the stream);
- **the decoder-side grid** (:mod:`ctpress.learned.fixed_point`): the reconstruction is
  rounded to 2**-20 of the chunk's range and the stream holds the CRC-32 of that grid, so
  a decoder whose arithmetic or weights differ fails loudly (detection,
  :func:`check_grid`); :meth:`ReconstructionCodec.exact_prediction` turns a model's
  prediction into integers every machine computes alike (construction, for closed-loop
  coders);
- **the weights hash**: the first 8 bytes of the SHA-256 of the weights a stream was
  made with (:func:`check_weights`);
- **the error-bounded residual layer** (:mod:`ctpress.learned.residual`) on top of the
  reconstruction: ``max_error`` E codes the residual with step 2E (the odd integer
  ``2 floor(E) + 1`` on integer data), ``lossless`` with step 1;
- **the bpp / PSNR searches that fill the budget with the residual**, through the one
  search routine :func:`ctpress.codecs.search.solve`: the residual step starts from the
  rate of a Laplace law fitted per block to the residual (:func:`_residual_bits_model`)
  or from the step of a uniform error, so few codings are needed.

A subclass says how it predicts (its operating points, its side information, how it
searches them); :class:`LearnedCodec` below is the subclass of the zoo's image models
(``hyperprior``, ``vqvae``), :class:`ctpress.codecs.siren.Siren` the implicit one.

The zoo's models: a chunk (n_views, rows, cols) becomes single-channel images
(:func:`ctpress.frames.to_images`), normalised to [0, 1], padded (replicate) to the
model's downsampling, coded, and cropped back.  Operating point = (rate point,
quantisation gain, residual step):

- ``bpp``: the rate point whose gain range reaches the target (the one trained nearest
  to it), its gain searched; beyond the richest operating point (or for models without
  a gain, between rate points) the residual layer fills the remaining budget;
- ``psnr``: the coarsest rate point that meets the target, its gain searched; beyond the
  richest, the residual layer (its error measured without entropy coding);
- ``max_error`` / ``lossless``: the residual layer, the rate point giving the smallest
  stream.

Stream of the zoo's models: side information (``_SIDE``), the model's latent payload, the
residual stream.  Version 2 added the hyperprior's table shifts to its payload;
version-1 streams of the other methods are still read.
"""

from __future__ import annotations

import functools
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from ..errors import CorruptFileError, InputError, RateControlError
from ..frames import image_shape
from ..learned import fixed_point, residual
from ..learned.fixed_point import reconstruct
from ..learned.store import WeightsMismatchError
from .base import Codec, _Encoded, decoded_like, odd_step
from .search import solve
from .settings import int_setting

if TYPE_CHECKING:
    from ..learned.models.base import Coded, LearnedModel

#: bpp targets: a chunk more than this far from the target is refused.
_BPP_TOLERANCE = 0.10
#: bpp targets: accept a rate point (or gain) this close below the target without a residual.
_BPP_CLOSE = 0.05
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

Op = TypeVar("Op", bound=Hashable)


# ------------------------------------------------------------------ shared pieces
def check_grid(codec_id: str, grid: np.ndarray, expected: int) -> None:
    """CorruptFileError unless the decoder's grid has the encoder's CRC-32 ``expected``."""
    if fixed_point.grid_check(grid) != expected:
        raise CorruptFileError(
            f"{codec_id} reconstruction mismatch: this decoder's output differs from the "
            "encoder's (different weights or non-reproducible arithmetic)"
        )


def weights_tag(sha256: str) -> bytes:
    """The 8 bytes of a weights file's SHA-256 (hex) that a stream stores."""
    return bytes.fromhex(sha256)[:8]


def check_weights(codec_id: str, what: str, tag: bytes, sha256: str | None) -> None:
    """WeightsMismatchError unless the weights this ctpress has (SHA-256 ``sha256``, None
    when it has none) are the ones a stream names by ``tag``."""
    if sha256 is None or weights_tag(sha256) != tag:
        have = "none" if sha256 is None else sha256[:16] + "..."
        raise WeightsMismatchError(
            f"file was made with {codec_id} {what} weights {tag.hex()}..., this ctpress has "
            f"{have}: install the ctpress version that wrote it"
        )


def largest_below(
    measure: Callable[[float], float],
    target: float,
    lo: float,
    hi: float,
    *,
    increasing: bool,
    accept: float,
    start: float,
    slope: float,
    integer: bool = False,
    max_probes: int = _MAX_PROBES,
) -> tuple[float, float] | None:
    """The knob in ``[lo, hi]`` whose monotone ``measure`` is largest but at most
    ``target``, found with :func:`ctpress.codecs.search.solve` (log knob, log measure;
    first probe ``start``, first slope ``slope``; probes aim at the middle of
    ``[target * (1 - accept), target]`` and the search stops once one lands there).

    Returns
    -------
    (knob, measure(knob)) or None
        The feasible probe with the largest measure; None when no probe was feasible.
    """
    if lo >= hi:
        value = measure(lo)
        return (lo, value) if value <= target else None
    probes = solve(
        lambda k: (measure(k), None),
        target * (1 - accept / 2),
        lo,
        hi,
        increasing=increasing,
        done=lambda v: target * (1 - accept) <= v <= target,
        integer=integer,
        start=min(max(start, lo), hi),
        slope=slope,
        max_probes=max_probes,
    )
    feasible = [p for p in probes if p.value <= target]
    if not feasible:
        return None
    best = max(feasible, key=lambda p: p.value)
    return best.knob, best.value


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
            rest = -sa * (np.log2(sa) + np.log2(one_a) - 1) + t * math.log2(math.e) * sa**3 / one_a
        entropy = h0 + np.where(sa > 0, np.nan_to_num(rest), 0.0)
        return float(np.sum(weight * entropy))

    return bits


# ------------------------------------------------------------------ the base
class ReconstructionSession(ABC, Generic[Op]):
    """Encoder state of one chunk: its values in the coding layout, their normalisation,
    and the streams of the operating points ``Op`` a subclass defines.

    Parameters
    ----------
    codec_id : str
        For messages.
    x : ndarray (n, rows, cols)
        The chunk.
    layout : (m, H, W)
        The shape the codec predicts and codes the residual in (a reshape of ``x``).
    """

    def __init__(self, codec_id: str, x: np.ndarray, layout: tuple[int, int, int]) -> None:
        self.codec_id = codec_id
        self.x = x
        self.shape = x.shape
        self.integer = x.dtype.kind in "ui"
        self.values = x.reshape(layout).astype(np.float64)
        lo, hi = float(self.values.min()), float(self.values.max())
        if self.integer and hi - lo > 2**52:
            raise RateControlError(f"{codec_id} cannot hold integer data spanning over 2**52")
        self.offset, self.scale = lo, (hi - lo if hi > lo else 1.0)
        self._last: tuple[tuple[Op, float | None], tuple[bytes, np.ndarray]] | None = None

    def unit(self) -> np.ndarray:
        """The values normalised to [0, 1] by the chunk's offset and scale (float64)."""
        return (self.values - self.offset) / self.scale

    def grid_values(self, grid: np.ndarray) -> np.ndarray:
        """Decoder-side grid integers -> data units (float64, see
        :func:`ctpress.learned.fixed_point.grid_values`)."""
        return fixed_point.grid_values(grid, self.offset, self.scale, self.integer)

    # ---------------------------------------------------------------- subclass hooks
    @abstractmethod
    def prediction(self, op: Op) -> np.ndarray:
        """The decoder-side reconstruction at ``op``: float64 data units, layout shape
        (subclasses cache it)."""

    @abstractmethod
    def pack(self, op: Op, step: float | None, tail: bytes) -> bytes:
        """The chunk stream at ``op``: side information and payload, then ``tail`` (the
        residual stream, empty when ``step`` is None)."""

    # ---------------------------------------------------------------- shared
    def residual(self, op: Op, step: float) -> tuple[np.ndarray, np.ndarray]:
        """Residual symbols at ``op`` with ``step`` and the decoded values they give
        (layout shape; no entropy coding)."""
        recon = self.prediction(op)
        q = residual.quantise(self.values, recon, step, self.integer)
        return q, residual.dequantise(recon, q, step)

    def stream(self, op: Op, step: float | None) -> tuple[bytes, np.ndarray]:
        """The chunk stream at this operating point and its decoded values (float64, the
        chunk's shape, before :func:`~ctpress.codecs.base.decoded_like`).

        The last result is kept, so a search that ends on the operating point it coded
        last does not code it again.
        """
        key = (op, step)
        if self._last is None or self._last[0] != key:
            if step is None:
                values, tail = self.prediction(op), b""
            else:
                q, values = self.residual(op, step)
                tail = residual.encode_residual(q)
            self._last = key, (self.pack(op, step, tail), values.reshape(self.shape))
        return self._last[1]

    def bits(self, op: Op, step: float | None) -> float:
        """Bits/value of the whole chunk stream at this operating point."""
        return 8.0 * len(self.stream(op, step)[0]) / self.values.size

    def mse(self, values: np.ndarray) -> float:
        """Mean squared error of decoded ``values`` (any shape of the chunk's size)."""
        err = decoded_like(values.reshape(self.shape), self.x).astype(np.float64)
        err -= self.x.astype(np.float64)
        return float(np.mean(err * err))

    def finest_step(self) -> float:
        """The finest useful residual step: 1 on integer data, the reconstruction grid's
        spacing on float data."""
        return 1.0 if self.integer else self.scale * 2.0**-fixed_point.GRID_BITS

    def coarsest_step(self, op: Op) -> float:
        """A residual step that quantises every residual value to 0."""
        worst = float(np.max(np.abs(self.values - self.prediction(op))))
        return max(residual.residual_step(worst + 1, self.integer), self.finest_step())


class ReconstructionCodec(Codec, Generic[Op]):
    """Base class of the codecs "learned reconstruction + error-bounded residual" (see
    the module docstring).  Subclasses define :meth:`_session`, :meth:`_residual_points`
    and the two searches."""

    family: ClassVar[str] = "learned"
    exact_dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16", "int32")
    has_native_lossy = False

    # ---------------------------------------------------------------- subclass hooks
    @abstractmethod
    def _session(self, x: np.ndarray) -> ReconstructionSession[Op]:
        """The encoder state of chunk ``x`` (n, rows, cols)."""

    @abstractmethod
    def _residual_points(self, s: ReconstructionSession[Op]) -> list[Op]:
        """Operating points the residual modes (``max_error``, ``lossless``) try; the
        smallest stream wins."""

    @abstractmethod
    def _search_bpp(self, s: ReconstructionSession[Op], target: float) -> tuple[Op, float | None]:
        """(operating point, residual step or None) for ``target`` bits/value."""

    @abstractmethod
    def _search_psnr(
        self, s: ReconstructionSession[Op], mse_target: float
    ) -> tuple[Op, float | None]:
        """(operating point, residual step or None) with an MSE of at most ``mse_target``."""

    # ---------------------------------------------------------------- exact predictions
    @staticmethod
    def exact_prediction(model: Any, inputs: np.ndarray) -> np.ndarray:
        """A torch model's prediction as integers every machine computes alike.

        ``model`` is an ``nn.Sequential`` of ``Linear`` / ``Conv2d`` / ``ReLU`` layers
        (see :class:`ctpress.learned.fixed_point.FixedPointNet`); ``inputs`` float (or
        int64 in units of 2**-ACTIVATION_BITS) of the shape the model takes.  Returns
        int64 in units of 2**-ACTIVATION_BITS: what a closed-loop coder's encoder and
        decoder both compute, bit for bit, on any CPU, SIMD level and thread count.
        """
        return fixed_point.FixedPointNet.from_module(model)(inputs)

    # ---------------------------------------------------------------- encoding
    def _encode_exact(self, work: np.ndarray) -> bytes:
        s = self._session(work)
        return min((s.stream(op, 1.0)[0] for op in self._residual_points(s)), key=len)

    def _encode_max_error(self, x: np.ndarray, bound: float) -> _Encoded:
        integer = x.dtype.kind in "ui"
        if integer and bound < 1:
            return self._encode_lossless(x)
        s = self._session(x)
        points = self._residual_points(s)

        def smallest(step: float) -> tuple[bytes, np.ndarray]:
            return min((s.stream(op, step) for op in points), key=lambda r: len(r[0]))

        step = residual.residual_step(bound, integer)
        for _ in range(6):  # shrink a hair when float rounding pushes an error over
            stream, values = smallest(step)
            decoded = decoded_like(values, x)
            if np.max(np.abs(decoded.astype(np.float64) - x.astype(np.float64))) <= bound:
                return _Encoded(stream, {"t": "none", "w": "<f8"}, decoded)
            step *= 0.999
        raise RateControlError(f"cannot guarantee max error {bound:g} on {x.dtype} data")

    def _encode_search(self, x: np.ndarray) -> _Encoded:
        assert self.value is not None
        s = self._session(x)
        if self.mode == "bpp":
            op, step = self._search_bpp(s, self.value)
        else:
            data_range = self.data_range or float(x.max()) - float(x.min()) or 1.0
            op, step = self._search_psnr(s, data_range**2 / 10 ** (self.value / 10))
        stream, values = s.stream(op, step)
        bits = 8.0 * len(stream) / x.size
        if self.mode == "bpp" and abs(bits - self.value) > _BPP_TOLERANCE * self.value:
            raise RateControlError(
                f"codec {self.codec_id!r} cannot reach {self.value:g} bits/value on this "
                f"data (nearest: {bits:.3g}); choose another target or codec"
            )
        return _Encoded(stream, {"t": "none", "w": "<f8"}, decoded_like(values, x))

    # ---------------------------------------------------------------- residual searches
    def _fill_bpp(
        self, s: ReconstructionSession[Op], op: Op, target: float, bits: float
    ) -> float | None:
        """The finest residual step at ``op`` (``bits`` bits/value without a residual)
        whose stream stays within ``target`` bits/value; None when none does.  The first
        probe and slope come from :func:`_residual_bits_model`."""
        model = _residual_bits_model(s.values - s.prediction(op))
        finest, coarsest = s.finest_step(), s.coarsest_step(op)
        steps = np.geomspace(finest, coarsest, 65)
        predicted = np.array([bits + model(step) for step in steps])  # decreasing
        aim = target * (1 - _BPP_ACCEPT / 4)
        k = int(np.clip(np.searchsorted(-predicted, -aim), 1, len(steps) - 1))
        slope = math.log(predicted[k] / predicted[k - 1]) / math.log(steps[k] / steps[k - 1])
        return _residual_search(
            s.integer, lambda step: s.bits(op, step), target, (finest, coarsest),
            float(steps[k]), min(slope, -1e-3), increasing=False, accept=_BPP_ACCEPT / 2,
        )  # fmt: skip

    def _fill_psnr(self, s: ReconstructionSession[Op], op: Op, mse_target: float) -> float | None:
        """The coarsest residual step at ``op`` whose decoded values have an MSE of at
        most ``mse_target`` (measured without entropy coding); None when none does.  The
        first probe is the step of a uniform error of that MSE."""
        uniform = math.sqrt(12 * mse_target + (1 if s.integer else 0))
        return _residual_search(
            s.integer, lambda step: s.mse(s.residual(op, step)[1]), mse_target,
            (s.finest_step(), s.coarsest_step(op)), uniform, _MSE_SLOPE, increasing=True,
            accept=_MSE_ACCEPT,
        )  # fmt: skip


def _residual_search(
    integer: bool,
    measure: Callable[[float], float],
    target: float,
    bounds: tuple[float, float],
    start: float,
    slope: float,
    *,
    increasing: bool,
    accept: float,
) -> float | None:
    """:func:`largest_below` over residual steps in ``bounds`` (finest, coarsest); on
    integer data over ``h`` with the odd step ``2h - 1``."""
    finest, coarsest = bounds
    if not integer:
        found = largest_below(
            measure, target, finest, coarsest, increasing=increasing, accept=accept,
            start=start, slope=slope,
        )  # fmt: skip
        return None if found is None else found[0]
    found = largest_below(
        lambda h: measure(2 * h - 1), target, 1.0, (odd_step(coarsest, True) + 1) / 2,
        increasing=increasing, accept=accept, start=(odd_step(start, True) + 1) / 2,
        slope=slope, integer=True,
    )  # fmt: skip
    return None if found is None else 2 * found[0] - 1


# ------------------------------------------------------------------ the zoo's models
_MAGIC = b"CTLN"
_VERSION = 2
#: Methods whose version-1 streams this decoder still reads (payload unchanged).
_V1_METHODS = ("vqvae",)
# magic, version, rate point, flags, gain, offset, scale, residual step, weights sha256[:8],
# latent check, reconstruction check, latent payload length
_SIDE = struct.Struct("<4sBBBxdddd8sIII")
_FLAG_INTEGER = 1
_FLAG_RESIDUAL = 2

ModelLoader = Callable[[str, int], tuple["LearnedModel", str]]
ZooOp = tuple[int, float]


def _load_model(method: str, rate_point: int) -> tuple[LearnedModel, str]:
    """The zoo's model of ``method`` at ``rate_point`` and its weights' SHA-256."""
    from ..learned import zoo

    return zoo.load_model(method, rate_point)


def _padded(shape: tuple[int, int, int], multiple: int) -> tuple[int, int, int]:
    m, h, w = shape
    return (m, -(-h // multiple) * multiple, -(-w // multiple) * multiple)


def decode_learned(
    method: str,
    stream: bytes,
    shape: tuple[int, ...],
    work_dtype: str,
    loader: ModelLoader = _load_model,
) -> np.ndarray:
    """Decode a zoo model's chunk stream to an array of ``shape`` and ``work_dtype``.

    ``loader(method, rate_point) -> (model, sha256)`` provides the weights (the zoo).
    """
    if len(stream) < _SIDE.size:
        raise CorruptFileError(f"{method} stream is truncated")
    (magic, version, rate_point, flags, gain, offset, scale, step, sha8, latent_check,
     recon_check, n_latent) = _SIDE.unpack_from(stream)  # fmt: skip
    if magic != _MAGIC or version not in (1, _VERSION):
        raise CorruptFileError(f"not a learned stream of version 1 or {_VERSION}")
    check_side(method, flags, gain, offset, scale, step)
    if version == 1 and method not in _V1_METHODS:
        raise WeightsMismatchError(
            f"this {method} stream was written by an earlier ctpress (learned stream version 1)"
            ": decode it with the ctpress version that wrote it"
        )
    if _SIDE.size + n_latent > len(stream):
        raise CorruptFileError(f"{method} stream is truncated")
    model = checked_model(
        method, f"rate point {rate_point}", loader(method, rate_point), sha8, gain
    )
    images = image_shape(tuple(shape))
    # the residual first: its block table is checked against the shape before the model
    # decodes latents of that shape
    q = residual_of(method, stream[_SIDE.size + n_latent :], flags, images)
    payload = stream[_SIDE.size : _SIDE.size + n_latent]
    coded = model.decode(payload, _padded(images, model.downsampling), gain, latent_check)
    grid, _ = reconstruct(model, coded, images)
    check_grid(method, grid, recon_check)
    return decoded_values(grid, offset, scale, flags, q, step).reshape(shape).astype(work_dtype)


def side_flags(integer: bool, step: float | None) -> int:
    """The flags byte of a model stream: integer data, residual layer present."""
    return (_FLAG_INTEGER if integer else 0) | (_FLAG_RESIDUAL if step is not None else 0)


def check_side(
    codec_id: str, flags: int, gain: float, offset: float, scale: float, step: float
) -> None:
    """CorruptFileError unless a model stream's side information is valid."""
    if flags & ~(_FLAG_INTEGER | _FLAG_RESIDUAL):
        raise CorruptFileError(f"{codec_id} stream has unknown flags {flags:#04x}")
    if not all(math.isfinite(v) for v in (gain, offset, scale, step)) or not scale > 0:
        raise CorruptFileError(f"{codec_id} stream has an invalid value range or step")
    if flags & _FLAG_RESIDUAL and not step > 0:
        raise CorruptFileError(f"{codec_id} stream has an invalid residual step")


def checked_model(
    codec_id: str, what: str, loaded: tuple[LearnedModel, str], tag: bytes, gain: float
) -> LearnedModel:
    """The model a stream names by ``tag`` (WeightsMismatchError for other weights), with
    ``gain`` checked against its range."""
    model, sha = loaded
    check_weights(codec_id, what, tag, sha)
    if not model.gain_range[0] <= gain <= model.gain_range[1]:
        raise CorruptFileError(f"{codec_id} stream has a quantisation gain {gain:g} out of range")
    return model


def residual_of(
    codec_id: str, tail: bytes, flags: int, images: tuple[int, int, int]
) -> np.ndarray | None:
    """The residual symbols of a model stream's ``tail`` (None without the layer, when the
    tail must be empty)."""
    if flags & _FLAG_RESIDUAL:
        return residual.decode_residual(tail, images)
    if tail:
        raise CorruptFileError(f"{codec_id} stream has trailing bytes")
    return None


def decoded_values(
    grid: np.ndarray, offset: float, scale: float, flags: int, q: np.ndarray | None, step: float
) -> np.ndarray:
    """Data values of a decoder-side grid, plus the residual ``q`` when present."""
    values = fixed_point.grid_values(grid, offset, scale, bool(flags & _FLAG_INTEGER))
    return values if q is None else residual.dequantise(values, q, step)


@dataclass
class _Prepared:
    """One rate point's model and encoder analysis of a chunk."""

    model: LearnedModel
    sha: str
    analysis: Any


class ModelSession(ReconstructionSession[ZooOp]):
    """Encoder state of one chunk coded by a zoo model at operating points (rate point,
    gain): what :class:`LearnedCodec`'s searches need besides the base's."""

    @abstractmethod
    def gain_range(self, rate_point: int) -> tuple[float, float]:
        """The quantisation gains of ``rate_point``'s model."""

    @abstractmethod
    def latent_bits(self, op: ZooOp) -> float:
        """Bits/value of the stream without residual."""


class ZooSession(ModelSession):
    """Encoder state of one chunk for a zoo model: operating points (rate point, gain)."""

    def __init__(self, method: str, x: np.ndarray, loader: ModelLoader = _load_model) -> None:
        super().__init__(method, x, image_shape(x.shape))
        self.method = method
        self.loader = loader
        self._prepared: dict[int, _Prepared] = {}
        self._latents: dict[ZooOp, Coded] = {}
        self._recons: dict[ZooOp, tuple[np.ndarray, int]] = {}

    def prepared(self, rate_point: int) -> _Prepared:
        """The model of ``rate_point`` and its analysis of the chunk (cached)."""
        if rate_point not in self._prepared:
            import torch

            from ..learned.layers import pad_to_multiple

            model, sha = self.loader(self.method, rate_point)
            t = pad_to_multiple(torch.from_numpy(self.unit()[:, None]), model.downsampling)
            self._prepared[rate_point] = _Prepared(model, sha, model.analyse(t))
        return self._prepared[rate_point]

    def gain_range(self, rate_point: int) -> tuple[float, float]:
        return self.prepared(rate_point).model.gain_range

    def latents(self, op: ZooOp) -> Coded:
        if op not in self._latents:
            prep = self.prepared(op[0])
            self._latents[op] = prep.model.code(prep.analysis, op[1])
        return self._latents[op]

    def latent_bits(self, op: ZooOp) -> float:
        """Bits/value of the stream without residual (no synthesis needed here)."""
        return 8.0 * (_SIDE.size + len(self.latents(op).payload)) / self.values.size

    def _recon(self, op: ZooOp) -> tuple[np.ndarray, int]:
        if op not in self._recons:
            grid, check = reconstruct(
                self.prepared(op[0]).model, self.latents(op), self.values.shape
            )
            self._recons[op] = self.grid_values(grid), check
        return self._recons[op]

    def prediction(self, op: ZooOp) -> np.ndarray:
        return self._recon(op)[0]

    def pack(self, op: ZooOp, step: float | None, tail: bytes) -> bytes:
        rate_point, gain = op
        coded = self.latents(op)
        side = _SIDE.pack(
            _MAGIC, _VERSION, rate_point, side_flags(self.integer, step), gain, self.offset,
            self.scale, step or 0.0, weights_tag(self.prepared(rate_point).sha), coded.check,
            self._recon(op)[1], len(coded.payload),
        )  # fmt: skip
        return side + coded.payload + tail


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


class LearnedCodec(ReconstructionCodec[ZooOp]):
    """Base class of the zoo's image models as codecs (see the module docstring).

    Parameters
    ----------
    mode, value, data_range
        Rate control, as for every codec.
    rate_point : int, optional
        Use only this rate point of the method's zoo (default: choose per chunk).
    """

    method: ClassVar[str]

    def __init__(
        self,
        *,
        rate_point: int | None = None,
        **rate: Any,
    ) -> None:
        super().__init__(**rate)
        if rate_point is not None:
            last = max(self._installed() - 1, 0)  # none installed: encode says
            rate_point = int_setting(self.codec_id, "rate_point", rate_point, 0, last)
        self.rate_point = rate_point

    def _installed(self) -> int:
        from ..learned import zoo

        return len(zoo.rate_points(self.method))

    def _options(self) -> dict[str, Any]:
        return {"rate_point": self.rate_point}

    def _points(self) -> list[int]:
        n = self._installed()
        if n == 0:
            raise RateControlError(f"no {self.method} weights are installed")
        if self.rate_point is None:
            return list(range(n))
        if self.rate_point >= n:
            raise InputError(f"{self.method} has rate points 0..{n - 1}, not {self.rate_point}")
        return [self.rate_point]

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        return decode_learned(self.method, stream, shape, work_dtype)

    def _session(self, x: np.ndarray) -> ModelSession:
        return ZooSession(self.method, x)

    def _residual_points(self, s: ReconstructionSession[ZooOp]) -> list[ZooOp]:
        return [(rp, 1.0) for rp in self._points()]

    def _search_bpp(
        self, s: ReconstructionSession[ZooOp], target: float
    ) -> tuple[ZooOp, float | None]:
        assert isinstance(s, ModelSession)
        points = self._points()

        def solve_gain(rp: int) -> tuple[float, float] | None:
            g_lo, g_hi = s.gain_range(rp)
            return largest_below(
                lambda g: s.latent_bits((rp, g)), target, g_lo, g_hi, increasing=False,
                accept=_BPP_ACCEPT, start=1.0, slope=_RATE_SLOPE,
            )  # fmt: skip

        # the rate point trained nearest to the target (rates at gain 1) ...
        i = _nearest_point(points, lambda rp: s.latent_bits((rp, 1.0)), target)
        found = solve_gain(points[i])
        # ... else the next coarser one while it cannot get down to the target ...
        while found is None and i > 0:
            i -= 1
            found = solve_gain(points[i])
        # ... or the next richer one while its richest gain stays well below the target
        while (
            found is not None
            and found[1] < target * (1 - _BPP_CLOSE)
            and found[0] <= s.gain_range(points[i])[0] * (1 + 1e-9)
            and i + 1 < len(points)
        ):
            richer = solve_gain(points[i + 1])
            if richer is None:  # the target falls between two rate points: the residual
                break
            i, found = i + 1, richer
        rp = points[i]
        if found is None:  # even the coarsest operating point is above the target
            gain = s.gain_range(rp)[1]
            bits = s.latent_bits((rp, gain))
            if bits <= target * (1 + _BPP_TOLERANCE):
                return (rp, gain), None
            raise RateControlError(
                f"codec {self.codec_id!r} cannot reach {target:g} bits/value on this data "
                f"(its lowest rate point needs {bits:.3g}); choose another target or codec"
            )
        gain, bits = found
        if bits >= target * (1 - _BPP_CLOSE):
            return (rp, gain), None
        return (rp, gain), self._fill_bpp(s, (rp, gain), target, bits)

    def _search_psnr(
        self, s: ReconstructionSession[ZooOp], mse_target: float
    ) -> tuple[ZooOp, float | None]:
        assert isinstance(s, ModelSession)
        points = self._points()

        @functools.cache
        def mse_at(rp: int, gain: float) -> float:
            return s.mse(s.prediction((rp, gain)))

        # the coarsest rate point that meets the target at its richest gain
        i = _first_meeting(points, lambda rp: mse_at(rp, s.gain_range(rp)[0]) <= mse_target)
        if i < len(points):
            rp = points[i]
            g_lo, g_hi = s.gain_range(rp)
            found = largest_below(
                functools.partial(mse_at, rp), mse_target, g_lo, g_hi, increasing=True,
                accept=_MSE_ACCEPT, start=g_lo, slope=_MSE_SLOPE,
            )  # fmt: skip
            assert found is not None  # g_lo meets the target
            return (rp, found[0]), None
        # beyond the richest rate point: the residual layer
        op = (points[-1], s.gain_range(points[-1])[0])
        step = self._fill_psnr(s, op, mse_target)
        if step is None:
            raise RateControlError(
                f"codec {self.codec_id!r} cannot reach {self.value:g} dB PSNR on this data; "
                "use --lossless"
            )
        return op, step
