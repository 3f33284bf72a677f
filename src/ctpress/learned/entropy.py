"""Entropy models with integer decoder-side tables, coded with constriction's range coder.

The rule that keeps learned streams portable: **the probability tables used to encode and
decode come only from integers stored with the weights** (or in the stream).  Learned
densities are turned into integer frequency tables once, by ``update()`` after training
(:func:`quantise_pmf`); those integers are saved in the weights file and used as they are
by both ends.  constriction receives them as float64 arrays of exact integers, which its
fixed-point quantiser turns into the same model on every machine (sums of integers below
2**53 and one IEEE division: no transcendental function, no platform dependence).

Layers here (CompressAI-style):

- :class:`TableCoder`: frequency tables (rows x alphabet) -> bytes and back, each symbol
  coded with the table row given for it, with optional escape symbols for values
  outside a row's support;
- :class:`FactorizedPrior`: a learned per-channel density (Ballé et al. 2018, the
  "EntropyBottleneck") for hyper-latents;
- :class:`ScaleConditional`: Gaussian or Laplace densities over a fixed log-spaced scale
  table, for latents whose scale (and mean) the hyper-decoder predicts.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CorruptFileError

#: Frequencies of every stored table sum to 2**PRECISION.
PRECISION = 20
#: Tail mass left outside a table's support (coded through escape symbols).
TAIL_MASS = 1e-9


def _constriction() -> Any:
    """The constriction module (imported on first use: only the learned codecs need it)."""
    import constriction

    return constriction


# ----------------------------------------------------------------------- tables
def quantise_pmf(pmf: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Integer frequencies of probability mass functions (training side only).

    Parameters
    ----------
    pmf : ndarray, shape (rows, n), float
        Non-negative masses of each row (need not be normalised).
    precision : int
        Each output row sums to exactly ``2**precision``.

    Returns
    -------
    ndarray, shape (rows, n), int64
        Every entry >= 1 (every symbol stays codable); the remaining mass is shared by
        largest remainder.
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    rows, n = pmf.shape
    total = 1 << precision
    if n > total // 2:
        raise ValueError(f"alphabet of {n} symbols is too large for precision {precision}")
    p = np.clip(pmf, 0, None)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    ideal = p * (total - n)
    freqs = np.floor(ideal).astype(np.int64) + 1
    short = total - freqs.sum(axis=1)
    order = np.argsort(-(ideal - np.floor(ideal)), axis=1, kind="stable")
    for r in range(rows):
        freqs[r, order[r, : short[r]]] += 1
    return freqs


class TableCoder:
    """Range coding of integer symbols with stored integer frequency tables.

    Parameters
    ----------
    freqs : ndarray, shape (sum(lengths),), integer
        The tables one after another: row ``r`` is the next ``lengths[r]`` entries.
    offsets : ndarray, shape (rows,), integer
        Value coded by column 1 of a row with escapes (column 0 without).
    lengths : ndarray, shape (rows,), integer
        Alphabet size of each row (escape columns included).
    escapes : bool
        With escapes, column 0 and column ``length-1`` of each row stand for values
        below / above the row's support, whose distance to the support is stored as a
        variable-length integer after the range-coded words; the interior columns code
        ``offset .. offset + length - 3``.  Without escapes, column ``k`` codes value
        ``offset + k`` and values outside ``[offset, offset + length)`` are refused.
    """

    def __init__(
        self, freqs: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, *, escapes: bool
    ) -> None:
        self.freqs = np.asarray(freqs, dtype=np.int64).ravel()
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.sum() != self.freqs.size or (self.lengths < 2).any():
            raise CorruptFileError("entropy table sizes do not match their lengths")
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.escapes = escapes
        self._models: dict[int, object] = {}
        self._code_bits: np.ndarray | None = None

    @property
    def rows(self) -> int:
        """Number of tables."""
        return len(self.lengths)

    def _model(self, row: int) -> object:
        model = self._models.get(row)
        if model is None:
            start = self.starts[row]
            counts = self.freqs[start : start + self.lengths[row]].astype(np.float64)
            model = _constriction().stream.model.Categorical(counts, perfect=False)
            self._models[row] = model
        return model

    def _row_order(self, rows: np.ndarray) -> np.ndarray:
        """Stable order of ``rows`` (numpy sorts 16-bit keys by radix, ~10x faster)."""
        key = rows.astype(np.int16) if self.rows <= np.iinfo(np.int16).max else rows
        return np.argsort(key, kind="stable")

    def bits(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Code length in bits of ``values[i]`` under table ``rows[i]``, float64 of the
        same shape; an escaped value counts its escape column plus one byte (longer
        escapes are rare and counted short).  Encoder side only: used to choose between
        tables and symbols, never to report sizes."""
        if self._code_bits is None:
            self._code_bits = self._dense_code_bits()
        rows = np.asarray(rows, dtype=np.int64)
        col = np.asarray(values, dtype=np.int64) - self.offsets[rows]
        if self.escapes:
            col += 1
            below = col < 1
            bits = self._code_bits[rows, np.clip(col, 0, self._code_bits.shape[1] - 1)]
            return bits + 8.0 * below
        if ((col < 0) | (col >= self.lengths[rows])).any():
            raise ValueError("value outside the support of its table")
        return self._code_bits[rows, col]

    def _dense_code_bits(self) -> np.ndarray:
        """(rows, longest row) code lengths; past a row's end, its upper escape's column
        plus one byte (with escapes) or infinity."""
        out = np.full((self.rows, int(self.lengths.max())), np.inf)
        for row, (start, length) in enumerate(zip(self.starts, self.lengths, strict=True)):
            freqs = np.maximum(self.freqs[start : start + length], 1).astype(np.float64)
            out[row, :length] = np.log2(freqs.sum() / freqs)
            if self.escapes:
                out[row, length - 1] += 8.0
                out[row, length:] = out[row, length - 1]
        return out

    def encode(self, values: np.ndarray, rows: np.ndarray) -> bytes:
        """Code ``values[i]`` with table ``rows[i]``.

        Parameters
        ----------
        values : ndarray of int, shape (m,)
        rows : ndarray of int, shape (m,), each in ``0 .. self.rows - 1``

        Returns
        -------
        bytes
            ``u32 number of words``, the range coder's 32-bit words, then the escapes.
        """
        values = np.asarray(values, dtype=np.int64).ravel()
        rows = np.asarray(rows, dtype=np.int64).ravel()
        symbols = values - self.offsets[rows]
        escaped = b""
        if self.escapes:
            top = self.lengths[rows] - 2  # last interior symbol + 1
            symbols = symbols + 1
            low = symbols < 1
            high = symbols > top
            extra = np.where(low, -symbols, np.where(high, symbols - top - 1, -1))
            symbols = np.where(low, 0, np.where(high, top + 1, symbols))
            escaped = pack_varints(extra[extra >= 0].astype(np.uint64))
        elif symbols.size and (symbols.min() < 0 or (symbols >= self.lengths[rows]).any()):
            raise ValueError("value outside the support of its table")
        order = self._row_order(rows)
        encoder = _constriction().stream.queue.RangeEncoder()
        sorted_rows = rows[order]
        sorted_symbols = symbols[order].astype(np.int32)
        bounds = np.flatnonzero(np.diff(sorted_rows)) + 1
        for seg_rows, seg in zip(
            np.split(sorted_rows, bounds), np.split(sorted_symbols, bounds), strict=True
        ):
            if seg.size:
                encoder.encode(seg, self._model(int(seg_rows[0])))
        words = encoder.get_compressed()
        return struct.pack("<I", words.size) + words.astype("<u4").tobytes() + escaped

    def decode(self, data: bytes, rows: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`encode` given the same ``rows``; returns int64 values."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if len(data) < 4:
            raise CorruptFileError("entropy-coded block is truncated")
        (n_words,) = struct.unpack_from("<I", data)
        end = 4 + 4 * n_words
        if end > len(data):
            raise CorruptFileError("entropy-coded block is truncated")
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise CorruptFileError("entropy table indexes are out of range")
        words = np.frombuffer(data, dtype="<u4", count=n_words, offset=4).astype(np.uint32)
        decoder = _constriction().stream.queue.RangeDecoder(words)
        order = self._row_order(rows)
        sorted_rows = rows[order]
        symbols = np.empty(rows.size, dtype=np.int64)
        bounds = np.flatnonzero(np.diff(sorted_rows)) + 1
        decoded = []
        for seg_rows in np.split(sorted_rows, bounds):
            if seg_rows.size:
                model = self._model(int(seg_rows[0]))
                try:
                    decoded.append(decoder.decode(model, seg_rows.size))
                except AssertionError:  # constriction: the words are not a valid code
                    raise CorruptFileError("entropy-coded block is damaged") from None
        if decoded:
            symbols[order] = np.concatenate(decoded)
        if self.escapes:
            top = self.lengths[rows] - 2
            low = symbols == 0
            high = symbols == top + 1
            n_extra = int(low.sum() + high.sum())
            extra, used = unpack_varints(data[end:], n_extra)
            if end + used != len(data):
                raise CorruptFileError("entropy-coded block has trailing or missing bytes")
            values = symbols - 1
            esc = np.flatnonzero(low | high)
            values[esc] = np.where(
                low[esc], -1 - extra.astype(np.int64), top[esc] + extra.astype(np.int64)
            )
        else:
            if end != len(data):
                raise CorruptFileError("entropy-coded block has trailing bytes")
            values = symbols
        return values + self.offsets[rows]


def pack_varints(values: np.ndarray) -> bytes:
    """LEB128 bytes of non-negative integers (7 bits per byte, high bit = more)."""
    values = np.asarray(values, dtype=np.uint64).ravel()
    if values.size == 0:
        return b""
    n_bytes = np.maximum(1, (_bit_length(values) + 6) // 7)
    out = np.empty(int(n_bytes.sum()), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(n_bytes)[:-1]])
    for k in range(int(n_bytes.max())):
        active = n_bytes > k
        chunk = ((values[active] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        more = (n_bytes[active] > k + 1).astype(np.uint8) << 7
        out[starts[active] + k] = chunk | more
    return out.tobytes()


def unpack_varints(data: bytes, count: int) -> tuple[np.ndarray, int]:
    """The first ``count`` LEB128 integers of ``data`` and the bytes they used."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64), 0
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size < count:
        raise CorruptFileError("escape values are truncated")
    ends = ends[:count]
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise CorruptFileError("escape value is too long")
    values = np.zeros(count, dtype=np.uint64)
    for k in range(int(lengths.max())):
        active = lengths > k
        part = (raw[starts[active] + k] & 0x7F).astype(np.uint64)
        values[active] |= part << np.uint64(7 * k)
    return values, int(ends[-1]) + 1


def _bit_length(values: np.ndarray) -> np.ndarray:
    bits = np.zeros(values.shape, dtype=np.int64)
    v = values.copy()
    while (v > 0).any():
        nz = v > 0
        bits[nz] += 1
        v >>= np.uint64(1)
    return bits


def count_table(counts: np.ndarray) -> np.ndarray:
    """Frequencies for a histogram sent in a stream: the counts themselves, each >= 1 so
    every symbol stays codable (integers: both ends build the same model)."""
    counts = np.maximum(np.asarray(counts, dtype=np.int64), 1)
    return counts if counts.size > 1 else np.append(counts, 1)


# ------------------------------------------------------------- factorized prior
class FactorizedPrior(nn.Module):
    """Learned univariate density per channel (Ballé et al. 2018, appendix 6.1).

    ``forward(z)`` returns the likelihood of ``z`` (+ uniform noise in training) under a
    flexible monotone CDF per channel; :meth:`update` freezes it into integer tables over
    the integers; :meth:`compress` / :meth:`decompress` code ``round(z)``.

    Parameters
    ----------
    channels : int
        Number of channels C of the latent (shape (n, C, h, w)).
    filters : tuple of int
        Hidden widths of the per-channel CDF network.
    init_scale : float
        Initial width of the densities (latent units).
    """

    table_freqs: Tensor
    table_offsets: Tensor
    table_lengths: Tensor

    def __init__(
        self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 8.0
    ) -> None:
        super().__init__()
        self.channels = channels
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(widths) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(widths) - 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(
                nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init))
            )
            self.biases.append(
                nn.Parameter(torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5))
            )
            if i < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        self.register_buffer("table_freqs", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("table_offsets", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("table_lengths", torch.zeros(0, dtype=torch.int32))
        self._coder: TableCoder | None = None

    def _logits_cdf(self, x: Tensor) -> Tensor:
        """Logit of the CDF at ``x`` of shape (C, 1, m); returns (C, 1, m)."""
        logits = x
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def forward(self, z: Tensor) -> Tensor:
        """Likelihood of ``z`` (n, C, h, w), same shape, each in (0, 1]."""
        n, c, h, w = z.shape
        values = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self._logits_cdf(values - 0.5)
        upper = self._logits_cdf(values + 0.5)
        sign = -torch.sign(lower + upper).detach()
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = lik.clamp_min(1e-9)
        return lik.reshape(c, n, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def update(self, support: int = 256) -> None:
        """Freeze the densities into integer tables over ``-support .. support``."""
        grid = torch.arange(-support, support + 1, dtype=torch.float32)
        x = grid.expand(self.channels, 1, -1)
        cdf_lo = torch.sigmoid(self._logits_cdf(x - 0.5)).squeeze(1).double().numpy()
        cdf_hi = torch.sigmoid(self._logits_cdf(x + 0.5)).squeeze(1).double().numpy()
        pmf = np.clip(cdf_hi - cdf_lo, 0, None)
        rows = []
        offsets, lengths = [], []
        for c in range(self.channels):
            cum = np.cumsum(pmf[c])
            total = cum[-1]
            lo = int(np.searchsorted(cum, TAIL_MASS / 2 * total))
            hi = int(np.searchsorted(cum, (1 - TAIL_MASS / 2) * total))
            hi = max(hi, lo)
            core = pmf[c, lo : hi + 1]
            tail_lo = cdf_lo[c, lo]
            tail_hi = 1 - cdf_hi[c, hi]
            rows.append(np.concatenate([[tail_lo], core, [tail_hi]]))
            offsets.append(lo - support)
            lengths.append(len(rows[-1]))
        freqs = np.concatenate([quantise_pmf(row[None])[0] for row in rows])
        self.table_freqs = torch.from_numpy(freqs.astype(np.int32))
        self.table_offsets = torch.tensor(offsets, dtype=torch.int32)
        self.table_lengths = torch.tensor(lengths, dtype=torch.int32)
        self._coder = None

    def coder(self) -> TableCoder:
        """The integer-table coder built from the stored tables."""
        if self._coder is None:
            self._coder = _stored_table_coder(self, self.channels, "FactorizedPrior")
        return self._coder

    def compress(self, z_int: np.ndarray) -> bytes:
        """Code integer latents ``z_int`` of shape (n, C, h, w)."""
        rows = np.broadcast_to(np.arange(self.channels)[None, :, None, None], z_int.shape)
        return self.coder().encode(z_int.ravel(), rows.ravel())

    def decompress(self, data: bytes, shape: tuple[int, int, int, int]) -> np.ndarray:
        """Inverse of :meth:`compress`: int64 array of ``shape`` (n, C, h, w)."""
        rows = np.broadcast_to(np.arange(self.channels)[None, :, None, None], shape)
        return self.coder().decode(data, rows.ravel()).reshape(shape)


# --------------------------------------------------------- Gaussian conditional
def default_scale_table(lo: float = 0.11, hi: float = 128.0, levels: int = 64) -> np.ndarray:
    """Log-spaced scales (standard deviations, latent units) of the Gaussian tables."""
    return np.exp(np.linspace(math.log(lo), math.log(hi), levels))


#: Values beyond +-this share one histogram bin in :meth:`ScaleConditional.index_offset`.
_SHIFT_VALUES = 256


class ScaleConditional(nn.Module):
    """Zero-mean Gaussian or Laplace tables over a fixed scale table (symbols =
    ``round((y - mean) / step)``).

    Training: :meth:`forward` returns the likelihood of ``y`` given ``mean`` and
    ``scale`` (continuous scale, lower-bounded).  Coding: each symbol uses the table of
    the scale-table entry nearest (in log space) to its predicted scale divided by the
    quantisation step; the tables (integers) and the index boundaries (float64) are
    buffers saved with the weights.

    Parameters
    ----------
    family : {"gaussian", "laplace"}
        ``scale`` is the standard deviation (Gaussian) or the mean absolute deviation
        (Laplace) of the continuous density before quantisation.
    scale_table : ndarray, optional
        Increasing scales; default :func:`default_scale_table`.
    """

    scale_table: Tensor
    scale_bounds: Tensor
    table_freqs: Tensor
    table_offsets: Tensor
    table_lengths: Tensor

    def __init__(self, family: str = "gaussian", scale_table: np.ndarray | None = None) -> None:
        super().__init__()
        if family not in ("gaussian", "laplace"):
            raise ValueError(f"family must be 'gaussian' or 'laplace', got {family!r}")
        self.family = family
        table = default_scale_table() if scale_table is None else np.asarray(scale_table)
        self.scale_min = float(table[0])
        self.register_buffer("scale_table", torch.from_numpy(table.astype(np.float64)))
        bounds = np.sqrt(table[:-1] * table[1:])
        self.register_buffer("scale_bounds", torch.from_numpy(bounds.astype(np.float64)))
        self.register_buffer("table_freqs", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("table_offsets", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("table_lengths", torch.zeros(0, dtype=torch.int32))
        self._coder: TableCoder | None = None

    def _cdf(self, x: Tensor, s: Tensor) -> Tensor:
        if self.family == "gaussian":
            return 0.5 * torch.erfc(-x / (s * math.sqrt(2)))
        return 0.5 + 0.5 * torch.sign(x) * (1 - torch.exp(-torch.abs(x) / s))

    def forward(self, y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
        """Likelihood of ``y`` (noisy or rounded) given ``mean`` and ``scale``,
        integrated over a unit bin; all tensors of the same shape."""
        s = scale.clamp_min(self.scale_min)
        v = torch.abs(y - mean)
        return (self._cdf(0.5 - v, s) - self._cdf(-0.5 - v, s)).clamp_min(1e-9)

    @torch.no_grad()
    def update(self) -> None:
        """Build the integer tables of every scale in the table."""
        scales = self.scale_table.numpy()
        if self.family == "gaussian":
            import scipy.special

            half = np.ceil(scales * -scipy.special.ndtri(TAIL_MASS / 2)).astype(np.int64) + 1
        else:
            half = np.ceil(scales * -math.log(TAIL_MASS)).astype(np.int64) + 1
        rows = []
        for s, k in zip(scales, half, strict=True):
            edges = torch.arange(-k - 0.5, k + 1.0, dtype=torch.float64)  # 2k + 2 bin edges
            cdf = self._cdf(edges, torch.tensor(s, dtype=torch.float64)).numpy()
            core = np.diff(cdf)
            rows.append(quantise_pmf(np.concatenate([[cdf[0]], core, [cdf[0]]])[None])[0])
        self.table_freqs = torch.from_numpy(np.concatenate(rows).astype(np.int32))
        self.table_offsets = torch.from_numpy((-half).astype(np.int32))
        self.table_lengths = torch.from_numpy((2 * half + 3).astype(np.int32))
        self._coder = None

    def coder(self) -> TableCoder:
        """The integer-table coder built from the stored tables."""
        if self._coder is None:
            self._coder = _stored_table_coder(self, self.scale_table.numel(), "ScaleConditional")
        return self._coder

    def index_offset(
        self, indexes: np.ndarray, values: np.ndarray, search: int = 32
    ) -> tuple[int, float]:
        """The shift ``d`` of the table indexes (``clip(indexes + d)``, i.e. scales
        multiplied by about ``1.118**d``) that codes ``values`` in the fewest bits, within
        ``-search .. search``, found by walking downhill from 0 (the cost is close to
        convex in ``d``), and those bits (:meth:`TableCoder.bits`).  Encoder side: it
        corrects, per subband and chunk, a scale prediction that is biased on data unlike
        the training data; the decoder applies the stored shift to its integer indexes, so
        no float reaches the decoder."""
        rows = self.scale_table.numel()
        # histogram of (value, index) pairs; values beyond +-_SHIFT_VALUES share a bin
        # (rare: they weigh on the choice as if they were that large)
        span = 2 * _SHIFT_VALUES + 1
        clipped = np.clip(np.ravel(values).astype(np.int64), -_SHIFT_VALUES, _SHIFT_VALUES)
        counts = np.bincount(
            (clipped + _SHIFT_VALUES) * rows + np.ravel(indexes), minlength=span * rows
        )
        present = np.flatnonzero(counts)
        pair_values, pair_indexes = np.divmod(present, rows)
        pair_values -= _SHIFT_VALUES
        weights = counts[present].astype(np.float64)
        coder = self.coder()
        costs: dict[int, float] = {}

        def cost(d: int) -> float:
            if d not in costs:
                shifted = np.clip(pair_indexes + d, 0, rows - 1)
                costs[d] = float(weights @ coder.bits(pair_values, shifted))
            return costs[d]

        best = 0
        for direction in (-1, 1):
            while abs(best + direction) <= search and cost(best + direction) < cost(best):
                best += direction
        return best, cost(best)

    def indexes(self, scale: Tensor, step: float = 1.0) -> np.ndarray:
        """Table index of each predicted ``scale`` (float64 tensor, latent units) for
        quantisation ``step``: int64 array of the same shape."""
        s = scale.double() / step
        return torch.bucketize(s, self.scale_bounds).numpy().astype(np.int64)


def _stored_table_coder(model: nn.Module, n_tables: int, name: str) -> TableCoder:
    """The :class:`TableCoder` of the integer tables stored in ``model``'s buffers."""
    lengths = model.get_buffer("table_lengths")
    if lengths.numel() != n_tables:
        raise RuntimeError(f"{name} tables are missing: call update()")
    return TableCoder(
        model.get_buffer("table_freqs").numpy(),
        model.get_buffer("table_offsets").numpy(),
        lengths.numpy(),
        escapes=True,
    )
