"""Measuring a codec on a scan: real file bytes, wall times, and quality of the decoded data.

Every number comes from this run: the size is the length of the complete ``.ctpz``
bytes (header, index and chunk headers included), the metrics compare the decoded
projections with exactly the projections that were encoded.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from ._version import __version__
from .api import compress, decompress
from .errors import CtpressError
from .scan import Scan


@dataclass
class BenchRecord:
    """One codec at one rate control on one scan (sizes in bytes, times in seconds)."""

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
    encode_s: float | None = None
    decode_s: float | None = None
    encode_mb_s: float | None = None
    decode_mb_s: float | None = None
    error: str | None = None

    @property
    def rate_label(self) -> str:
        """Human-readable rate control, e.g. ``max_error=4``."""
        return self.mode if self.target is None else f"{self.mode}={self.target:g}"


def bench_codec(
    scan: Scan,
    codec: str,
    mode: str,
    target: float | None,
    *,
    scan_name: str = "scan",
    perceptual: bool = True,
    jobs: int = 1,
) -> BenchRecord:
    """Compress ``scan`` with ``codec`` at one rate control, decode, and measure.

    A request the codec cannot meet is recorded with its reason in ``error`` (not raised).
    """
    record = BenchRecord(scan=scan_name, codec=codec, mode=mode, target=target)
    rate = (
        {"lossless": mode == "lossless", mode: target} if mode != "lossless" else {"lossless": True}
    )
    t0 = time.perf_counter()
    try:
        data = compress(scan, codec=codec, jobs=jobs, **rate)
    except CtpressError as exc:
        record.error = str(exc)
        return record
    t1 = time.perf_counter()
    decoded = decompress(data).projections
    t2 = time.perf_counter()
    reference = scan.projections
    n_values = reference.size
    raw_mb = reference.nbytes / 1e6
    record.n_bytes = len(data)
    record.bits_per_value = metrics.bits_per_value(len(data), n_values)
    record.ratio = metrics.compression_ratio(len(data), reference.nbytes)
    record.ratio_vs_uint16 = metrics.ratio_vs_uint16(len(data), n_values)
    record.encode_s, record.decode_s = t1 - t0, t2 - t1
    record.encode_mb_s, record.decode_mb_s = raw_mb / (t1 - t0), raw_mb / (t2 - t1)
    quality = metrics.projection_metrics(reference, decoded, perceptual=perceptual)
    for key, value in quality.items():
        if hasattr(record, key):
            setattr(record, key, float(value))
    return record


def default_rates(scan: Scan, codec_modes: tuple[str, ...]) -> list[tuple[str, float | None]]:
    """A small sweep of rate controls a codec supports: lossless, an error bound about a
    quarter of the quantum noise, and two bit rates."""
    reference = scan.projections
    span = float(reference.max()) - float(reference.min())
    noise = _noise_std(reference)
    bound = max(noise / 4, span * 1e-5)
    if reference.dtype.kind in "ui":
        bound = float(max(1, math.floor(bound)))
    rates: list[tuple[str, float | None]] = []
    if "lossless" in codec_modes:
        rates.append(("lossless", None))
    rates += [("max_error", bound), ("bpp", 2.0), ("bpp", 1.0)]
    return [r for r in rates if r[0] in codec_modes]


def _noise_std(stack: np.ndarray) -> float:
    """Robust noise estimate: MAD of the second difference along detector columns."""
    d2 = np.diff(stack.astype(np.float64), n=2, axis=-1)
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))


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
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(records: list[BenchRecord], out_dir: Path, settings: dict[str, Any]) -> None:
    """Write ``results.csv`` and ``results.json`` (with run info and settings)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(BenchRecord)]
    with open(out_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in records:
            writer.writerow(asdict(r))
    payload = {"run": run_info(), "settings": settings, "results": [asdict(r) for r in records]}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=1, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(value)


def format_table(records: list[BenchRecord]) -> str:
    """A fixed-width text table of the records (failures show their reason)."""
    head = (
        f"{'codec':9s} {'rate control':18s} {'bytes':>9s} {'bits/val':>8s} {'ratio':>7s} "
        f"{'PSNR dB':>8s} {'SSIM':>7s} {'max err':>9s} {'enc MB/s':>8s} {'dec MB/s':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        if r.error:
            lines.append(f"{r.codec:9s} {r.rate_label:18s} n/a: {r.error[:80]}")
            continue
        psnr = "inf" if r.psnr_db is not None and math.isinf(r.psnr_db) else f"{r.psnr_db:8.2f}"
        lines.append(
            f"{r.codec:9s} {r.rate_label:18s} {r.n_bytes:9d} {r.bits_per_value:8.3f} "
            f"{r.ratio:7.2f} {psnr:>8s} {r.ssim:7.4f} {r.max_abs_error:9.4g} "
            f"{r.encode_mb_s:8.2f} {r.decode_mb_s:8.2f}"
        )
    return "\n".join(lines)
