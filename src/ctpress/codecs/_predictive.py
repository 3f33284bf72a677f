"""The closed-loop predictive coder of :mod:`ctpress.codecs.convlstm`: one view at a time,
one pixel at a time, in integer arithmetic (numba-compiled).

Each pixel of view t (raster order) is predicted from values the decoder already has:
its causal neighbours in view t (N, W, NW, NE), the previous decoded view T and, when
given, an external prediction L of the whole view (the ConvLSTM's, computed from the
previous views).  Sub-predictors (in units of 1/8):

- spatial: MED (LOCO-I), N + W - NW, W + NE - N, (N + W)/2 + (NE - NW)/4;
- previous view: T; T + (W - T_W), T + (N - T_N), T + mean of the four neighbours' changes,
  the 3 x 3 mean S of T and S + the neighbours' mean deviation from S, and T moved by one
  column either way (T_W + (W - T_WW), T_E + (W - T));
- learned: L, and L corrected by the neighbours as for T;
- conjugate: C, the view as measured again half a turn earlier
  (:func:`ctpress.learned.conjugate.conjugate_view`), and C corrected by the neighbours
  as for T.

They are blended with weights inversely proportional to each one's recent absolute
error (at N, W, NW, NE of this view and at the same pixel of the previous view), as in
JPEG XL's self-correcting predictor; an NLMS stage (weights adapted along the chunk)
corrects the blend by a linear combination of the sub-predictors' deviations from it, as
in cascaded lossless audio coders; a per-context bias is cancelled (LOCO-I).  The
residual is quantised (step ``2 near + 1``: lossless at ``near = 0``, every value within
``near`` otherwise) and binarised (zero, sign, Exp-Golomb class in unary, two top
mantissa bits, raw low bits) into an adaptive binary range coder (LZMA's carry-less
coder; probabilities mixed from a fast and a slow counter) whose contexts are the
quantised activity (recent errors around the pixel), mixed for the zero flag and the
class with a model of the prediction's level (its octave: the noise of counts grows with
it), and, for the sign, the fractional part of the prediction.  From stream version 2 each
counter also counts its updates and adapts at the rate 1 / (n + 1.5) of its n-th update
until that falls to its floor (2**-7 fast, 2**-9 slow): a context learns its statistics
from its first few bits, which pays most in small chunks (version 1: fixed rates 2**-6
and 2**-8).

Every quantity is an integer, every operation exact (no floating point): encoder and
decoder compute the same predictions on every machine by construction.  The encoder
and the decoder are one function (:func:`code_view`, ``encoding`` true or false), so
they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

#: Sub-predictor groups (bits of the ``groups`` mask; 16 is the codec's stream flag).
SPATIAL, PREVIOUS, PREVIOUS_PLUS, LEARNED, CONJUGATE = 1, 2, 4, 8, 32
#: Sub-predictors (index: group): 0-3 spatial, 4 previous view, 5-7 and 12-15 previous view
#: with neighbours, 8-11 learned, 16-19 conjugate.
N_PREDICTORS = 20
_GROUP_OF = np.array(
    [1, 1, 1, 1, 2, 4, 4, 4, 8, 8, 8, 8, 4, 4, 4, 4, 32, 32, 32, 32], dtype=np.int64
)
#: Activity contexts (half-octaves of the recent error).
N_CONTEXTS = 48
#: Exp-Golomb classes coded in unary (magnitudes below 2**MAX_CLASS).
MAX_CLASS = 24
#: Probability precision of the range coder (bits) and of the counters (16 bits).
_PROB_BITS = 12
_TOP = 1 << 24
_BIAS_LIMIT = 256
#: Blend weight numerator (weights are 2**28 / (error + 1)).
_WEIGHT_ONE = 1 << 28
#: NLMS step (2**-_MIXER_SHIFT), regulariser of its input power and bound of its weights.
_MIXER_SHIFT, _MIXER_POWER, _MIXER_LIMIT = 7, 64, 1 << 18
#: Adaptation shifts of the fast and the slow probability counter (stream version 1).
_FAST_SHIFT, _SLOW_SHIFT = 6, 8
#: Version 2: the rate of a counter's n-th update, 2**16 / (n + 1.5), and its floors
#: (units of 2**-16) for the fast and the slow counter; the update count saturates.
_RATE = np.array([(2 << 16) // (2 * n + 3) for n in range(1024)], dtype=np.int64)
_FAST_FLOOR, _SLOW_FLOOR, _MAX_COUNT = 1 << 9, 1 << 7, 1023
#: Bytes the range coder appends when it is flushed.
FLUSH_BYTES = 5


@dataclass
class CoderState:
    """The adaptive state of one chunk: probability counters, bias tables, the blend's
    error memory, and the range coder (encoder: output buffer; decoder: input)."""

    probs: np.ndarray  # (n_bits, 2) uint16 counters (fast, slow): probability of a 0
    # (version 2: (n_bits, 3), the third column the number of updates)
    bias: np.ndarray  # (N_CONTEXTS, 2) int64: sum and count of prediction errors
    errors: np.ndarray  # (2, N_PREDICTORS + 1, rows + 2, cols + 2) int64: view t, t-1
    mixer: np.ndarray  # (N_PREDICTORS,) int64: NLMS weights on the blend (units of 2**-16)
    coder: np.ndarray  # int64 [low, range, cache, cache_size, pos, code, overrun]
    buffer: np.ndarray  # uint8

    @classmethod
    def new(
        cls, rows: int, cols: int, buffer: np.ndarray, encoding: bool, counted: bool = True
    ) -> CoderState:
        """A fresh state; ``counted`` false gives stream version 1's fixed rates."""
        probs = np.full((_N_BITS, 3 if counted else 2), 1 << 15, dtype=np.uint16)
        probs[:, 2:] = 0
        errors = np.zeros((2, N_PREDICTORS + 1, rows + 2, cols + 2), dtype=np.int64)
        coder = np.array([0, 0xFFFFFFFF, 0, 1, 0, 0, 0], dtype=np.int64)
        mixer = np.zeros(N_PREDICTORS, dtype=np.int64)
        state = cls(probs, np.zeros((N_CONTEXTS, 2), np.int64), errors, mixer, coder, buffer)
        if not encoding:
            _start_decoder(coder, buffer)
        return state


