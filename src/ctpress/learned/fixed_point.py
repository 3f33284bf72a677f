"""Fixed-point arithmetic: predictions that every machine computes identically.

Two tools, both numpy integers (no torch at import):

- **The decoder-side output grid (detection).**  A decoder that recomputes a model's
  output in float64 rounds it to integers on a grid of 2**-:data:`GRID_BITS` of the
  chunk's range (:func:`to_grid`); the encoder stores the CRC-32 of that grid
  (:func:`grid_check`), so a decoder whose arithmetic or weights differ fails loudly
  instead of returning other values.  :func:`grid_values` maps the grid to data units.
- **Integer networks (construction).**  A closed-loop coder (a predictor inside the
  coding loop) must reproduce the decoder's prediction exactly, not merely detect a
  difference.  :class:`FixedPointNet` runs a small network (linear and 2-D convolution
  layers, ReLU) on int64 numpy arrays: weights quantised to 2**-:data:`WEIGHT_BITS`,
  activations to 2**-:data:`ACTIVATION_BITS`, every product and sum exact, every
  rescaling an integer shift.  Integer addition is associative, so the result does not
  depend on the SIMD level (``ATEN_CPU_CAPABILITY``), the thread count or the summation
  order: the same bytes everywhere, by construction.  Their matrix products run as
  float64 BLAS GEMMs when that is provably exact (:func:`exact_matmul`), else in int64.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .models.base import Coded, LearnedModel

#: The decoder's output grid: 2**-GRID_BITS of the chunk's range.
GRID_BITS = 20
#: Grid bounds of the zoo models' reconstruction (normalised output, 2**-20 units).
GRID_LIMIT = 2**30
#: Fraction bits of quantised weights.
WEIGHT_BITS = 16
#: Fraction bits of activations (inputs, hidden values and outputs).
ACTIVATION_BITS = 16
#: Largest magnitude an accumulator may reach (int64 with a bit of headroom).
_ACCUMULATOR_LIMIT = 1 << 62
#: float64 represents every integer of magnitude below this exactly.
EXACT_FLOAT_LIMIT = 1 << 53


# ---------------------------------------------------------------- output grid
def to_grid(unit: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``rint(unit * 2**GRID_BITS)`` clipped to ``[lo, hi]``, int32 (``unit``: float64
    model output in units of the chunk's range)."""
    return np.clip(np.rint(unit * 2.0**GRID_BITS), lo, hi).astype("<i4")


def grid_check(grid: np.ndarray) -> int:
    """CRC-32 of a grid (int32 little-endian)."""
    return zlib.crc32(np.ascontiguousarray(grid, dtype="<i4").tobytes())


def reconstruct(
    model: LearnedModel, coded: Coded, shape: tuple[int, int, int]
) -> tuple[np.ndarray, int]:
    """The decoder-side grid of a zoo model's reconstruction of images of ``shape``
    (m, H, W) (int32, 2**-20 of the chunk's range) and its CRC-32."""
    _, h, w = shape
    out = model.synthesise(coded.latent)[:, 0, :h, :w].numpy()
    grid = to_grid(out, -GRID_LIMIT, GRID_LIMIT)
    return grid, grid_check(grid)


def grid_values(grid: np.ndarray, offset: float, scale: float, integer: bool) -> np.ndarray:
    """Grid integers -> data units ``offset + scale * grid / 2**GRID_BITS`` (float64),
    rounded on integer data and clipped to ``[offset, offset + scale]``."""
    values = offset + scale * (grid.astype(np.float64) * 2.0**-GRID_BITS)
    if integer:
        values = np.rint(values)
    return np.clip(values, offset, offset + scale)


# ---------------------------------------------------------------- integer networks
def quantise(x: np.ndarray, bits: int) -> np.ndarray:
    """``rint(x * 2**bits)`` as int64 (``x`` any float array; exact IEEE rounding)."""
    return np.rint(np.asarray(x, dtype=np.float64) * 2.0**bits).astype(np.int64)


def round_shift(acc: np.ndarray, bits: int) -> np.ndarray:
    """``acc / 2**bits`` rounded to the nearest integer (halves up), exactly (int64)."""
    return (acc + (1 << (bits - 1))) >> bits


def accumulator_bound(weight: np.ndarray, largest_column: int) -> int:
    """``largest_column * max_n sum_k |weight[n, k]|``: a bound on every partial sum of
    ``weight @ columns`` (``weight`` (N, K) integers, ``|columns| <= largest_column``)."""
    return largest_column * int(np.abs(weight).sum(axis=1).max(initial=0))


def _largest(a: np.ndarray) -> int:
    return max(int(a.max(initial=0)), -int(a.min(initial=0)))


