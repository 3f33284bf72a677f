"""Running a benchmark: every codec at every rate control on every scan, in this process
or in worker processes, reusing matching results of an earlier run (``resume``), and the
cached simulated benchmark scan.

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
  the added-noise ratio divides by the quantum noise of the original (:func:`recon_noise_std`);
* noise-bounded rates (``noise=F``): the noise model of each scan is given (``noise_models``)
  or estimated from its data (:func:`scan_noise_model`) and stored in the settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import progress_bar
from ..errors import InputError
from ..noise import NoiseModel, estimate_noise_model, robust_noise_std
from ..rate import RateControl
from ..scan import Scan
from .measure import ReconReference, measure_codec, prepare_recon, samples
from .records import (
    ORIGIN_THIS_RUN,
    BenchRecord,
    BenchResult,
    Rate,
    Samples,
    as_rate_control,
    run_info,
)

#: A run to do: (index in the records, scan name, codec, rate control).
Task = tuple[int, str, str, RateControl]
#: Rate controls to run: per codec id, the same for every codec, or None for the defaults.
RatePlan = Sequence[Rate] | Mapping[str, Sequence[Rate]] | None


def benchmark_scan(cache_dir: Path, shape: tuple[int, int, int]) -> tuple[Scan, str]:
    """A realistic benchmark scan of ``shape`` (views, rows, columns) and where it came
    from: simulated from the embedded volume (cone beam, cylindrical detector, Poisson
    noise at i0 = 1e5, uint16) and cached as ``codec_scan_<shape>.npy`` in ``cache_dir``,
    or that cached file."""
    from ..sim import simulate_scan

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
    np.save(cache, scan.array())
    return scan, f"simulate_scan (cone, i0=1e5, uint16) in {time.perf_counter() - t0:.0f} s"


def default_rates(scan: Scan, codec_modes: tuple[str, ...]) -> list[RateControl]:
    """A small sweep of rate controls a codec supports: lossless, an error bound about a
    quarter of the quantum noise, and two bit rates."""
    reference = scan.array()
    span = float(reference.max()) - float(reference.min())
    bound = max(robust_noise_std(reference) / 4, span * 1e-5)
    if reference.dtype.kind in "ui":
        bound = float(max(1, math.floor(bound)))
    rates = [RateControl("lossless")] if "lossless" in codec_modes else []
    rates += [RateControl("max_error", bound), RateControl("bpp", 2.0), RateControl("bpp", 1.0)]
    return [r for r in rates if r.mode in codec_modes]


def scan_noise_model(scan: Scan) -> NoiseModel:
    """The noise model of ``scan`` for its noise-bounded rates: estimated from the data
    (:func:`ctpress.noise.estimate_noise_model`), as counts (offset: metadata ``dark``)
    or, with metadata ``units == "line_integral"`` and ``i0``, as line integrals.
    InputError where neither applies (rescaled line integrals, line integrals without i0)."""
    meta = scan.metadata
    if meta.get("units") != "line_integral":
        return estimate_noise_model(scan.array(), dark=float(meta.get("dark", 0.0)))
    if meta.get("rescale_slope", 1.0) != 1.0 or meta.get("rescale_intercept", 0.0) != 0.0:
        raise InputError("no noise model for rescaled line integrals (stored values are not p)")
    if not meta.get("i0"):
        raise InputError("no noise model for line integrals without i0 in the metadata")
    return estimate_noise_model(scan.array(), "line_integral", i0=meta["i0"])


def scan_checksum(scan: Scan) -> str:
    """SHA-256 (first 16 hex digits) of the projections' bytes, dtype and shape."""
    h = hashlib.sha256(f"{scan.dtype.str}{scan.shape}".encode())
    h.update(np.ascontiguousarray(scan.array()).data)
    return h.hexdigest()[:16]


