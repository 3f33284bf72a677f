"""Integer frequency tables and constriction's range coder (numpy only, no torch).

:class:`TableCoder` codes symbols with frequency tables (rows x alphabet) given as
integers, each symbol with the table row given for it, with optional escape symbols for
values outside a row's support.  constriction receives the integers as float64 arrays,
which its fixed-point quantiser turns into the same model on every machine.  The
residual layer and the learned entropy models (:mod:`~ctpress.learned.entropy`) share it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptFileError

#: Frequencies of every stored table sum to 2**PRECISION.
PRECISION = 20
#: Tail mass left outside a table's support (coded through escape symbols).
TAIL_MASS = 1e-9
_INT16_MAX = int(np.iinfo(np.int16).max)


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
        key = rows.astype(np.int16) if self.rows <= _INT16_MAX else rows
        return np.argsort(key, kind="stable")

    def bits(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Code length in bits of ``values[i]`` under table ``rows[i]``, float64 of the
        same shape; an escaped value counts its escape column plus one byte (longer
        escapes are rare and counted short).  Encoder side only: used to choose between
        tables and symbols, never to report sizes."""
        code_bits = self.code_bits()
        rows = np.asarray(rows, dtype=np.int64)
        col = np.asarray(values, dtype=np.int64) - self.offsets[rows]
        if self.escapes:
            col += 1
            below = col < 1
            inside = np.minimum(np.maximum(col, 0), code_bits.shape[1] - 1)  # np.clip is slower
            return code_bits[rows, inside] + 8.0 * below
        if ((col < 0) | (col >= self.lengths[rows])).any():
            raise ValueError("value outside the support of its table")
        return code_bits[rows, col]

    def code_bits(self) -> np.ndarray:
        """(rows, longest row) code lengths in bits of each table's columns; past a row's
        end, its upper escape's column plus one byte (with escapes) or infinity (cached;
        encoder side)."""
        if self._code_bits is None:
            self._code_bits = self._dense_code_bits()
        return self._code_bits

    def _dense_code_bits(self) -> np.ndarray:
        out = np.full((self.rows, int(self.lengths.max())), np.inf)
        for row, (start, length) in enumerate(zip(self.starts, self.lengths, strict=True)):
            freqs = np.maximum(self.freqs[start : start + length], 1).astype(np.float64)
            out[row, :length] = np.log2(freqs.sum() / freqs)
            if self.escapes:
                out[row, length - 1] += 8.0
                out[row, length:] = out[row, length - 1]
        return out

    def encode(self, values: np.ndarray, rows: np.ndarray) -> bytes:
        """Code ``values[i]`` with table ``rows[i]`` as one block.

        Parameters
        ----------
        values : ndarray of int, shape (m,)
        rows : ndarray of int, shape (m,), each in ``0 .. self.rows - 1``

        Returns
        -------
        bytes
            ``u32 number of words``, the range coder's 32-bit words, then the escapes
            (:class:`SymbolWriter` with one :meth:`~SymbolWriter.put`).
        """
        writer = SymbolWriter()
        writer.put(self, values, rows)
        return writer.finish()

    def decode(self, data: bytes, rows: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`encode` given the same ``rows``; returns int64 values."""
        reader = SymbolReader(data)
        values = reader.take(self, rows)
        reader.finish()
        return values

    def _symbols(self, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, bytes]:
        """The table columns of ``values`` under ``rows`` and their escapes (varints)."""
        symbols = values - self.offsets[rows]
        if not self.escapes:
            if symbols.size and (symbols.min() < 0 or (symbols >= self.lengths[rows]).any()):
                raise ValueError("value outside the support of its table")
            return symbols, b""
        top = self.lengths[rows] - 2  # last interior symbol + 1
        symbols = symbols + 1
        low = symbols < 1
        high = symbols > top
        extra = np.where(low, -symbols, np.where(high, symbols - top - 1, -1))
        symbols = np.where(low, 0, np.where(high, top + 1, symbols))
        return symbols, pack_varints(extra[extra >= 0].astype(np.uint64))

    def _segments(self, rows: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """The coding order of ``rows`` (grouped by table, stable) and its runs: (table,
        start, stop) in that order."""
        order = self._row_order(rows)
        if not rows.size:
            return order, []
        sorted_rows = rows[order]
        bounds = (np.flatnonzero(sorted_rows[1:] != sorted_rows[:-1]) + 1).tolist()
        starts, stops = [0, *bounds], [*bounds, rows.size]
        return order, list(zip(sorted_rows[starts].tolist(), starts, stops, strict=True))


class SymbolWriter:
    """One range-coded stream for many :meth:`put` calls, each with its own
    :class:`TableCoder`: a GOP's views share one stream, with none of the per-block
    costs (word count, the coder's final words) that separate blocks repeat.

    Stream: ``u32`` number of words, the range coder's 32-bit words, then the escapes of
    every call in call order (LEB128).  The decoder (:class:`SymbolReader`) makes the same
    calls in the same order, so it may choose each call's tables from what it decoded
    before.  :meth:`put_neighbours` codes small integers with a table chosen by the value
    the same slot had in the previous call with that key.

    Between :meth:`begin_image` and :meth:`flush` the calls are held, image by image, and
    written *across* the images: the k-th call of every image in image order, the k-th
    :meth:`put` calls of all images merged into one (their values concatenated), the
    :meth:`put_neighbours` calls one per image (each image's tables come from the one
    before).  The decoder then reads the k-th call's values of all the images at once.
    Every image of a batch makes the same sequence of calls.
    """

    def __init__(self) -> None:
        self._encoder = _constriction().stream.queue.RangeEncoder()
        self._escapes: list[bytes] = []
        self._previous: dict[str, np.ndarray] = {}
        self._held: list[list[_HeldCall]] = []

    def put(self, coder: TableCoder, values: np.ndarray, rows: np.ndarray) -> None:
        """Code ``values[i]`` with ``coder``'s table ``rows[i]`` (int arrays, one shape)."""
        values = np.asarray(values, dtype=np.int64).ravel()
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if self._held:
            self._held[-1].append(_HeldCall(coder, values, rows, merged=True))
        else:
            self._code(coder, values, rows)

    def put_neighbours(self, coder: NeighbourCoder, key: str, values: np.ndarray) -> None:
        """Code the small integers ``values`` (1-D) with ``coder``, each with the table of
        the value its slot had at the previous call with ``key``."""
        values = np.asarray(values, dtype=np.int64).ravel()
        rows = coder.rows(self._previous.get(key), values.size)
        self._previous[key] = values
        if self._held:
            self._held[-1].append(_HeldCall(coder.table, coder.symbols(values), rows, False))
        else:
            self._code(coder.table, coder.symbols(values), rows)

    def begin_image(self) -> None:
        """Hold the calls that follow as the next image of a batch (see the class
        docstring)."""
        self._held.append([])

    def flush(self) -> None:
        """Write the held images' calls across the images (see the class docstring)."""
        images, self._held = self._held, []
        if len({len(calls) for calls in images}) > 1:
            raise ValueError("the images of a batch made different sequences of calls")
        for calls in zip(*images, strict=True):
            if any((c.coder, c.merged) != (calls[0].coder, calls[0].merged) for c in calls):
                raise ValueError("the images of a batch made different sequences of calls")
            if calls[0].merged:
                values = np.concatenate([call.values for call in calls])
                self._code(calls[0].coder, values, np.concatenate([call.rows for call in calls]))
            else:
                for call in calls:
                    self._code(call.coder, call.values, call.rows)

    def _code(self, coder: TableCoder, values: np.ndarray, rows: np.ndarray) -> None:
        symbols, escaped = coder._symbols(values, rows)
        order, segments = coder._segments(rows)
        sorted_symbols = symbols[order].astype(np.int32)
        for table, start, stop in segments:
            self._encoder.encode(sorted_symbols[start:stop], coder._model(table))
        self._escapes.append(escaped)

    def previous(self, key: str) -> np.ndarray | None:
        """The values of the last :meth:`put_neighbours` with ``key`` (None before)."""
        return self._previous.get(key)

    def bits(self) -> int:
        """Bits written so far (whole 32-bit words: differences sum to the total; held
        calls count once flushed)."""
        return int(self._encoder.num_bits())

    def finish(self) -> bytes:
        """The stream (see the class docstring); held calls are flushed first."""
        self.flush()
        words = self._encoder.get_compressed()
        escapes = b"".join(self._escapes)
        return struct.pack("<I", words.size) + words.astype("<u4").tobytes() + escapes


@dataclass
class _HeldCall:
    """A call of :class:`SymbolWriter` held for :meth:`SymbolWriter.flush`."""

    coder: TableCoder
    values: np.ndarray
    rows: np.ndarray
    merged: bool


class SymbolReader:
    """Reads what :class:`SymbolWriter` wrote, call by call (see there)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 4:
            raise CorruptFileError("entropy-coded block is truncated")
        (n_words,) = struct.unpack_from("<I", data)
        self._escapes_at = 4 + 4 * n_words
        if self._escapes_at > len(data):
            raise CorruptFileError("entropy-coded block is truncated")
        words = np.frombuffer(data, dtype="<u4", count=n_words, offset=4).astype(np.uint32)
        self._decoder = _constriction().stream.queue.RangeDecoder(words)
        self._data = data
        self._previous: dict[str, np.ndarray] = {}

    def take(self, coder: TableCoder, rows: np.ndarray) -> np.ndarray:
        """The values of the matching :meth:`SymbolWriter.put` (int64, the shape of
        ``rows``, flattened)."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= coder.rows):
            raise CorruptFileError("entropy table indexes are out of range")
        order, segments = coder._segments(rows)
        decode, model = self._decoder.decode, coder._model
        try:
            decoded = [decode(model(table), stop - start) for table, start, stop in segments]
        except AssertionError:  # constriction: the words are not a valid code
            raise CorruptFileError("entropy-coded block is damaged") from None
        symbols = np.empty(rows.size, dtype=np.int64)
        if decoded:
            symbols[order] = np.concatenate(decoded)
        if not coder.escapes:
            return symbols + coder.offsets[rows]
        top = coder.lengths[rows] - 2
        low = symbols == 0
        high = symbols == top + 1
        escaped = memoryview(self._data)[self._escapes_at :]  # no copy of the stream
        extra, used = unpack_varints(escaped, int(low.sum() + high.sum()))
        self._escapes_at += used
        values = symbols - 1
        esc = np.flatnonzero(low | high)
        values[esc] = np.where(
            low[esc], -1 - extra.astype(np.int64), top[esc] + extra.astype(np.int64)
        )
        return values + coder.offsets[rows]

    def take_neighbours(self, coder: NeighbourCoder, key: str, count: int) -> np.ndarray:
        """The ``count`` values of the matching :meth:`SymbolWriter.put_neighbours`."""
        symbols = self.take(coder.table, coder.rows(self._previous.get(key), count))
        values = coder.values(symbols)
        self._previous[key] = values
        return values

    def finish(self) -> None:
        """Check that every escape byte was used (what follows belongs to no call)."""
        if self._escapes_at != len(self._data):
            raise CorruptFileError("entropy-coded block has trailing or missing bytes")


class NeighbourCoder:
    """Small integers ``lo .. hi`` (and optionally one ``special`` value outside them,
    e.g. a zeroed band) with fixed integer tables: one per value of the same slot in the
    previous call, peaked there (frequencies halve with each step away), and one for a
    slot with no previous value, peaked at ``first`` and halving every 4 steps.  Built
    from integers alone: every machine codes with the same tables."""

    def __init__(self, lo: int, hi: int, first: int, special: int | None = None) -> None:
        self.lo, self.hi, self.special = lo, hi, special
        self.n = hi - lo + 1 + (special is not None)
        values = self.values(np.arange(self.n))
        rows = [self._row(values, values == v, 1) for v in values]
        rows.append(self._row(values, values == first, 4))
        self.table = TableCoder(
            np.concatenate(rows), np.zeros(self.n + 1), np.full(self.n + 1, self.n), escapes=False
        )

    def _row(self, values: np.ndarray, peak: np.ndarray, per_halving: int) -> np.ndarray:
        """Integer frequencies peaked at ``values[peak]``."""
        if self.special is not None and peak[0]:  # after a special value: mostly special
            distance = np.where(values == self.special, 0, 2 + np.abs(values))
        else:
            centre = int(values[peak][0])
            distance = np.abs(values - centre) // per_halving
            if self.special is not None:  # the special value stays likely
                distance = np.where(values == self.special, 2, distance)
        return np.left_shift(1, np.maximum(0, 14 - distance)).astype(np.int64)

    def symbols(self, values: np.ndarray) -> np.ndarray:
        """Table columns of ``values``."""
        if self.special is None:
            return values - self.lo
        return np.where(values == self.special, 0, values - self.lo + 1)

    def values(self, symbols: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`symbols`."""
        symbols = np.asarray(symbols, dtype=np.int64)
        if self.special is None:
            return symbols + self.lo
        return np.where(symbols == 0, self.special, symbols + self.lo - 1)

    def bits(self, value: int, previous: int | None) -> float:
        """Code length in bits of ``value`` after ``previous`` (None: no previous value)."""
        row = self.n if previous is None else self._symbol(previous)
        return float(self.table.code_bits()[row, self._symbol(value)])

    def _symbol(self, value: int) -> int:
        """:meth:`symbols` of one value (a table column; ValueError outside the coder)."""
        if value == self.special:
            return 0
        if not self.lo <= value <= self.hi:
            raise ValueError(f"{value} is outside {self.lo}..{self.hi}")
        return value - self.lo + (self.special is not None)

    def rows(self, previous: np.ndarray | None, count: int) -> np.ndarray:
        """The table of each of ``count`` slots given their ``previous`` values."""
        if previous is None or previous.size != count:
            return np.full(count, self.n, dtype=np.int64)
        return self.symbols(previous)


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


def unpack_varints(data: bytes | memoryview, count: int) -> tuple[np.ndarray, int]:
    """The first ``count`` LEB128 integers of ``data`` and the bytes they used."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64), 0
    raw = np.frombuffer(data, dtype=np.uint8)[: 10 * count]  # at most 10 bytes each
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
