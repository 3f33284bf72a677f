"""The learned inter-view predictor of the ConvLSTM codec, in integer arithmetic (no torch).

A one-layer ConvLSTM runs along the view axis of a chunk: fed decoded view ``t``, it
predicts view ``t + 1`` (as a correction of view ``t``) and the log-scale of the
prediction's error.  The encoder and the decoder both call :meth:`ViewSequence.next` on
the same decoded views, so they must compute the same prediction on every machine, thread
count and instruction set.  They do **by construction**:

- weights are quantised to integers (2**-``WEIGHT_BITS``), activations are fixed point
  (2**-``ACTIVATION_BITS``), every rescaling is an integer shift
  (:func:`~ctpress.learned.fixed_point.round_shift`);
- the convolutions are im2col + GEMM in float64 on integer operands whose every partial
  sum is below 2**53 (:func:`~ctpress.learned.fixed_point.exact_matmul`, which checks the
  bound on every call), so BLAS's blocking, summation order, FMA and thread count cannot
  change the exact integer result; the inputs are clipped to :data:`INPUT_LIMIT` and the
  hidden values are at most 1, which keeps the bound far away (checked at load);
- sigmoid and tanh are integer lookup tables computed with :mod:`decimal` (a software
  arithmetic with correctly rounded ``exp``, the same on every machine), indexed by the
  clipped integer pre-activation.

The network's inputs are normalised per chunk by integers the codec stores
(:meth:`ViewPredictor.normalisation`): an offset and a power of two for the level of the
data (the previous view), and a power of two for its view-to-view differences (the
prediction's unit), so raw counts and line integrals of any range look alike to it.  The
float model trained by ``ctpress train convlstm``
(:class:`ctpress.learned.models.view_predictor.ConvLSTMPredictor`) uses the same
normalisation (:func:`float_inputs`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import numpy as np

from ..errors import CorruptFileError
from . import store
from .fixed_point import (
    ACTIVATION_BITS,
    EXACT_FLOAT_LIMIT,
    WEIGHT_BITS,
    accumulator_bound,
    exact_matmul,
    quantise,
    round_shift,
)

#: Predictions are int64 in units of 2**-PRED_FRAC_BITS of the data unit.
PRED_FRAC_BITS = 3
#: Range of the predicted log-scale, in quarters of log2 of the data unit.
LOG_SCALE_RANGE = (-8, 80)
#: Inputs of the network (previous view's level, last two view-to-view differences).
INPUT_CHANNELS = 3
#: Magnitude at which the normalised inputs (and the predicted correction) are clipped.
INPUT_LIMIT = 32
#: Magnitude at which the cell state is clipped.
CELL_LIMIT = 8
#: Pre-activations beyond +-TABLE_RANGE saturate the sigmoid table.
TABLE_RANGE = 8
#: Fraction bits of the sigmoid table's argument.
TABLE_BITS = 10
#: Valid ranges of the stored normalisation (offset code, level shift, difference shift).
LEVEL_SHIFTS = (2, 33)
#: Largest magnitude of the offset (data units; any 32-bit data's offset is within it).
OFFSET_LIMIT = 1 << 33
DIFF_SHIFTS = (0, 24)
#: The chunk's conditioning scalar is (level shift - difference shift) / 2**CONDITION_SHIFT.
CONDITION_SHIFT = 4
_ONE = 1 << ACTIVATION_BITS
METHOD = "convlstm"


# ---------------------------------------------------------------- normalisation
def chunk_normalisation(chunk: np.ndarray) -> tuple[int, int, int]:
    """``(offset code, level shift, difference shift)`` of a chunk (n_views, rows, cols)
    of integers.

    ``level shift`` ``ls``: the smallest (at least 2) with ``max - min < 2**ls``; the offset
    is ``min`` rounded down to a multiple of ``2**ls`` and stored as the zigzag code of
    ``offset / 2**ls`` (< 2**31 for any int32 data).  ``difference shift`` ``ds``:
    ``floor(log2)`` of the mean absolute view-to-view difference (0 when below 2).
    """
    x = np.asarray(chunk)
    if x.ndim != 3 or x.dtype.kind not in "iu" or x.size == 0:
        raise ValueError("normalisation needs a non-empty integer chunk (n_views, rows, cols)")
    lo, hi = int(x.min()), int(x.max())
    level_shift = max(LEVEL_SHIFTS[0], (hi - lo).bit_length())
    offset_units = lo >> level_shift
    mean_diff = 0
    if x.shape[0] > 1:
        diff = np.abs(np.diff(x.astype(np.int64), axis=0))
        mean_diff = int(diff.sum()) // diff.size
    diff_shift = min(DIFF_SHIFTS[1], max(0, mean_diff.bit_length() - 1))
    return _zigzag(offset_units), level_shift, diff_shift


def _zigzag(n: int) -> int:
    return 2 * n if n >= 0 else -2 * n - 1


def _unzigzag(code: int) -> int:
    return code // 2 if code % 2 == 0 else -(code + 1) // 2


@dataclass(frozen=True)
class Normalisation:
    """A chunk's decoded normalisation: ``offset`` (data units), ``level_shift`` and
    ``diff_shift`` (powers of two)."""

    offset: int
    level_shift: int
    diff_shift: int

    @classmethod
    def decode(cls, norm: tuple[int, ...]) -> Normalisation:
        """ValueError (one line) when ``norm`` is not a valid stored normalisation."""
        if len(norm) != 3 or not all(isinstance(v, int | np.integer) for v in norm):
            raise ValueError(f"normalisation must be 3 integers, not {norm!r}")
        code, level_shift, diff_shift = (int(v) for v in norm)
        if not 0 <= code < 2**31:
            raise ValueError(f"normalisation offset code {code} out of range")
        if not LEVEL_SHIFTS[0] <= level_shift <= LEVEL_SHIFTS[1]:
            raise ValueError(f"normalisation level shift {level_shift} out of range")
        if not DIFF_SHIFTS[0] <= diff_shift <= DIFF_SHIFTS[1]:
            raise ValueError(f"normalisation difference shift {diff_shift} out of range")
        offset = _unzigzag(code) << level_shift
        if abs(offset) > OFFSET_LIMIT:
            raise ValueError(f"normalisation offset {offset} out of range")
        return cls(offset, level_shift, diff_shift)

    @property
    def condition(self) -> float:
        """The conditioning scalar ``(ls - ds) / 2**CONDITION_SHIFT`` of the gates' bias."""
        return (self.level_shift - self.diff_shift) / 2**CONDITION_SHIFT


