"""Issue 14 benchmark: lossless, near-lossless and noise-bounded coding of raw CT data
(classical codecs, and the ``convlstm`` predictive codec with its predictor ablation
wherever that codec id is registered), the Poisson entropy floor, and speed.

Scans (built here, fixed seeds):

* held-out simulated scans: the volumes :data:`ctpress.learned.data.HELD_OUT_VOLUMES`
  (never used in training) projected noise-free (``simulate_scan(i0=None)``) at the
  clinical scanner's angular step per channel width (:func:`ctpress.sim.clinical_views`;
  again at 90 and 180 views per turn, 3-6x sparser), then stored as a scanner stores raw
  data: Poisson counts ``Poisson(i0 exp(-p))`` as uint16 at
  ``i0`` = 2e3, 1e4 and 5e4 (cone beam, 64 rows, flat and cylindrical detector; rows=1
  fan-beam sinograms), plus one scan of line integrals on a fine grid (Gaussian noise of
  the Poisson variance ``exp(p) / i0``, quantised with :func:`quantise_uint16`: no unused
  codes between neighbours, unlike ``-log`` of integer counts);
* real: the held-out last third of the views of the Savu and the neutron projections
  (:func:`ctpress.learned.data.real_scans`);
* the default scan (:func:`ctpress.sim.default_scan`: its volume is a training volume, so
  it is not held out; uint16 ``-log`` of integer counts).

Sizes are the bytes of each codec's ``encode()`` output (chunk headers included; chunks as
ctpress's container cuts them for that codec, without the file's own header and index),
and every decoded value is checked (bit-exact, ``|error| <= E``, ``|error| <= f sigma``).

Usage::

    python benchmarks/bench_predictive.py --out results/benchmarks [--quick]

writes ``bench_predictive.json`` and ``bench_predictive.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc2
import imagecodecs
import numpy as np
import zstandard

import ctpress
from ctpress.api import make_codec, noise_model
from ctpress.bench import prepare_recon, run_info
from ctpress.codecs import Codec
from ctpress.codecs.noise_bound import allowed_error
from ctpress.codecs.registry import get_codec, get_codec_class, list_codec_ids
from ctpress.container.writer import chunk_contexts, chunk_views_for
from ctpress.errors import CtpressError
from ctpress.frames import to_images
from ctpress.learned.data import HELD_OUT_VOLUMES, load_volume, real_scans
from ctpress.metrics import recon_metrics
from ctpress.noise import NoiseModel
from ctpress.scan import DetectorShape, GeometryKind, Scan
from ctpress.sim import clinical_views, default_scan, simulate_scan
from ctpress.sim.simulate import quantise_uint16

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
REAL_FILES = (
    "savu_i12_raw_projections_91x135x160_uint16.npy",
    "sarepy_neutron_sinogram_459x503_uint16.npy",
)
#: The Savu dark frame: its mean is the dark offset of the Savu counts' noise model.
SAVU_DARK = "savu_i12_dark_135x160_float32.npy"
LEARNED = "convlstm"
#: The ablation of the learned codec's ``predictor`` setting (targets and speed: its default).
PREDICTORS = ("spatial", "previous", "both", "convlstm", "all")
ERROR_BOUNDS = (1, 2, 4, 8)
NOISE_FRACTIONS = (0.1, 0.25, 0.5)
#: Issue 14's targets for the learned codec.
TARGET_LOSSLESS, TARGET_LOSSLESS_MULTIROW = 1.05, 1.10
TARGET_NEAR_SMALLER = 0.08
TARGET_NOISE_RATIO, TARGET_NOISE_RISE = 4.5, 0.02
TARGET_MB_S = 2.0
#: Taps (views back, rows, columns) of the least-squares reference
#: (:func:`least_squares_reference_bits`): causal neighbours in the view, then the views
#: before it; sinograms (one row) reach further along the views.
LS_TAPS_SINOGRAM = (
    *((0, 0, dc) for dc in (-1, -2, -3)),
    *((dt, 0, dc) for dt in (1, 2) for dc in range(-3, 4)),
    *((3, 0, dc) for dc in (-1, 0, 1)),
)
LS_TAPS_MULTIROW = (
    *((0, dr, dc) for dr, dc in ((-1, 0), (0, -1), (-1, -1), (-1, 1), (-2, 0), (0, -2))),
    *((0, dr, dc) for dr, dc in ((-1, -2), (-1, 2), (-2, -1), (-2, 1))),
    *((1, dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)),
    *((2, 0, dc) for dc in (-1, 0, 1)),
)
#: Residual contexts of the least-squares reference (half-octaves of the neighbours' error).
LS_CONTEXTS = 24
#: Poisson means at or above this use the asymptotic entropy series (error < 1e-6 bits) ...
_ASYMPTOTIC_LAMBDA = 30.0
#: ... below it the exact sum runs over k < this (tail mass < 1e-20).
_EXACT_TERMS = 150
#: Codes whose neighbourhood expects this many values count in :func:`unused_code_fraction`.
_DENSE_COUNT = 8.0


# ----------------------------------------------------------------------- entropy floors
def poisson_entropy_bits(lam: np.ndarray) -> np.ndarray:
    """Entropy in bits of Poisson(``lam``) for each mean in ``lam`` (any shape, >= 0).

    Means below :data:`_ASYMPTOTIC_LAMBDA`: the exact sum of ``-P(k) log2 P(k)`` over
    k < :data:`_EXACT_TERMS`; above: the asymptotic series ``0.5 ln(2 pi e lam) - 1/(12 lam) -
    1/(24 lam^2) - 19/(360 lam^3)`` nats."""
    lam = np.asarray(lam, dtype=np.float64)
    out = np.empty(lam.shape)
    large = lam >= _ASYMPTOTIC_LAMBDA
    big = lam[large]
    nats = 0.5 * np.log(2 * np.pi * np.e * big) - 1 / (12 * big) - 1 / (24 * big**2)
    out[large] = (nats - 19 / (360 * big**3)) / math.log(2)
    small = lam[~large]
    k = np.arange(_EXACT_TERMS, dtype=np.float64)
    log_k_factorial = np.array([math.lgamma(v + 1) for v in k])
    result = np.empty(small.shape)
    for start in range(0, small.size, 1 << 15):
        part = small[start : start + (1 << 15), None]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_p = np.where(part > 0, k * np.log(part), np.where(k == 0, 0.0, -np.inf))
        log_p = log_p - part - log_k_factorial
        p = np.exp(log_p)
        result[start : start + len(part)] = -np.sum(p * np.where(p > 0, log_p, 0.0), axis=1)
    out[~large] = result / math.log(2)
    return out


def quantised_gaussian_entropy_bits(sigma: np.ndarray, step: float) -> np.ndarray:
    """Entropy in bits of Gaussian noise of std ``sigma`` rounded to a grid of ``step``:
    ``log2(sigma sqrt(2 pi e) / step)`` (exact to < 1e-6 bits for sigma >= step)."""
    return np.log2(np.asarray(sigma, dtype=np.float64) * math.sqrt(2 * math.pi * math.e) / step)


def _shifted(x: np.ndarray, views_back: int, dr: int, dc: int) -> np.ndarray:
    """``x[t - views_back, r + dr, c + dc]`` for every (t, r, c), 0 outside ``x``."""
    out = np.zeros_like(x)
    target, source = [], []
    for size, shift in zip(x.shape, (-views_back, dr, dc), strict=True):
        lo, hi = max(0, -shift), min(size, size - shift)
        target.append(slice(lo, max(lo, hi)))
        source.append(slice(lo + shift, max(lo, hi) + shift))
    out[tuple(target)] = x[tuple(source)]
    return out


def _laplace_bits(residual: np.ndarray) -> float:
    """Bits of integer ``residual`` under a discretised Laplacian of its median and mean
    absolute deviation (an ideal coder; the two parameters are not counted)."""
    centre = float(np.median(residual))
    spread = max(float(np.mean(np.abs(residual - centre))), 0.05)

    def cdf(z: np.ndarray) -> np.ndarray:
        below = 0.5 * np.exp(np.minimum(z - centre, 0) / spread)
        return np.where(z < centre, below, 1 - 0.5 * np.exp(-np.maximum(z - centre, 0) / spread))

    p = np.maximum(cdf(residual + 0.5) - cdf(residual - 0.5), 1e-12)
    return float(-np.log2(p).sum())


def least_squares_reference_bits(x: np.ndarray) -> float | None:
    """Bits/value of the reference issue 14 names for lossless coding: one linear
    predictor fitted by least squares to the whole scan ``x`` (n, rows, cols) over causal
    taps in the view and the views before (:data:`LS_TAPS_MULTIROW`, or
    :data:`LS_TAPS_SINOGRAM` for one row), its rounded residuals coded by an ideal coder
    with a discretised Laplacian per context (:data:`LS_CONTEXTS` half-octaves of the
    residuals at W, N (sinograms: WW) and in the previous view).  An oracle, not a codec:
    the weights and the Laplacians' parameters are fitted to the values they code and not
    counted.  Scored on the values whose taps all lie inside the scan (not the first views,
    nor the rows and columns at the edges; None: no such value)."""
    rows = x.shape[1]
    taps = LS_TAPS_SINOGRAM if rows == 1 else LS_TAPS_MULTIROW
    offsets = np.array([(-back, dr, dc) for back, dr, dc in taps])  # index offsets per axis
    before, after = np.maximum(-offsets.min(axis=0), 0), np.maximum(offsets.max(axis=0), 0)
    if np.any(before + after >= x.shape):
        return None
    inner = tuple(slice(b, size - a) for b, a, size in zip(before, after, x.shape, strict=True))
    values = x.astype(np.float64)
    target = values[inner]
    design = np.stack(
        [_shifted(values, *t)[inner].ravel() for t in taps] + [np.ones(target.size)], axis=1
    )
    weights, *_ = np.linalg.lstsq(design, target.ravel(), rcond=None)
    residual = np.round(target.ravel() - design @ weights).reshape(target.shape)
    magnitude = np.abs(residual)
    second = (0, -1, 0) if rows > 1 else (0, 0, -2)
    activity = sum(_shifted(magnitude, *t) for t in ((0, 0, -1), second, (1, 0, 0)))
    context = np.minimum((2 * np.log2(activity + 1)).astype(np.int64), LS_CONTEXTS - 1)
    bits = sum(_laplace_bits(residual[context == k]) for k in np.unique(context))
    return bits / residual.size


def unused_code_fraction(values: np.ndarray) -> float | None:
    """Fraction of an integer array's codes that never occur although the histogram
    around them (a 33-code moving average) expects at least :data:`_DENSE_COUNT` values
    there: gaps in the storage grid that a model could learn (a smooth distribution leaves
    fewer than 0.1 % of such codes empty).  None for float data, or where no code is that
    dense (too few values)."""
    if values.dtype.kind not in "ui":
        return None
    counts = np.bincount(values.ravel().astype(np.int64) - int(values.min()))
    expected = np.convolve(counts, np.ones(33) / 33, mode="same")
    dense = expected >= _DENSE_COUNT
    return float(np.mean(counts[dense] == 0)) if dense.any() else None


# ----------------------------------------------------------------------------- scans
@dataclass
class BenchScan:
    """One benchmark scan: stored values with geometry and metadata, where it came from,
    its noise entropy floor (bits/value; simulated scans only), and the noise model of its
    noise-bounded rows (None: ``noise_note`` says why)."""

    name: str
    scan: Scan
    source: str
    floor_bits: float | None = None
    noise: NoiseModel | None = None
    noise_note: str = ""
    multirow_simulated: bool = False

    def describe(self) -> dict[str, Any]:
        x = self.scan.array()
        unused = unused_code_fraction(x)
        return {
            "name": self.name,
            "source": self.source,
            "shape": list(x.shape),
            "dtype": x.dtype.name,
            "min": float(x.min()),
            "max": float(x.max()),
            "units": self.scan.metadata.get("units"),
            "unused_code_fraction": unused,
            "floor_bits_per_value": self.floor_bits,
            "noise_model": None if self.noise is None else self.noise.describe(),
            "noise_note": self.noise_note,
        }


@dataclass(frozen=True)
class Simulation:
    """A held-out simulated acquisition (noise-free projection, then noise at each dose)."""

    volume: str
    kind: GeometryKind
    rows: int
    cols: int
    views: int | None  # None: the clinical angular sampling (:func:`clinical_views`)
    detector: DetectorShape


@dataclass(frozen=True)
class Plan:
    """What a run measures (the full benchmark or ``--quick``)."""

    simulations: tuple[Simulation, ...]
    doses: tuple[float, ...]
    line_integral_dose: float
    efforts: tuple[int, ...]
    error_bounds: tuple[int, ...]
    noise_fractions: tuple[float, ...]
    speed_runs: int
    speed_dose: float  # speed is measured on the largest simulated scan at this dose
    real_views: int | None  # keep only this many held-out views of a real scan (None: all)


def full_plan() -> Plan:
    lung, head = HELD_OUT_VOLUMES
    return Plan(
        simulations=(
            Simulation(lung, "cone", 64, 192, None, "flat"),
            Simulation(head, "cone", 64, 192, None, "cylindrical"),
            Simulation(lung, "fan", 1, 256, None, "flat"),
            Simulation(head, "fan", 1, 256, None, "flat"),
            # the same, angularly sparse (4 and 2 degree steps: 3-6x fewer views than a
            # scanner takes at this channel pitch)
            Simulation(lung, "cone", 64, 192, 90, "flat"),
            Simulation(head, "cone", 64, 192, 90, "cylindrical"),
            Simulation(lung, "fan", 1, 256, 180, "flat"),
            Simulation(head, "fan", 1, 256, 180, "flat"),
        ),
        doses=(2e3, 1e4, 5e4),
        line_integral_dose=1e4,
        efforts=(3, 7, 9),
        error_bounds=ERROR_BOUNDS,
        noise_fractions=NOISE_FRACTIONS,
        speed_runs=3,
        speed_dose=1e4,
        real_views=None,
    )


def quick_plan() -> Plan:
    lung = HELD_OUT_VOLUMES[0]
    return Plan(
        simulations=(
            Simulation(lung, "cone", 16, 64, 12, "flat"),
            Simulation(lung, "fan", 1, 96, 48, "flat"),
        ),
        doses=(1e4,),
        line_integral_dose=1e4,
        efforts=(3,),
        error_bounds=(1, 4),
        noise_fractions=(0.25,),
        speed_runs=1,
        speed_dose=1e4,
        real_views=6,
    )


def _volume_path(data: Path, stem: str) -> Path:
    matches = sorted((data / "volumes").glob(f"{stem}*.npy"))
    if not matches:
        raise FileNotFoundError(f"held-out volume {stem} not found in {data / 'volumes'}")
    return matches[0]


def noise_free(data: Path, sim: Simulation) -> Scan:
    """Noise-free float32 line integrals of ``sim`` (fan beam: the volume's middle slice;
    ``sim.views`` None: the clinical angular sampling)."""
    hu, voxel = load_volume(_volume_path(data, sim.volume))
    volume = hu if sim.kind != "fan" else hu[hu.shape[0] // 2]
    return simulate_scan(
        volume,
        geometry_kind=sim.kind,
        n_views=sim.views,
        det_rows=sim.rows,
        det_cols=sim.cols,
        voxel_size_mm=voxel if volume.ndim == 3 else voxel[1],
        i0=None,
        dtype="float32",
        detector_shape=sim.detector,
    )


def poisson_counts(clean: Scan, i0: float, seed: int) -> tuple[Scan, float]:
    """Raw uint16 counts ``Poisson(i0 exp(-p))`` of noise-free line integrals ``clean``,
    and their Poisson entropy floor (bits/value, mean over values)."""
    mean = i0 * np.exp(-clean.array().astype(np.float64))
    counts = np.random.default_rng(seed).poisson(mean)
    if counts.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"counts at i0={i0:g} do not fit uint16")
    meta = dict(clean.metadata, units="counts", i0=i0, rescale_slope=1.0, rescale_intercept=0.0)
    meta["simulation"] = dict(meta["simulation"], seed=seed, noise="poisson")
    scan = Scan(counts.astype(np.uint16), clean.geometry, meta)
    return scan, float(poisson_entropy_bits(mean).mean())


def fine_line_integrals(clean: Scan, i0: float, seed: int) -> tuple[Scan, float]:
    """Line integrals with Gaussian noise of the Poisson variance ``exp(p) / i0``, stored
    as uint16 on :func:`quantise_uint16`'s grid, and their noise entropy floor."""
    p = clean.array().astype(np.float64)
    sigma = np.sqrt(np.exp(p) / i0)
    noisy = p + sigma * np.random.default_rng(seed).standard_normal(p.shape)
    stored, slope, intercept = quantise_uint16(noisy)
    meta = dict(
        clean.metadata,
        units="line_integral",
        i0=i0,
        rescale_slope=slope,
        rescale_intercept=intercept,
    )
    meta["simulation"] = dict(meta["simulation"], seed=seed, noise="gaussian (Poisson variance)")
    floor = float(quantised_gaussian_entropy_bits(sigma, slope).mean())
    return Scan(stored, clean.geometry, meta), floor


