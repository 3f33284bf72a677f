"""Quantum-noise model of raw CT data, for the noise-bounded rate control and the
benchmark, and its estimation: from the data (:func:`estimate_noise_model`) or from
repeated flat and dark frames (:func:`noise_model_from_frames`).

A detector value ``x`` in raw counts has variance ``gain * (x - dark) + read_noise**2``
(an ideal Poisson counter: gain 1, read noise 0; real detectors measure 1.3-4).  A line
integral ``p = -ln(counts / i0)`` (``i0`` the unattenuated count, a scalar or one value
per detector column) has ``sigma_p = sqrt(gain * c + read_noise**2) / c`` with
``c = i0 * exp(-p)``.  The generalised Anscombe transform :meth:`NoiseModel.stabilise`
maps either to a variable of unit noise, so a codec's absolute error bound there is a
bound in units of sigma.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

DOMAINS = ("counts", "line_integral")


@dataclass(frozen=True)
class NoiseModel:
    """``sigma(x)`` of raw counts or line integrals (see the module docstring).

    ``gain`` (> 0) and ``read_noise`` (>= 0) in count units; ``dark`` the offset
    subtracted from counts; ``i0`` the unattenuated count for line integrals (a number,
    or a tuple with one value per detector column).  ``source`` says where the numbers
    came from ("user", "flat/dark frames", "estimated from the data", "ideal Poisson").
    ``saturation``: values at or above it are saturated (kept exactly by the
    noise-bounded mode, as are zeros and an integer dtype's maximum).
    """

    domain: str = "counts"
    gain: float = 1.0
    read_noise: float = 0.0
    dark: float = 0.0
    i0: float | tuple[float, ...] | None = None
    source: str = "ideal Poisson"
    saturation: float | None = None

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise InputError(f"noise domain must be one of {DOMAINS}, got {self.domain!r}")
        for name, lower, strict in (("gain", 0.0, True), ("read_noise", 0.0, False)):
            value = getattr(self, name)
            if not _real(value) or not (value > lower if strict else value >= lower):
                raise InputError(
                    f"noise {name} must be {'>' if strict else '>='} {lower:g}, got {value!r}"
                )
            object.__setattr__(self, name, float(value))
        if self.saturation is not None:
            if not _real(self.saturation):
                raise InputError(f"noise saturation must be a number, got {self.saturation!r}")
            object.__setattr__(self, "saturation", float(self.saturation))
        if not _real(self.dark):
            raise InputError(f"noise dark must be a number, got {self.dark!r}")
        object.__setattr__(self, "dark", float(self.dark))
        i0 = self.i0
        if i0 is not None:
            values = np.atleast_1d(np.asarray(i0, dtype=np.float64)) if _i0_like(i0) else None
            if (
                values is None
                or values.ndim != 1
                or not (np.isfinite(values).all() and (values > 0).all())
            ):
                raise InputError("noise i0 must be a positive number or one per detector column")
            object.__setattr__(
                self, "i0", float(values[0]) if np.ndim(i0) == 0 else tuple(map(float, values))
            )
        if self.domain == "line_integral" and self.i0 is None:
            raise InputError("the noise model of line integrals needs i0 (the unattenuated count)")

    # ------------------------------------------------------------------ values
    def _i0(self, cols: int) -> np.ndarray | float:
        assert self.i0 is not None
        if isinstance(self.i0, tuple):
            if len(self.i0) != cols:
                raise InputError(
                    f"noise i0 has {len(self.i0)} values but the detector has {cols} columns"
                )
            return np.asarray(self.i0)
        return self.i0

    def counts(self, x: np.ndarray) -> np.ndarray:
        """Signal counts above dark (float64), ``x`` of shape (..., cols)."""
        x = np.asarray(x, dtype=np.float64)
        if self.domain == "counts":
            return np.maximum(x - self.dark, 0.0)
        return self._i0(x.shape[-1]) * np.exp(-x)

    def sigma(self, x: np.ndarray) -> np.ndarray:
        """Noise standard deviation of each value of ``x`` (shape (..., cols)), float64."""
        c = self.counts(x)
        var = self.gain * c + self.read_noise**2
        if self.domain == "counts":
            return np.sqrt(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(c > 0, np.sqrt(var) / np.maximum(c, 1e-300), np.inf)

    def stabilise(self, x: np.ndarray) -> np.ndarray:
        """Generalised Anscombe transform: float64 of unit noise (d y / d counts =
        1 / sqrt(gain c + 3/8 gain^2 + read_noise^2))."""
        c = self.counts(x)
        return (2.0 / self.gain) * np.sqrt(
            self.gain * c + 0.375 * self.gain**2 + self.read_noise**2
        )

    def unstabilise(self, y: np.ndarray, cols: int | None = None) -> np.ndarray:
        """Inverse of :meth:`stabilise` (float64, in the data's units)."""
        y = np.asarray(y, dtype=np.float64)
        c = ((0.5 * self.gain * y) ** 2 - 0.375 * self.gain**2 - self.read_noise**2) / self.gain
        c = np.maximum(c, 0.0)
        if self.domain == "counts":
            return c + self.dark
        i0 = self._i0(y.shape[-1] if cols is None else cols)
        with np.errstate(divide="ignore"):
            return -np.log(np.maximum(c, 1e-300) / i0)

    # ------------------------------------------------------------------ config
    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "gain": self.gain,
            "read_noise": self.read_noise,
            "dark": self.dark,
            "i0": list(self.i0) if isinstance(self.i0, tuple) else self.i0,
            "source": self.source,
            "saturation": self.saturation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseModel:
        if not isinstance(data, dict):
            raise InputError(f"a noise model is an object, got {data!r:.80}")
        unknown = set(data) - {"domain", "gain", "read_noise", "dark", "i0", "source", "saturation"}
        if unknown:
            raise InputError(f"noise model has no field {', '.join(sorted(unknown))}")
        i0 = data.get("i0")
        return cls(
            domain=data.get("domain", "counts"),
            gain=data.get("gain", 1.0),
            read_noise=data.get("read_noise", 0.0),
            dark=data.get("dark", 0.0),
            i0=tuple(i0) if isinstance(i0, list) else i0,
            source=str(data.get("source", "user")),
            saturation=data.get("saturation"),
        )

    def describe(self) -> str:
        i0 = ""
        if self.i0 is not None:
            i0 = f", i0 {'per column' if isinstance(self.i0, tuple) else f'{self.i0:g}'}"
        return (
            f"{self.domain}: sigma^2 = {self.gain:g} x (x - {self.dark:g}) + {self.read_noise:g}^2"
            f"{i0} ({self.source})"
        )


def _real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _i0_like(value: Any) -> bool:
    if _real(value):
        return True
    return isinstance(value, (list, tuple, np.ndarray)) and all(
        _real(float(v)) for v in np.ravel(value)
    )


# ---------------------------------------------------------------------- estimation
#: Bins of the local mean in :func:`estimate_noise_model`.
_ESTIMATE_BINS = 24
#: Fewest values a bin needs for a robust variance.
_MIN_BIN_VALUES = 200
#: MAD -> standard deviation of a normal distribution.
_MAD_TO_STD = 1.4826


def robust_noise_std(values: np.ndarray) -> float:
    """One noise standard deviation for a whole stack (data units): the MAD of the second
    difference along the last axis (detector columns), divided by sqrt(6).  Smooth signal
    cancels in the second difference; edges are outliers the median ignores."""
    d2 = np.diff(np.asarray(values, dtype=np.float64), n=2, axis=-1)
    return float(_MAD_TO_STD * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))


def estimate_noise_model(
    projections: np.ndarray,
    domain: str = "counts",
    *,
    dark: float = 0.0,
    i0: float | tuple[float, ...] | None = None,
    axis: int = -1,
) -> NoiseModel:
    """Gain and read noise of ``projections`` (shape (..., cols)) from the data alone.

    Each value's noise is measured by the second difference along ``axis`` (default the
    detector columns; variance 6 sigma^2 where the signal is locally linear), and its
    level by the mean of the same three values.  The values are binned by that mean
    (quantiles), each bin's noise variance is the squared MAD-based std of its second
    differences over 6, and ``var = gain * (mean - dark) + read_noise**2`` is fitted
    through the bins (Theil-Sen: median of pairwise slopes, then median intercept).
    Line integrals (``domain="line_integral"``, needs ``i0``) are mapped to counts
    ``i0 exp(-p)`` with their noise scaled by the counts (delta method) before the fit.
    Zeros and an integer dtype's maximum (saturation) are left out.  ``dark`` is the
    known offset of the counts (e.g. the mean dark frame): from the data alone it cannot
    be told apart from the read noise.

    Only noise that is white along ``axis`` is seen: a detector that blurs neighbouring
    columns (scintillator, camera optics) reads low along the columns; differences along
    the views (``axis=0``) see the frame-to-frame noise where views are dense enough for
    the object to look smooth.  InputError if the data have too few signal levels to fit.
    """
    if domain not in DOMAINS:
        raise InputError(f"noise domain must be one of {DOMAINS}, got {domain!r}")
    if domain == "line_integral" and i0 is None:
        raise InputError(
            "estimating the noise of line integrals needs i0 (gain and i0 cannot be told apart "
            "from line integrals alone)"
        )
    x = np.asarray(projections)
    if x.ndim < 2 or not -x.ndim <= axis < x.ndim:
        raise InputError(f"need an array of >= 2 axes and a valid axis, got {x.shape}, {axis}")
    axis %= x.ndim
    if x.shape[axis] < 3 or x.size < 3 * _MIN_BIN_VALUES:
        raise InputError(f"too little data to estimate a noise model from shape {x.shape}")
    valid = x != 0
    if x.dtype.kind in "ui":
        valid &= x != np.iinfo(x.dtype).max
    values = x.astype(np.float64)

    def along(a: np.ndarray, start: int) -> np.ndarray:
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, a.shape[axis] - 2 + start)
        return a[tuple(index)]

    left, centre, right = along(values, 0), along(values, 1), along(values, 2)
    residual = left - 2 * centre + right
    level = (left + centre + right) / 3
    keep = along(valid, 0) & along(valid, 1) & along(valid, 2)
    if domain == "line_integral":
        i0_values = np.asarray(i0, dtype=np.float64)
        if i0_values.ndim == 1:
            if len(i0_values) != x.shape[-1]:
                raise InputError(
                    f"i0 has {len(i0_values)} values but the detector has {x.shape[-1]} columns"
                )
            if axis == x.ndim - 1:
                i0_values = i0_values[1:-1]
        level = i0_values * np.exp(-level)
        residual = residual * level
    else:
        level = level - dark
    keep &= level > 0
    level, residual = level[keep], residual[keep]
    if level.size < 2 * _MIN_BIN_VALUES:
        raise InputError("too few valid values to estimate a noise model")
    edges = np.unique(np.quantile(level, np.linspace(0, 1, _ESTIMATE_BINS + 1)))
    which = np.clip(np.searchsorted(edges, level, side="right") - 1, 0, len(edges) - 2)
    means, variances = [], []
    for b in range(len(edges) - 1):
        r = residual[which == b]
        if r.size >= _MIN_BIN_VALUES:
            means.append(float(level[which == b].mean()))
            mad = float(np.median(np.abs(r - np.median(r))))
            variances.append((_MAD_TO_STD * mad) ** 2 / 6)
    mean_arr, var_arr = np.asarray(means), np.asarray(variances)
    if len(mean_arr) < 3 or np.ptp(mean_arr) <= 0:
        raise InputError("the data span too few signal levels to estimate gain and read noise")
    gain, intercept = _theil_sen(mean_arr, var_arr)
    if not gain > 0:
        raise InputError(
            f"the noise of the data does not grow with the signal (fitted gain {gain:.3g}); "
            "give the gain and read noise instead"
        )
    return NoiseModel(
        domain,
        gain=gain,
        read_noise=math.sqrt(max(intercept, 0.0)),
        dark=dark if domain == "counts" else 0.0,
        i0=i0,
        source="estimated from the data",
    )


