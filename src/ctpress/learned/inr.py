"""Implicit neural representation of a projection chunk: fitting, quantisation, coding.

The chunk (n_views, rows, cols) is normalised to [-1, 1] with its own offset and scale,
split into ``segments`` contiguous view ranges (:func:`segment_bounds`) and fitted by a
:class:`~ctpress.learned.models.siren.SirenStack` on *every* stored value
(:func:`fit_siren`: Adam on random points, cosine learning rate, then quantisation-aware
fine-tuning with a straight-through estimator).

The weights are stored as integers ``q = round((w - w_init) / step)`` per tensor, where
``w_init`` is the meta-learned initialisation shipped with ctpress for this
architecture (:func:`load_meta_init`; zeros when none) and ``step = 2**(e/4)`` with an
integer ``e`` per tensor (powers of 2**(1/4) from a literal table, so the decoder never
calls ``pow``).  The integers are coded with the residual layer's Laplace tables
(:func:`~ctpress.learned.residual.encode_symbols`), one table per tensor.

The decoder evaluates the network in float64 on the CPU and rounds the output to a grid
of 2**-20 of the chunk's range; a CRC-32 of that grid per segment, written by the
encoder, turns any arithmetic difference between machines into a loud error.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from tqdm.auto import tqdm

from ..errors import CorruptFileError
from . import fixed_point, residual, store
from .models.siren import SirenArch, SirenStack, encode_coordinates

#: 2**(k/4) for k = 0..3, as literals (the decoder's step sizes are exact products).
_QUARTER_POWERS = (1.0, 1.189207115002721, 1.4142135623730951, 1.681792830507429)
#: Points evaluated per block at decode time (small enough for the block to stay in cache).
_EVAL_BLOCK = 1 << 13
#: Points per fitting step (over all segments).
FIT_BATCH = 1 << 15
#: Fraction of the fitting steps spent on quantisation-aware fine-tuning.
QAT_FRACTION = 0.2
#: Zoo method name of the meta-learned initialisations.
META_METHOD = "siren"


def quant_step(exponent: int) -> float:
    """``2**(exponent / 4)`` exactly as the decoder computes it (float64)."""
    whole, frac = divmod(int(exponent), 4)
    return math.ldexp(_QUARTER_POWERS[frac], whole)


def step_exponent(step: float) -> int:
    """Integer ``e`` with ``quant_step(e)`` nearest (in log) to ``step`` (in int8 range)."""
    return int(np.clip(round(4 * math.log2(max(step, 1e-30))), -128, 127))


def segment_bounds(n_views: int, segments: int) -> np.ndarray:
    """First view of each segment and the end: (segments + 1,) int64, integer arithmetic."""
    return (np.arange(segments + 1, dtype=np.int64) * n_views) // segments


def axis_coordinates(n: int) -> np.ndarray:
    """Cell-centre coordinates of ``n`` samples in [-1, 1]: (n,) float64 (0 when n = 1)."""
    return -1.0 + (2.0 * np.arange(n, dtype=np.float64) + 1.0) / n


def grid_coordinates(views: np.ndarray, n_seg_views: int, rows: int, cols: int) -> np.ndarray:
    """Coordinates of every value of the given views of one segment.

    Parameters
    ----------
    views : ndarray (k,), int
        View indexes within the segment.
    n_seg_views, rows, cols : int
        Segment size.

    Returns
    -------
    ndarray (k * rows * cols, 3) float64, in (view, row, col) C order.
    """
    v = axis_coordinates(n_seg_views)[views]
    r = axis_coordinates(rows)
    c = axis_coordinates(cols)
    grid = np.stack(np.meshgrid(v, r, c, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3)


# ---------------------------------------------------------------- quantisation
@dataclass
class QuantisedWeights:
    """Integer weights of a stack: per tensor ``q`` (shape of the tensor) and its step
    exponent; ``w = w_init + q * quant_step(e)``."""

    q: list[np.ndarray]
    exponents: list[int]

    def dequantise(self, init: list[torch.Tensor]) -> list[torch.Tensor]:
        """float64 weights (CPU), ``init`` broadcast over segments."""
        return [
            init[k].to(torch.float64) + torch.from_numpy(self.q[k]).to(torch.float64)
            * quant_step(e)
            for k, e in enumerate(self.exponents)
        ]  # fmt: skip

    def encode(self) -> bytes:
        """Bytes: per tensor (int8 exponent, uint8 table index), then the symbols."""
        rows, head = [], bytearray()
        for q, e in zip(self.q, self.exponents, strict=True):
            table = int(residual.scale_index(np.array(np.mean(np.abs(q)) if q.size else 0.0)))
            head += np.int8(e).tobytes() + np.uint8(table).tobytes()
            rows.append(np.full(q.size, table, dtype=np.int64))
        symbols = np.concatenate([q.ravel() for q in self.q])
        return bytes(head) + residual.encode_symbols(symbols, np.concatenate(rows))

    @classmethod
    def decode(cls, data: bytes, shapes: list[tuple[int, ...]]) -> QuantisedWeights:
        """Inverse of :meth:`encode` for tensors of ``shapes``."""
        n = len(shapes)
        if len(data) < 2 * n:
            raise CorruptFileError("SIREN weight stream is truncated")
        head = np.frombuffer(data[: 2 * n], dtype=np.uint8).reshape(n, 2)
        exponents = [int(np.int8(e)) for e in head[:, 0].view(np.int8)]
        sizes = [math.prod(s) for s in shapes]
        rows = np.repeat(head[:, 1].astype(np.int64), sizes)
        symbols = residual.decode_symbols(data[2 * n :], rows)
        parts = np.split(symbols, np.cumsum(sizes)[:-1])
        return cls([p.reshape(s) for p, s in zip(parts, shapes, strict=True)], exponents)


def sensitivities(stack: SirenStack, coords: torch.Tensor, draws: int = 4) -> list[float]:
    """Per tensor, the mean over its weights of ``E[(dy/dw)**2]`` (output ``y`` per unit
    weight change, averaged over the points ``coords`` (segments, n, 3)).

    Estimated without per-point gradients: for random signs ``e``,
    ``E[(d sum(e y)/dw)**2] = sum over points of (dy/dw)**2``.
    """
    gen = torch.Generator().manual_seed(1)
    tensors = stack.tensors()
    total = [torch.zeros(()) for _ in tensors]
    for _ in range(draws):
        y = stack(coords)
        signs = torch.randint(0, 2, y.shape, generator=gen).to(y.dtype) * 2 - 1
        grads = torch.autograd.grad((signs * y).sum(), tensors)
        total = [t + (g.detach() ** 2).mean() for t, g in zip(total, grads, strict=True)]
    return [max(float(t) / draws / coords.shape[1], 1e-30) for t in total]


def quantise(
    stack: SirenStack, init: list[torch.Tensor], relative_step: float, sensitivity: list[float]
) -> QuantisedWeights:
    """Quantise ``stack``'s weights relative to ``init``, tensor ``k`` with step
    ``relative_step / sqrt(sensitivity[k])`` (rounded to a power of 2**(1/4)): every
    weight then adds about ``relative_step**2 / 12`` to the output's mean squared error
    (equal-slope allocation, see :func:`sensitivities`)."""
    qs, exponents = [], []
    for w, w0, sens in zip(stack.tensors(), init, sensitivity, strict=True):
        delta = (w.detach().to(torch.float64) - w0.to(torch.float64)).numpy()
        e = step_exponent(relative_step / math.sqrt(sens))
        qs.append(np.rint(delta / quant_step(e)).astype(np.int64))
        exponents.append(e)
    return QuantisedWeights(qs, exponents)


def relative_step_for(noise_mse: float, n_params: int) -> float:
    """``relative_step`` whose quantisation adds about ``noise_mse`` (normalised units)
    to the output's mean squared error, for ``n_params`` weights."""
    return math.sqrt(12.0 * max(noise_mse, 1e-12) / max(n_params, 1))


