"""Measuring codecs on scans: real file bytes, wall times, peak memory, and the quality of the
decoded data in the projection domain and (optionally) after reconstruction.

Every number comes from the run that reports it: the size is the length of the complete
``.ctpz`` file written to disk (header, index and chunk headers included), the metrics compare
the decoded projections with exactly the projections that were encoded, and results reused from
an earlier run (``resume``) carry the origin of that run in :attr:`BenchRecord.origin`.

Measurement details (also written into every result file's settings):

* times: wall clock of :func:`ctpress.compress` (including any rate-control search) and of
  :func:`ctpress.decompress`, one encoder thread; MB/s are of input data (1 MB = 1e6 bytes);
* peak memory: growth of the process's peak resident set during encode (decode), i.e. Linux
  ``VmHWM`` after resetting it through ``/proc/self/clear_refs`` minus ``VmRSS`` before; it
  counts C-library buffers as well as Python objects (None where /proc is unavailable);
* reconstruction domain (``recon``): the original and the decoded scan are reconstructed with
  the same filtered back-projection (FBP for parallel/fan beam, FDK for cone beam) on a few
  central slices, and compared inside the field of view (:func:`ctpress.metrics.recon_metrics`);
  the added-noise ratio divides by the quantum noise of the original (:func:`recon_noise_std`).
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import metrics
from ._version import __version__
from .api import compress, decompress
from .codecs import RATE_MODES, get_codec_class
from .errors import CtpressError, InputError
from .scan import Scan

#: A rate control: (mode, target), target None for lossless.
Rate = tuple[str, float | None]
#: Decoded images kept for the report: "projection" (middle view), "sinogram" (middle row),
#: "slice" (middle reconstructed slice, 1/mm).
Samples = dict[str, np.ndarray]
#: A run to do: (index in the records, scan name, codec, mode, target).
Task = tuple[int, str, str, str, float | None]

ORIGIN_THIS_RUN = "this run"


@dataclass
class BenchRecord:
    """One codec at one rate control on one scan (sizes in bytes, times in s, memory in MB).

    ``error`` holds why a codec could not meet the rate control (the run failed); ``note`` why
    the combination was not run at all (e.g. the codec lacks the mode).  ``origin`` is
    ``"this run"`` or where a reused result was measured.  Recon fields are None without
    ``recon``; ``recon_rmse_hu`` is in Hounsfield units.
    """

    scan: str
    codec: str
    mode: str
    target: float | None
    n_bytes: int | None = None
    bits_per_value: float | None = None
    ratio: float | None = None
    ratio_vs_uint16: float | None = None
    data_range: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    haarpsi: float | None = None
    vsi: float | None = None
    mse: float | None = None
    max_abs_error: float | None = None
    recon_psnr_db: float | None = None
    recon_ssim: float | None = None
    recon_rmse_hu: float | None = None
    added_noise_ratio: float | None = None
    encode_s: float | None = None
    decode_s: float | None = None
    encode_mb_s: float | None = None
    decode_mb_s: float | None = None
    encode_peak_mb: float | None = None
    decode_peak_mb: float | None = None
    error: str | None = None
    note: str | None = None
    origin: str = ORIGIN_THIS_RUN

    @property
    def rate_label(self) -> str:
        """Human-readable rate control, e.g. ``max_error=4``."""
        return self.mode if self.target is None else f"{self.mode}={self.target:g}"

    @property
    def key(self) -> str:
        """``scan|codec|rate`` identifying the measurement (for resuming and samples)."""
        return f"{self.scan}|{self.codec}|{self.rate_label}"

    @property
    def ok(self) -> bool:
        """Whether the run produced measurements (not failed, not skipped)."""
        return self.error is None and self.note is None


def benchmark_scan(cache_dir: Path, shape: tuple[int, int, int]) -> tuple[Scan, str]:
    """A realistic benchmark scan of ``shape`` (views, rows, columns) and where it came
    from: simulated from the embedded volume (cone beam, cylindrical detector, Poisson
    noise at i0 = 1e5, uint16) and cached as ``codec_scan_<shape>.npy`` in ``cache_dir``,
    or that cached file."""
    from .sim import simulate_scan

    n_views, rows, cols = shape
    cache = cache_dir / f"codec_scan_{n_views}x{rows}x{cols}.npy"
    if cache.exists():
        return Scan(np.load(cache)), f"cached simulation {cache}"
    t0 = time.perf_counter()
    scan = simulate_scan(
        None,
        geometry_kind="cone",
        n_views=n_views,
        det_rows=rows,
        det_cols=cols,
        detector_shape="cylindrical",
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, scan.projections)
    return scan, f"simulate_scan (cone, i0=1e5, uint16) in {time.perf_counter() - t0:.0f} s"


def parse_rates(text: str) -> list[Rate] | None:
    """Parse ``--rates``: ``default`` (None: :func:`default_rates` per codec) or a comma list
    like ``lossless,max_error=4,bpp=2,psnr=60``."""
    if text.strip() == "default":
        return None
    rates: list[Rate] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        mode, _, value = item.partition("=")
        if mode not in RATE_MODES or (mode == "lossless") != (value == ""):
            raise InputError(
                f"bad rate {item!r}: use lossless or MODE=VALUE with MODE one of "
                f"{', '.join(list(RATE_MODES)[1:])} (e.g. max_error=4,bpp=2)"
            )
        try:
            rates.append((mode, None if mode == "lossless" else float(value)))
        except ValueError:
            raise InputError(f"bad rate {item!r}: {value!r} is not a number") from None
    if not rates:
        raise InputError("--rates is empty")
    return rates


def default_rates(scan: Scan, codec_modes: tuple[str, ...]) -> list[Rate]:
    """A small sweep of rate controls a codec supports: lossless, an error bound about a
    quarter of the quantum noise, and two bit rates."""
    reference = scan.projections
    span = float(reference.max()) - float(reference.min())
    noise = _noise_std(reference)
    bound = max(noise / 4, span * 1e-5)
    if reference.dtype.kind in "ui":
        bound = float(max(1, math.floor(bound)))
    rates: list[Rate] = []
    if "lossless" in codec_modes:
        rates.append(("lossless", None))
    rates += [("max_error", bound), ("bpp", 2.0), ("bpp", 1.0)]
    return [r for r in rates if r[0] in codec_modes]


def _noise_std(stack: np.ndarray) -> float:
    """Robust noise estimate: MAD of the second difference along detector columns."""
    d2 = np.diff(stack.astype(np.float64), n=2, axis=-1)
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))


class PeakMemory:
    """Context manager: growth of the process's peak resident memory inside the block, in MB
    (``mb``; None where Linux ``/proc/self/clear_refs`` is unavailable).  On glibc, freed heap
    is returned to the OS (``malloc_trim``) before the start, so that memory the block gets
    back from the allocator still counts."""

    def __enter__(self) -> PeakMemory:
        self.mb: float | None = None
        try:  # hand freed heap back to the OS first, so reused pages count as growth again
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
            self._start: int | None = _proc_status_kb("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is not None:
            self.mb = max(0, _proc_status_kb("VmHWM") - self._start) * 1024 / 1e6


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


@dataclass
class ReconReference:
    """The reconstruction of an original scan that every decoded scan is compared with.

    ``volume`` (nz, ny, nx) is attenuation in 1/mm from ``algorithm`` with ``options``;
    ``mask`` the field of view; ``noise_std`` the quantum noise of ``volume`` in 1/mm, from
    ``noise_estimator`` (see :func:`recon_noise_std`).
    """

    algorithm: str
    options: dict[str, Any]
    volume: np.ndarray
    mask: np.ndarray
    mu_water_per_mm: float
    noise_std: float
    noise_estimator: str

    def reconstruct(self, scan: Scan) -> np.ndarray:
        """Reconstruct ``scan`` exactly as the reference was (same grid and filter)."""
        return _reconstruct(scan, self.algorithm, self.options)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary for the result files."""
        inside = self.volume[self.mask]
        hu = 1000.0 / self.mu_water_per_mm
        return {
            "algorithm": self.algorithm,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()},
            "shape": list(self.volume.shape),
            "field_of_view_pixels": int(self.mask.sum()),
            "data_range_per_mm": float(inside.max() - inside.min()),
            "mu_water_per_mm": self.mu_water_per_mm,
            "noise_std_hu": self.noise_std * hu,
            "noise_estimator": self.noise_estimator,
        }