def build_scans(data: Path, plan: Plan, log: Callable[[str], None]) -> list[BenchScan]:
    """Every benchmark scan of ``plan`` (see the module docstring)."""
    scans: list[BenchScan] = []
    rescaled = "rescaled uint16 line integrals: ctpress's noise mode needs their own units"
    for s, sim in enumerate(plan.simulations):
        t0 = time.perf_counter()
        clean = noise_free(data, sim)
        shape = "x".join(str(n) for n in clean.array().shape)
        label = f"{sim.volume.split('_', 1)[1]}-{sim.kind}-{sim.detector}-{shape}"
        multirow = sim.rows > 1
        assert clean.geometry is not None
        clinical = clinical_views(clean.geometry)
        views = clean.array().shape[0]
        source = "simulated, held-out volume, " + (
            f"clinical angular step ({views} views/turn)"
            if sim.views is None
            else f"{views} views/turn ({clinical / views:.1f}x sparser than clinical)"
        )
        for d, i0 in enumerate(plan.doses):
            scan, floor = poisson_counts(clean, i0, seed=1000 * s + d)
            truth = NoiseModel("counts", gain=1.0, read_noise=0.0, dark=0.0, source="true")
            scans.append(
                BenchScan(
                    f"{label} counts i0={i0:g}",
                    scan,
                    source,
                    floor,
                    truth,
                    "true model (Poisson counter)",
                    multirow,
                )
            )
        if s == 0:
            scan, floor = fine_line_integrals(clean, plan.line_integral_dose, seed=999)
            scans.append(
                BenchScan(
                    f"{label} line integrals i0={plan.line_integral_dose:g}",
                    scan,
                    source,
                    floor,
                    None,
                    rescaled,
                    multirow,
                )
            )
        log(f"simulated {label} in {time.perf_counter() - t0:.1f} s")
    for filename in REAL_FILES:
        name, values = real_scans(data / "projections" / filename, held_out=True)
        values = values[: plan.real_views]
        aux = {}
        if filename.startswith("savu") and (data / "projections" / SAVU_DARK).is_file():
            aux["dark"] = np.load(data / "projections" / SAVU_DARK)
        scan = Scan(values, metadata={"units": "counts"}, aux=aux)
        model = noise_model(scan)
        scans.append(BenchScan(name, scan, "real, held-out views", None, model, model.source))
    default = default_scan()
    scans.append(
        BenchScan(
            "default scan",
            default,
            "default scan: training volume, not held out",
            None,
            None,
            rescaled,
        )
    )
    return scans