# ---------------------------------------------------------------- fitting
@dataclass
class FitReport:
    """What fitting did: steps taken, seconds, final training MSE (normalised units) and
    the per-tensor :func:`sensitivities` of the result."""

    steps: int
    seconds: float
    loss: float
    sensitivity: list[float]


class _Sampler:
    """Random points of every segment of a normalised chunk (float32 tensors)."""

    def __init__(self, x: np.ndarray, bounds: np.ndarray, gen: torch.Generator) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1)
        _, self.rows, self.cols = x.shape
        self.plane = self.rows * self.cols
        self.start = torch.from_numpy(bounds[:-1])
        self.count = torch.from_numpy(np.diff(bounds))
        self.gen = gen

    def __call__(self, per_segment: int) -> tuple[torch.Tensor, torch.Tensor]:
        segments = len(self.count)
        u = torch.rand(segments, per_segment, generator=self.gen, dtype=torch.float64)
        flat = (u * (self.count[:, None] * self.plane)).long()
        view = flat // self.plane
        rem = flat % self.plane
        row, col = rem // self.cols, rem % self.cols
        n_seg = self.count[:, None].to(torch.float32)
        coords = torch.stack(
            [
                -1.0 + (2.0 * view + 1.0) / n_seg,
                -1.0 + (2.0 * row + 1.0) / self.rows,
                -1.0 + (2.0 * col + 1.0) / self.cols,
            ],
            dim=-1,
        ).to(torch.float32)
        target = self.x[(self.start[:, None] + view) * self.plane + rem]
        return coords, target


