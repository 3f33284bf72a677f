"""The one search routine of every rate control that has no closed form.

Codecs meet a bits-per-value or PSNR target by steering one scalar (a quality level, a
tolerance, a quantisation gain, a residual step).  :func:`solve` finds the scalar with
few probes: the value (bits, MSE) of a transform codec is close to linear in the log of
its knob, so after a first probe it extrapolates with a slope (given, or learnt from the
probes) and, once the target is bracketed, interpolates (regula falsi, Illinois variant)
in (log knob, log value) coordinates, falling back to bisection when interpolation
stalls.  Every probe is returned so the caller picks the one it needs (the nearest rate,
or the cheapest that meets a quality).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: Smallest extrapolation step, as a fraction of the interval (in search coordinates): a
#: known slope steers a correction precisely, so this only guards against standing still.
_MIN_STEP = 1e-3
#: Offsets (fractions of the interval) probed on both sides of a jump in the value.
_JUMP_OFFSETS = (0.002, 0.005, 0.01, 0.03)


@dataclass
class Probe(Generic[T]):
    """One evaluation: the knob, the value it gave (bits, MSE, ...) and the payload."""

    knob: float
    value: float
    result: T


def solve(
    evaluate: Callable[[float], tuple[float, T]],
    target: float,
    lo: float,
    hi: float,
    *,
    increasing: bool,
    done: Callable[[float], bool],
    log_knob: bool = True,
    log_value: bool = True,
    integer: bool = False,
    start: float | None = None,
    slope: float | None = None,
    max_probes: int = 14,
) -> list[Probe[T]]:
    """Probe ``evaluate(knob) -> (value, payload)`` for ``value`` close to ``target``
    (the point aimed at: the middle of the window ``done`` accepts).

    ``value`` is monotone in the knob on ``[lo, hi]`` (``increasing`` says which way);
    ``done(value)`` says when a probe is good enough to stop.  ``log_knob`` /
    ``log_value`` choose the coordinates of the interpolation; ``integer`` rounds knobs
    (the search ends when the bracket holds two adjacent integers); ``start`` is the first
    knob (default: the middle of the interval in search coordinates) and ``slope`` the
    expected d(value)/d(knob) in those coordinates for the first extrapolation.

    Returns every probe, in the order made (no knob is evaluated twice).
    """
    if not lo < hi and not (integer and lo <= hi):
        raise ValueError(f"empty search interval [{lo}, {hi}]")
    fk = (lambda k: math.log(k)) if log_knob else (lambda k: k)
    gk = (lambda t: math.exp(t)) if log_knob else (lambda t: t)
    fv = (lambda v: math.log(max(v, 1e-300))) if log_value else (lambda v: v)
    a, b = fk(lo), fk(hi)
    goal = fv(target)
    probes: list[Probe[T]] = []
    seen: dict[float, Probe[T]] = {}

    def knob_of(t: float) -> float:
        k = min(max(gk(min(max(t, a), b)), lo), hi)
        return float(round(k)) if integer else k

    def probe(t: float) -> Probe[T] | None:
        k = knob_of(t)
        if k in seen:
            return None
        value, result = evaluate(k)
        p = Probe(k, float(value), result)
        seen[k] = p
        probes.append(p)
        return p

    def signed(p: Probe[T]) -> float:
        """> 0 when the probe's value is above the target."""
        return fv(p.value) - goal

    # bracket: 'below' has value < target, 'above' value > target
    below: Probe[T] | None = None
    above: Probe[T] | None = None
    t = fk(start) if start is not None else 0.5 * (a + b)
    side_kept = 0  # Illinois: which end stayed put last time (+1 below, -1 above)
    for _ in range(max_probes):
        p = probe(t)
        if p is None:
            break
        if done(p.value):
            break
        if signed(p) < 0:
            below, kept = p, -1
        else:
            above, kept = p, 1
        scale_below = scale_above = 1.0
        if kept == side_kept:  # the same end moved twice: halve the other end's weight
            if kept == -1:
                scale_above = 0.5
            else:
                scale_below = 0.5
        side_kept = kept
        if below is not None and above is not None:
            tb, ta = fk(below.knob), fk(above.knob)
            if integer and abs(below.knob - above.knob) <= 1:
                break
            if not integer and abs(tb - ta) <= _MIN_STEP * (b - a):  # a jump: look around it
                _around_jump(probe, done, 0.5 * (ta + tb), a, b, max_probes - len(probes))
                break
            fb, fa = signed(below) * scale_below, signed(above) * scale_above
            t_new = tb - fb * (ta - tb) / (fa - fb) if fa != fb else 0.5 * (ta + tb)
            lo_t, hi_t = min(ta, tb), max(ta, tb)
            margin = 0.05 * (hi_t - lo_t)
            if not lo_t + margin < t_new < hi_t - margin:
                t_new = 0.5 * (ta + tb)
            t = t_new
            continue
        # one-sided: extrapolate with the slope learnt from two probes (or given)
        known = [q for q in (below, above) if q is not None]
        s = slope
        if len(probes) >= 2:
            p0, p1 = probes[-2], probes[-1]
            dt = fk(p1.knob) - fk(p0.knob)
            if dt != 0 and fv(p1.value) != fv(p0.value):
                s = (fv(p1.value) - fv(p0.value)) / dt
        last = known[-1]
        tl = fk(last.knob)
        direction = 1.0 if (signed(last) < 0) == increasing else -1.0
        least = _MIN_STEP * (b - a)
        if integer:  # at least to the next whole knob
            least = max(least, abs(fk(min(max(last.knob + direction, lo), hi)) - tl))
        if s is not None and s != 0 and (s > 0) == increasing:
            step = -signed(last) / s
            step = math.copysign(min(max(abs(step), least), 0.5 * (b - a)), direction)
        else:
            step = direction * 0.25 * (b - a)
        t = tl + step
        if (direction > 0 and tl >= b) or (direction < 0 and tl <= a):
            break  # the target is outside the interval
    return probes


