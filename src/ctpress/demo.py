"""``ctpress demo``: the default scan through every registered codec, with a report."""

from __future__ import annotations

import time
from pathlib import Path

from .bench import BenchResult, Rate, format_table, run_bench, write_results
from .codecs import list_codecs
from .io import write_scan
from .report import write_report
from .sim import default_scan

#: Rate controls of the demo: lossless where supported, and three PSNR targets (dB versus the
#: scan's max - min) around the quantum noise of the default scan (about 61 dB), which line the
#: codecs' RD curves up over the same PSNR interval for the BD-rates.
DEMO_RATES: tuple[Rate, ...] = (("lossless", None), ("psnr", 50.0), ("psnr", 60.0), ("psnr", 70.0))


def run_demo(
    out_dir: Path,
    codecs: list[str] | None = None,
    *,
    recon: bool = True,
    jobs: int = 1,
    progress: bool = True,
) -> BenchResult:
    """Simulate the embedded default scan, bench each codec at :data:`DEMO_RATES` (with the
    reconstruction domain unless ``recon`` is False), write ``results.csv``, ``results.json``,
    ``index.html`` and ``summary.md`` to ``out_dir``; print the table and the report path."""
    t0 = time.perf_counter()
    scan = default_scan()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_scan(scan, out_dir / "default_scan.npz")
    ids = [cls.codec_id for cls in list_codecs()] if codecs is None else codecs
    result = run_bench(
        {"default": scan}, ids, DEMO_RATES, recon=recon, jobs=jobs, progress=progress
    )
    result.settings["scans"]["default"]["source"] = "ctpress.sim.default_scan()"
    write_results(result, out_dir)
    index = write_report(result, out_dir)
    print(format_table(result.records))
    print(f"\nreport: {index} ({time.perf_counter() - t0:.0f} s)")
    return result
