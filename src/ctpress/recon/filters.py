"""Ramp filters for filtered back-projection.

The ramp is built in the spatial domain as the band-limited discrete kernel of Kak &
Slaney (*Principles of Computerized Tomographic Imaging*, eq. 3.61): with sample spacing
``tau``, ``h[0] = 1 / (4 tau^2)``, ``h[k] = 0`` for even ``k`` and
``h[k] = -1 / (pi k tau)^2`` for odd ``k``.  Its FFT (over a zero-padded length of at
least ``2 n`` so the convolution is linear, not circular) is multiplied by an
apodisation window that is zero above ``cutoff`` times the Nyquist frequency.  For an
equiangular (cylindrical) detector the kernel in the fan angle is ``h(g) (g / sin g)^2``
(Kak & Slaney eq. 3.100).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.fft import next_fast_len

from ..errors import InputError

__all__ = ["FILTERS", "filter_projections", "filter_response"]

#: Names of the available apodisation windows (``ram-lak`` is the bare ramp).
FILTERS: tuple[str, ...] = ("ram-lak", "shepp-logan", "cosine", "hann")


def _window(name: str, w: np.ndarray) -> np.ndarray:
    """Apodisation of the frequencies ``w`` (1 at the cut-off), zero above the cut-off."""
    if name == "ram-lak":
        win = np.ones_like(w)
    elif name == "shepp-logan":
        win = np.sinc(w / 2)
    elif name == "cosine":
        win = np.cos(np.pi * w / 2)
    else:
        win = np.cos(np.pi * w / 2) ** 2
    return np.where(w <= 1.0, win, 0.0)


def filter_response(
    n_cols: int,
    spacing: float,
    filter: str = "ram-lak",
    cutoff: float = 1.0,
    *,
    angular: bool = False,
) -> np.ndarray:
    """Frequency response of the ramp filter on the zero-padded FFT grid.

    Parameters
    ----------
    n_cols : int
        Detector columns to filter.
    spacing : float
        Sample spacing: mm (parallel beam or a flat detector scaled to the isocentre),
        or radians of fan angle when ``angular``.
    filter : {"ram-lak", "shepp-logan", "cosine", "hann"}
        Apodisation window.
    cutoff : float
        Cut-off as a fraction of the Nyquist frequency, in (0, 1].
    angular : bool
        Equiangular (cylindrical detector) kernel ``h(g) (g / sin g)^2``.

    Returns
    -------
    ndarray, shape (n_fft // 2 + 1,), float64
        Real response for ``torch.fft.rfft`` of length ``n_fft = 2 next_fast_len(n_cols)``,
        including the sample-spacing factor of the convolution sum (units 1/spacing).
    """
    if filter not in FILTERS:
        raise InputError(f"unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")
    if not 0.0 < cutoff <= 1.0:
        raise InputError(f"cutoff must be in (0, 1] (fraction of Nyquist), got {cutoff}")
    if n_cols < 1 or not spacing > 0:
        raise InputError(f"need n_cols >= 1 and spacing > 0, got {n_cols} and {spacing}")
    n_fft = 2 * next_fast_len(n_cols, real=True)
    k = np.fft.fftfreq(n_fft, 1.0 / n_fft)  # signed integer lags 0, 1, ..., -1
    # Lags of n_cols or more never meet data (zero padding), so they are left out.
    odd = (k % 2 == 1) & (np.abs(k) < n_cols)
    kernel = np.where(odd, -1.0 / (np.pi * np.where(odd, k, 1)) ** 2, 0.0)
    kernel[0] = 0.25
    if angular:
        g = k[odd] * spacing
        kernel[odd] *= (g / np.sin(g)) ** 2
    response = np.fft.rfft(kernel).real / spacing
    w = np.fft.rfftfreq(n_fft) / (0.5 * cutoff)
    return response * _window(filter, w)


def filter_projections(
    projections: torch.Tensor,
    spacing: float,
    filter: str = "ram-lak",
    cutoff: float = 1.0,
    *,
    angular: bool = False,
) -> torch.Tensor:
    """Convolve every detector row with the ramp filter (along the last axis).

    Parameters
    ----------
    projections : Tensor, shape (..., n_cols)
        Pre-weighted projections, float32 or float64, on any device.
    spacing, filter, cutoff, angular
        As :func:`filter_response`.

    Returns
    -------
    Tensor, same shape, dtype and device
        ``spacing * sum_k h[k] p[n - k]`` with zero padding outside the detector.
    """
    n_cols = projections.shape[-1]
    response = filter_response(n_cols, spacing, filter, cutoff, angular=angular)
    n_fft = 2 * (response.shape[0] - 1)
    resp = torch.as_tensor(response, dtype=projections.dtype, device=projections.device)
    spectrum = torch.fft.rfft(projections, n=n_fft, dim=-1) * resp
    return torch.fft.irfft(spectrum, n=n_fft, dim=-1)[..., :n_cols]
