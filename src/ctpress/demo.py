"""``ctpress demo``: the default scan through every registered codec, with a report."""

from __future__ import annotations

import time
from pathlib import Path

from .bench import BenchResult, Rate, format_table, run_bench, write_results
from .codecs import list_codec_ids
from .io import results_directory, write_scan
from .report import write_report
from .sim import default_scan

#: Rate controls of the demo: lossless where supported, and three PSNR targets (dB versus the
#: scan's max - min) around the quantum noise of the default scan (about 61 dB), which line the
#: codecs' RD curves up over the same PSNR interval for the BD-rates.
DEMO_RATES: tuple[Rate, ...] = (("lossless", None), ("psnr", 50.0), ("psnr", 60.0), ("psnr", 70.0))
#: The original study's high ratios (1300, 330 and 50 : 1 versus uint16, as bits per value of
#: the whole file) for SIREN, whose regime they are, and the best classical codecs for them.
STUDY_RATES: tuple[Rate, ...] = (("bpp", 16 / 1300), ("bpp", 16 / 330), ("bpp", 16 / 50))
#: Codecs run at other rates than :data:`DEMO_RATES`: SIREN at :data:`STUDY_RATES` only
#: (fitting at every PSNR is slow); sparse-unet (every 4th view) with its stored views
#: lossless (its quality is that of the synthesised views; ``make bench-sparse`` sweeps k).
STUDY_CODECS: dict[str, tuple[Rate, ...]] = {
    "siren": STUDY_RATES,
    "sparse-unet": (("lossless", None),),
    "sz3": DEMO_RATES + STUDY_RATES,
    "sperr": DEMO_RATES + STUDY_RATES,
}


def run_demo(
    out_dir: Path,
    codecs: list[str] | None = None,
    *,
    recon: bool = True,
    jobs: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> BenchResult:
    """Simulate the embedded default scan, bench each codec at :data:`DEMO_RATES` (with the
    reconstruction domain unless ``recon`` is False), write ``default_scan.npz``,
    ``results.csv``, ``results.json``, ``index.html`` and ``summary.md`` to ``out_dir``; print
    the table and the report path.

    ``out_dir`` is checked before any work (:func:`~ctpress.io.results_directory`): a
    directory an earlier demo or bench made is updated in place, an existing file is replaced
    only with ``overwrite``, a non-empty directory ctpress did not make is refused."""
    t0 = time.perf_counter()
    out_dir = results_directory(out_dir, overwrite=overwrite)
    scan = default_scan()
    write_scan(scan, out_dir / "default_scan.npz", overwrite=True)  # out_dir is ctpress's own
    ids = list_codec_ids() if codecs is None else codecs
    rates = {codec: STUDY_CODECS.get(codec, DEMO_RATES) for codec in ids}
    result = run_bench({"default": scan}, ids, rates, recon=recon, jobs=jobs, progress=progress)
    result.settings["scans"]["default"]["source"] = "ctpress.sim.default_scan()"
    write_results(result, out_dir)
    index = write_report(result, out_dir)
    print(format_table(result.records))
    print(f"\nreport: {index} ({time.perf_counter() - t0:.0f} s)")
    return result