# ---------------------------------------------------------------------------- codecs
@dataclass(frozen=True)
class Variant:
    """A codec id with settings (one row of a table)."""

    codec: str
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.settings)
        return f"{self.codec}[{extra}]" if extra else self.codec

    @property
    def learned(self) -> bool:
        return self.codec == LEARNED

    def build(self, scan: Scan, **rate: Any) -> Codec:
        """The codec for ``scan`` under the rate control ``rate`` (make_codec's keywords)."""
        return make_codec(scan, self.codec, **rate, **dict(self.settings))


def learned_registered() -> bool:
    return LEARNED in list_codec_ids()


def lossless_variants(plan: Plan) -> list[Variant]:
    """The classical lossless codecs, then the learned codec's predictor ablation."""
    variants = [Variant("jpegls")]
    variants += [Variant("jpegxl", (("effort", e),)) for e in plan.efforts]
    variants += [Variant("jpeg2000"), Variant("htj2k"), Variant("blosc2"), Variant("zstd")]
    if learned_registered():
        if "predictor" in get_codec_class(LEARNED).settings():
            variants += [Variant(LEARNED, (("predictor", p),)) for p in PREDICTORS]
            if "conjugate" in get_codec_class(LEARNED).settings():  # what the conjugate rays buy
                variants.append(Variant(LEARNED, (("predictor", "all"), ("conjugate", False))))
        else:
            variants.append(Variant(LEARNED))
    return variants


