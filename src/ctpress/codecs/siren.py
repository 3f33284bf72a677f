"""SIREN implicit-neural-representation codec (``--codec siren``), see
:mod:`ctpress.learned.inr`.

Per chunk: a stack of SIRENs (one per view segment: the study's cascade) is fitted to every
stored value, its weights are quantised (quantisation-aware fine-tuning) and entropy-coded;
the optional residual layer adds ``--max-error`` / ``--lossless``.

Rate control:

- ``bpp``: architecture from the budget (width up to a decode-speed cap, then more
  segments), fit; beyond the largest network that pays, the residual layer fills the
  rest of the budget, else the finest quantisation step whose weights fit it;
- ``psnr``: fit, grow the network (up to :data:`_MAX_FITS` fits) until the target is met,
  then the coarsest quantisation step that still meets it; beyond, the residual layer;
- ``max_error`` E / ``lossless``: fit at the default size, then the residual with step
  2E (odd integer step on integer data; 1 for lossless).

Stream: side information (``_SIDE``), a CRC-32 per segment of the decoder's output grid,
the coded weights, the residual stream.  Normalisation, the output grid and its checks,
the residual layer and the residual searches come from the base
(:class:`ctpress.codecs.learned.ReconstructionCodec`); every search goes through
:func:`ctpress.codecs.search.solve`.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptFileError, InputError, RateControlError
from ..learned import fixed_point, residual
from .base import _to_output, decoded_like
from .learned import (
    _BPP_ACCEPT,
    _MSE_ACCEPT,
    ReconstructionCodec,
    ReconstructionSession,
    check_grid,
    check_weights,
    largest_below,
    weights_tag,
)
from .registry import register_codec
from .settings import int_setting, number_setting

if TYPE_CHECKING:
    import torch

    from ..learned.models.siren import SirenArch, SirenStack
_MAGIC = b"CTSR"
_VERSION = 1
# magic, version, flags, segments, width, depth, encoding, frequencies, omega0,
# offset, scale, residual step, weight bytes, meta-init sha256[:8]
_SIDE = struct.Struct("<4sBBHHBBBxfdddI8s")
_FLAG_INTEGER = 1
_FLAG_RESIDUAL = 2
_FLAG_META_INIT = 4
#: Hidden widths the rate control picks from.
WIDTHS = (8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128)
#: Largest architecture fields the encoder accepts (its settings) and the decoder reads
#: (its streams): beyond them a stream is damaged, refused before anything is built.
MAX_WIDTH = 1024
MAX_DEPTH = 16
MAX_SEGMENTS = 65535  # a u16 in the stream
MAX_FREQUENCIES = 16
MAX_OMEGA0 = 1e4
MAX_STEPS = 10**7
#: Weights of all segments of a chunk: at most one per value of the chunk, or this many.
MIN_WEIGHT_CAP = 1 << 18
#: Largest parameter count of one SIREN before the rate control adds segments instead
#: (keeps decoding fast: each value costs about this many multiply-adds).
MAX_SEGMENT_PARAMS = 2400
#: Fewest views per segment.
MIN_SEGMENT_VIEWS = 4
#: Weight quantisation noise the network is fine-tuned for (fraction of the fitting MSE).
DEFAULT_QUANT_NOISE = 0.25
#: Bits per weight assumed when sizing a network for a budget.
_BITS_PER_WEIGHT = 5.5
_MAX_FITS = 3
#: Starting guess of d log(weight bits) / d log(quantisation step): about
#: -1 / (ln 2 x bits per weight).
_WEIGHT_RATE_SLOPE = -1 / (math.log(2) * _BITS_PER_WEIGHT)
#: Most float32 evaluations of the quantisation-step search under a PSNR target.
_PSNR_STEP_PROBES = 6
#: First network size tried for a PSNR target (bits of weights: per value, at least).
_PSNR_START_BPP = 0.01
#: Largest network a bpp target buys (bits per value of the weights); beyond it, more
#: weights fit too slowly to pay on 2 CPU cores, and the residual layer takes the rest.
_MAX_NETWORK_BPP = 0.06
#: ... but never below this many bits of weights when the target allows them.
_MIN_NETWORK_BITS = 8000.0
#: Default network size of the residual modes (bits per value of the weights).
_RESIDUAL_MODE_BPP = 0.02


def max_weights(n_values: int) -> int:
    """Most weights (all segments) the networks of a chunk of ``n_values`` values may
    have: the decoder holds about 100 bytes per weight while decoding them."""
    return max(n_values, MIN_WEIGHT_CAP)


@dataclass(eq=False)
class _Fit:
    """A fitted stack and what the stream needs of it (hashed by identity: an operating
    point is a fit and a quantisation step)."""

    arch: SirenArch
    segments: int
    stack: SirenStack
    init: list[torch.Tensor]
    init_sha: str | None
    loss: float
    sensitivity: list[float]

    def relative_step(self, noise: float) -> float:
        """Quantisation step adding ``noise`` times the fitting MSE."""
        from ..learned import inr

        return inr.relative_step_for(noise * self.loss, self.arch.n_params * self.segments)


#: Operating point of the SIREN codec: a fit and its relative quantisation step.
SirenOp = tuple[_Fit, float]


def plan_network(
    n_values: int, n_views: int, budget_bits: float, base: SirenArch
) -> tuple[SirenArch, int]:
    """(architecture, segments) whose weights fit about ``budget_bits``."""
    params = max(budget_bits / _BITS_PER_WEIGHT, 1.0)
    max_segments = max(1, n_views // MIN_SEGMENT_VIEWS)

    def arch_of(width: int) -> SirenArch:
        return replace(base, width=width)

    fitting = [w for w in WIDTHS if arch_of(w).n_params <= min(params, MAX_SEGMENT_PARAMS)]
    width = fitting[-1] if fitting else WIDTHS[0]
    segments = int(min(max_segments, max(1, round(params / arch_of(width).n_params))))
    per_segment = params / segments
    larger = [w for w in WIDTHS if arch_of(w).n_params <= per_segment]
    if larger and larger[-1] > width:
        width = larger[-1]
    return arch_of(width), segments


class SirenSession(ReconstructionSession[SirenOp]):
    """Encoder state of one chunk: values normalised to [-1, 1], fits and their streams."""

    def __init__(self, codec: Siren, x: np.ndarray) -> None:
        super().__init__(codec.codec_id, x, x.shape)
        self.codec = codec
        self.normalised = (2.0 * self.unit() - 1.0).astype(np.float32)
        self._networks: dict[SirenOp, tuple[bytes, bytes, np.ndarray]] = {}

    def fit(self, arch: SirenArch, segments: int) -> _Fit:
        import torch

        from ..learned import inr
        from ..learned.models.siren import SirenStack

        codec = self.codec
        stack = SirenStack(arch, segments, seed=codec.seed)
        meta = inr.load_meta_init(arch) if codec.meta_init else None
        if meta is not None:
            init, sha = meta
            with torch.no_grad():
                for t, t0 in zip(stack.tensors(), init, strict=True):
                    t.copy_(t0.to(t.dtype).expand_as(t))
        else:
            init, sha = inr.zero_init(stack), None
        report = inr.fit_siren(
            self.normalised,
            stack,
            steps=codec.steps,
            time_budget=None if codec.time_budget is None else codec.time_budget / _MAX_FITS,
            quant_noise=codec.quant_noise,
            peak_lr=codec.learning_rate,
            init=[t.to(torch.float32) for t in init],
            seed=codec.seed,
        )
        init64 = [t.to(torch.float64) for t in init]
        return _Fit(arch, segments, stack, init64, sha, report.loss, report.sensitivity)

    def approx_values(self, fit: _Fit, relative_step: float) -> np.ndarray:
        """Float32 evaluation of the quantised network (rate search only), data units."""
        import torch

        from ..learned import inr

        quantised = inr.quantise(fit.stack, fit.init, relative_step, fit.sensitivity)
        weights = quantised.dequantise(fit.init)
        n, rows, cols = self.x.shape
        bounds = inr.segment_bounds(n, fit.segments)
        out = np.empty(self.x.shape, dtype=np.float64)
        with torch.no_grad():
            for s in range(fit.segments):
                views = np.arange(bounds[s + 1] - bounds[s])
                coords = inr.grid_coordinates(views, len(views), rows, cols)
                params = [w[s : s + 1].float() for w in weights]
                y = fit.stack(torch.from_numpy(coords).float()[None], params)[0].numpy()
                out[bounds[s] : bounds[s + 1]] = y.reshape(len(views), rows, cols)
        return decoded_like(self.offset + self.scale * (out + 1.0) / 2.0, self.x).astype(np.float64)

    def network(self, op: SirenOp) -> tuple[bytes, bytes, np.ndarray]:
        """(coded weights, per-segment CRC-32s, decoded network values in data units) of
        the fit quantised at the relative step of ``op`` (cached: the float64 evaluation
        is costly)."""
        if op not in self._networks:
            from ..learned import inr

            fit, relative_step = op
            quantised = inr.quantise(fit.stack, fit.init, relative_step, fit.sensitivity)
            weights = quantised.dequantise(fit.init)
            n, rows, cols = self.x.shape
            bounds = inr.segment_bounds(n, fit.segments)
            grids = [
                inr.evaluate(fit.arch, weights, bounds, s,
                             np.arange(bounds[s + 1] - bounds[s]), rows, cols)
                for s in range(fit.segments)
            ]  # fmt: skip
            checks = struct.pack(f"<{fit.segments}I", *map(fixed_point.grid_check, grids))
            recon = self.grid_values(np.concatenate(grids))
            self._networks[op] = (quantised.encode(), checks, recon)
        return self._networks[op]

    def prediction(self, op: SirenOp) -> np.ndarray:
        return self.network(op)[2]

    def pack(self, op: SirenOp, step: float | None, tail: bytes) -> bytes:
        from ..learned.models.siren import ENCODINGS

        fit = op[0]
        weight_bytes, checks, _ = self.network(op)
        flags = (_FLAG_INTEGER if self.integer else 0) | (_FLAG_META_INIT if fit.init_sha else 0)
        if step is not None:
            flags |= _FLAG_RESIDUAL
        arch = fit.arch
        side = _SIDE.pack(
            _MAGIC, _VERSION, flags, fit.segments, arch.width, arch.depth,
            ENCODINGS.index(arch.encoding), arch.frequencies, arch.omega0, self.offset,
            self.scale, step or 0.0, len(weight_bytes),
            weights_tag(fit.init_sha) if fit.init_sha else bytes(8),
        )  # fmt: skip
        return side + checks + weight_bytes + tail


def _parse(
    stream: bytes, shape: tuple[int, int, int]
) -> tuple[tuple[Any, ...], SirenArch, np.ndarray]:
    """Side information, architecture and per-segment checks of a stream, every field
    checked against the encoder's limits and the chunk's ``shape`` (n, rows, cols)."""
    from ..learned.models.siren import ENCODINGS, SirenArch

    if len(stream) < _SIDE.size:
        raise CorruptFileError("siren stream is truncated")
    side = _SIDE.unpack_from(stream)
    (magic, version, flags, segments, width, depth, encoding, frequencies, omega0, offset,
     scale, step) = side[:12]  # fmt: skip
    if magic != _MAGIC or version != _VERSION:
        raise CorruptFileError(f"not a version-{_VERSION} siren stream")
    if flags & ~(_FLAG_INTEGER | _FLAG_RESIDUAL | _FLAG_META_INIT):
        raise CorruptFileError(f"siren stream has unknown flags {flags:#04x}")
    if not (
        1 <= width <= MAX_WIDTH
        and 1 <= depth <= MAX_DEPTH
        and encoding < len(ENCODINGS)
        and frequencies <= MAX_FREQUENCIES
        and 0 < omega0 < MAX_OMEGA0
    ):
        raise CorruptFileError(
            f"siren stream has an invalid architecture (width {width}, depth {depth}, "
            f"encoding {encoding}, frequencies {frequencies}, omega0 {omega0:g})"
        )
    arch = SirenArch(width, depth, float(omega0), ENCODINGS[encoding], frequencies)
    n_views = shape[0]
    if not 1 <= segments <= n_views:
        raise CorruptFileError(f"siren stream has {segments} segments for {n_views} views")
    cap = max_weights(math.prod(shape))
    if segments * arch.n_params > cap:
        raise CorruptFileError(
            f"siren stream has {segments} x {arch.n_params} weights, more than a chunk of "
            f"{math.prod(shape)} values may have ({cap})"
        )
    if not (math.isfinite(offset) and math.isfinite(scale) and scale > 0):
        raise CorruptFileError("siren stream has an invalid value range")
    if not math.isfinite(step) or (flags & _FLAG_RESIDUAL and not step > 0):
        raise CorruptFileError("siren stream has an invalid residual step")
    end = _SIDE.size + 4 * segments
    if len(stream) < end:
        raise CorruptFileError("siren stream is truncated")
    checks = np.frombuffer(stream[_SIDE.size : end], dtype="<u4")
    return side, arch, checks


def decode_siren(stream: bytes, shape: tuple[int, ...], start: int = 0, stop: int | None = None
                 ) -> np.ndarray:  # fmt: skip
    """Decode views ``start:stop`` of a siren chunk of ``shape`` (float64, data units).

    Only the segments overlapping ``start:stop`` are evaluated, and only at those views;
    a segment evaluated completely is checked against the encoder's CRC-32 (a partly
    evaluated one cannot be)."""
    import torch

    from ..learned import inr

    n, rows, cols = shape
    side, arch, checks = _parse(stream, (n, rows, cols))
    (_, _, flags, segments, *_, offset, scale, step, n_weights, sha8) = side
    stop = n if stop is None else stop
    init: list[torch.Tensor]
    if flags & _FLAG_META_INIT:
        meta = inr.load_meta_init(arch)
        what = f"meta-learned initialisation of {arch}"
        check_weights("siren", what, sha8, None if meta is None else meta[1])
        assert meta is not None
        init = meta[0]
    else:
        init = [torch.zeros((1, *s)) for s in _tensor_shapes(arch)]
    pos = _SIDE.size + 4 * segments
    if pos + n_weights > len(stream):
        raise CorruptFileError("siren stream is truncated")
    shapes = [(segments, *s) for s in _tensor_shapes(arch)]
    quantised = inr.QuantisedWeights.decode(stream[pos : pos + n_weights], shapes)
    weights = quantised.dequantise(init)
    # the residual first: its block table is checked against the shape before the
    # networks are evaluated at that shape
    q = None
    if flags & _FLAG_RESIDUAL:
        q = residual.decode_residual(stream[pos + n_weights :], (n, rows, cols))[start:stop]
    elif pos + n_weights != len(stream):
        raise CorruptFileError("siren stream has trailing bytes")
    bounds = inr.segment_bounds(n, segments)
    grids = []
    for s in range(segments):
        a, b = max(start, int(bounds[s])), min(stop, int(bounds[s + 1]))
        if a >= b:
            continue
        grid = inr.evaluate(arch, weights, bounds, s, np.arange(a, b) - bounds[s], rows, cols)
        if b - a == bounds[s + 1] - bounds[s]:
            check_grid("siren", grid, int(checks[s]))
        grids.append(grid)
    empty = np.empty((0, rows, cols), dtype=np.int32)
    values = fixed_point.grid_values(np.concatenate(grids) if grids else empty, offset, scale,
                                     bool(flags & _FLAG_INTEGER))  # fmt: skip
    if q is not None:
        values = residual.dequantise(values, q, step)
    return values


def _tensor_shapes(arch: SirenArch) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    for fan_out, fan_in in arch.layer_shapes():
        shapes += [(fan_out, fan_in), (fan_out,)]
    return shapes


@register_codec
class Siren(ReconstructionCodec[SirenOp]):
    """SIREN implicit neural representation per chunk (cascade of segments along views),
    quantisation-aware fitted and entropy-coded weights, optional residual layer.

    Parameters
    ----------
    mode, value, data_range
        Rate control, as for every codec.
    width, segments : int, optional
        Hidden width and number of view segments (default: chosen by the rate control).
    depth : int
        Hidden sine layers (2: at equal size, better than 3 on CT projections, and faster
        to decode since the first layer needs no per-value sine).
    omega0 : float
        Sine frequency factor (SIREN's 30).
    encoding : {"none", "fourier"}
        Positional encoding of (view, row, column); ``frequencies`` octaves.
    steps : int
        Adam steps per fit (each of 32768 points).
    learning_rate : float
        Peak Adam learning rate (cosine decay to 1/20 of it).
    time_budget : float, optional
        Seconds of fitting per chunk (caps ``steps``; the output then depends on speed).
    quant_noise : float
        Weight quantisation noise, as a fraction of the fitting MSE, that the network is
        fine-tuned for (bpp/psnr targets then adjust the step).
    meta_init : bool
        Start from (and code weights relative to) the meta-learned initialisation shipped
        for the architecture, when there is one (off by default: with full-length fits the
        Reptile initialisations measured so far end up worse than SIREN's own).
    seed : int
        Seed of the initialisation and the point sampling.
    """

    codec_id = "siren"
    family = "learned"
    description = "SIREN implicit neural representation (cascade along views) + residual"
    #: One network (cascade) per up to 64 MiB of input: a larger fit shares its weights over
    #: more data, and the container's per-chunk bytes are paid once.
    preferred_chunk_bytes = 64 << 20

    def __init__(
        self,
        *,
        width: int | None = None,
        depth: int = 2,
        segments: int | None = None,
        omega0: float = 30.0,
        encoding: str = "none",
        frequencies: int = 4,
        steps: int = 2000,
        learning_rate: float = 1e-3,
        time_budget: float | None = None,
        quant_noise: float = DEFAULT_QUANT_NOISE,
        meta_init: bool = False,
        seed: int = 0,
        **rate: Any,
    ) -> None:
        super().__init__(**rate)
        name = self.codec_id
        self.width = None if width is None else int_setting(name, "width", width, 1, MAX_WIDTH)
        self.depth = int_setting(name, "depth", depth, 1, MAX_DEPTH)
        self.segments = (
            None if segments is None else int_setting(name, "segments", segments, 1, MAX_SEGMENTS)
        )
        self.omega0 = number_setting(name, "omega0", omega0, 0, MAX_OMEGA0)
        if float(np.float32(self.omega0)) != self.omega0:  # the stream holds a float32
            raise InputError(f"siren setting omega0={omega0!r}: must be a float32 value")
        from ..learned.models.siren import ENCODINGS

        if encoding not in ENCODINGS:
            raise InputError(f"siren setting encoding={encoding!r}: must be one of {ENCODINGS}")
        self.encoding = encoding
        self.frequencies = int_setting(name, "frequencies", frequencies, 0, MAX_FREQUENCIES)
        self.steps = int_setting(name, "steps", steps, 1, MAX_STEPS)
        self.learning_rate = number_setting(name, "learning_rate", learning_rate, 0, 1)
        self.time_budget = (
            None if time_budget is None else number_setting(name, "time_budget", time_budget, 0)
        )
        self.quant_noise = number_setting(name, "quant_noise", quant_noise, 0, 100, hi_open=False)
        if not isinstance(meta_init, bool | np.bool_):
            raise InputError(f"siren setting meta_init={meta_init!r}: must be true or false")
        self.meta_init = bool(meta_init)
        self.seed = int_setting(name, "seed", seed, -(2**63), 2**64 - 1)  # torch's seed range

    def _options(self) -> dict[str, Any]:
        return {
            "width": self.width, "depth": self.depth, "segments": self.segments,
            "omega0": self.omega0, "encoding": self.encoding, "frequencies": self.frequencies,
            "steps": self.steps, "learning_rate": self.learning_rate,
            "time_budget": self.time_budget,
            "quant_noise": self.quant_noise, "meta_init": self.meta_init, "seed": self.seed,
        }  # fmt: skip

    # ---------------------------------------------------------------- network size
    def _network(self, x: np.ndarray, budget_bits: float) -> tuple[SirenArch, int]:
        from ..learned.models.siren import SirenArch

        base = SirenArch(self.width or 32, self.depth, self.omega0, self.encoding, self.frequencies)
        arch, segments = plan_network(x.size, x.shape[0], budget_bits, base)
        if self.width is not None:
            arch = base
        if self.segments is not None:
            segments = min(self.segments, x.shape[0])
        if segments * arch.n_params > max_weights(x.size):
            raise InputError(
                f"siren networks of {segments} x {arch.n_params} weights are too large for a "
                f"chunk of {x.size} values (at most {max_weights(x.size)} weights); choose a "
                "smaller width, depth or number of segments"
            )
        return arch, segments

    # ---------------------------------------------------------------- decoding
    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        return decode_siren(stream, tuple(shape)).astype(work_dtype)

    def decode_views(
        self, buf: bytes | bytearray | memoryview, start: int, stop: int
    ) -> np.ndarray:
        """Views ``start:stop`` of a chunk, evaluating the networks at those views only."""
        enc, shape, dtype = self._read_chunk(buf)
        shape3 = shape if len(shape) == 3 else (1, *shape)
        if not 0 <= start < stop <= shape3[0]:
            raise InputError(f"view range {start}:{stop} is outside the chunk's 0:{shape3[0]}")
        with self._stream_errors():
            values = decode_siren(enc.stream, shape3, start, stop)
            return _to_output(values, enc.info, dtype)

    # ---------------------------------------------------------------- encoding
    def _session(self, x: np.ndarray) -> SirenSession:
        return SirenSession(self, x)

    def _residual_points(self, s: ReconstructionSession[SirenOp]) -> list[SirenOp]:
        """The network at its default size (:data:`_RESIDUAL_MODE_BPP`)."""
        assert isinstance(s, SirenSession)
        fit = s.fit(*self._network(s.x, _RESIDUAL_MODE_BPP * s.x.size))
        return [(fit, fit.relative_step(self.quant_noise))]

    def _weight_bits(self, s: SirenSession, fit: _Fit, rel: float) -> float:
        """Bits/value of the stream without residual, from the coded weights alone."""
        from ..learned import inr

        n_bytes = _SIDE.size + 4 * fit.segments
        n_bytes += len(inr.quantise(fit.stack, fit.init, rel, fit.sensitivity).encode())
        return 8.0 * n_bytes / s.x.size

    def _search_bpp(
        self, s: ReconstructionSession[SirenOp], target: float
    ) -> tuple[SirenOp, float | None]:
        assert isinstance(s, SirenSession)
        side_bits = 8.0 * (_SIDE.size + 4 * 64)
        budget = target * s.x.size - side_bits
        largest = max(_MAX_NETWORK_BPP * s.x.size, _MIN_NETWORK_BITS)
        arch, segments = self._network(s.x, max(min(budget, largest), 64.0))
        fit = s.fit(arch, segments)
        rel = fit.relative_step(self.quant_noise)
        if budget > largest:
            # the network is as large as it pays to fit: the residual layer takes the rest
            bits = self._weight_bits(s, fit, rel)
            step = None if bits > target else self._fill_bpp(s, (fit, rel), target, bits)
            if step is not None:
                return (fit, rel), step
            # no residual fits in what is left: spend it on the weights
        # the finest quantisation whose weights fit (finer steps only add bits, up to
        # ~10 bits per weight here; coarser ones lose)
        rel_fine = fit.relative_step(self.quant_noise / 1e6)
        rel_coarse = fit.relative_step(self.quant_noise * 1e3)
        found = largest_below(
            functools.partial(self._weight_bits, s, fit), target, rel_fine, rel_coarse,
            increasing=False, accept=_BPP_ACCEPT, start=rel, slope=_WEIGHT_RATE_SLOPE,
        )  # fmt: skip
        if found is None:
            raise RateControlError(
                f"codec 'siren' cannot reach {target:g} bits/value on this data (the smallest "
                f"network needs {self._weight_bits(s, fit, rel_coarse):.3g}); choose a larger "
                "target, fewer segments or a smaller width"
            )
        return (fit, found[0]), None

    def _search_psnr(
        self, s: ReconstructionSession[SirenOp], mse_target: float
    ) -> tuple[SirenOp, float | None]:
        assert isinstance(s, SirenSession)
        budget = max(_PSNR_START_BPP * s.x.size, _MIN_NETWORK_BITS)
        fit = None
        approx_mse: dict[float, float] = {}

        def mse_at(r: float) -> float:
            """MSE of the float32 evaluation of ``fit`` quantised at ``r`` (cached)."""
            assert fit is not None
            if r not in approx_mse:
                approx_mse[r] = s.mse(s.approx_values(fit, r))
            return approx_mse[r]

        for _ in range(_MAX_FITS):
            fit = s.fit(*self._network(s.x, budget))
            approx_mse.clear()
            if mse_at(fit.relative_step(self.quant_noise)) <= mse_target:
                break
            if self.width is not None and self.segments is not None:
                break  # fixed architecture: nothing to grow
            budget *= 3.0
        assert fit is not None
        rel = fit.relative_step(self.quant_noise)
        if mse_at(rel) <= mse_target:
            # the coarsest step that still meets the target: the MSE is about
            # fit x (1 + noise x (r / rel)**2), noise the weight quantisation noise
            noise = max(self.quant_noise, 1e-6)
            fitting = mse_at(rel) / (1 + noise)
            ratio = math.sqrt(max(mse_target / max(fitting, 1e-300) - 1, 0.0) / noise)
            found = largest_below(
                mse_at, mse_target, rel, 16 * rel, increasing=True, accept=_MSE_ACCEPT,
                start=rel * min(max(ratio, 1.0), 16.0),
                slope=max(2 * (1 - fitting / mse_target), 0.05),
                max_probes=_PSNR_STEP_PROBES,
            )  # fmt: skip
            coarse = rel if found is None else found[0]
            if s.mse(s.prediction((fit, coarse))) <= mse_target:
                return (fit, coarse), None
        # beyond what the network reaches: the residual layer
        step = self._fill_psnr(s, (fit, rel), mse_target)
        if step is None:
            raise RateControlError(
                f"codec 'siren' cannot reach {self.value:g} dB PSNR on this data; choose "
                "another target or codec"
            )
        return (fit, rel), step