def float_inputs(views: np.ndarray, norm: Normalisation) -> np.ndarray:
    """The network's inputs (n_views, 3, rows, cols) float64 for views (n_views, rows,
    cols): step ``t`` sees ``(x_t - offset) / 2**ls``, ``(x_t - x_{t-1}) / 2**ds`` and
    ``(x_{t-1} - x_{t-2}) / 2**ds`` (missing views repeat view 0), clipped to
    +-:data:`INPUT_LIMIT` (the training path; the codec's is the integer one)."""
    x = views.astype(np.float64)
    prev = np.concatenate([x[:1], x[:-1]])
    prev2 = np.concatenate([prev[:1], prev[:-1]])
    level = (x - norm.offset) * 2.0**-norm.level_shift
    scale = 2.0**-norm.diff_shift
    stacked = np.stack([level, (x - prev) * scale, (prev - prev2) * scale], axis=1)
    return np.clip(stacked, -INPUT_LIMIT, INPUT_LIMIT)


# ---------------------------------------------------------------- lookup tables
#: Entries of the sigmoid table and of the tanh table (``2 * TABLE_RANGE * 2**TABLE_BITS + 1``).
_TABLE_HALF = TABLE_RANGE << TABLE_BITS
_TABLE_SIZE = 2 * _TABLE_HALF + 1