def bounded_variants(classical: tuple[str, ...]) -> list[Variant]:
    """``classical`` codecs plus the learned codec (default settings) when registered."""
    return [Variant(c) for c in (*classical, *((LEARNED,) if learned_registered() else ()))]


@dataclass
class Coded:
    """A scan coded chunk by chunk: total bytes, the decoded values, wall times (s)."""

    n_bytes: int
    decoded: np.ndarray
    encode_s: float
    decode_s: float


def code_scan(codec: Codec, scan: Scan) -> Coded:
    """Encode ``scan`` in the chunks ctpress's container uses for ``codec`` (with their
    contexts) and decode every chunk."""
    x = scan.array()
    decoded = np.empty_like(x)
    n_bytes, encode_s, decode_s = 0, 0.0, 0.0
    for context in chunk_contexts(scan, chunk_views_for(scan, codec)):
        t0 = time.perf_counter()
        chunk = codec.encode(x[context.start : context.stop], context)
        t1 = time.perf_counter()
        decoded[context.start : context.stop] = codec.decode(chunk)
        encode_s, decode_s = encode_s + t1 - t0, decode_s + time.perf_counter() - t1
        n_bytes += len(chunk)
    return Coded(n_bytes, decoded, encode_s, decode_s)


def library_bytes(variant: Variant, codec: Codec, x: np.ndarray) -> int | None:
    """Bytes of the codec's library called directly on the same data: the image codecs on
    each 2-D frame (:func:`ctpress.frames.to_images`), zstd/blosc2 on the whole array at
    the codec's level; None for codecs without such a counterpart."""
    config = codec.get_config()
    images: dict[str, Callable[[np.ndarray], bytes | bytearray]] = {
        "jpegls": lambda im: imagecodecs.jpegls_encode(im),
        "jpegxl": lambda im: imagecodecs.jpegxl_encode(im, lossless=True, effort=config["effort"]),
        "jpeg2000": lambda im: imagecodecs.jpeg2k_encode(
            im, level=0, reversible=True, codecformat="J2K"
        ),
        "htj2k": lambda im: imagecodecs.htj2k_encode(im, reversible=True),
    }
    if variant.codec in images:
        return sum(len(images[variant.codec](np.ascontiguousarray(im))) for im in to_images(x))
    if variant.codec == "zstd":
        return len(zstandard.ZstdCompressor(level=config["level"]).compress(x.tobytes()))
    if variant.codec == "blosc2":
        return len(
            blosc2.compress2(
                x,
                typesize=x.itemsize,
                clevel=config["level"],
                filters=[blosc2.Filter.BITSHUFFLE],
                codec=blosc2.Codec.ZSTD,
            )
        )
    return None


