"""Quantum-noise model of raw CT data, for the noise-bounded rate control and the
benchmark.

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