def learning_rate(step: int, total: int, peak: float) -> float:
    """Cosine decay from ``peak`` to ``peak / 20`` over ``total`` steps."""
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0))))


def fit_siren(
    x: np.ndarray,
    stack: SirenStack,
    *,
    steps: int,
    time_budget: float | None = None,
    quant_noise: float | None = None,
    init: list[torch.Tensor] | None = None,
    peak_lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> FitReport:
    """Fit ``stack`` (in place) to the normalised chunk ``x`` (n_views, rows, cols).

    ``steps`` Adam steps of :data:`FIT_BATCH` points (fewer if ``time_budget`` seconds
    would be exceeded: the step count is fixed after timing the first steps); the last
    :data:`QAT_FRACTION` of them see weights fake-quantised (with respect to ``init``)
    when ``quant_noise`` is given: at the step whose quantisation noise is ``quant_noise``
    times the training MSE at that point.  ``progress`` shows a bar (None: on a terminal).

    Returns the report; ``report.sensitivity`` is what :func:`quantise` needs.
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    sampler = _Sampler(x, segment_bounds(x.shape[0], stack.segments), gen)
    smallest = int(np.diff(segment_bounds(x.shape[0], stack.segments)).min()) * x[0].size
    per_segment = max(64, min(FIT_BATCH // stack.segments, smallest))
    opt = torch.optim.Adam(stack.parameters(), lr=peak_lr)
    total = steps
    qat_from = total if quant_noise is None else int(total * (1 - QAT_FRACTION))
    fake: Callable[[], list[torch.Tensor]] | None = None
    sensitivity: list[float] | None = None
    loss_value = float("nan")
    step = 0
    with tqdm(
        total=total,
        desc="siren fit",
        unit="step",
        disable=None if progress is None else not progress,
    ) as bar:
        while step < total:
            if step == 16 and time_budget is not None:
                per_step = (time.perf_counter() - t0) / step
                total = max(step + 1, min(total, int(time_budget / per_step)))
                qat_from = total if quant_noise is None else int(total * (1 - QAT_FRACTION))
                bar.total = total
            if step == qat_from and quant_noise is not None:
                sensitivity = sensitivities(stack, sampler(per_segment)[0])
                rel = relative_step_for(quant_noise * loss_value, stack.arch.n_params)
                fake = _fake_quantiser(stack, init, rel, sensitivity)
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, total, peak_lr)
            coords, target = sampler(per_segment)
            pred = stack(coords, fake() if fake is not None else None)
            loss = torch.mean((pred - target) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(mse=f"{loss_value:.2e}")
    if sensitivity is None:
        sensitivity = sensitivities(stack, sampler(per_segment)[0])
    return FitReport(step, time.perf_counter() - t0, loss_value, sensitivity)


def _fake_quantiser(
    stack: SirenStack,
    init: list[torch.Tensor] | None,
    relative_step: float,
    sensitivity: list[float],
) -> Callable[[], list[torch.Tensor]]:
    """Straight-through fake quantisation at the steps :func:`quantise` will use (fixed
    from the weights at the start of quantisation-aware fine-tuning)."""
    tensors = stack.tensors()
    init = init or zero_init(stack)
    quantised = quantise(stack, init, relative_step, sensitivity)
    steps = [quant_step(e) for e in quantised.exponents]

    def weights() -> list[torch.Tensor]:
        out = []
        for w, w0, s in zip(tensors, init, steps, strict=True):
            q = w0 + torch.round((w - w0) / s) * s
            out.append(w + (q - w).detach())
        return out

    return weights


def zero_init(stack: SirenStack) -> list[torch.Tensor]:
    """All-zero reference weights (no meta-learned initialisation)."""
    return [torch.zeros_like(t[:1]).detach() for t in stack.tensors()]


# ---------------------------------------------------------------- decoding
def evaluate(
    arch: SirenArch,
    weights: list[torch.Tensor],
    bounds: np.ndarray,
    segment: int,
    views: np.ndarray,
    rows: int,
    cols: int,
) -> np.ndarray:
    """Grid integers ``g`` (int32, (len(views), rows, cols)) of one segment's views:
    ``rint((y + 1) / 2 * 2**GRID_BITS)`` of the float64 network output ``y`` (the output
    grid of :mod:`~ctpress.learned.fixed_point`, clipped to [0, 2**GRID_BITS]).

    The first layer is separable: every input feature depends on one coordinate axis, so
    its pre-activation is ``A[view] + B[row] + C[col]``, and its sine is assembled from
    ``exp(iA) exp(iB) exp(iC)`` with products and sums only (no per-value sine).
    """
    n_seg = int(bounds[segment + 1] - bounds[segment])
    params = [w[segment].to(torch.float64) for w in weights]
    axes = [axis_coordinates(n_seg)[views], axis_coordinates(rows), axis_coordinates(cols)]
    w0, b0 = params[0], params[1]
    parts = []
    for k, axis in enumerate(axes):
        coords = torch.zeros(len(axis), 3, dtype=torch.float64)
        coords[:, k] = torch.from_numpy(axis)
        features = encode_coordinates(coords, arch)
        own = torch.arange(features.shape[1]) % 3 == k  # feature blocks are (view, row, col)
        z = features[:, own] @ w0[:, own].T
        if k == 0:
            z = z + b0
        z = arch.omega0 * z
        parts.append((torch.cos(z), torch.sin(z)))
    (ca, sa), (cb, sb), (cc, sc) = parts
    out = np.empty((len(views), rows, cols), dtype=np.float64)
    # blocks of whole views, or of rows of one view when a view is larger than a block:
    # the temporaries stay within _EVAL_BLOCK x width values whatever the view's size
    per_block = max(1, _EVAL_BLOCK // (rows * cols))
    row_block = rows if rows * cols <= _EVAL_BLOCK else max(1, _EVAL_BLOCK // cols)
    n_layers = arch.depth + 1
    with torch.no_grad():
        for i, r in itertools.product(range(0, len(views), per_block), range(0, rows, row_block)):
            v, rr = slice(i, i + per_block), slice(r, r + row_block)
            # exp(i(A + B)) per (view, row), then the imaginary part of times exp(iC)
            re = ca[v, None, :] * cb[None, rr] - sa[v, None, :] * sb[None, rr]
            im = sa[v, None, :] * cb[None, rr] + ca[v, None, :] * sb[None, rr]
            h = re[:, :, None, :] * sc[None, None] + im[:, :, None, :] * cc[None, None]
            h = h.reshape(-1, arch.width)
            for k in range(1, n_layers):
                h = torch.addmm(params[2 * k + 1], h, params[2 * k].T)
                if k < n_layers - 1:
                    h = torch.sin(arch.omega0 * h)
            out[v, rr] = h.reshape(out[v, rr].shape).numpy()
    return fixed_point.to_grid((out + 1.0) * 0.5, 0, 2**fixed_point.GRID_BITS)


# ---------------------------------------------------------------- meta init
@functools.cache
def _meta_init(directory: str, config: str) -> tuple[tuple[torch.Tensor, ...], str] | None:
    wanted = json.loads(config)
    found = (e for e in store.entries(directory, META_METHOD) if e.get("config") == wanted)
    entry = next(found, None)
    if entry is None:
        return None
    data, digest = store.read_entry(directory, entry)
    tensors = safetensors.torch.load(data)
    keys = sorted(tensors, key=lambda k: (int(k[1:]), k[0] == "b"))
    return tuple(tensors[k].to(torch.float64) for k in keys), digest


store.register_cache(_meta_init.cache_clear)


def load_meta_init(arch: SirenArch) -> tuple[list[torch.Tensor], str] | None:
    """(per-tensor float64 initialisation with a leading segment axis of 1, SHA-256) of
    ``arch``, or None when ctpress ships none for it (see ``ctpress train siren``)."""
    found = _meta_init(str(store.weights_dir()), json.dumps(arch.to_dict(), sort_keys=True))
    if found is None:
        return None
    tensors, sha = found
    return list(tensors), sha


def save_meta_init(stack: SirenStack, path: Path, metadata: dict[str, Any]) -> str:
    """Write segment 0 of ``stack`` as a meta-learned initialisation (safetensors, with
    ``method``, ``config`` and provenance ``metadata`` in its header); returns SHA-256."""
    tensors = {
        f"{kind}{k}": getattr(stack, f"{kind}{k}").detach()[:1].contiguous().float()
        for k in range(stack.arch.depth + 1)
        for kind in "wb"
    }
    header = {
        "method": META_METHOD,
        "config": json.dumps(stack.arch.to_dict()),
        "metadata": json.dumps({**metadata, "config": stack.arch.to_dict()}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path), metadata=header)
    _meta_init.cache_clear()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def meta_train(
    arch: SirenArch,
    tasks: Callable[[np.random.Generator], np.ndarray],
    *,
    steps: int,
    inner_steps: int = 16,
    inner_batch: int = 4096,
    inner_lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> SirenStack:
    """Meta-learn an initialisation of ``arch`` with Reptile (Nichol et al. 2018).

    Each outer step draws a task (a normalised chunk (n_views, rows, cols) in [-1, 1]
    from ``tasks(rng)``), fits a copy of the current initialisation to it for
    ``inner_steps`` Adam steps, and moves the initialisation towards the result by a
    step size decaying linearly from 1 to 0.  Returns a one-segment stack holding the
    initialisation.
    """
    rng = np.random.default_rng(seed)
    init = SirenStack(arch, 1, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    disable = None if progress is None else not progress
    for step in tqdm(range(steps), desc="siren meta-init", unit="task", disable=disable):
        x = tasks(rng)
        fast = SirenStack(arch, 1)
        fast.load_state_dict(init.state_dict())
        sampler = _Sampler(x, segment_bounds(x.shape[0], 1), gen)
        opt = torch.optim.Adam(fast.parameters(), lr=inner_lr)
        for _ in range(inner_steps):
            coords, target = sampler(inner_batch)
            loss = torch.mean((fast(coords) - target) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        outer = 1.0 - step / steps
        with torch.no_grad():
            for p, q in zip(init.tensors(), fast.tensors(), strict=True):
                p += outer * (q - p)
    return init