def exact_matmul(
    weight: np.ndarray, columns: np.ndarray, largest_column: int | None = None
) -> np.ndarray:
    """``weight @ columns`` (weight (N, K), columns (K, P), integer-valued) by a float64
    GEMM: float64 (N, P) holding the exact integers.

    Exact on every machine: if ``max|columns| * max_n sum_k |weight[n, k]| < 2**53``, every
    product ``weight[n, k] * columns[k, p]`` and every partial sum over any subset of ``k``
    is an integer of magnitude below 2**53, which float64 represents exactly, so no
    floating-point operation of the GEMM rounds, whatever its order of summation,
    blocking, FMA use or thread count: the result is the exact integer product.  The
    bound is checked on every call (ValueError when it does not hold), with
    ``max|columns|`` measured, or given as ``largest_column`` by a caller whose columns
    are bounded by construction (clipped).
    """
    largest = _largest(columns) if largest_column is None else largest_column
    if accumulator_bound(weight, largest) >= EXACT_FLOAT_LIMIT:
        raise ValueError("fixed-point GEMM operands too large for exact float64 arithmetic")
    return np.asarray(weight, dtype=np.float64) @ np.asarray(columns, dtype=np.float64)


def integer_matmul(weight: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``weight @ columns`` of int64 matrices, exact: a float64 GEMM where
    :func:`exact_matmul` allows it, else int64 arithmetic (ValueError if an accumulator
    could overflow int64)."""
    bound = accumulator_bound(weight, _largest(columns))
    if bound < EXACT_FLOAT_LIMIT:
        return exact_matmul(weight, columns).astype(np.int64)
    if bound >= _ACCUMULATOR_LIMIT:
        raise ValueError("fixed-point activations overflow int64: rescale the network input")
    return weight @ columns


@dataclass(frozen=True)
class FixedLinear:
    """``y = x W^T + b`` on int64 activations (..., in) -> (..., out).

    ``weight`` (out, in) in units of 2**-WEIGHT_BITS, ``bias`` (out,) in units of
    2**-ACTIVATION_BITS."""

    weight: np.ndarray
    bias: np.ndarray

    def __call__(self, a: np.ndarray) -> np.ndarray:
        flat = a.reshape(-1, a.shape[-1])
        acc = integer_matmul(self.weight, flat.T).T.reshape(*a.shape[:-1], -1)
        return round_shift(acc, WEIGHT_BITS) + self.bias


@dataclass(frozen=True)
class FixedConv2d:
    """2-D cross-correlation (as ``torch.nn.Conv2d``, zero padding, groups 1) on int64
    activations (n, in, H, W) -> (n, out, H', W').

    ``weight`` (out, in, kh, kw) in units of 2**-WEIGHT_BITS, ``bias`` (out,) in units of
    2**-ACTIVATION_BITS; ``stride`` and ``padding`` per axis."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]

    def __call__(self, a: np.ndarray) -> np.ndarray:
        (ph, pw), (sh, sw) = self.padding, self.stride
        out_channels, in_channels, kh, kw = self.weight.shape
        padded = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
        windows = windows[:, :, ::sh, ::sw].transpose(0, 2, 3, 1, 4, 5)  # (n, H', W', in, kh, kw)
        n, h, w = windows.shape[:3]
        columns = windows.reshape(n * h * w, in_channels * kh * kw)
        acc = integer_matmul(self.weight.reshape(out_channels, -1), columns.T).T
        out = round_shift(acc.reshape(n, h, w, out_channels), WEIGHT_BITS) + self.bias
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class FixedReLU:
    """``max(a, 0)``."""

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return np.maximum(a, 0)


FixedLayer = FixedLinear | FixedConv2d | FixedReLU


@dataclass(frozen=True)
class FixedPointNet:
    """A feed-forward network of :data:`FixedLayer` on int64 numpy activations.

    Call it with float inputs (quantised to 2**-ACTIVATION_BITS) or with the integers
    themselves; it returns int64 outputs in units of 2**-ACTIVATION_BITS.
    """

    layers: tuple[FixedLayer, ...]

    @classmethod
    def from_module(cls, module: Any) -> FixedPointNet:
        """The fixed-point copy of a torch ``nn.Sequential`` (or one layer) of ``Linear``,
        ``Conv2d`` (zero padding, no dilation, one group) and ``ReLU`` layers."""
        import torch.nn as nn  # only callers with torch models get here

        children: Sequence[Any] = list(module) if isinstance(module, nn.Sequential) else [module]
        layers: list[FixedLayer] = []
        for layer in children:
            if isinstance(layer, nn.ReLU):
                layers.append(FixedReLU())
                continue
            if not isinstance(layer, nn.Linear | nn.Conv2d):
                raise ValueError(f"no fixed-point version of {type(layer).__name__}")
            weight = quantise(layer.weight.detach().cpu().double().numpy(), WEIGHT_BITS)
            bias = (
                np.zeros(weight.shape[0], dtype=np.int64)
                if layer.bias is None
                else quantise(layer.bias.detach().cpu().double().numpy(), ACTIVATION_BITS)
            )
            if isinstance(layer, nn.Linear):
                layers.append(FixedLinear(weight, bias))
                continue
            if layer.groups != 1 or tuple(layer.dilation) != (1, 1):
                raise ValueError("fixed-point Conv2d needs groups=1 and dilation=1")
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise ValueError("fixed-point Conv2d needs numeric zero padding")
            stride = (int(layer.stride[0]), int(layer.stride[1]))
            padding = (int(layer.padding[0]), int(layer.padding[1]))
            layers.append(FixedConv2d(weight, bias, stride, padding))
        return cls(tuple(layers))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        a = x.astype(np.int64) if x.dtype.kind in "iu" else quantise(x, ACTIVATION_BITS)
        for layer in self.layers:
            a = layer(a)
        return a