@functools.cache
def activation_table() -> np.ndarray:
    """The sigmoid table then the tanh table (int64, 2**-ACTIVATION_BITS), computed with
    :mod:`decimal` (correctly rounded, identical on every machine).

    Entry ``k`` (``0 <= k < _TABLE_SIZE``) is ``round(2**16 sigmoid(z))`` at ``z = (k -
    _TABLE_HALF) / 2**TABLE_BITS``; entry ``_TABLE_SIZE + k`` is ``tanh(z) = 2 sigmoid(2 z)
    - 1`` at ``z = (k - _TABLE_HALF) / 2**(TABLE_BITS + 1)`` (from the same rounded
    sigmoid), so both saturate at ``|z|`` of :data:`TABLE_RANGE` and 1/2 of it."""
    positive = np.empty(_TABLE_HALF + 1, dtype=np.int64)
    with localcontext() as ctx:
        ctx.prec = 40
        for k in range(_TABLE_HALF + 1):
            value = Decimal(_ONE) / (1 + (Decimal(-k) / (1 << TABLE_BITS)).exp())
            positive[k] = int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    sigmoid = np.concatenate([_ONE - positive[:0:-1], positive])
    return np.concatenate([sigmoid, 2 * sigmoid - _ONE])


# ---------------------------------------------------------------- the integer model
#: Tensors of the weights file (float32) and their roles, for ``hidden`` channels ``H``:
#: ``input_conv.weight`` (4H, 3, 3, 3), ``input_conv.bias`` (4H), ``hidden_conv.weight``
#: (4H, H, 1, 1), ``condition`` (4H), ``head.weight`` (2, H + 3, 1, 1), ``head.bias`` (2).
#: Gates in the order input, forget, cell, output.
WEIGHT_NAMES = (
    "input_conv.weight",
    "input_conv.bias",
    "hidden_conv.weight",
    "condition",
    "head.weight",
    "head.bias",
)


@dataclass(frozen=True)
class ViewPredictor:
    """The integer ConvLSTM view predictor (see the module docstring).

    ``gate_weight`` (4H, 27 + H) and ``head_weight`` (2, H + 3): float64 holding integers
    in units of 2**-WEIGHT_BITS (columns: the 3x3 taps of the 3 inputs, channel-major,
    then the hidden channels; for the head the hidden channels, then the inputs);
    ``gate_bias`` (4H), ``condition`` (4H), ``head_bias`` (2): int64 in units of
    2**-ACTIVATION_BITS.
    """

    weights_id: bytes
    hidden: int
    gate_weight: np.ndarray = field(repr=False)
    gate_bias: np.ndarray = field(repr=False)
    condition: np.ndarray = field(repr=False)
    head_weight: np.ndarray = field(repr=False)
    head_bias: np.ndarray = field(repr=False)

    @classmethod
    def load(cls) -> ViewPredictor:
        """The shipped predictor (manifest entry ``convlstm`` of the weights directory;
        cached)."""
        return _load(str(store.weights_dir()))

    @classmethod
    def from_weights(cls, data: bytes, weights_id: bytes) -> ViewPredictor:
        """The integer model of a weights file's bytes (float32 safetensors)."""
        import safetensors.numpy

        try:
            tensors = safetensors.numpy.load(data)
            config = json.loads(_metadata(data)["config"])
            hidden = int(config["hidden"])
            w = {name: tensors[name].astype(np.float64) for name in WEIGHT_NAMES}
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptFileError(f"convlstm weights are damaged: {exc}") from None
        gates = 4 * hidden
        input_taps = w["input_conv.weight"].reshape(gates, INPUT_CHANNELS * 9)
        recurrent = w["hidden_conv.weight"].reshape(gates, hidden)
        gate_weight = quantise(np.concatenate([input_taps, recurrent], axis=1), WEIGHT_BITS)
        head_weight = quantise(w["head.weight"].reshape(2, hidden + INPUT_CHANNELS), WEIGHT_BITS)
        predictor = cls(
            weights_id=weights_id,
            hidden=hidden,
            gate_weight=gate_weight.astype(np.float64),
            gate_bias=quantise(w["input_conv.bias"], ACTIVATION_BITS),
            condition=quantise(w["condition"], ACTIVATION_BITS),
            head_weight=head_weight.astype(np.float64),
            head_bias=quantise(w["head.bias"], ACTIVATION_BITS),
        )
        predictor.check_bounds()
        return predictor

    def check_bounds(self) -> None:
        """ValueError unless the largest possible activations keep every GEMM exact in
        float64 (inputs clipped to INPUT_LIMIT, hidden values at most 1)."""
        largest = INPUT_LIMIT * _ONE
        for weight in (self.gate_weight, self.head_weight):
            if accumulator_bound(weight, largest) >= EXACT_FLOAT_LIMIT:
                raise ValueError("convlstm weights too large for the exact float64 GEMM")

    def normalisation(self, chunk: np.ndarray) -> tuple[int, ...]:
        """Encoder side: the integers to store for a chunk (see :func:`chunk_normalisation`)."""
        return chunk_normalisation(chunk)

    def sequence(self, rows: int, cols: int, norm: tuple[int, ...]) -> ViewSequence:
        """A fresh state for one chunk of views (rows, cols) with stored normalisation
        ``norm`` (ValueError when out of range)."""
        return ViewSequence(self, rows, cols, Normalisation.decode(norm))


