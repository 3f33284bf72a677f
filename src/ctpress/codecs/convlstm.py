"""ConvLSTM closed-loop predictive coding: lossless, near-lossless (every value within E)
and, through the noise-bounded mode, an error below a fraction of the quantum noise.

A chunk is a run of views coded in order.  Before each view, a ConvLSTM (state carried
along the views, restarted at every chunk) predicts the whole view from the views the
decoder has already decoded (:mod:`ctpress.learned.predictor`, integer arithmetic);
then every pixel is predicted from that, the previous decoded view and its own decoded
neighbours, blended by their recent errors, and the quantised residual is entropy-coded
with adaptive contexts (:mod:`ctpress.codecs._predictive`).  The residual step is 1
(lossless) or ``2 E + 1`` (every value within E, integer data); the prediction always
uses decoded values, so errors do not accumulate along the views.

``predictor`` chooses the sub-predictors (the ablation of the benchmark): ``spatial``
(causal neighbours of the view only, MED and gradients), ``previous`` (the previous
view), ``both`` (spatial and previous view with its neighbours' changes), ``convlstm``
(the learned prediction with its neighbours' corrections) and ``all`` (everything, with
the conjugate rays where the chunk has them, unless ``conjugate`` is False).

Lossless on float data needs their grid: ``grid=q`` codes values ``lo + k q`` exactly (and
refuses data off the grid); without it float data take ``max_error`` (quantised onto a
grid of step 2E, then coded losslessly).

Every prediction is an integer computed by exact integer operations, so the decoder
reproduces the encoder's predictions on every machine by construction; the chunk's
CRC-32 is only a safety net.

Stream (after the chunk header), little-endian:

- ``u8`` version (2; version 1, whose coder adapts at fixed rates, still decodes), ``u8``
  flags (sub-predictor groups; a bound per value), ``u16`` E,
  ``u32`` views coded at E + 1 (from the first), ``u32`` largest value, ``u32`` views,
  rows, columns;
- with the learned group: 8 bytes of the weights' SHA-256, ``u8`` n, then n ``u32``
  normalisation integers of the predictor;
- with a bound per value (the noise-bounded mode on raw counts): ``f64`` fraction, gain,
  read noise, dark, saturation (NaN: none) of the noise model;
- with the conjugate group (flag 32): the conjugate-ray table
  (:meth:`~ctpress.learned.conjugate.ConjugateRays.to_bytes`);
- ``u32`` length of the range-coder payload, the payload.

In a full rotation (fan, cone or parallel beam with evenly spaced angles) every ray is
measured again half a turn later, so a view in the chunk's second half-turn is predicted
also from the decoded views half a turn before it (the conjugate sub-predictors).  The
encoder computes the table from the chunk's angles and geometry, keeps it when it
predicts the chunk better than the previous view does, and stores it: decoding needs no
geometry.

In the noise-bounded mode on raw counts (uint8/uint16 under a counts-domain model) the
bound of each value is applied inside the loop (:func:`bound_table`); other data take the
generic mode (:mod:`ctpress.codecs.noise_bound`).
"""

from __future__ import annotations

import copy
import math
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import CorruptFileError, InputError
from ..learned.conjugate import ConjugateRays, causal_conjugate_rays, conjugate_view
from ..learned.store import WeightsMismatchError
from ..noise import NoiseModel
from . import _predictive as kernel
from .base import Codec, Knob, RateModel, _Encoded, near_lossless_rate_model
from .context import ChunkContext
from .registry import register_codec
from .settings import number_setting

if TYPE_CHECKING:
    from ..learned.predictor import ViewPredictor

#: ``predictor`` setting -> sub-predictor groups.
PREDICTORS: dict[str, int] = {
    "spatial": kernel.SPATIAL,
    "previous": kernel.PREVIOUS,
    "both": kernel.SPATIAL | kernel.PREVIOUS | kernel.PREVIOUS_PLUS,
    "convlstm": kernel.LEARNED,
    "all": kernel.SPATIAL | kernel.PREVIOUS | kernel.PREVIOUS_PLUS | kernel.LEARNED,
}
#: Stream flag (with the sub-predictor groups): a bound per value from a noise model.
PER_VALUE_BOUND = 16
_VERSION = 2
_HEAD = struct.Struct("<BBHIIIII")
_NOISE = struct.Struct("<5d")
#: Values one payload byte can hold at most (the coder spends at least
#: -log2(4080/4096) bits on a value): a larger declared shape is a crafted stream.
_VALUES_PER_BYTE = 1500