# layout of the probability table: zero flag, sign, unary class, mantissa tree
# (context N_CONTEXTS codes the corrections of the per-value bound; _ESCAPE its flags)
_TABLES = N_CONTEXTS + 1
_ZERO = 0
_SIGN = _ZERO + _TABLES
_CLASS = _SIGN + _TABLES * 8
_MANTISSA = _CLASS + _TABLES * (MAX_CLASS + 1)
_ESCAPE = _MANTISSA + _TABLES * (MAX_CLASS + 1) * 3
#: The level model (the octave of the prediction) repeats the zero and class tables.
_LEVEL = _ESCAPE + N_CONTEXTS
_N_BITS = _LEVEL + _CLASS + _TABLES * (MAX_CLASS + 1)


# ---------------------------------------------------------------- range coder
@numba.njit(cache=True, nogil=True)
def _shift_low(c: np.ndarray, out: np.ndarray) -> None:
    low = c[0]
    if low < 0xFF000000 or low >= (1 << 32):
        carry = low >> 32
        temp = c[2]
        while True:
            pos = c[4]
            if pos < out.size:
                out[pos] = (temp + carry) & 0xFF
            else:
                c[6] = 1  # out of space: the caller retries with a larger buffer
            c[4] = pos + 1
            temp = 0xFF
            c[3] -= 1
            if c[3] == 0:
                break
        c[2] = (low >> 24) & 0xFF
    c[3] += 1
    c[0] = (low & 0x00FFFFFF) << 8


