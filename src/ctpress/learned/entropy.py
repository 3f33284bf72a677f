"""Entropy models with integer decoder-side tables, coded with constriction's range coder.

The rule that keeps learned streams portable: **the probability tables used to encode and
decode come only from integers stored with the weights** (or in the stream).  Learned
densities are turned into integer frequency tables once, by ``update()`` after training
(:func:`quantise_pmf`); those integers are saved in the weights file and used as they are
by both ends.  constriction receives them as float64 arrays of exact integers, which its
fixed-point quantiser turns into the same model on every machine (sums of integers below
2**53 and one IEEE division: no transcendental function, no platform dependence).

Layers here (CompressAI-style):

- :class:`~ctpress.learned.tables.TableCoder` (numpy only): frequency tables (rows x
  alphabet) -> bytes and back, each symbol coded with the table row given for it, with
  optional escape symbols for values outside a row's support;
- :class:`FactorizedPrior`: a learned per-channel density (Ballé et al. 2018, the
  "EntropyBottleneck") for hyper-latents;
- :class:`ScaleConditional`: Gaussian or Laplace densities over a fixed log-spaced scale
  table, for latents whose scale (and mean) the hyper-decoder predicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tables import TAIL_MASS, TableCoder, quantise_pmf


class FactorizedPrior(nn.Module):
    """Learned univariate density per channel (Ballé et al. 2018, appendix 6.1).

    ``forward(z)`` returns the likelihood of ``z`` (+ uniform noise in training) under a
    flexible monotone CDF per channel; :meth:`update` freezes it into integer tables over
    the integers; :meth:`compress` / :meth:`decompress` code ``round(z)``.

    Parameters
    ----------
    channels : int
        Number of channels C of the latent (shape (n, C, h, w)).
    filters : tuple of int
        Hidden widths of the per-channel CDF network.
    init_scale : float
        Initial width of the densities (latent units).
    """

    table_freqs: Tensor
    table_offsets: Tensor
    table_lengths: Tensor

    def __init__(
        self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 8.0
    ) -> None:
        super().__init__()
        self.channels = channels
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(widths) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(widths) - 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(
                nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init))
            )
            self.biases.append(
                nn.Parameter(torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5))
            )
            if i < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        self.register_buffer("table_freqs", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("table_offsets", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("table_lengths", torch.zeros(0, dtype=torch.int32))
        self._coder: TableCoder | None = None

    def _logits_cdf(self, x: Tensor) -> Tensor:
        """Logit of the CDF at ``x`` of shape (C, 1, m); returns (C, 1, m)."""
        logits = x
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def forward(self, z: Tensor) -> Tensor:
        """Likelihood of ``z`` (n, C, h, w), same shape, each in (0, 1]."""
        n, c, h, w = z.shape
        values = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self._logits_cdf(values - 0.5)
        upper = self._logits_cdf(values + 0.5)
        sign = -torch.sign(lower + upper).detach()
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = lik.clamp_min(1e-9)
        return lik.reshape(c, n, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def update(self, support: int = 256) -> None:
        """Freeze the densities into integer tables over ``-support .. support``."""
        grid = torch.arange(-support, support + 1, dtype=torch.float32)
        x = grid.expand(self.channels, 1, -1)
        cdf_lo = torch.sigmoid(self._logits_cdf(x - 0.5)).squeeze(1).double().numpy()
        cdf_hi = torch.sigmoid(self._logits_cdf(x + 0.5)).squeeze(1).double().numpy()
        pmf = np.clip(cdf_hi - cdf_lo, 0, None)
        rows = []
        offsets, lengths = [], []
        for c in range(self.channels):
            cum = np.cumsum(pmf[c])
            total = cum[-1]
            lo = int(np.searchsorted(cum, TAIL_MASS / 2 * total))
            hi = int(np.searchsorted(cum, (1 - TAIL_MASS / 2) * total))
            hi = max(hi, lo)
            core = pmf[c, lo : hi + 1]
            tail_lo = cdf_lo[c, lo]
            tail_hi = 1 - cdf_hi[c, hi]
            rows.append(np.concatenate([[tail_lo], core, [tail_hi]]))
            offsets.append(lo - support)
            lengths.append(len(rows[-1]))
        freqs = np.concatenate([quantise_pmf(row[None])[0] for row in rows])
        self.table_freqs = torch.from_numpy(freqs.astype(np.int32))
        self.table_offsets = torch.tensor(offsets, dtype=torch.int32)
        self.table_lengths = torch.tensor(lengths, dtype=torch.int32)
        self._coder = None

    def coder(self) -> TableCoder:
        """The integer-table coder built from the stored tables."""
        if self._coder is None:
            self._coder = _stored_table_coder(self, self.channels, "FactorizedPrior")
        return self._coder

    def rows(self, shape: tuple[int, ...]) -> np.ndarray:
        """The table of each latent of a (n, C, h, w) array: its channel's (flattened)."""
        return np.broadcast_to(np.arange(self.channels)[None, :, None, None], shape).ravel()

    def compress(self, z_int: np.ndarray) -> bytes:
        """Code integer latents ``z_int`` of shape (n, C, h, w)."""
        return self.coder().encode(z_int.ravel(), self.rows(z_int.shape))

    def decompress(self, data: bytes, shape: tuple[int, int, int, int]) -> np.ndarray:
        """Inverse of :meth:`compress`: int64 array of ``shape`` (n, C, h, w)."""
        return self.coder().decode(data, self.rows(shape)).reshape(shape)