def bound_table(maxval: int, dtype_max: int, fraction: float, model: NoiseModel) -> np.ndarray:
    """The error each value 0..maxval may take under the noise bound (int64): ``floor(f
    sigma(x))`` with ``sigma^2 = gain max(x - dark, 0) + read_noise^2``, 0 for the values
    kept exactly (0, the dtype's maximum, saturated values).  Only correctly rounded IEEE
    operations (+, x, sqrt, floor), so encoder and decoder build the same table on every
    machine; the table is 0, then non-decreasing, then 0 (unimodal)."""
    x = np.arange(maxval + 1, dtype=np.float64)
    variance = model.gain * np.maximum(x - model.dark, 0.0) + model.read_noise * model.read_noise
    table = np.floor(fraction * np.sqrt(variance)).astype(np.int64)
    table[0] = 0
    if maxval >= dtype_max:
        table[dtype_max] = 0
    if model.saturation is not None:
        table[x >= model.saturation] = 0
    return table


def _predictor() -> ViewPredictor:
    from ..learned.predictor import ViewPredictor

    return ViewPredictor.load()


@register_codec
class ConvLstm(Codec):
    """Closed-loop predictive coder of the view sequence (see the module docstring)."""

    codec_id = "convlstm"
    description = "ConvLSTM + context-model predictive coding: lossless / max error, integer data"
    family = "learned"
    exact_dtypes = ("uint8", "uint16")
    has_native_lossy = True
    #: A knob E + f codes the first round(f n) views at E + 1: every rate between two
    #: error bounds (the coder does not restart between them).
    mixes_knob = True
    #: Probe slabs deep enough for the prediction along the views.
    probe_min_views = 8
    #: The adaptive model restarts at every chunk: long chunks learn it once.
    preferred_chunk_bytes = 8 << 20

    def __init__(
        self,
        *,
        predictor: str = "all",
        grid: float | None = None,
        conjugate: bool = True,
        **rate: Any,
    ) -> None:
        super().__init__(**rate)
        if conjugate not in (True, False):
            raise InputError(f"convlstm setting conjugate={conjugate!r}: must be true or false")
        self.conjugate = conjugate
        if predictor not in PREDICTORS:
            raise InputError(
                f"convlstm setting predictor={predictor!r}: must be one of {tuple(PREDICTORS)}"
            )
        self.predictor = predictor
        self.grid = None if grid is None else number_setting(self.codec_id, "grid", grid, 0.0)

    def _options(self) -> dict[str, Any]:
        return {"predictor": self.predictor, "grid": self.grid, "conjugate": self.conjugate}

    #: The chunk's conjugate-ray table (set on a per-chunk copy by :meth:`_encode_chunk`).
    _rays: ConjugateRays | None = None

    def _encode_chunk(self, x: np.ndarray, context: ChunkContext | None) -> _Encoded:
        """The chunk under the rate control, with the conjugate sub-predictors where the
        chunk's geometry has conjugate rays that predict it (predictor ``all``, unless
        ``conjugate`` is False: the ablation)."""
        usable = self.conjugate and self.predictor == "all" and x.dtype.name in self.exact_dtypes
        if context is None or not usable:
            return super()._encode_chunk(x, context)
        rays = causal_conjugate_rays(x, context.geometry, context.angles)
        if rays is None:
            return super()._encode_chunk(x, context)
        chunk_codec = copy.copy(self)
        chunk_codec._rays = rays
        return Codec._encode_chunk(chunk_codec, x, context)

    def _encode_lossless(self, x: np.ndarray) -> _Encoded:
        """Integer data as they are; float data on the stated ``grid`` (``lo + k grid``,
        every value checked to come back exactly)."""
        if x.dtype.kind != "f" or self.grid is None:
            return super()._encode_lossless(x)
        lo = float(x.min())
        steps = np.rint((x.astype(np.float64) - lo) / self.grid)
        info = {"t": "quant", "w": "<u2", "o": lo, "q": self.grid}
        if steps.max() > np.iinfo(np.uint16).max:
            raise InputError(
                f"convlstm: the data span {steps.max():.0f} steps of grid {self.grid:g}, more "
                "than the 65535 it codes; state the data's own grid step"
            )
        if not np.array_equal((steps * self.grid + lo).astype(x.dtype), x):
            raise InputError(
                f"convlstm: the data are not on the grid {lo:g} + k x {self.grid:g}; state the "
                "step the values were stored with, or use --max-error"
            )
        work = steps.astype(np.uint16)
        return _Encoded(self._encode_exact(work), info)

    # ------------------------------------------------------------------ encode
    def _lossy_work(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]] | None:
        if x.dtype.name not in self.exact_dtypes:
            return None  # floats and wider integers: quantised onto a grid, coded lossless
        return x, {"t": "none", "w": x.dtype.str}

    def _knob(self, work: np.ndarray) -> Knob:
        span = float(work.max()) - float(work.min())
        # searched in log space: bounds from a fraction of a count (some views at E = 1)
        # to half the span take about as many probes each way
        return Knob(lo=0.25, hi=max(2.0, min(span / 2, 65535.0)), is_error_bound=True)

    def _rate_model(self, work: np.ndarray, target_mse: float | None) -> RateModel | None:
        return near_lossless_rate_model(self._knob(work), target_mse, self._encode_lossy)

    def _encode_exact(self, work: np.ndarray) -> bytes:
        return self._code(work, 0)[0]

    def _encode_lossy(self, work: np.ndarray, knob: float) -> bytes:
        near = math.floor(knob)
        return self._code(work, near, coarser=round((knob - near) * work.shape[0]))[0]

    def _encode_max_error(self, x: np.ndarray, bound: float) -> _Encoded:
        """Integer data in ``exact_dtypes``: the closed loop meets the bound by
        construction and returns its reconstruction (no decoding to check it)."""
        if x.dtype.name not in self.exact_dtypes or bound < 1:
            return super()._encode_max_error(x, bound)
        near = math.floor(bound)
        stream, decoded = self._code(x, near)
        info = {"t": "none", "w": x.dtype.str, "k": float(near)}
        return _Encoded(stream, info, decoded.astype(x.dtype))

    def _encode_noise(self, x: np.ndarray) -> _Encoded:
        """Raw counts (uint8/uint16 under a counts-domain model): the bound of each value
        in the closed loop itself (no transform, no exceptions); else the generic mode."""
        noise = self.rate.noise
        if noise is None or noise.domain != "counts" or x.dtype.name not in self.exact_dtypes:
            return super()._encode_noise(x)
        assert self.value is not None
        stream, decoded = self._code(x, 0, (self.value, noise))
        return _Encoded(stream, {"t": "none", "w": x.dtype.str}, decoded.astype(x.dtype))

    def _code(
        self,
        work: np.ndarray,
        near: int,
        bound: tuple[float, NoiseModel] | None = None,
        coarser: int = 0,
        trace: np.ndarray | None = None,
    ) -> tuple[bytes, np.ndarray]:
        """Stream and reconstruction (int64, work's shape) of ``work`` (n, rows, cols) at
        error bound ``near`` (the first ``coarser`` views at ``near + 1``), or with
        ``bound`` = (fraction, counts-domain noise model) at the noise bound of each value;
        ``trace`` (work's shape + (``N_TRACE``,), int64) receives each pixel's coder state
        (:data:`~ctpress.codecs._predictive.TRACE_FIELDS`)."""
        groups = PREDICTORS[self.predictor] | (PER_VALUE_BOUND if bound else 0)
        groups |= kernel.CONJUGATE if self._rays is not None else 0
        maxval = int(work.max())
        head = _HEAD.pack(_VERSION, groups, near, coarser, maxval, *work.shape)
        model: ViewPredictor | None = None
        norm: tuple[int, ...] = ()
        if groups & kernel.LEARNED:
            model = _predictor()
            norm = model.normalisation(work)
            head += model.weights_id + struct.pack(f"<B{len(norm)}I", len(norm), *norm)
        table = np.zeros(0, dtype=np.int64)
        if bound is not None:
            fraction, noise = bound
            saturation = math.nan if noise.saturation is None else noise.saturation
            head += _NOISE.pack(fraction, noise.gain, noise.read_noise, noise.dark, saturation)
            table = bound_table(maxval, np.iinfo(work.dtype).max, fraction, noise)
        if self._rays is not None:
            head += self._rays.to_bytes()
        capacity = work.size * 3 + 1024
        while True:  # rarely more than once: the buffer holds 24 bits per value
            sequence = None if model is None else model.sequence(work.shape[1], work.shape[2], norm)
            buffer = np.zeros(capacity, dtype=np.uint8)
            state = kernel.CoderState.new(
                work.shape[1], work.shape[2], buffer, True, counted=_VERSION > 1
            )
            decoded = np.array(work, dtype=np.int64)
            self._run(True, decoded, groups, maxval, (near, coarser), table, state, sequence,
                      self._rays, trace)  # fmt: skip
            n_bytes = kernel.flush(state.coder, buffer)
            if n_bytes >= 0:
                break
            capacity *= 2
        payload = buffer[:n_bytes].tobytes()
        return head + struct.pack("<I", len(payload)) + payload, decoded

    @staticmethod
    def _run(encoding: bool, views: np.ndarray, groups: int, maxval: int, near: tuple[int, int],
             table: np.ndarray, state: kernel.CoderState, sequence: Any,
             rays: ConjugateRays | None, trace: np.ndarray | None = None) -> None:  # fmt: skip
        """Code ``views`` (n, rows, cols) int64 in place, view by view (the predictor's
        small GEMMs on one BLAS thread: faster than two, and the same integers)."""
        empty = np.zeros((0, 0), dtype=np.int64)
        no_trace = np.zeros((0, 0, 0), dtype=np.int64)
        previous = empty
        learned = empty
        with threadpool_limits(limits=1, user_api="blas"):
            for t in range(views.shape[0]):
                view = views[t]
                conjugate = empty
                if rays is not None:
                    prediction, valid = conjugate_view(views, t, rays)
                    if valid.any():  # columns without conjugate samples: the previous view
                        conjugate = np.where(valid, prediction, previous)
                kernel.code_view(
                    encoding, view, previous, learned, conjugate, groups & ~PER_VALUE_BOUND,
                    maxval,
                    near[0] + (t < near[1]),
                    table, state.probs, state.bias, state.errors, state.mixer, state.coder,
                    state.buffer, no_trace if trace is None else trace[t],
                )  # fmt: skip
                previous = view
                if sequence is not None and t + 1 < views.shape[0]:
                    learned = sequence.next(view)[0]

    # ------------------------------------------------------------------ decode
    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        if len(stream) < _HEAD.size + 4:
            raise CorruptFileError("convlstm stream is truncated")
        version, groups, near, coarser, maxval, *dims = _HEAD.unpack_from(stream)
        if tuple(dims) != tuple(shape):
            raise CorruptFileError(f"convlstm stream holds {tuple(dims)} values, not {shape}")
        if coarser > dims[0]:
            raise CorruptFileError(f"convlstm stream codes {coarser} of {dims[0]} views coarser")
        dtype = np.dtype(work_dtype)
        predictors = groups & ~PER_VALUE_BOUND & ~kernel.CONJUGATE
        conjugate_ok = not groups & kernel.CONJUGATE or predictors == PREDICTORS["all"]
        known = version in (1, _VERSION) and predictors in PREDICTORS.values()
        if not known or not conjugate_ok:
            raise CorruptFileError(f"convlstm stream version {version} / predictors {groups}")
        if dtype.name not in self.exact_dtypes or maxval > np.iinfo(dtype).max:
            raise CorruptFileError(f"convlstm stream declares values up to {maxval} in {dtype}")
        pos = _HEAD.size
        sequence = None
        if groups & kernel.LEARNED:
            model = _predictor()
            if stream[pos : pos + 8] != model.weights_id:
                raise WeightsMismatchError(
                    "this convlstm stream was made with other predictor weights than the "
                    "installed ones; decode it with the ctpress version that wrote it"
                )
            n_norm = stream[pos + 8] if len(stream) > pos + 8 else 0
            pos += 9
            norm = struct.unpack_from(f"<{n_norm}I", stream, pos)
            pos += 4 * n_norm
            try:
                sequence = model.sequence(shape[1], shape[2], tuple(norm))
            except ValueError as exc:
                raise CorruptFileError(f"convlstm stream: {exc}") from None
        table = np.zeros(0, dtype=np.int64)
        if groups & PER_VALUE_BOUND:
            fraction, gain, read_noise, dark, saturation = _NOISE.unpack_from(stream, pos)
            pos += _NOISE.size
            try:
                noise = NoiseModel(
                    domain="counts", gain=gain, read_noise=read_noise, dark=dark,
                    saturation=None if math.isnan(saturation) else saturation,
                )  # fmt: skip
                if not 0 < fraction < math.inf:
                    raise ValueError(f"fraction {fraction}")
            except (ValueError, InputError) as exc:
                raise CorruptFileError(f"convlstm stream has a bad noise model: {exc}") from None
            table = bound_table(maxval, np.iinfo(dtype).max, fraction, noise)
        rays = None
        if groups & kernel.CONJUGATE:
            rays, used = ConjugateRays.from_bytes(stream[pos:], shape[2], shape[0])
            pos += used
        if len(stream) < pos + 4:
            raise CorruptFileError("convlstm stream is truncated")
        (n_payload,) = struct.unpack_from("<I", stream, pos)
        payload = np.frombuffer(stream, dtype=np.uint8, count=n_payload, offset=pos + 4).copy()
        if pos + 4 + n_payload != len(stream):
            raise CorruptFileError("convlstm payload length differs from the stream's")
        if math.prod(shape) > (n_payload + 16) * _VALUES_PER_BYTE:
            raise CorruptFileError(f"convlstm payload of {n_payload} bytes cannot hold {shape}")
        views = np.zeros(shape, dtype=np.int64)
        state = kernel.CoderState.new(shape[1], shape[2], payload, False, counted=version > 1)
        self._run(False, views, groups, maxval, (near, coarser), table, state, sequence, rays)
        if state.coder[6] > kernel.FLUSH_BYTES:
            raise CorruptFileError("convlstm payload ended before the chunk was decoded")
        return views.astype(dtype)