def _around_jump(
    probe: Callable[[float], Probe[T] | None],
    done: Callable[[float], bool],
    t: float,
    a: float,
    b: float,
    budget: int,
) -> None:
    """Probe on both sides of a jump at ``t`` (search coordinates in ``[a, b]``), ever
    farther, until one probe is ``done``: a value that is not monotone in the knob (SZ3
    switches predictors with its error bound, and its rate with them) may reach the target
    on the far side of the jump."""
    for offset in _JUMP_OFFSETS:
        for side in (-1.0, 1.0):
            if budget <= 0:
                return
            found = probe(min(max(t + side * offset * (b - a), a), b))
            budget -= 1
            if found is not None and done(found.value):
                return


def estimate(
    probes: list[Probe[T]],
    target: float,
    *,
    log_knob: bool = True,
    log_value: bool = True,
) -> tuple[float, float | None]:
    """Where ``probes`` (from :func:`solve`) put ``target``: ``(knob, slope)``.

    ``slope`` is d(value)/d(knob) in the coordinates of :func:`solve`, fitted by least
    squares to the probes within a factor e of the target in value (so that noise between
    close probes, e.g. SZ3's rate, does not swing it); ``knob`` extrapolates from the
    probe nearest the target along it.  Used to start a search on the whole data from
    probes on a subsample.
    """
    if not probes:
        raise ValueError("no probes to estimate from")
    fk = math.log if log_knob else (lambda k: k)
    gk = math.exp if log_knob else (lambda t: t)
    fv = (lambda v: math.log(max(v, 1e-300))) if log_value else (lambda v: v)
    goal = fv(target)
    ranked = sorted(probes, key=lambda p: abs(fv(p.value) - goal))
    near = [p for p in ranked if abs(fv(p.value) - goal) <= 1.0]
    fit = near if len({p.knob for p in near}) >= 2 else ranked[:2]
    ts = [fk(p.knob) for p in fit]
    vs = [fv(p.value) for p in fit]
    t_mean, v_mean = sum(ts) / len(ts), sum(vs) / len(vs)
    spread = sum((t - t_mean) ** 2 for t in ts)
    slope = (
        sum((t - t_mean) * (v - v_mean) for t, v in zip(ts, vs, strict=True)) / spread
        if spread
        else 0.0
    )
    nearest = ranked[0]
    if slope == 0:
        return nearest.knob, None
    return gk(fk(nearest.knob) + (goal - fv(nearest.value)) / slope), slope