def _metadata(data: bytes) -> dict[str, str]:
    size = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + size]).get("__metadata__", {}))


@functools.cache
def _load(directory: str) -> ViewPredictor:
    entries = store.entries(directory, METHOD)
    if not entries:
        raise store.WeightsMismatchError("the convlstm predictor's weights are not installed")
    data, digest = store.read_entry(directory, entries[0])
    return ViewPredictor.from_weights(data, bytes.fromhex(digest)[:8])


store.register_cache(_load.cache_clear)


class ViewSequence:
    """The predictor's state along one chunk (it restarts at every chunk).

    Activations are channel-major (channels, pixels) in units of 2**-ACTIVATION_BITS; the
    GEMM operands are float64 holding integers, with a last constant row of 2**16 (1.0)
    whose weights are the biases.  The gate GEMM's accumulator ``A`` (2**-32) goes
    straight to a table index, ``floor(A / 2**(32 - TABLE_BITS) + 1/2)`` (one more bit
    for the tanh of the cell gate), the rounding half and the table offsets folded into
    the bias weights."""

    def __init__(self, model: ViewPredictor, rows: int, cols: int, norm: Normalisation) -> None:
        if rows < 1 or cols < 1:
            raise ValueError(f"view shape ({rows}, {cols}) is empty")
        self.model = model
        self.shape = (rows, cols)
        self.norm = norm
        hidden, pixels = model.hidden, rows * cols
        self._previous: np.ndarray | None = None  # x_{t-1}, data units
        self._cell = np.zeros((hidden, pixels), dtype=np.int64)
        # per gate row: table index scale, bias weight (bias + rounding + table offset)
        shifts = norm.level_shift - norm.diff_shift
        bias = model.gate_bias + round_shift(model.condition * shifts, CONDITION_SHIFT)
        is_tanh = np.zeros(4 * hidden, dtype=bool)
        is_tanh[2 * hidden : 3 * hidden] = True
        index_bits = np.where(is_tanh, TABLE_BITS + 1, TABLE_BITS)
        shift = 2 * ACTIVATION_BITS - index_bits  # accumulator bits -> index bits
        offset = _TABLE_HALF + np.where(is_tanh, _TABLE_SIZE, 0)
        # bias weights in 2**-WEIGHT_BITS times the constant 2**16: A gains bias * 2**16
        # + 2**(shift - 1) + offset * 2**shift, all multiples of 2**16
        constant = bias + ((1 + 2 * offset) << (shift - 1 - WEIGHT_BITS))
        self._gate_weight = np.concatenate([model.gate_weight, constant[:, None]], axis=1)
        self._index_scale = (2.0 ** -shift.astype(np.float64))[:, None]
        self._index_low = (offset - _TABLE_HALF).astype(np.float64)[:, None]
        self._index_high = (offset + _TABLE_HALF).astype(np.float64)[:, None]
        self._head_weight = np.concatenate([model.head_weight, model.head_bias[:, None]], axis=1)
        taps = INPUT_CHANNELS * 9
        # gate GEMM columns: the 3x3 taps of the inputs (channel-major), the hidden state,
        # the constant; head GEMM columns: the new hidden state, the inputs, the constant
        self._columns = np.zeros((taps + hidden + 1, pixels), dtype=np.float64)
        self._columns[-1] = _ONE
        self._head_columns = np.zeros((hidden + INPUT_CHANNELS + 1, pixels), dtype=np.float64)
        self._head_columns[-1] = _ONE
        self._padded = np.zeros((INPUT_CHANNELS, rows + 2, cols + 2), dtype=np.float64)

    def _scaled(self, x: np.ndarray, shift: int) -> np.ndarray:
        """``x / 2**shift`` in fixed point (2**-ACTIVATION_BITS), rounded, clipped."""
        limit = INPUT_LIMIT * _ONE
        scaled = x << ACTIVATION_BITS if shift == 0 else round_shift(x << ACTIVATION_BITS, shift)
        return np.clip(scaled, -limit, limit)

    def next(self, decoded_view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed decoded view ``t`` (integers (rows, cols) of magnitude below 2**32); returns
        the prediction of view ``t + 1`` (int64 (rows, cols), 2**-PRED_FRAC_BITS data
        units) and the predicted log-scale of its error (int64 (rows, cols),
        ``round(4 log2 |error|)`` in data units, clipped to :data:`LOG_SCALE_RANGE`)."""
        x = np.asarray(decoded_view)
        if x.shape != self.shape or x.dtype.kind not in "iu":
            raise ValueError(f"decoded view must be integers of shape {self.shape}")
        x = x.astype(np.int64).reshape(-1)
        norm, hidden = self.norm, self.model.hidden
        rows, cols = self.shape
        previous = x if self._previous is None else self._previous
        head_columns, columns, padded = self._head_columns, self._columns, self._padded
        # inputs: level of x_t, x_t - x_{t-1}, x_{t-1} - x_{t-2} (the last step's second)
        inputs = head_columns[hidden : hidden + INPUT_CHANNELS]
        inputs[2] = inputs[1]
        inputs[0] = self._scaled(x - norm.offset, norm.level_shift)
        inputs[1] = self._scaled(x - previous, norm.diff_shift)
        padded[:, 1:-1, 1:-1] = inputs.reshape(INPUT_CHANNELS, rows, cols)
        for c in range(INPUT_CHANNELS):
            for tap in range(9):
                dy, dx = divmod(tap, 3)
                columns[9 * c + tap].reshape(rows, cols)[...] = padded[
                    c, dy : dy + rows, dx : dx + cols
                ]
        columns[INPUT_CHANNELS * 9 : -1] = head_columns[:hidden]  # the previous hidden state
        largest = INPUT_LIMIT * _ONE  # inputs clipped, |hidden| <= 1: bounded by construction
        index = exact_matmul(self._gate_weight, columns, largest)
        index *= self._index_scale  # exact: powers of two
        np.floor(index, out=index)
        np.clip(index, self._index_low, self._index_high, out=index)
        gates = activation_table()[index.astype(np.intp)]
        i, f, g, o = (gates[k * hidden : (k + 1) * hidden] for k in range(4))
        cell = f * self._cell
        cell += i * g
        self._cell = np.clip(
            round_shift(cell, ACTIVATION_BITS), -CELL_LIMIT * _ONE, CELL_LIMIT * _ONE
        )
        tanh_index = round_shift(self._cell, ACTIVATION_BITS - TABLE_BITS - 1)
        np.clip(tanh_index, -_TABLE_HALF, _TABLE_HALF, out=tanh_index)
        tanh_index += _TABLE_SIZE + _TABLE_HALF
        head_columns[:hidden] = round_shift(o * activation_table()[tanh_index], ACTIVATION_BITS)
        head = exact_matmul(self._head_weight, head_columns, largest).astype(np.int64)
        head = round_shift(head, WEIGHT_BITS)
        correction = np.clip(head[0], -largest, largest) << (norm.diff_shift + PRED_FRAC_BITS)
        prediction = (x << PRED_FRAC_BITS) + round_shift(correction, ACTIVATION_BITS)
        log_scale = 4 * head[1] + ((4 * norm.diff_shift) << ACTIVATION_BITS)
        log_scale = np.clip(round_shift(log_scale, ACTIVATION_BITS), *LOG_SCALE_RANGE)
        self._previous = x
        return prediction.reshape(self.shape), log_scale.reshape(self.shape)
