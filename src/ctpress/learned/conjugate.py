"""Conjugate rays of a circular scan: every ray is measured again half a turn later.

In a full rotation the fan-beam ray at source angle ``beta`` and fan angle ``gamma`` is
measured again at ``beta + pi - 2 gamma`` with fan angle ``-gamma`` (parallel beam: at
``theta + pi`` and the mirrored column).  A view that sparse-view coding leaves out is
therefore sampled, column by column, by the stored views half a turn away, at view
positions that fall between the stored views (offsets that vary with the column).  For
a column ``j`` the stored view ``m``, read at column ``column[j]``, is a sample of column
``j`` at the view position ``m - shift[j] + i * turn`` for every whole turn ``i``.

:class:`ConjugateRays` holds that table in integers (positions in 2**-16 views, columns in
2**-8 columns), so a decoder interpolates from it with integer arithmetic only
(:func:`conjugate_interpolation`), the same on every machine; the encoder computes it
from the geometry (:func:`conjugate_rays`) and stores it (:meth:`ConjugateRays.to_bytes`).
In cone beam the conjugate of an off-centre row is approximated by the same row.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptFileError
from ..scan import Geometry

#: Fixed-point unit of view positions.
VIEW_UNIT = 1 << 16
#: Fixed-point unit of columns.
COLUMN_UNIT = 1 << 8
#: Fewest views per turn, and most turns in a chunk, a table may describe.
MIN_TURN_VIEWS = 8
MAX_TURNS = 64
_HEAD = struct.Struct("<qI")


@dataclass(frozen=True)
class ConjugateRays:
    """Where the rays of each column were measured again (see the module docstring).

    ``shift`` (cols,) int64 in 2**-16 views; ``column`` (cols,) int64 in 2**-8 columns,
    -1 where the mirrored column is off the detector; ``turn``: views per turn in 2**-16
    views."""

    shift: np.ndarray
    column: np.ndarray
    turn: int

    def reversed_views(self) -> ConjugateRays:
        """The table of the same scan with its views in reverse order."""
        return ConjugateRays(-self.shift, self.column, self.turn)

    def flipped_columns(self) -> ConjugateRays:
        """The table of the same scan with its columns in reverse order."""
        last = (len(self.column) - 1) * COLUMN_UNIT
        column = self.column[::-1]
        return ConjugateRays(self.shift[::-1], np.where(column >= 0, last - column, -1), self.turn)

    def to_bytes(self) -> bytes:
        """``i64`` turn, ``u32`` length, then zlib of int32 little-endian values in byte
        planes (every value's lowest byte, then every value's second byte, ...): the
        second differences of ``shift`` (its first value and first difference as they
        are) and the first differences of ``column``."""
        shift_d = np.diff(self.shift, n=2, prepend=[0, 0])
        shift_d[0] = self.shift[0]
        if len(self.shift) > 1:
            shift_d[1] = self.shift[1] - self.shift[0]
        column_d = np.diff(self.column, prepend=0)
        payload = np.concatenate([shift_d, column_d])
        if np.abs(payload).max(initial=0) >= 2**31:
            raise ValueError("conjugate-ray table out of range")
        planes = payload.astype("<i4").view(np.uint8).reshape(-1, 4).T
        packed = zlib.compress(np.ascontiguousarray(planes).tobytes(), 9)
        return _HEAD.pack(self.turn, len(packed)) + packed

    @classmethod
    def from_bytes(cls, buf: bytes, cols: int, n_views: int) -> tuple[ConjugateRays, int]:
        """(the table, bytes read) of a chunk of ``n_views`` views and ``cols`` columns,
        every field checked before anything is computed from it."""
        if len(buf) < _HEAD.size:
            raise CorruptFileError("conjugate-ray table is truncated")
        turn, length = _HEAD.unpack_from(buf)
        end = _HEAD.size + length
        if end > len(buf) or not _turn_ok(turn, n_views):
            raise CorruptFileError("conjugate-ray table is damaged")
        inflate = zlib.decompressobj()
        try:
            raw = inflate.decompress(buf[_HEAD.size : end], 8 * cols + 1)
        except zlib.error as exc:
            raise CorruptFileError(f"conjugate-ray table is damaged ({exc})") from None
        if len(raw) != 8 * cols or not inflate.eof or inflate.unconsumed_tail:
            raise CorruptFileError("conjugate-ray table has the wrong size")
        planes = np.frombuffer(raw, dtype=np.uint8).reshape(4, 2 * cols)
        payload = np.ascontiguousarray(planes.T).view("<i4").ravel().astype(np.int64)
        shift = _undo_shift_differences(payload[:cols])
        column = np.cumsum(payload[cols:])
        limit = (MAX_TURNS + 2) * n_views * VIEW_UNIT
        if np.abs(shift).max(initial=0) > limit or np.any(
            (column != -1) & ((column < 0) | (column > (cols - 1) * COLUMN_UNIT))
        ):
            raise CorruptFileError("conjugate-ray table holds impossible values")
        return cls(shift, column, int(turn)), end


def _undo_shift_differences(d: np.ndarray) -> np.ndarray:
    """Inverse of the shift coding of :meth:`ConjugateRays.to_bytes`."""
    if len(d) < 2:
        return d.copy()
    first = np.cumsum(np.r_[d[1], d[2:]])  # first differences from index 1 on
    return np.r_[d[0], d[0] + np.cumsum(first)]


def _turn_ok(turn: int, n_views: int) -> bool:
    return MIN_TURN_VIEWS * VIEW_UNIT <= turn and n_views * VIEW_UNIT <= turn * MAX_TURNS


def conjugate_rays(
    geometry: Geometry | None, angles: np.ndarray | None, cols: int, handedness: int = 1
) -> ConjugateRays | None:
    """The table of a chunk of views at ``angles`` (radians) of a scan with ``geometry``
    and ``cols`` columns, or None where the scan has no usable conjugate rays (no
    geometry, helical, angles not evenly spaced, fewer than 8 or more than 16383 views
    per turn).
    ``handedness`` -1 mirrors the fan-angle convention (the encoder keeps whichever
    predicts the chunk better)."""
    if geometry is None or angles is None or len(angles) < 2 or geometry.kind == "helical":
        return None
    steps = np.diff(np.asarray(angles, dtype=np.float64))
    step = float(steps.mean())
    if step == 0 or np.abs(steps - step).max() > 1e-6 * abs(step) + 1e-9:
        return None
    turn = round(2 * math.pi / abs(step) * VIEW_UNIT)
    if not _turn_ok(turn, len(angles)) or turn >= 1 << 30:  # the table holds int32
        return None
    spacing = geometry.detector_spacing_mm[1]
    offset = geometry.detector_offset_mm[1]
    u = (np.arange(cols) - (cols - 1) / 2) * spacing + offset  # column centres, mm
    mirrored = (-u - offset) / spacing + (cols - 1) / 2  # column of -u
    gamma: np.ndarray
    if geometry.kind == "parallel":
        gamma = np.zeros(cols)
    else:
        sdd = geometry.source_detector_mm
        if not sdd:
            return None
        gamma = u / sdd if geometry.detector_shape == "cylindrical" else np.arctan(u / sdd)
    # to 2**-10 views, which compresses the table twice as well (0.001 view is plenty)
    shift = np.rint((math.pi - 2 * handedness * gamma) / step * 1024).astype(np.int64) << 6
    column = np.rint(mirrored * COLUMN_UNIT).astype(np.int64)
    column[(column < 0) | (column > (cols - 1) * COLUMN_UNIT)] = -1
    return ConjugateRays(shift, column, turn)


def _between_columns(left: np.ndarray, right: np.ndarray, f: np.ndarray | int) -> np.ndarray:
    """Values at ``f`` 256ths of the way from the ``left`` column to the ``right`` one
    (int64, rounded by ``+ 128 >> 8``; ``left`` itself where ``f`` is 0)."""
    mixed = (left * (COLUMN_UNIT - f) + right.astype(np.int64) * f + COLUMN_UNIT // 2) >> 8
    return np.where(np.asarray(f) > 0, mixed, left)


def best_conjugate_rays(
    geometry: Geometry | None,
    angles: np.ndarray | None,
    cols: int,
    score: Callable[[ConjugateRays], tuple[float, float]],
) -> ConjugateRays | None:
    """The encoder's choice: of the tables of both fan-angle conventions, the one whose
    ``score`` (its error, the error it must beat) gives the lower error, if that is below
    the error to beat; None otherwise, or when the chunk has no conjugate rays."""
    best, best_error = None, math.inf
    for handedness in (1, -1):
        rays = conjugate_rays(geometry, angles, cols, handedness)
        if rays is None:
            return None
        error, limit = score(rays)
        if error < min(limit, best_error):
            best, best_error = rays, error
    return best


def conjugate_interpolation(
    kept_values: np.ndarray, kept: np.ndarray, n_views: int, rays: ConjugateRays
) -> tuple[np.ndarray, np.ndarray]:
    """Every view of a chunk interpolated from the conjugate samples of its stored views.

    ``kept_values`` (len(kept), rows, cols) int64 at view indices ``kept``.  Returns
    (values (n_views, rows, cols) int64, linear between the two conjugate samples around
    each view, with rounding by exact integer division; distance (n_views, cols) int64
    from each view to its nearest conjugate sample in 2**-16 views, -1 where a view has
    no conjugate sample on both sides)."""
    n_kept, rows, cols = kept_values.shape
    values = np.zeros((n_views, rows, cols), dtype=np.int64)
    distance = np.full((n_views, cols), -1, dtype=np.int64)
    targets = np.arange(n_views, dtype=np.int64) * VIEW_UNIT
    for j in range(cols):
        c = int(rays.column[j])
        if c < 0:
            continue
        c0, f = divmod(c, COLUMN_UNIT)
        v = _between_columns(kept_values[:, :, c0], kept_values[:, :, min(c0 + 1, cols - 1)], f)
        base = kept * VIEW_UNIT - int(rays.shift[j])
        lo_turn = -((int(base.max()) + rays.turn - 1) // rays.turn) - 1  # covers [0, n)
        hi_turn = ((n_views - 1) * VIEW_UNIT - int(base.min())) // rays.turn + 1
        turns = np.arange(lo_turn, hi_turn + 1, dtype=np.int64)
        positions = (base[None, :] + turns[:, None] * rays.turn).ravel()
        order = np.argsort(positions, kind="stable")
        positions = positions[order]
        source = np.tile(np.arange(n_kept), len(turns))[order]
        after = np.searchsorted(positions, targets, side="left")
        ok = (after > 0) & (after < len(positions))
        after = np.clip(after, 1, len(positions) - 1)
        before = after - 1
        p0, p1 = positions[before], positions[after]
        exact = positions[np.minimum(after, len(positions) - 1)] == targets
        width = np.maximum(p1 - p0, 1)
        w0, w1 = (p1 - targets)[:, None], (targets - p0)[:, None]
        value = (v[source[before]] * w0 + v[source[after]] * w1 + width[:, None] // 2) // width[
            :, None
        ]
        value = np.where(exact[:, None], v[source[after]], value)
        values[:, :, j] = value
        distance[:, j] = np.where(ok, np.minimum(targets - p0, p1 - targets), -1)
        distance[exact, j] = 0
    return values, distance


def conjugate_view(
    decoded: np.ndarray, t: int, rays: ConjugateRays
) -> tuple[np.ndarray, np.ndarray]:
    """View ``t`` of a chunk interpolated from the conjugate samples among its views
    ``decoded[:t]`` (t, rows, cols) int64 (a predictive coder's causal prediction).

    Returns (prediction (rows, cols) int64, linear between the two consecutive decoded
    views whose conjugate samples lie around view ``t`` (the latest such pair), with
    ``+ 2**15 >> 16`` rounding; valid (cols,) bool, False where no such pair exists)."""
    rows, cols = decoded.shape[1:]
    prediction = np.zeros((rows, cols), dtype=np.int64)
    valid = np.zeros(cols, dtype=bool)
    if t < 2:
        return prediction, valid
    target = t * VIEW_UNIT
    m0 = np.full(cols, -1, dtype=np.int64)
    above = np.zeros(cols, dtype=np.int64)  # target - position of m0
    n_turns = (t * VIEW_UNIT) // rays.turn + 2
    for i in range(-n_turns, n_turns + 1):
        # the decoded views m with m U - shift + i turn <= target < (m + 1) U - shift + i turn
        first = np.floor_divide(target + rays.shift - i * rays.turn, VIEW_UNIT)
        ok = (first >= 0) & (first + 1 < t) & (first > m0) & (rays.column >= 0)
        m0 = np.where(ok, first, m0)
        above = np.where(ok, target - (first * VIEW_UNIT - rays.shift + i * rays.turn), above)
    valid = m0 >= 0
    j = np.flatnonzero(valid)
    c0 = rays.column[j] // COLUMN_UNIT
    c1 = np.minimum(c0 + 1, cols - 1)
    f = (rays.column[j] % COLUMN_UNIT)[:, None]
    pair = [  # the two decoded views, (valid columns, rows) each
        _between_columns(decoded[m, :, c0].astype(np.int64), decoded[m, :, c1], f)
        for m in (m0[j], m0[j] + 1)
    ]
    w1 = above[j][:, None]
    weighted = pair[0] * (VIEW_UNIT - w1) + pair[1] * w1 + VIEW_UNIT // 2
    prediction[:, j] = np.right_shift(weighted, 16).T
    return prediction, valid


#: Views of the chunk's second half-turn the encoder tries the tables on.
_PROBE_VIEWS = 8


def causal_conjugate_rays(
    values: np.ndarray, geometry: Geometry | None, angles: np.ndarray | None
) -> ConjugateRays | None:
    """The encoder's table for predictive coding of a chunk ``values`` (n, rows, cols)
    integers: of the two fan-angle conventions, the one whose :func:`conjugate_view` of a
    few views is closer to them, if it is closer than the previous view; None if neither
    is (or the chunk has no conjugate rays)."""
    n_views, _, cols = values.shape
    x = values.astype(np.int64)
    probes = np.unique(np.linspace(n_views // 2, n_views - 1, _PROBE_VIEWS).astype(int))

    def score(rays: ConjugateRays) -> tuple[float, float]:
        error, reference = 0.0, 0.0
        for t in probes:
            prediction, valid = conjugate_view(x, int(t), rays)
            if valid.any():
                error += float(np.abs(prediction - x[t])[:, valid].mean())
                reference += float(np.abs(x[t - 1] - x[t])[:, valid].mean())
        return error, reference

    return best_conjugate_rays(geometry, angles, cols, score)