def noise_model_from_frames(flats: np.ndarray, darks: np.ndarray) -> NoiseModel:
    """Counts noise model from repeated flat and dark frames (photon transfer).

    ``flats`` (n >= 2, rows, cols) and ``darks`` (m >= 2, rows, cols): the dark offset is
    the mean dark, the read noise the root of the variance across dark frames (per
    pixel, averaged: fixed-pattern offsets cancel), the gain the mean over lit pixels of
    the variance across flats less the read noise^2, over their mean signal above dark.
    """
    flat, dark = (np.asarray(a, dtype=np.float64) for a in (flats, darks))
    for name, frames in (("flats", flat), ("darks", dark)):
        if frames.ndim != 3 or len(frames) < 2:
            raise InputError(
                f"{name} must be repeated frames of shape (n >= 2, rows, cols), got {frames.shape}"
            )
    if flat.shape[1:] != dark.shape[1:]:
        raise InputError(f"flats {flat.shape[1:]} and darks {dark.shape[1:]} differ in shape")
    dark_mean = dark.mean(axis=0)
    read_var = float(dark.var(axis=0, ddof=1).mean())
    signal = flat.mean(axis=0) - dark_mean
    lit = signal > 0
    if not lit.any():
        raise InputError("the flats are not brighter than the darks")
    excess = flat.var(axis=0, ddof=1) - read_var
    gain = float(excess[lit].mean() / signal[lit].mean())
    if not gain > 0:
        raise InputError(f"the flats' variance does not exceed the read noise (gain {gain:.3g})")
    return NoiseModel(
        "counts",
        gain=gain,
        read_noise=math.sqrt(read_var),
        dark=float(dark_mean.mean()),
        source="flat/dark frames",
    )


def _theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Robust line ``y = slope x + intercept``: the median of the pairwise slopes, then
    the median of ``y - slope x``."""
    i, j = np.triu_indices(len(x), k=1)
    distinct = x[j] != x[i]
    slope = float(np.median((y[j] - y[i])[distinct] / (x[j] - x[i])[distinct]))
    return slope, float(np.median(y - slope * x))