def _reconstruct(scan: Scan, algorithm: str, options: dict[str, Any]) -> np.ndarray:
    from .recon import reconstruct

    volume = np.asarray(reconstruct(scan, algorithm, **options), dtype=np.float32)
    return volume.reshape(-1, *volume.shape[-2:])


def prepare_recon(scan: Scan, n_slices: int = 4) -> ReconReference:
    """Reconstruct ``n_slices`` central slices of the original ``scan`` (FBP of the central
    detector rows for parallel/fan beam, FDK of the central ``n_slices`` voxel planes for cone
    beam; pixel size = detector column pitch at the isocentre), its field of view and noise."""
    from .recon import field_of_view_mask
    from .sim import MU_WATER_PER_MM

    g = scan.geometry
    if g is None or g.kind == "helical":
        raise InputError("--recon needs a parallel, fan or cone geometry (helical: rebin first)")
    _, rows, cols = scan.shape
    pixel = g.detector_spacing_mm[1] / g.magnification
    algorithm: str
    options: dict[str, Any]
    if g.kind == "cone":
        algorithm = "fdk"
        options = {"volume_shape": (min(n_slices, rows), cols, cols), "voxel_size_mm": pixel}
    else:
        first = max(0, rows // 2 - n_slices // 2)
        algorithm = "fbp"
        options = {"rows": list(range(first, min(rows, first + n_slices))), "pixel_size_mm": pixel}
    volume = _reconstruct(scan, algorithm, options)
    mask = field_of_view_mask(volume.shape, pixel, g, cols)
    noise, estimator = recon_noise_std(scan, lambda s: _reconstruct(s, algorithm, options), mask)
    mu_water = float(scan.metadata.get("mu_water_per_mm") or MU_WATER_PER_MM)
    return ReconReference(algorithm, options, volume, mask, mu_water, noise, estimator)


def recon_noise_std(
    scan: Scan, recon: Callable[[Scan], np.ndarray], mask: np.ndarray, seed: int = 0
) -> tuple[float, str]:
    """Standard deviation of the quantum noise in the reconstruction of ``scan`` (1/mm).

    With a Poisson model available (metadata ``units`` "counts", or "line_integral" with
    ``i0``): the per-value variance of the line integrals p is ``exp(p) / i0`` (1 / counts),
    plus ``slope^2 / 12`` for values quantised with ``rescale_slope``; one Gaussian noise
    realisation with that variance is reconstructed and its std inside ``mask`` returned
    (within ~2 % of the true noise on simulated scans).  Otherwise: the std of the difference
    of the reconstructions from the even and the odd views, halved; that also counts their
    different view aliasing, so it over-estimates the noise.

    Returns
    -------
    (float, str)
        The noise std in 1/mm and a description of the estimator used.
    """
    from .recon import line_integrals

    meta = scan.metadata
    units, i0 = meta.get("units"), meta.get("i0")
    if i0 and units in ("counts", "line_integral"):
        p = line_integrals(scan).astype(np.float64)
        var = np.exp(p) / float(i0)
        if units == "line_integral" and scan.dtype.kind in "ui":
            var += float(meta.get("rescale_slope", 1.0)) ** 2 / 12
        noise = np.random.default_rng(seed).standard_normal(p.shape) * np.sqrt(var)
        noise_scan = Scan(noise.astype(np.float32), scan.geometry, {"units": "line_integral"})
        return float(np.std(recon(noise_scan)[mask])), (
            "Poisson model: std in the field of view of the reconstruction of one Gaussian "
            "noise realisation with variance exp(p)/i0 (+ slope^2/12 quantisation) per value "
            f"of the original line integrals p (seed {seed})"
        )
    assert scan.geometry is not None
    halves = []
    for start in (0, 1):
        g = dataclasses.replace(scan.geometry, angles_rad=scan.geometry.angles_rad[start::2])
        halves.append(recon(Scan(scan.projections[start::2], g, scan.metadata)))
    return float(np.std((halves[0] - halves[1])[mask]) / 2), (
        "even/odd views: std in the field of view of the difference of the reconstructions "
        "from even and odd views, halved (includes their view aliasing: an upper bound)"
    )


def _samples(projections: np.ndarray, volume: np.ndarray | None) -> Samples:
    """The few images the report shows: middle view, middle-row sinogram, middle slice."""
    n, rows, _ = projections.shape
    out = {"projection": projections[n // 2], "sinogram": projections[:, rows // 2]}
    if volume is not None:
        out["slice"] = volume[len(volume) // 2]
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def _bytes_on_disk(data: bytes) -> int:
    """Write the compressed file to a temporary file and return its size on disk."""
    with tempfile.NamedTemporaryFile(suffix=".ctpz") as fh:
        fh.write(data)
        fh.flush()
        return os.fstat(fh.fileno()).st_size


def bench_codec(
    scan: Scan,
    codec: str,
    mode: str,
    target: float | None,
    *,
    scan_name: str = "scan",
    perceptual: bool = True,
    recon: ReconReference | None = None,
) -> BenchRecord:
    """The measurements of :func:`measure_codec` (without the decoded images)."""
    return measure_codec(
        scan, codec, mode, target, scan_name=scan_name, perceptual=perceptual, recon=recon
    )[0]


def measure_codec(
    scan: Scan,
    codec: str,
    mode: str,
    target: float | None,
    *,
    scan_name: str = "scan",
    perceptual: bool = True,
    recon: ReconReference | None = None,
) -> tuple[BenchRecord, Samples]:
    """Compress ``scan`` with ``codec`` at one rate control, decode, and measure.

    A request the codec cannot meet is recorded with its reason in ``error`` (not raised).
    With ``recon``, the decoded scan is reconstructed like the reference and compared.

    Returns
    -------
    (BenchRecord, Samples)
        The measurements, and the decoded images for the report (empty on failure).
    """
    record = BenchRecord(scan=scan_name, codec=codec, mode=mode, target=target)
    rate: dict[str, Any] = {"lossless": True} if mode == "lossless" else {mode: target}
    try:
        with PeakMemory() as enc_mem:
            t0 = time.perf_counter()
            data = compress(scan, codec=codec, **rate)
            t1 = time.perf_counter()
    except CtpressError as exc:
        record.error = str(exc)
        return record, {}
    with PeakMemory() as dec_mem:
        t2 = time.perf_counter()
        decoded_scan = decompress(data)
        t3 = time.perf_counter()
    reference, decoded = scan.projections, decoded_scan.projections
    raw_mb = reference.nbytes / 1e6
    record.n_bytes = _bytes_on_disk(data)
    record.bits_per_value = metrics.bits_per_value(record.n_bytes, reference.size)
    record.ratio = metrics.compression_ratio(record.n_bytes, reference.nbytes)
    record.ratio_vs_uint16 = metrics.ratio_vs_uint16(record.n_bytes, reference.size)
    record.encode_s, record.decode_s = t1 - t0, t3 - t2
    record.encode_mb_s, record.decode_mb_s = raw_mb / (t1 - t0), raw_mb / (t3 - t2)
    record.encode_peak_mb, record.decode_peak_mb = enc_mem.mb, dec_mem.mb
    quality = metrics.projection_metrics(reference, decoded, perceptual=perceptual)
    for key, value in quality.items():
        if hasattr(record, key):
            setattr(record, key, float(value))
    volume = None
    if recon is not None:
        # Bit-identical projections reconstruct to the identical volume: no need to recompute.
        same = np.array_equal(reference, decoded)
        volume = recon.volume if same else recon.reconstruct(decoded_scan)
        rm = metrics.recon_metrics(
            recon.volume, volume, recon.mask, recon.mu_water_per_mm, recon.noise_std
        )
        record.recon_psnr_db, record.recon_ssim = rm["psnr_db"], rm["ssim"]
        record.recon_rmse_hu, record.added_noise_ratio = rm["rmse_hu"], rm["added_noise_ratio"]
    return record, _samples(decoded, volume)


@dataclass
class BenchResult:
    """Everything a bench run produced: records (in task order), run info, settings, and the
    decoded sample images by :attr:`BenchRecord.key` (``"<scan>|original"`` for originals)."""

    records: list[BenchRecord]
    run: dict[str, Any]
    settings: dict[str, Any]
    samples: dict[str, Samples] = field(default_factory=dict)


def scan_checksum(scan: Scan) -> str:
    """SHA-256 (first 16 hex digits) of the projections' bytes, dtype and shape."""
    h = hashlib.sha256(f"{scan.dtype.str}{scan.shape}".encode())
    h.update(np.ascontiguousarray(scan.projections).data)
    return h.hexdigest()[:16]


def run_bench(
    scans: dict[str, Scan],
    codecs: Sequence[str],
    rates: Sequence[Rate] | Mapping[str, Sequence[Rate]] | None = None,
    *,
    recon: bool = False,
    recon_slices: int = 4,
    jobs: int = 1,
    perceptual: bool = True,
    resume: BenchResult | None = None,
    progress: bool = True,
) -> BenchResult:
    """Run every codec at every rate control on every scan.

    Parameters
    ----------
    scans : dict of name to Scan
    codecs : codec ids
    rates : rate controls, per codec id (a mapping) or for every codec, or None for
        :func:`default_rates` of each codec and scan; a rate a codec does not support gives
        a record with a ``note`` instead of a run
    recon : also compare reconstructions (``recon_slices`` central slices, see module doc)
    jobs : parallel worker processes (1: run in this process).  Each worker gets
        ``cpu_count // jobs`` torch threads; timings then share the machine.
    perceptual : also compute HaarPSI and VSI
    resume : an earlier result (:func:`load_results`); its records with the same scan
        checksum, codec and rate (and the recon / perceptual metrics asked for) are reused,
        labelled with their origin
    progress : show a progress bar
    """
    refs = {name: prepare_recon(s, recon_slices) for name, s in scans.items()} if recon else {}
    checks = {name: scan_checksum(s) for name, s in scans.items()}
    reusable = _reusable(resume, checks, recon, perceptual)
    records: list[BenchRecord] = []
    samples: dict[str, Samples] = {}
    tasks: list[Task] = []
    for name, scan in scans.items():
        ref = refs.get(name)
        samples[f"{name}|original"] = _samples(scan.projections, ref.volume if ref else None)
        for codec in codecs:
            modes = get_codec_class(codec).rate_modes()
            for mode, target in _codec_rates(rates, codec, scan, modes):
                record = BenchRecord(scan=name, codec=codec, mode=mode, target=target)
                if record.key in reusable:
                    record, old_samples = reusable[record.key]
                    samples.update({record.key: old_samples} if old_samples else {})
                elif mode not in modes:
                    record.note = f"skipped: {codec} has no {mode} mode ({', '.join(modes)})"
                else:
                    tasks.append((len(records), name, codec, mode, target))
                records.append(record)
    for (index, *_), (record, images) in zip(
        tasks, _execute(tasks, scans, refs, perceptual, jobs, progress), strict=True
    ):
        records[index] = record
        if images:
            samples[record.key] = images
    settings = {
        "codecs": list(codecs),
        "rates": _rate_labels(rates),
        "perceptual_metrics": perceptual,
        "jobs": jobs,
        "scans": {name: _scan_info(s, checks[name], refs.get(name)) for name, s in scans.items()},
        "metrics_domain": "projections, every value; SSIM/HaarPSI/VSI averaged over 2-D images",
        "data_range": "projection metrics: max - min of each original scan (per scan); recon "
        "metrics: max - min of the original's reconstruction inside the field of view",
        "timing": "wall clock of compress (incl. rate-control search) and decompress, one "
        "encoder thread" + (f", {jobs} parallel worker processes" if jobs > 1 else ""),
        "peak_memory": "growth of the process's peak resident set (Linux VmHWM reset via "
        "/proc/self/clear_refs, minus VmRSS before) during encode / decode, MB",
        "size": "bytes of the complete .ctpz file on disk; MB = 1e6 bytes",
    }
    return BenchResult(records, run_info(), settings, samples)


def _codec_rates(
    rates: Sequence[Rate] | Mapping[str, Sequence[Rate]] | None,
    codec: str,
    scan: Scan,
    modes: tuple[str, ...],
) -> Sequence[Rate]:
    if isinstance(rates, Mapping):
        return rates.get(codec, ())
    return default_rates(scan, modes) if rates is None else rates


def _rate_labels(rates: Sequence[Rate] | Mapping[str, Sequence[Rate]] | None) -> Any:
    if rates is None:
        return "default_rates per codec and scan"
    if isinstance(rates, Mapping):
        return {c: [BenchRecord("", "", m, t).rate_label for m, t in r] for c, r in rates.items()}
    return [BenchRecord("", "", m, t).rate_label for m, t in rates]


def _scan_info(scan: Scan, checksum: str, ref: ReconReference | None) -> dict[str, Any]:
    p = scan.projections
    info: dict[str, Any] = {
        "shape": list(scan.shape),
        "dtype": scan.dtype.name,
        "sha256_16": checksum,
        "geometry": None if scan.geometry is None else scan.geometry.kind,
        "data_range": float(p.max()) - float(p.min()),
        "metadata": scan.metadata,
    }
    if ref is not None:
        info["recon"] = ref.describe()
    return info


def _reusable(
    resume: BenchResult | None, checks: dict[str, str], recon: bool, perceptual: bool
) -> dict[str, tuple[BenchRecord, Samples]]:
    """Records of an earlier run that measured the same thing, relabelled with their origin."""
    if resume is None:
        return {}
    old_scans = resume.settings.get("scans", {})
    rev = resume.run.get("git_revision") or "unknown revision"
    label = f"earlier run of {resume.run.get('date', '?')} ({resume.run.get('library')}, {rev})"
    out = {}
    for r in resume.records:
        same_scan = old_scans.get(r.scan, {}).get("sha256_16") == checks.get(r.scan)
        lacks = (recon and r.recon_psnr_db is None) or (perceptual and r.haarpsi is None)
        if not same_scan or r.note or (r.ok and lacks):
            continue
        origin = label if r.origin == ORIGIN_THIS_RUN else r.origin
        out[r.key] = (dataclasses.replace(r, origin=origin), resume.samples.get(r.key, {}))
    return out


_WORKER: dict[str, Any] = {}


def _init_worker(
    scans: dict[str, Scan], refs: dict[str, ReconReference], perceptual: bool, threads: int
) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(scans=scans, refs=refs, perceptual=perceptual)


def _run_task(task: Task) -> tuple[BenchRecord, Samples]:
    _, name, codec, mode, target = task
    return measure_codec(
        _WORKER["scans"][name],
        codec,
        mode,
        target,
        scan_name=name,
        perceptual=_WORKER["perceptual"],
        recon=_WORKER["refs"].get(name),
    )


def _execute(
    tasks: list[Task],
    scans: dict[str, Scan],
    refs: dict[str, ReconReference],
    perceptual: bool,
    jobs: int,
    progress: bool,
) -> list[tuple[BenchRecord, Samples]]:
    bar = tqdm(total=len(tasks), desc="bench", unit="run", disable=not progress)
    results = []
    if jobs <= 1:
        _WORKER.update(scans=scans, refs=refs, perceptual=perceptual)
        for task in tasks:
            bar.set_postfix_str(f"{task[2]} {task[3]}")
            results.append(_run_task(task))
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(
            jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(scans, refs, perceptual, threads),
        ) as pool:
            for result in pool.map(_run_task, tasks):
                results.append(result)
                bar.update()
    bar.close()
    _WORKER.clear()
    return results


def run_info() -> dict[str, Any]:
    """Library version, git revision and machine, stored with every result file."""
    try:
        revision = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
                check=False,
            ).stdout.strip()
            or None
        )
    except OSError:
        revision = None
    return {
        "library": f"ctpress {__version__}",
        "git_revision": revision,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(result: BenchResult, out_dir: Path) -> None:
    """Write ``results.csv`` (one row per record, plus this run's date, library version, git
    revision and machine), ``results.json`` (records, run info and settings) and
    ``samples.npz`` (the decoded images the report shows) to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = {f"run_{k}": result.run.get(k) for k in ("date", "library", "git_revision", "machine")}
    names = [f.name for f in fields(BenchRecord)] + list(run)
    with open(out_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in result.records:
            writer.writerow(asdict(r) | run)
    payload = {
        "run": result.run,
        "settings": result.settings,
        "results": [asdict(r) for r in result.records],
    }
    text = json.dumps(_json_safe(payload), indent=1, allow_nan=False)
    (out_dir / "results.json").write_text(text)
    arrays = {f"{key}|{name}": a for key, s in result.samples.items() for name, a in s.items()}
    np.savez_compressed(out_dir / "samples.npz", **arrays)  # type: ignore[arg-type]


def load_results(out_dir: Path) -> BenchResult:
    """Read what :func:`write_results` wrote (samples where ``samples.npz`` exists)."""
    payload = json.loads((out_dir / "results.json").read_text())
    known = {f.name for f in fields(BenchRecord)}
    records = [
        BenchRecord(**{k: _json_float(v) for k, v in r.items() if k in known})
        for r in payload["results"]
    ]
    samples: dict[str, Samples] = {}
    if (out_dir / "samples.npz").exists():
        with np.load(out_dir / "samples.npz") as npz:
            for name in npz.files:
                key, _, image = name.rpartition("|")
                samples.setdefault(key, {})[image] = npz[name]
    return BenchResult(records, payload["run"], payload["settings"], samples)


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by the strings "inf", "-inf", "nan" (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _json_float(value: Any) -> Any:
    return float(value) if value in ("inf", "-inf", "nan") else value


def format_number(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``; ``-`` for None/NaN, ``inf`` for infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "inf" if math.isinf(value) else format(value, spec)


def format_table(records: Sequence[BenchRecord]) -> str:
    """A fixed-width text table of the records (failures and skips show their reason; rows
    reused from an earlier run are marked ``*``)."""
    recon = any(r.recon_psnr_db is not None for r in records)
    head = (
        f"{'codec':10s} {'rate control':14s} {'bits/val':>8s} {'ratio':>6s} {'PSNR dB':>7s} "
        f"{'SSIM':>6s} {'max err':>8s} "
        + (f"{'rec PSNR':>8s} {'RMSE HU':>7s} {'noise+':>6s} " if recon else "")
        + f"{'enc MB/s':>8s} {'dec MB/s':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        mark = "*" if r.origin != ORIGIN_THIS_RUN else " "
        lead = f"{r.codec:10s} {r.rate_label:14s}{mark}"
        if not r.ok:
            lines.append(f"{lead}{r.note or 'n/a: ' + str(r.error)}"[: len(head) + 40])
            continue
        columns = [(r.bits_per_value, "8.3f"), (r.ratio, "6.2f"), (r.psnr_db, "7.2f")]
        columns += [(r.ssim, "6.4f"), (r.max_abs_error, "8.4g")]
        if recon:
            columns += [(r.recon_psnr_db, "8.2f"), (r.recon_rmse_hu, "7.2f")]
            columns += [(r.added_noise_ratio, "6.3f")]
        columns += [(r.encode_mb_s, "8.2f"), (r.decode_mb_s, "8.2f")]
        cells = [f"{format_number(v, spec):>{spec.split('.')[0]}s}" for v, spec in columns]
        lines.append(lead + " ".join(cells))
    if any(r.origin != ORIGIN_THIS_RUN for r in records):
        lines.append("* reused from an earlier run (see the origin column of results.csv)")
    return "\n".join(lines)