def _failed(row: dict[str, Any], exc: Exception) -> dict[str, Any]:
    row["error"] = " ".join(str(exc).split())[:200]
    return row


# -------------------------------------------------------------------------- sections
def lossless_rows(scans: list[BenchScan], plan: Plan, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for b in scans:
        x = b.scan.array()
        for variant in lossless_variants(plan):
            row: dict[str, Any] = {
                "scan": b.name,
                "codec": variant.label,
                "learned": variant.learned,
            }
            try:
                codec = variant.build(b.scan, lossless=True)
                coded = code_scan(codec, b.scan)
            except CtpressError as exc:
                rows.append(_failed(row, exc))
                continue
            if not np.array_equal(coded.decoded, x):
                raise AssertionError(f"{variant.label} is not lossless on {b.name}")
            bpv = 8 * coded.n_bytes / x.size
            direct = None if variant.learned else library_bytes(variant, codec, x)
            row.update(
                n_bytes=coded.n_bytes,
                bits_per_value=bpv,
                ratio=x.nbytes / coded.n_bytes,
                excess_over_floor=None if b.floor_bits is None else bpv - b.floor_bits,
                library_bytes=direct,
                encode_s=coded.encode_s,
                decode_s=coded.decode_s,
            )
            rows.append(row)
        log(f"lossless {b.name}")
    return rows


def lossless_summary(scans: list[BenchScan], rows: list[dict]) -> list[dict]:
    """Per scan: the best classical codec, its distance to the floor, the bits/value the
    target asks for, and each learned row's ratio over the best classical one."""
    summary = []
    for b in scans:
        mine = [r for r in rows if r["scan"] == b.name and "n_bytes" in r]
        classical = [r for r in mine if not r["learned"]]
        best = min(classical, key=lambda r: r["n_bytes"])
        target = TARGET_LOSSLESS_MULTIROW if b.multirow_simulated else TARGET_LOSSLESS
        best_bpv, floor = best["bits_per_value"], b.floor_bits
        reference = least_squares_reference_bits(b.scan.array())
        summary.append(
            {
                "scan": b.name,
                "floor_bits_per_value": floor,
                "best_classical": best["codec"],
                "best_bits_per_value": best_bpv,
                "best_ratio": best["ratio"],
                "best_over_floor": None if floor is None else best_bpv - floor,
                "target": target,
                "target_bits_per_value": best_bpv / target,
                "target_over_floor": None if floor is None else best_bpv / target - floor,
                "least_squares_bits_per_value": reference,
                "least_squares_over_best": None if reference is None else best_bpv / reference,
                "learned_over_best": {
                    r["codec"]: best["n_bytes"] / r["n_bytes"] for r in mine if r["learned"]
                },
            }
        )
    return summary


def bounded_coding(
    b: BenchScan, variant: Variant, setting: dict[str, Any], **options: Any
) -> tuple[dict[str, Any], Coded | None]:
    """One error-bounded coding of ``b`` by ``variant`` with rate ``options``: its row
    (scan, codec, learned and ``setting``) and the coded scan, or the row of its failure
    and None."""
    row: dict[str, Any] = {
        "scan": b.name, "codec": variant.label, "learned": variant.learned, **setting
    }  # fmt: skip
    try:
        return row, code_scan(variant.build(b.scan, **options), b.scan)
    except CtpressError as exc:
        return _failed(row, exc), None


def near_lossless_rows(
    scans: list[BenchScan], plan: Plan, log: Callable[[str], None]
) -> list[dict]:
    rows = []
    for b in scans:
        x = b.scan.array()
        for bound in plan.error_bounds:
            for variant in bounded_variants(("jpegls", "sz3")):
                row, coded = bounded_coding(b, variant, {"max_error": bound}, max_error=bound)
                if coded is None:
                    rows.append(row)
                    continue
                err = float(np.max(np.abs(coded.decoded.astype(np.float64) - x)))
                if err > bound:
                    raise AssertionError(f"{variant.label} max error {err} > {bound} on {b.name}")
                row.update(
                    n_bytes=coded.n_bytes,
                    bits_per_value=8 * coded.n_bytes / x.size,
                    ratio_vs_uint16=2 * x.size / coded.n_bytes,
                    measured_max_error=err,
                )
                rows.append(row)
        log(f"near-lossless {b.name}")
    return rows


def added_noise(b: BenchScan, decoded: np.ndarray, recon: Any) -> tuple[float | None, float]:
    """The rise of the noise std that decoding adds, as a fraction: in the reconstruction
    (``sqrt(1 + r^2) - 1``, r = std of the reconstruction's change over the quantum noise
    std of the original's, :func:`ctpress.metrics.recon_metrics`; None without geometry),
    and the projection-domain estimate with line-integral weights (errors and sigma of the
    counts over the counts, ``sqrt(1 + sum (e/c)^2 / sum (sigma/c)^2) - 1``)."""
    assert b.noise is not None
    x = b.scan.array().astype(np.float64)
    c = b.noise.counts(x)
    lit = c > 0
    weighted_err = np.sum(((decoded[lit] - x[lit]) / c[lit]) ** 2)
    weighted_var = np.sum((b.noise.sigma(x)[lit] / c[lit]) ** 2)
    projection_rise = math.sqrt(1 + weighted_err / weighted_var) - 1
    if recon is None:
        return None, projection_rise
    volume = recon.reconstruct(Scan(decoded, b.scan.geometry, b.scan.metadata))
    r = recon_metrics(recon.volume, volume, recon.mask, recon.mu_water_per_mm, recon.noise_std)
    return math.sqrt(1 + r["added_noise_ratio"] ** 2) - 1, projection_rise


def noise_rows(scans: list[BenchScan], plan: Plan, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for b in scans:
        if b.noise is None:
            continue
        x = b.scan.array()
        recon = prepare_recon(b.scan) if b.scan.geometry is not None else None
        for fraction in plan.noise_fractions:
            bound = allowed_error(x, b.noise, fraction)
            for variant in bounded_variants(("jpegls", "sperr")):
                row, coded = bounded_coding(
                    b, variant, {"fraction": fraction}, noise_fraction=fraction, noise=b.noise
                )
                if coded is None:
                    rows.append(row)
                    continue
                err = np.abs(coded.decoded.astype(np.float64) - x)
                if not np.all(err <= bound * (1 + 1e-9)):
                    raise AssertionError(f"{variant.label} exceeds f sigma on {b.name}")
                recon_rise, projection_rise = added_noise(b, coded.decoded, recon)
                row.update(
                    n_bytes=coded.n_bytes,
                    ratio_vs_uint16=2 * x.size / coded.n_bytes,
                    recon_std_rise=recon_rise,
                    projection_std_rise=projection_rise,
                )
                rows.append(row)
        log(f"noise-bounded {b.name}")
    return rows


def speed_rows(b: BenchScan, plan: Plan, log: Callable[[str], None]) -> list[dict]:
    """Lossless ``ctpress.compress`` / ``decompress`` with 2 jobs (the container's chunks
    in 2 worker threads), median wall time of ``plan.speed_runs`` runs, in uint16 MB/s."""
    megabytes = 2 * b.scan.projections.size / 1e6
    rows = []
    for variant in lossless_variants(plan):
        if variant.learned and variant.label != learned_default_label():
            continue
        encode, decode = [], []
        settings = dict(variant.settings)
        for _ in range(plan.speed_runs):
            t0 = time.perf_counter()
            data = ctpress.compress(b.scan, codec=variant.codec, lossless=True, jobs=2, **settings)
            t1 = time.perf_counter()
            ctpress.decompress(data, jobs=2)
            encode.append(t1 - t0)
            decode.append(time.perf_counter() - t1)
        rows.append(
            {
                "codec": variant.label,
                "learned": variant.learned,
                "encode_mb_s": megabytes / statistics.median(encode),
                "decode_mb_s": megabytes / statistics.median(decode),
                "file_bytes": len(data),
            }
        )
        log(f"speed {variant.label}")
    return rows


def learned_default_label() -> str:
    """The table label of the learned codec at its default settings (its own default
    ``predictor``): the row the targets are checked on."""
    predictor = get_codec(LEARNED).get_config().get("predictor")
    return LEARNED if predictor is None else Variant(LEARNED, (("predictor", predictor),)).label


def targets(
    scans: list[BenchScan],
    summary: list[dict],
    near: list[dict],
    noise: list[dict],
    speed: list[dict],
) -> list[dict]:
    """Issue 14's targets for the learned codec, each with the measured value and whether
    it is met (empty while the codec is not registered)."""
    checks: list[dict] = []

    def check(name: str, value: float | None, target: str, met: bool) -> None:
        checks.append({"check": name, "value": value, "target": target, "met": met})

    for s in summary:
        label = learned_default_label() if s["learned_over_best"] else None
        if label in s["learned_over_best"]:
            value = s["learned_over_best"][label]
            check(
                f"lossless {s['scan']}: {label} / {s['best_classical']}",
                value,
                f">= {s['target']:.2f}x",
                value >= s["target"],
            )
    bytes_of = {(r["scan"], r["max_error"], r["codec"]): r.get("n_bytes") for r in near}
    for (scan, bound, codec), size in bytes_of.items():
        if codec != LEARNED:
            continue
        for other in ("jpegls", "sz3"):
            theirs = bytes_of.get((scan, bound, other))
            if size and theirs:
                smaller = 1 - size / theirs
                check(
                    f"near-lossless {scan} E={bound}: smaller than {other}",
                    smaller,
                    f">= {TARGET_NEAR_SMALLER:.0%}",
                    smaller >= TARGET_NEAR_SMALLER,
                )
    simulated = {b.name for b in scans if b.floor_bits is not None}
    for r in noise:
        if r["codec"] == LEARNED and r["fraction"] == 0.25 and r["scan"] in simulated:
            rise = r.get("recon_std_rise")
            ok = r.get("ratio_vs_uint16", 0) >= TARGET_NOISE_RATIO and (
                rise is not None and rise < TARGET_NOISE_RISE
            )
            check(
                f"noise f=0.25 {r['scan']}: ratio (recon std rise {_fmt(rise, '.2%')})",
                r.get("ratio_vs_uint16"),
                f">= {TARGET_NOISE_RATIO}:1, rise < {TARGET_NOISE_RISE:.0%}",
                ok,
            )
    label = learned_default_label() if learned_registered() else None
    for r in speed:
        if r["codec"] == label:
            for way in ("encode", "decode"):
                value = r[f"{way}_mb_s"]
                check(f"{way} speed", value, f">= {TARGET_MB_S} MB/s", value >= TARGET_MB_S)
    return checks


# --------------------------------------------------------------------------- report
def _reference_cell(summary: dict[str, Any]) -> str:
    """The least-squares reference's b/v and its ratio over the best classical codec."""
    bits = summary["least_squares_bits_per_value"]
    return "–" if bits is None else f"{bits:.3f} ({summary['least_squares_over_best']:.3f}x)"


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec) if isinstance(value, float | int) else str(value)


def _table(header: list[str], body: Iterator[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body] + [""]


def markdown(result: dict[str, Any]) -> str:
    run = result["run"]
    lines = [
        "# Issue 14 benchmark: predictive coding of raw CT data",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {run['machine']}, {run['cpus']} CPUs, {run['platform']}; {run['library']} "
        f"(git {run['git_revision']}); {run['date']}; runtime {result['runtime_s']:.0f} s.  ",
        f"Learned codec `{LEARNED}` registered: {result['learned_registered']}.",
        "",
        "Sizes are the bytes of each codec's `encode()` output, chunk headers included, in the "
        "chunks ctpress's container cuts for that codec (the file's own header and index are "
        "not counted). Every decoded value is checked: lossless bit-exact, near-lossless "
        "|error| <= E, noise-bounded |error| <= f sigma (asserted; a failure stops the run).",
        "",
        "## Scans",
        "",
        "Data range: values as stored (counts for raw data; grid steps for the uint16 line "
        "integrals); E is in those units. Unused codes: fraction of the codes that never occur "
        "among those where the histogram (33-code moving average) expects >= 8 values. Floor: "
        "mean Poisson (counts) or quantised-Gaussian (fine line integrals) entropy of the "
        "noise, the bits no lossless coder can remove. Simulated scans take the clinical "
        "scanner's angular step per channel width (1152 views per turn for 0.705 mm channels "
        "at the isocentre, ../shared/data/README.md): as many views per turn as a scanner "
        "with these channels records; the same volumes at 90 (cone) and 180 (fan) views "
        "per turn show what 3-6x sparser sampling leaves to inter-view prediction.",
        "",
    ]
    lines += _table(
        [
            "scan",
            "source",
            "shape",
            "dtype",
            "min..max",
            "unused codes",
            "floor b/v",
            "noise model",
        ],
        (
            [
                s["name"],
                s["source"],
                "x".join(map(str, s["shape"])),
                s["dtype"],
                f"{s['min']:g}..{s['max']:g}",
                _fmt(s["unused_code_fraction"], ".1%"),
                _fmt(s["floor_bits_per_value"]),
                s["noise_model"] or f"none ({s['noise_note']})",
            ]
            for s in result["scans"]
        ),
    )
    lines += ["## Lossless: bits/value (ratio vs the stored dtype)", ""]
    codecs = list(dict.fromkeys(r["codec"] for r in result["lossless"]))
    by_key = {(r["scan"], r["codec"]): r for r in result["lossless"]}

    def cell(r: dict[str, Any] | None) -> str:
        if r is None or "n_bytes" not in r:
            return "–" if r is None else "fails"
        return f"{r['bits_per_value']:.3f} ({r['ratio']:.2f})"

    lines += _table(
        ["scan", "floor", *codecs],
        (
            [
                s["name"],
                _fmt(s["floor_bits_per_value"]),
                *(cell(by_key.get((s["name"], c))) for c in codecs),
            ]
            for s in result["scans"]
        ),
    )
    lines += ["### Best classical per scan, and the learned codec over it", ""]
    lines += [
        "Least-squares reference: b/v (ratio over the best classical) of one linear predictor "
        "fitted to the whole scan over causal taps in the view and the 2-3 views before, its "
        "residuals coded ideally with a Laplacian per activity context: an oracle (weights and "
        "parameters fitted to the data they code, not counted), the reference issue 14 quotes "
        "for the real scans (1.045x on Savu, 1.03x on the neutron data).",
        "",
    ]
    learned = sorted({k for s in result["lossless_summary"] for k in s["learned_over_best"]})
    lines += _table(
        [
            "scan",
            "best classical",
            "b/v",
            "ratio",
            "over floor",
            "target",
            "b/v at target",
            "target over floor",
            "least-squares reference",
            *learned,
        ],
        (
            [
                s["scan"],
                s["best_classical"],
                f"{s['best_bits_per_value']:.3f}",
                f"{s['best_ratio']:.3f}",
                _fmt(s["best_over_floor"]),
                f"{s['target']:.2f}x",
                f"{s['target_bits_per_value']:.3f}",
                _fmt(s["target_over_floor"]),
                _reference_cell(s),
                *(f"{s['learned_over_best'][k]:.3f}x" for k in learned),
            ]
            for s in result["lossless_summary"]
        ),
    )
    lines += [
        "### ctpress against the libraries called directly (ctpress bytes / library bytes)",
        "",
    ]
    lines += [
        "Library: the same library and settings on the same 2-D frames (image codecs) or the "
        "whole array (zstd, blosc2); the difference is ctpress's chunk and frame headers and "
        "its chunking.",
        "",
    ]
    classical = [c for c in codecs if not c.startswith(LEARNED)]
    lines += _table(
        ["scan", *classical],
        (
            [
                s["name"],
                *(
                    _fmt(r["n_bytes"] / r["library_bytes"], ".4f")
                    if (r := by_key.get((s["name"], c))) and r.get("library_bytes")
                    else "–"
                    for c in classical
                ),
            ]
            for s in result["scans"]
        ),
    )
    lines += ["## Near-lossless: bits/value at max error E (ratio vs uint16)", ""]
    near_codecs = list(dict.fromkeys(r["codec"] for r in result["near_lossless"]))
    near = {(r["scan"], r["max_error"], r["codec"]): r for r in result["near_lossless"]}
    keys = list(dict.fromkeys((r["scan"], r["max_error"]) for r in result["near_lossless"]))
    lines += _table(
        ["scan", "E", *near_codecs],
        (
            [
                scan,
                str(e),
                *(
                    f"{r['bits_per_value']:.3f} ({r['ratio_vs_uint16']:.2f})"
                    if (r := near.get((scan, e, c))) and "n_bytes" in r
                    else "fails"
                    for c in near_codecs
                ),
            ]
            for scan, e in keys
        ),
    )
    lines += [
        "## Noise-bounded: ratio vs uint16, and the rise of the noise std",
        "",
        "Recon: std rise of the reconstruction (FBP/FDK of a few central slices, ctpress.bench."
        "prepare_recon), sqrt(1 + r^2) - 1 with r the recon's change over the original's quantum "
        "noise. Proj.: the projection-domain estimate with line-integral weights (scans without "
        "geometry: the real scans' held-out views cover a third of the rotation). Noise model: "
        "the true one on simulated counts, estimated from the data on real scans.",
        "",
    ]
    noise_codecs = list(dict.fromkeys(r["codec"] for r in result["noise_bounded"]))
    noise = {(r["scan"], r["fraction"], r["codec"]): r for r in result["noise_bounded"]}
    keys_f = list(dict.fromkeys((r["scan"], r["fraction"]) for r in result["noise_bounded"]))

    def noise_cell(r: dict[str, Any] | None) -> str:
        if r is None or "n_bytes" not in r:
            return "fails"
        return (
            f"{r['ratio_vs_uint16']:.2f}:1, recon {_fmt(r['recon_std_rise'], '+.2%')}, "
            f"proj. {r['projection_std_rise']:+.2%}"
        )

    lines += _table(
        ["scan", "f", *noise_codecs],
        (
            [scan, f"{f:g}", *(noise_cell(noise.get((scan, f, c))) for c in noise_codecs)]
            for scan, f in keys_f
        ),
    )
    speed = result["speed"]
    lines += [
        f"## Speed: lossless, {speed['scan']}",
        "",
        "ctpress.compress / decompress with jobs=2 (chunks in 2 threads), median of "
        f"{speed['runs']} run(s); MB/s of uint16 input (1 MB = 1e6 bytes).",
        "",
    ]
    lines += _table(
        ["codec", "encode MB/s", "decode MB/s"],
        ([r["codec"], f"{r['encode_mb_s']:.1f}", f"{r['decode_mb_s']:.1f}"] for r in speed["rows"]),
    )
    if result["targets"]:
        lines += ["## Issue 14 targets (learned codec at its default settings)", ""]
        lines += _table(
            ["check", "value", "target", "met"],
            (
                [t["check"], _fmt(t["value"]), t["target"], "yes" if t["met"] else "NO"]
                for t in result["targets"]
            ),
        )
    else:
        lines += [f"No target checks: `{LEARNED}` is not registered in this ctpress.", ""]
    return "\n".join(lines)


def run(scans: list[BenchScan], plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """Every section of the benchmark on ``scans`` (the result file's content, less the
    run information)."""
    lossless = lossless_rows(scans, plan, log)
    near = near_lossless_rows(scans, plan, log)
    noise = noise_rows(scans, plan, log)
    simulated = [b for b in scans if b.floor_bits is not None and b.noise is not None]
    fastest = max(
        simulated or scans,
        key=lambda b: (b.scan.projections.size, b.scan.metadata.get("i0") == plan.speed_dose),
    )
    speed_table = speed_rows(fastest, plan, log)
    summary = lossless_summary(scans, lossless)
    return {
        "learned_registered": learned_registered(),
        "scans": [b.describe() for b in scans],
        "lossless": lossless,
        "lossless_summary": summary,
        "near_lossless": near,
        "noise_bounded": noise,
        "speed": {"scan": fastest.name, "runs": plan.speed_runs, "rows": speed_table},
        "targets": targets(scans, summary, near, noise, speed_table),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument(
        "--data", type=Path, default=DATA, help="folder with volumes/ and projections/"
    )
    parser.add_argument("--quick", action="store_true", help="small scans, few settings (1-2 min)")
    args = parser.parse_args(argv)
    plan = quick_plan() if args.quick else full_plan()
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    sections = run(build_scans(args.data, plan, log), plan, log)
    result = {
        "run": run_info(),
        "command": shlex.join(["python", *sys.argv] if argv is None else ["main", *argv]),
        "quick": args.quick,
        "runtime_s": time.perf_counter() - start,
        **sections,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_predictive.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_predictive.md").write_text(markdown(result) + "\n")
    log(f"wrote {args.out / 'bench_predictive.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
