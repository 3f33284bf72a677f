"""Small building blocks of the learned codecs (GDN, sub-pixel upsampling, padding)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GDN(nn.Module):
    """Generalised divisive normalisation (Ballé et al. 2016), or its inverse.

    ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)`` (``inverse``: multiply).  ``beta``
    and ``gamma`` are kept positive through a softplus reparametrisation.

    Parameters
    ----------
    channels : int
        Channels of the (n, C, h, w) input.
    inverse : bool
        IGDN (decoder side) instead of GDN.
    """

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta_raw = nn.Parameter(torch.full((channels,), 0.5413))  # softplus -> 1
        # softplus -> about 0.1 on the diagonal and 0.0025 elsewhere
        self.gamma_raw = nn.Parameter(-6.0 + 3.8 * torch.eye(channels))

    def forward(self, x: Tensor) -> Tensor:
        beta = F.softplus(self.beta_raw).to(x.dtype)
        gamma = F.softplus(self.gamma_raw).to(x.dtype)
        norm = torch.sqrt(F.conv2d(x * x, gamma[:, :, None, None], beta))
        return x * norm if self.inverse else x / norm


class SubpixelUp(nn.Module):
    """3x3 convolution to ``4 * out_channels`` channels, then depth-to-space (x2).

    Cheaper than a transposed convolution at the same support and free of its
    checkerboard artefacts.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


def conv_down(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Conv2d:
    """Stride-2 convolution with 'same' padding (output size ``ceil(n / 2)``)."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride=2, padding=kernel // 2)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad (n, C, h, w) at the bottom/right so h and w are multiples of
    ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


# --------------------------------------------------------------- CDF 9/7 wavelet
# Lifting coefficients of the CDF 9/7 (JPEG 2000 irreversible) wavelet.
_ALPHA, _BETA = -1.586134342059924, -0.052980118572961
_GAMMA, _DELTA = 0.882911075530934, 0.443506852043971
_K = 1.230174104914001


def _next(s: Tensor, dim: int) -> Tensor:
    """``s[i + 1]`` along ``dim``, symmetric extension at the end."""
    n = s.shape[dim]
    return torch.cat([s.narrow(dim, 1, n - 1), s.narrow(dim, n - 1, 1)], dim=dim)


def _prev(d: Tensor, dim: int) -> Tensor:
    """``d[i - 1]`` along ``dim``, symmetric extension at the start."""
    n = d.shape[dim]
    return torch.cat([d.narrow(dim, 0, 1), d.narrow(dim, 0, n - 1)], dim=dim)


def _split(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))  # the pair axis lands at ``dim``
    return pairs.select(dim, 0), pairs.select(dim, 1)


def _dwt_axis(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """One 9/7 analysis step along ``dim`` (negative, even length): (low, high)."""
    s, d = _split(x, dim)
    d = d + _ALPHA * (s + _next(s, dim))
    s = s + _BETA * (_prev(d, dim) + d)
    d = d + _GAMMA * (s + _next(s, dim))
    s = s + _DELTA * (_prev(d, dim) + d)
    return s / _K, d * _K


def _idwt_axis(s: Tensor, d: Tensor, dim: int) -> Tensor:
    """Inverse of :func:`_dwt_axis`."""
    s, d = s * _K, d / _K
    s = s - _DELTA * (_prev(d, dim) + d)
    d = d - _GAMMA * (s + _next(s, dim))
    s = s - _BETA * (_prev(d, dim) + d)
    d = d - _ALPHA * (s + _next(s, dim))
    return torch.stack([s, d], dim=dim).flatten(dim - 1, dim)


def _dwt2(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    lo, hi = _dwt_axis(x, -1)
    ll, lh = _dwt_axis(lo, -2)
    hl, hh = _dwt_axis(hi, -2)
    return ll, lh, hl, hh


def _idwt2(ll: Tensor, lh: Tensor, hl: Tensor, hh: Tensor) -> Tensor:
    return _idwt_axis(_idwt_axis(ll, lh, -2), _idwt_axis(hl, hh, -2), -1)


def wavelet_channels(x: Tensor, levels: int) -> Tensor:
    """``levels``-level 2-D CDF 9/7 transform of (n, 1, H, W) (sides multiples of
    ``2**levels``), every subband folded (space-to-depth) to the coarsest resolution.

    Returns
    -------
    Tensor, shape (n, 4**levels, H / 2**levels, W / 2**levels)
        Channel 0 is the coarsest low-pass band, then the three detail bands of each
        level from coarse to fine (level ``l`` bands use ``4**(levels - l)`` channels).
    """
    details = []
    ll = x
    for level in range(1, levels + 1):
        ll, lh, hl, hh = _dwt2(ll)
        fold = 2 ** (levels - level)
        details.append([F.pixel_unshuffle(b, fold) if fold > 1 else b for b in (lh, hl, hh)])
    parts = [ll] + [b for bands in reversed(details) for b in bands]
    return torch.cat(parts, dim=1)


def wavelet_subbands(levels: int) -> tuple[tuple[int, int], ...]:
    """Channel ranges of the subbands in :func:`wavelet_channels`: the low-pass band,
    then LH, HL, HH of each level from coarse to fine."""
    bands, pos = [(0, 1)], 1
    for level in range(levels, 0, -1):
        width = 4 ** (levels - level)
        for _ in range(3):
            bands.append((pos, pos + width))
            pos += width
    return tuple(bands)


def wavelet_image(y: Tensor, levels: int) -> Tensor:
    """Inverse of :func:`wavelet_channels`: (n, 4**levels, h, w) -> (n, 1, H, W)."""
    ll = y[:, :1]
    pos = 1
    for level in range(levels, 0, -1):
        fold = 2 ** (levels - level)
        width = fold * fold
        bands = [y[:, pos + k * width : pos + (k + 1) * width] for k in range(3)]
        pos += 3 * width
        lh, hl, hh = (F.pixel_shuffle(b, fold) if fold > 1 else b for b in bands)
        ll = _idwt2(ll, lh, hl, hh)
    return ll


def wavelet_norms(levels: int) -> Tensor:
    """Image-domain L2 norm of a unit coefficient in each channel of
    :func:`wavelet_channels` (float64, shape (4**levels,)); dividing the channels by it
    makes a quantisation error cost the same squared error in every channel (a new
    tensor each call, computed once per ``levels``)."""
    return torch.tensor(_wavelet_norms(levels), dtype=torch.float64)


@functools.cache
def _wavelet_norms(levels: int) -> tuple[float, ...]:
    size = 2**levels * 8
    n_ch = 4**levels
    side = size // 2**levels
    y = torch.zeros(n_ch, n_ch, side, side, dtype=torch.float64)
    y[torch.arange(n_ch), torch.arange(n_ch), side // 2, side // 2] = 1.0
    return tuple(wavelet_image(y, levels).flatten(1).norm(dim=1).tolist())