# --------------------------------------------------------- Gaussian conditional
def default_scale_table(lo: float = 0.11, hi: float = 128.0, levels: int = 64) -> np.ndarray:
    """Log-spaced scales (standard deviations, latent units) of the Gaussian tables."""
    return np.exp(np.linspace(math.log(lo), math.log(hi), levels))


#: Values beyond +-this share one histogram bin in :meth:`ScaleConditional.index_offset`.
_SHIFT_VALUES = 256


class ScaleConditional(nn.Module):
    """Zero-mean Gaussian or Laplace tables over a fixed scale table (symbols =
    ``round((y - mean) / step)``).

    Training: :meth:`forward` returns the likelihood of ``y`` given ``mean`` and
    ``scale`` (continuous scale, lower-bounded).  Coding: each symbol uses the table of
    the scale-table entry nearest (in log space) to its predicted scale divided by the
    quantisation step; the tables (integers) and the index boundaries (float64) are
    buffers saved with the weights.

    Parameters
    ----------
    family : {"gaussian", "laplace"}
        ``scale`` is the standard deviation (Gaussian) or the mean absolute deviation
        (Laplace) of the continuous density before quantisation.
    scale_table : ndarray, optional
        Increasing scales; default :func:`default_scale_table`.
    """

    scale_table: Tensor
    scale_bounds: Tensor
    table_freqs: Tensor
    table_offsets: Tensor
    table_lengths: Tensor

    def __init__(self, family: str = "gaussian", scale_table: np.ndarray | None = None) -> None:
        super().__init__()
        if family not in ("gaussian", "laplace"):
            raise ValueError(f"family must be 'gaussian' or 'laplace', got {family!r}")
        self.family = family
        table = default_scale_table() if scale_table is None else np.asarray(scale_table)
        self.scale_min = float(table[0])
        self.register_buffer("scale_table", torch.from_numpy(table.astype(np.float64)))
        bounds = np.sqrt(table[:-1] * table[1:])
        self.register_buffer("scale_bounds", torch.from_numpy(bounds.astype(np.float64)))
        self.register_buffer("table_freqs", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("table_offsets", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("table_lengths", torch.zeros(0, dtype=torch.int32))
        self._coder: TableCoder | None = None

    def _cdf(self, x: Tensor, s: Tensor) -> Tensor:
        if self.family == "gaussian":
            return 0.5 * torch.erfc(-x / (s * math.sqrt(2)))
        return 0.5 + 0.5 * torch.sign(x) * (1 - torch.exp(-torch.abs(x) / s))

    def forward(self, y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
        """Likelihood of ``y`` (noisy or rounded) given ``mean`` and ``scale``,
        integrated over a unit bin; all tensors of the same shape."""
        s = scale.clamp_min(self.scale_min)
        v = torch.abs(y - mean)
        return (self._cdf(0.5 - v, s) - self._cdf(-0.5 - v, s)).clamp_min(1e-9)

    @torch.no_grad()
    def update(self) -> None:
        """Build the integer tables of every scale in the table."""
        scales = self.scale_table.numpy()
        if self.family == "gaussian":
            import scipy.special

            half = np.ceil(scales * -scipy.special.ndtri(TAIL_MASS / 2)).astype(np.int64) + 1
        else:
            half = np.ceil(scales * -math.log(TAIL_MASS)).astype(np.int64) + 1
        rows = []
        for s, k in zip(scales, half, strict=True):
            edges = torch.arange(-k - 0.5, k + 1.0, dtype=torch.float64)  # 2k + 2 bin edges
            cdf = self._cdf(edges, torch.tensor(s, dtype=torch.float64)).numpy()
            core = np.diff(cdf)
            rows.append(quantise_pmf(np.concatenate([[cdf[0]], core, [cdf[0]]])[None])[0])
        self.table_freqs = torch.from_numpy(np.concatenate(rows).astype(np.int32))
        self.table_offsets = torch.from_numpy((-half).astype(np.int32))
        self.table_lengths = torch.from_numpy((2 * half + 3).astype(np.int32))
        self._coder = None

    def coder(self) -> TableCoder:
        """The integer-table coder built from the stored tables."""
        if self._coder is None:
            self._coder = _stored_table_coder(self, self.scale_table.numel(), "ScaleConditional")
        return self._coder

    def index_offset(
        self,
        indexes: np.ndarray,
        values: np.ndarray,
        search: int = 32,
        shift_bits: Callable[[int], float] | None = None,
        start: int = 0,
    ) -> tuple[int, float]:
        """The shift ``d`` of the table indexes (``clip(indexes + d)``, i.e. scales
        multiplied by about ``1.118**d``) that codes ``values`` in the fewest bits, within
        ``-search .. search``, found by walking downhill from ``start`` (the cost is close
        to convex in ``d``), and those bits (:meth:`TableCoder.bits`); with
        ``shift_bits``, the fewest bits counting ``shift_bits(d)``, the cost of storing
        ``d`` (e.g. after the shift of the previous image, ``start``).  Encoder side: it
        corrects, per subband and chunk, a scale prediction that is biased on data unlike
        the training data; the decoder applies the stored shift to its integer indexes, so
        no float reaches the decoder."""
        rows = self.scale_table.numel()
        # histogram of (value, index) pairs; values beyond +-_SHIFT_VALUES share a bin
        # (rare: they weigh on the choice as if they were that large)
        clipped = np.clip(np.ravel(values).astype(np.int64), -_SHIFT_VALUES, _SHIFT_VALUES)
        present, counts = np.unique(
            (clipped + _SHIFT_VALUES) * rows + np.ravel(indexes), return_counts=True
        )
        pair_values, pair_indexes = np.divmod(present, rows)
        pair_values -= _SHIFT_VALUES
        weights = counts.astype(np.float64)
        coder = self.coder()
        costs: dict[int, float] = {}

        def cost(d: int) -> float:
            if d not in costs:
                shifted = np.minimum(np.maximum(pair_indexes + d, 0), rows - 1)
                costs[d] = float(weights @ coder.bits(pair_values, shifted))
            return costs[d]

        def total(d: int) -> float:
            return cost(d) + (shift_bits(d) if shift_bits is not None else 0.0)

        best = max(-search, min(search, start))
        for direction in (-1, 1):
            while abs(best + direction) <= search and total(best + direction) < total(best):
                best += direction
        return best, cost(best)

    def indexes(self, scale: Tensor, step: float | Tensor = 1.0) -> np.ndarray:
        """Table index of each predicted ``scale`` (float64 tensor, latent units) for
        quantisation ``step`` (or steps broadcast against it): int64 array of its shape."""
        s = scale.double() / step
        return torch.bucketize(s, self.scale_bounds).numpy().astype(np.int64)


def _stored_table_coder(model: nn.Module, n_tables: int, name: str) -> TableCoder:
    """The :class:`TableCoder` of the integer tables stored in ``model``'s buffers."""
    lengths = model.get_buffer("table_lengths")
    if lengths.numel() != n_tables:
        raise RuntimeError(f"{name} tables are missing: call update()")
    return TableCoder(
        model.get_buffer("table_freqs").numpy(),
        model.get_buffer("table_offsets").numpy(),
        lengths.numpy(),
        escapes=True,
    )
