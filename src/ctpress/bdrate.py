"""Bjontegaard delta rate (BD-rate): the average bit-rate difference between two RD curves.

Both curves are given as (rate, PSNR) points.  The logarithm of the rate is interpolated as a
function of PSNR for each curve, the two interpolants are integrated over the PSNR interval
where the curves overlap, and the mean difference of log-rate is turned into a percentage::

    BD-rate = (exp(mean(log R_test - log R_anchor)) - 1) * 100   [%]

Negative values mean the test codec needs fewer bits than the anchor for the same quality.

Two interpolations are provided:

* ``"pchip"`` (the default): piecewise cubic Hermite interpolation through every point, as in
  the JCT-VC / JVET common-test-conditions spreadsheets (JCTVC-L1100, JVET-T2010) and the FAU
  ``bjontegaard`` package; it cannot overshoot between points and works from 2 points.
* ``"cubic"``: the original VCEG-M33 method (G. Bjontegaard, 2001): a least-squares cubic
  polynomial of log-rate in PSNR (degree ``min(3, n - 1)`` when fewer than 4 points).

Points with infinite PSNR (lossless) are not on a rate-distortion curve and must be left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

from .errors import InputError

__all__ = ["METHODS", "bd_rate"]

#: Interpolation methods of :func:`bd_rate`, the default first.
METHODS: tuple[str, ...] = ("pchip", "cubic")


def _curve(rate: Sequence[float], psnr: Sequence[float], name: str) -> tuple[np.ndarray, ...]:
    """Log-rate and PSNR of one curve, sorted by PSNR; checks the points are usable."""
    r, q = np.asarray(rate, dtype=np.float64), np.asarray(psnr, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise InputError(f"{name}: rate and PSNR need the same 1-D shape, got {r.shape}, {q.shape}")
    if r.size < 2 or not (np.isfinite(r).all() and np.isfinite(q).all() and (r > 0).all()):
        raise InputError(f"{name}: need >= 2 points with finite PSNR and rate > 0")
    order = np.argsort(q)
    q, log_r = q[order], np.log(r[order])
    if np.any(np.diff(q) <= 0):
        raise InputError(f"{name}: PSNR values must be distinct, got {q.tolist()}")
    return log_r, q


def _integral(log_r: np.ndarray, q: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Integral of the interpolated log-rate over PSNR in [lo, hi]."""
    if method == "pchip":
        return float(PchipInterpolator(q, log_r).integrate(lo, hi))
    poly = np.polyint(np.polyfit(q, log_r, min(3, q.size - 1)))
    return float(np.polyval(poly, hi) - np.polyval(poly, lo))


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_psnr: Sequence[float],
    test_rate: Sequence[float],
    test_psnr: Sequence[float],
    method: str = "pchip",
) -> float:
    """Bjontegaard delta rate of a test curve against an anchor curve, in percent.

    Parameters
    ----------
    anchor_rate, anchor_psnr : sequence of float
        The anchor's points: rate (any positive unit, e.g. bits per value) and PSNR in dB.
    test_rate, test_psnr : sequence of float
        The test codec's points, rate in the same unit.
    method : {"pchip", "cubic"}
        Interpolation of log-rate over PSNR (see the module docstring).

    Returns
    -------
    float
        Average rate difference in % over the overlapping PSNR interval (negative: the test
        needs fewer bits); NaN when the PSNR intervals do not overlap.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    log_a, q_a = _curve(anchor_rate, anchor_psnr, "anchor")
    log_t, q_t = _curve(test_rate, test_psnr, "test")
    lo, hi = max(q_a[0], q_t[0]), min(q_a[-1], q_t[-1])
    if not hi > lo:
        return float("nan")
    diff = _integral(log_t, q_t, lo, hi, method) - _integral(log_a, q_a, lo, hi, method)
    return (math.exp(diff / (hi - lo)) - 1.0) * 100.0