@numba.njit(cache=True, nogil=True)
def _next_byte(c: np.ndarray, data: np.ndarray) -> int:
    pos = c[4]
    c[4] = pos + 1
    if pos < data.size:
        return int(data[pos])
    c[6] += 1  # read past the end (a damaged stream)
    return 0


def _start_decoder(c: np.ndarray, data: np.ndarray) -> None:
    for _ in range(FLUSH_BYTES):
        c[5] = ((c[5] << 8) | _next_byte(c, data)) & 0xFFFFFFFFFF


@numba.njit(cache=True, nogil=True)
def _code_bit(
    encoding: bool, bit: int, probs: np.ndarray, i: int, c: np.ndarray, buf: np.ndarray,
    j: int = -1,
) -> int:  # fmt: skip
    """Code one bit with the adaptive probability ``probs[i]``, mixed (averaged) with that
    of a second model ``probs[j]`` when ``j >= 0``; both adapt; returns the bit."""
    p16 = (int(probs[i, 0]) + int(probs[i, 1])) >> 1
    if j >= 0:
        p16 = (p16 + ((int(probs[j, 0]) + int(probs[j, 1])) >> 1)) >> 1
    p0 = min(max(p16 >> (16 - _PROB_BITS), 16), (1 << _PROB_BITS) - 16)
    bound = (c[1] >> _PROB_BITS) * p0
    if encoding:
        if bit == 0:
            c[1] = bound
        else:
            c[0] += bound
            c[1] -= bound
        while c[1] < _TOP:
            c[1] <<= 8
            _shift_low(c, buf)
    else:
        if c[5] < bound:
            c[1] = bound
            bit = 0
        else:
            c[5] -= bound
            c[1] -= bound
            bit = 1
        while c[1] < _TOP:
            c[1] <<= 8
            c[5] = ((c[5] << 8) | _next_byte(c, buf)) & 0xFFFFFFFF
    _adapt(probs, i, bit)
    if j >= 0:
        _adapt(probs, j, bit)
    return bit


@numba.njit(cache=True, nogil=True)
def _adapt(probs: np.ndarray, i: int, bit: int) -> None:
    """Move the two counters of ``probs[i]`` (probability of a 0) towards ``bit``: at
    fixed rates, or with an update count (a third column) at the count's rate."""
    fast, slow = int(probs[i, 0]), int(probs[i, 1])
    if probs.shape[1] == 3:
        n = int(probs[i, 2])
        rate = int(_RATE[n])
        fast_rate, slow_rate = max(rate, _FAST_FLOOR), max(rate, _SLOW_FLOOR)
        if bit == 0:
            probs[i, 0] = fast + (((65536 - fast) * fast_rate) >> 16)
            probs[i, 1] = slow + (((65536 - slow) * slow_rate) >> 16)
        else:
            probs[i, 0] = fast - ((fast * fast_rate) >> 16)
            probs[i, 1] = slow - ((slow * slow_rate) >> 16)
        probs[i, 2] = min(n + 1, _MAX_COUNT)
    elif bit == 0:
        probs[i, 0] = fast + ((65536 - fast) >> _FAST_SHIFT)
        probs[i, 1] = slow + ((65536 - slow) >> _SLOW_SHIFT)
    else:
        probs[i, 0] = fast - (fast >> _FAST_SHIFT)
        probs[i, 1] = slow - (slow >> _SLOW_SHIFT)


@numba.njit(cache=True, nogil=True)
def _code_raw(encoding: bool, value: int, n_bits: int, c: np.ndarray, buf: np.ndarray) -> int:
    """Code the ``n_bits`` low bits of ``value`` at probability 1/2 (most significant first)."""
    result = 0
    for j in range(n_bits - 1, -1, -1):
        c[1] >>= 1
        if encoding:
            if (value >> j) & 1:
                c[0] += c[1]
        else:
            bit = 0
            if c[5] >= c[1]:
                c[5] -= c[1]
                bit = 1
            result |= bit << j
        while c[1] < _TOP:
            c[1] <<= 8
            if encoding:
                _shift_low(c, buf)
            else:
                c[5] = ((c[5] << 8) | _next_byte(c, buf)) & 0xFFFFFFFF
    return value if encoding else result