def run_bench(
    scans: dict[str, Scan],
    codecs: Sequence[str],
    rates: RatePlan = None,
    *,
    recon: bool = False,
    recon_slices: int = 4,
    jobs: int = 1,
    perceptual: bool = True,
    resume: BenchResult | None = None,
    progress: bool = True,
    noise_models: Mapping[str, NoiseModel] | None = None,
) -> BenchResult:
    """Run every codec at every rate control on every scan.

    Parameters
    ----------
    scans : dict of name to Scan
    codecs : codec ids
    rates : rate controls (:class:`RateControl` or (mode, target) pairs), per codec id (a
        mapping) or for every codec, or None for :func:`default_rates` of each codec and
        scan; a rate a codec does not support gives a record with a ``note`` instead of a run
    recon : also compare reconstructions (``recon_slices`` central slices, see module doc)
    jobs : parallel worker processes (1: run in this process).  Each worker gets
        ``cpu_count // jobs`` torch threads; timings then share the machine.
    perceptual : also compute HaarPSI and VSI
    resume : an earlier result (:func:`load_results`); its records with the same scan
        checksum, codec and rate (and the recon / perceptual metrics asked for) are reused,
        labelled with their origin
    progress : show a progress bar
    noise_models : noise model per scan name for ``noise`` rates (default:
        :func:`scan_noise_model`)
    """
    from ..codecs import get_codec_class

    refs = {name: prepare_recon(s, recon_slices) for name, s in scans.items()} if recon else {}
    checks = {name: scan_checksum(s) for name, s in scans.items()}
    reusable = _reusable(resume, checks, recon, perceptual)
    models: dict[str, NoiseModel | str] = {}
    records: list[BenchRecord] = []
    sample_images: dict[str, Samples] = {}
    tasks: list[Task] = []
    for name, scan in scans.items():
        ref = refs.get(name)
        sample_images[f"{name}|original"] = samples(scan.array(), ref.volume if ref else None)
        for codec in codecs:
            modes = get_codec_class(codec).rate_modes()
            for rate in _codec_rates(rates, codec, scan, modes):
                record = BenchRecord(scan=name, codec=codec, mode=rate.mode, target=rate.value)
                if record.key in reusable:
                    record, old_samples = reusable[record.key]
                    sample_images.update({record.key: old_samples} if old_samples else {})
                elif rate.mode not in modes:
                    record.note = f"skipped: {codec} has no {rate.mode} mode ({', '.join(modes)})"
                elif rate.mode == "noise":
                    if name not in models:
                        models[name] = _noise_model(scan, (noise_models or {}).get(name))
                    model = models[name]
                    if isinstance(model, str):
                        record.error = model
                    else:
                        tasks.append(
                            (len(records), name, codec, dataclasses.replace(rate, noise=model))
                        )
                else:
                    tasks.append((len(records), name, codec, rate))
                records.append(record)
    for (index, *_), (record, images) in zip(
        tasks, _execute(tasks, scans, refs, perceptual, jobs, progress), strict=True
    ):
        records[index] = record
        if images:
            sample_images[record.key] = images
    settings = {
        "codecs": list(codecs),
        "rates": _rate_labels(rates),
        "perceptual_metrics": perceptual,
        "jobs": jobs,
        "scans": {
            name: _scan_info(s, checks[name], refs.get(name), models.get(name))
            for name, s in scans.items()
        },
        "metrics_domain": "projections, every value; SSIM/HaarPSI/VSI averaged over 2-D images",
        "data_range": "projection metrics: max - min of each original scan (per scan); recon "
        "metrics: max - min of the original's reconstruction inside the field of view",
        "timing": "wall clock of compress (incl. rate-control search) and decompress, one "
        "encoder thread" + (f", {jobs} parallel worker processes" if jobs > 1 else ""),
        "peak_memory": "growth of the process's peak resident set (Linux VmHWM reset via "
        "/proc/self/clear_refs, minus VmRSS before) during encode / decode, MB",
        "size": "bytes of the complete .ctpz file on disk; MB = 1e6 bytes",
    }
    return BenchResult(records, run_info(), settings, sample_images)


def _noise_model(scan: Scan, given: NoiseModel | None) -> NoiseModel | str:
    """``given``, or the scan's estimated model, or why there is none."""
    if given is not None:
        return given
    try:
        return scan_noise_model(scan)
    except InputError as exc:
        return str(exc)


def _codec_rates(
    rates: RatePlan, codec: str, scan: Scan, modes: tuple[str, ...]
) -> list[RateControl]:
    if isinstance(rates, Mapping):
        return [as_rate_control(r) for r in rates.get(codec, ())]
    if rates is None:
        return default_rates(scan, modes)
    return [as_rate_control(r) for r in rates]


def _rate_labels(rates: RatePlan) -> Any:
    if rates is None:
        return "default_rates per codec and scan"
    if isinstance(rates, Mapping):
        return {c: [str(as_rate_control(r)) for r in rs] for c, rs in rates.items()}
    return [str(as_rate_control(r)) for r in rates]


def _scan_info(
    scan: Scan, checksum: str, ref: ReconReference | None, noise: NoiseModel | str | None
) -> dict[str, Any]:
    p = scan.array()
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
    if noise is not None:
        info["noise_model"] = noise if isinstance(noise, str) else noise.to_dict()
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
    # torch reads OMP_NUM_THREADS when first imported (by a learned codec); set it as well
    # where it is imported already
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    _WORKER.update(scans=scans, refs=refs, perceptual=perceptual)


def _run_task(task: Task) -> tuple[BenchRecord, Samples]:
    _, name, codec, rate = task
    return measure_codec(
        _WORKER["scans"][name],
        codec,
        rate,
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
    bar = progress_bar(len(tasks), "bench", "run", progress)
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
