"""Measuring one codec at one rate control on one scan: real file bytes, wall times, peak
memory, and the quality of the decoded data in the projection domain and (optionally)
after reconstruction against a :class:`ReconReference` of the original.

Heavy modules (the codecs, the metrics, reconstruction) are imported when first used.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CtpressError, InputError
from ..noise import NoiseModel
from ..rate import RateControl
from ..scan import Scan
from .records import BenchRecord, Rate, Samples, as_rate_control


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
    from ..recon import reconstruct

    volume = np.asarray(reconstruct(scan, algorithm, **options), dtype=np.float32)
    return volume.reshape(-1, *volume.shape[-2:])


def prepare_recon(scan: Scan, n_slices: int = 4) -> ReconReference:
    """Reconstruct ``n_slices`` central slices of the original ``scan`` (FBP of the central
    detector rows for parallel/fan beam, FDK of the central ``n_slices`` voxel planes for cone
    beam; pixel size = detector column pitch at the isocentre), its field of view and noise."""
    from ..recon import field_of_view_mask
    from ..sim import MU_WATER_PER_MM

    g = scan.geometry
    if g is None or g.kind == "helical":
        raise InputError(
            "--recon needs a parallel, fan or cone geometry (a bare array: give --geometry and "
            "--angles; helical: rebin first)"
        )
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
    ``i0``): the per-value variance of the line integrals p is that of the ideal-Poisson
    :class:`~ctpress.noise.NoiseModel` of line integrals, ``exp(p) / i0`` (1 / counts),
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
    from ..recon import line_integrals

    meta = scan.metadata
    units, i0 = meta.get("units"), meta.get("i0")
    if i0 and units in ("counts", "line_integral"):
        p = line_integrals(scan).astype(np.float64)
        var = NoiseModel("line_integral", i0=float(i0)).sigma(p) ** 2
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


def samples(projections: np.ndarray, volume: np.ndarray | None) -> Samples:
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


def compress_at(scan: Scan, codec: str, rate: RateControl) -> bytes:
    """:func:`ctpress.compress` of ``scan`` with ``codec`` at ``rate``, one thread (the
    benchmark runs codecs side by side in worker processes and times each alone)."""
    from ..api import compress
    from ..rate import option_name

    keyword = option_name(rate.mode)
    target: Any = True if rate.value is None else rate.value
    return compress(
        scan, codec=codec, data_range=rate.data_range, noise=rate.noise, jobs=1, **{keyword: target}
    )


def bench_codec(
    scan: Scan,
    codec: str,
    rate: Rate,
    *,
    scan_name: str = "scan",
    perceptual: bool = True,
    recon: ReconReference | None = None,
) -> BenchRecord:
    """The measurements of :func:`measure_codec` (without the decoded images)."""
    return measure_codec(
        scan, codec, rate, scan_name=scan_name, perceptual=perceptual, recon=recon
    )[0]


def measure_codec(
    scan: Scan,
    codec: str,
    rate: Rate,
    *,
    scan_name: str = "scan",
    perceptual: bool = True,
    recon: ReconReference | None = None,
) -> tuple[BenchRecord, Samples]:
    """Compress ``scan`` with ``codec`` at one rate control, decode, and measure.

    Times are wall clock of :func:`ctpress.compress` (including any rate-control search)
    and :func:`ctpress.decompress`; sizes the bytes of the complete file on disk.  A request
    the codec cannot meet is recorded with its reason in ``error`` (not raised).  With
    ``recon``, the decoded scan is reconstructed like the reference and compared.

    Returns
    -------
    (BenchRecord, Samples)
        The measurements, and the decoded images for the report (empty on failure).
    """
    from .. import metrics
    from ..api import decompress

    rate = as_rate_control(rate)
    record = BenchRecord(scan=scan_name, codec=codec, mode=rate.mode, target=rate.value)
    try:
        with PeakMemory() as enc_mem:
            t0 = time.perf_counter()
            data = compress_at(scan, codec, rate)
            t1 = time.perf_counter()
    except CtpressError as exc:
        record.error = str(exc)
        return record, {}
    with PeakMemory() as dec_mem:
        t2 = time.perf_counter()
        decoded_scan = decompress(data)
        t3 = time.perf_counter()
    reference, decoded = scan.array(), decoded_scan.array()
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
    return record, samples(decoded, volume)