@numba.njit(cache=True, nogil=True)
def flush(c: np.ndarray, buf: np.ndarray) -> int:
    """Flush the encoder; returns the number of bytes written (or -1 if it ran out of space)."""
    for _ in range(FLUSH_BYTES):
        _shift_low(c, buf)
    return -1 if c[6] else c[4]


@numba.njit(cache=True, nogil=True)
def _code_residual(encoding: bool, q: int, ctx: int, sign_ctx: int, level: int,
                   probs: np.ndarray, c: np.ndarray, buf: np.ndarray) -> int:  # fmt: skip
    """Code the signed quantised residual ``q``: zero flag, sign, Exp-Golomb class of
    |q| in unary, two adaptive mantissa bits, raw low bits.  The zero flag and the class
    mix the activity context ``ctx`` with the level context ``level``."""
    zero = _LEVEL + _ZERO + level
    if _code_bit(encoding, 1 if q == 0 else 0, probs, _ZERO + ctx, c, buf, zero):
        return 0
    negative = _code_bit(encoding, 1 if q < 0 else 0, probs, _SIGN + sign_ctx, c, buf)
    m = abs(q)  # >= 1; m = 2**k + rest
    k = 0
    if encoding:
        while (m >> (k + 1)) != 0:
            k += 1
    n = 0
    base = _CLASS + ctx * (MAX_CLASS + 1)
    level_base = _LEVEL + _CLASS + level * (MAX_CLASS + 1)
    while n < MAX_CLASS:
        more = _code_bit(encoding, 1 if n < k else 0, probs, base + n, c, buf, level_base + n)
        if not more:
            break
        n += 1
    k = n
    rest = m - (1 << k) if encoding else 0
    tree = _MANTISSA + (ctx * (MAX_CLASS + 1) + k) * 3
    top = min(k, 2)
    node = 0
    value = 0
    for j in range(top):
        bit = _code_bit(encoding, (rest >> (k - 1 - j)) & 1, probs, tree + node, c, buf)
        value = (value << 1) | bit
        node = 1 + bit if j == 0 else node
    low = _code_raw(encoding, rest, k - top, c, buf)
    if not encoding:
        m = (1 << k) + (value << (k - top)) + low
    return -m if negative else m


# ---------------------------------------------------------------- prediction
@numba.njit(cache=True, nogil=True, inline="always")
def _med(n: int, w: int, nw: int) -> int:
    if nw >= max(n, w):
        return min(n, w)
    if nw <= min(n, w):
        return max(n, w)
    return n + w - nw


@numba.njit(cache=True, nogil=True)
def _neighbours(view: np.ndarray, r: int, col: int, first: int) -> tuple[int, int, int, int]:
    """(N, W, NW, NE) of (r, col) in ``view`` with the border rules: no row above -> the
    left value (or ``first`` at the first pixel); no column left -> the value above."""
    cols = view.shape[1]
    if r == 0:
        w = int(view[0, col - 1]) if col > 0 else first
        return w, w, w, w
    n = int(view[r - 1, col])
    w = int(view[r, col - 1]) if col > 0 else n
    nw = int(view[r - 1, col - 1]) if col > 0 else n
    ne = int(view[r - 1, col + 1]) if col + 1 < cols else n
    return n, w, nw, ne


@numba.njit(cache=True, nogil=True)
def code_view(encoding: bool, view: np.ndarray, previous: np.ndarray, learned: np.ndarray,
              conjugate: np.ndarray, groups: int, maxval: int, near: int, allowed: np.ndarray,
              probs: np.ndarray, bias: np.ndarray, errors: np.ndarray, mixer: np.ndarray,
              c: np.ndarray, buf: np.ndarray, trace: np.ndarray) -> None:  # fmt: skip
    """Code one view (rows, cols) int64 in place: encode it (``encoding``; ``view`` is
    replaced by its reconstruction, equal to it when ``near`` is 0) or decode into it.

    ``previous``: the previous decoded view (rows, cols) int64, or an empty array for the
    first view of a chunk; ``learned``: the external prediction of this view in units of
    1/8 (rows, cols) int64, or empty; ``conjugate``: the conjugate-ray prediction of this
    view (rows, cols) int64, or empty.  ``groups``: sub-predictor groups in use (bit mask);
    ``maxval``: largest value; ``near``: the error bound (step ``2 near + 1``), or with
    ``allowed`` (int64 (maxval + 1,), the error each value may take; empty otherwise) the
    bound of each pixel: ``allowed[prediction]``, and where a value of the quantisation
    bin may allow less (``allowed`` is unimodal, so the bin's ends tell), a flag and, if
    set, the exact correction.
    ``errors[0]`` holds this view's error memory, ``errors[1]`` the previous view's.
    ``trace``: (rows, cols, :data:`N_TRACE`) int64 to receive each pixel's coder state (see
    :data:`TRACE_FIELDS`; for studies), or empty."""
    rows, cols = view.shape
    has_allowed = allowed.size > 0
    has_previous = previous.size > 0
    has_learned = learned.size > 0
    has_conjugate = conjugate.size > 0
    use = np.zeros(N_PREDICTORS, dtype=np.bool_)
    for k in range(N_PREDICTORS):
        group = _GROUP_OF[k]
        use[k] = (groups & group) != 0
        if group != SPATIAL and not has_previous:
            use[k] = False
        if group == LEARNED and not has_learned:
            use[k] = False
        if group == CONJUGATE and not has_conjugate:
            use[k] = False
    if not use.any():
        use[0] = True
    cur_err = errors[0]
    old_err = errors[1]
    cur_err[:] = 0
    p = np.zeros(N_PREDICTORS, dtype=np.int64)
    first = int(previous[0, 0]) if has_previous else (maxval + 1) // 2
    smooth = _box3(previous) if has_previous else previous
    for r in range(rows):
        er = r + 1  # row of the error memory (row 0 is the border)
        # the errors "above" the first row: the previous view's first row
        above, ar = (old_err, 1) if r == 0 and has_previous else (cur_err, er - 1)
        for col in range(cols):
            ec = col + 1
            n, w, nw, ne = _neighbours(view, r, col, first)
            # sub-predictors, units of 1/8
            p[0] = 8 * _med(n, w, nw)
            p[1] = 8 * (n + w - nw)
            p[2] = 8 * (w + ne - n)
            p[3] = 4 * (n + w) + 2 * (ne - nw)
            if has_previous:
                first_t = int(previous[0, 0])
                tn, tw, tnw, tne = _neighbours(previous, r, col, first_t)
                t = int(previous[r, col])
                p[4] = 8 * t
                p[5] = 8 * (t + w - tw)
                p[6] = 8 * (t + n - tn)
                p[7] = 8 * t + 2 * ((n - tn) + (w - tw) + (ne - tne) + (nw - tnw))
                sv = int(smooth[r, col])
                sn, sw, snw, sne = _full_neighbours(smooth, r, col)
                p[12] = sv
                p[13] = sv + ((8 * n - sn) + (8 * w - sw) + (8 * ne - sne) + (8 * nw - snw)) // 4
                # the previous view moved by one column either way
                te = int(previous[r, min(col + 1, cols - 1)])
                tww = int(previous[r, max(col - 2, 0)])
                p[14] = 8 * (tw + w - tww)
                p[15] = 8 * (te + w - t)
                if has_learned:
                    lv = int(learned[r, col])
                    ln, lw, lnw, lne = _full_neighbours(learned, r, col)
                    p[8] = lv
                    p[9] = lv + 8 * w - lw
                    p[10] = lv + 8 * n - ln
                    p[11] = (
                        lv + ((8 * n - ln) + (8 * w - lw) + (8 * ne - lne) + (8 * nw - lnw)) // 4
                    )
            if has_conjugate:
                cv = int(conjugate[r, col])
                cn, cw, cnw, cne = _full_neighbours(conjugate, r, col)
                p[16] = 8 * cv
                p[17] = 8 * (cv + w - cw)
                p[18] = 8 * (cv + n - cn)
                p[19] = 8 * cv + 2 * ((n - cn) + (w - cw) + (ne - cne) + (nw - cnw))
            # blend: weights inversely proportional to recent errors
            total = 0
            acc = 0
            for k in range(N_PREDICTORS):
                if not use[k]:
                    continue
                e = (above[k, ar, ec] + cur_err[k, er, ec - 1] + above[k, ar, ec - 1]
                     + above[k, ar, ec + 1] + old_err[k, er, ec])  # fmt: skip
                weight = _WEIGHT_ONE // (e + 1)
                total += weight
                acc += weight * p[k]
            blend8 = (acc + total // 2) // total
            # NLMS stage: a learned-online linear correction from the sub-predictors'
            # deviations from the blend (weights carried along the chunk)
            dot = 0
            power = _MIXER_POWER
            for k in range(N_PREDICTORS):
                if use[k]:
                    u = p[k] - blend8
                    dot += mixer[k] * u
                    power += u * u
            pred8 = blend8 + (dot >> 16)
            # context: the blend's recent errors
            f = N_PREDICTORS
            activity = (
                2 * (above[f, ar, ec] + cur_err[f, er, ec - 1])
                + above[f, ar, ec - 1]
                + above[f, ar, ec + 1]
                + old_err[f, er - 1 : er + 2, ec - 1 : ec + 2].sum()
            )
            if has_allowed:  # the bound of this pixel, from the blend's prediction
                bound = int(allowed[min(max((pred8 + 4) >> 3, 0), maxval)])
            else:
                bound = near
            step = 2 * bound + 1
            ctx = _context((16 * activity) // step)  # the activity in steps
            count = bias[ctx, 1]
            corrected = pred8 + (bias[ctx, 0] // count if count > 0 else 0)
            corrected = min(max(corrected, 0), 8 * maxval)
            guess = (corrected + 4) >> 3
            sign_ctx = ctx * 8 + (corrected - 8 * guess + 4)
            level = _octave(guess)
            x = int(view[r, col]) if encoding else 0
            if encoding:
                residual = x - guess
                q = (abs(residual) + bound) // step
                q = -q if residual < 0 else q
                _code_residual(True, q, ctx, sign_ctx, level, probs, c, buf)
            else:
                q = _code_residual(False, 0, ctx, sign_ctx, level, probs, c, buf)
            value = min(max(guess + q * step, 0), maxval)
            if has_allowed and bound > 0:
                lo, hi = max(value - bound, 0), min(value + bound, maxval)
                if min(allowed[lo], allowed[hi]) < bound:  # the bin may hold a stricter value
                    miss = 1 if encoding and abs(value - x) > allowed[x] else 0
                    if _code_bit(encoding, miss, probs, _ESCAPE + ctx, c, buf):
                        fix = x - value if encoding else 0
                        value += _code_residual(
                            encoding, fix, N_CONTEXTS, N_CONTEXTS * 8, level, probs, c, buf
                        )
                        value = min(max(value, 0), maxval)
            view[r, col] = value
            if trace.size > 0:
                _trace_pixel(trace[r, col], p, use, pred8, blend8, corrected, guess, ctx, activity,
                             above[f, ar, ec - 1 : ec + 2], cur_err[f, er, ec - 1],
                             old_err[f, er, ec])  # fmt: skip
            # update the error memory and the bias table
            v8 = 8 * value
            for k in range(N_PREDICTORS):
                if use[k]:
                    cur_err[k, er, ec] = min(abs(v8 - p[k]), 1 << 24)
            cur_err[f, er, ec] = min(abs(v8 - pred8), 1 << 24)
            miss8 = v8 - pred8
            for k in range(N_PREDICTORS):
                if use[k]:
                    push = (miss8 * (p[k] - blend8)) << (16 - _MIXER_SHIFT)
                    move = (abs(push) + power // 2) // power  # rounded symmetrically
                    weight = mixer[k] + (move if push >= 0 else -move)
                    mixer[k] = min(max(weight, -_MIXER_LIMIT), _MIXER_LIMIT)
            bias[ctx, 0] += v8 - pred8
            bias[ctx, 1] += 1
            if bias[ctx, 1] >= _BIAS_LIMIT:
                bias[ctx, 0] = bias[ctx, 0] // 2
                bias[ctx, 1] = bias[ctx, 1] // 2
    errors[1][:] = cur_err


#: What :func:`code_view` writes per pixel into ``trace`` (units of 1/8 unless stated).
TRACE_FIELDS = (
    "prediction", "activity", "error_n", "error_w", "error_nw", "error_ne", "error_t",
    "guess (values)", "spread of the sub-predictors", "bias correction", "context",
    "blend minus prediction",
)  # fmt: skip
N_TRACE = len(TRACE_FIELDS)


@numba.njit(cache=True, nogil=True)
def _trace_pixel(out: np.ndarray, p: np.ndarray, use: np.ndarray, pred8: int, blend8: int,
                 corrected: int, guess: int, ctx: int, activity: int, above: np.ndarray,
                 error_w: int, error_t: int) -> None:  # fmt: skip
    """One pixel's :data:`TRACE_FIELDS` (``above``: the blend's errors at NW, N, NE)."""
    low, high = 1 << 40, -(1 << 40)
    for k in range(N_PREDICTORS):
        if use[k]:
            low, high = min(low, p[k]), max(high, p[k])
    out[0], out[1], out[2], out[3] = pred8, activity, above[1], error_w
    out[4], out[5], out[6], out[7] = above[0], above[2], error_t, guess
    out[8], out[9], out[10], out[11] = high - low, corrected - pred8, ctx, blend8 - pred8


@numba.njit(cache=True, nogil=True)
def _full_neighbours(values: np.ndarray, r: int, col: int) -> tuple[int, int, int, int]:
    """(N, W, NW, NE) of a prediction known everywhere (learned, smoothed previous view)
    with the coder's border rules."""
    return _neighbours(values, r, col, int(values[r, col]))


@numba.njit(cache=True, nogil=True)
def _box3(view: np.ndarray) -> np.ndarray:
    """Mean of the 3 x 3 neighbourhood (borders replicated), units of 1/8, floored."""
    rows, cols = view.shape
    out = np.empty((rows, cols), dtype=np.int64)
    for r in range(rows):
        for col in range(cols):
            total = 0
            for dr in range(-1, 2):
                rr = min(max(r + dr, 0), rows - 1)
                for dc in range(-1, 2):
                    total += int(view[rr, min(max(col + dc, 0), cols - 1)])
            out[r, col] = (8 * total) // 9
    return out


@numba.njit(cache=True, nogil=True)
def _octave(value: int) -> int:
    """The level context of a value: its octave (floor log2; 0 for 0 and 1), at most
    N_CONTEXTS - 1 (the noise of raw counts, and so the residual's spread, grows with the
    level)."""
    b = 0
    while (value >> (b + 1)) != 0:
        b += 1
    return min(b, N_CONTEXTS - 1)


@numba.njit(cache=True, nogil=True)
def _context(activity: int) -> int:
    """Half-octave bucket of the activity, 0..N_CONTEXTS - 1."""
    a = activity + 1
    b = 0
    while (a >> (b + 1)) != 0:
        b += 1
    half = (a >> (b - 1)) & 1 if b >= 1 else 0
    return min(2 * b + half, N_CONTEXTS - 1)
