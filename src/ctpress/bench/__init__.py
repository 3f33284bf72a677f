"""Measuring codecs on scans: real file bytes, wall times, peak memory, and the quality of the
decoded data in the projection domain and (optionally) after reconstruction.

:mod:`.records` holds the records, result files and the ``--rates`` syntax; :mod:`.measure`
measures one codec at one rate control; :mod:`.runner` runs the sweep (see its docstring for
what every number means).  Nothing heavy (torch, scipy, matplotlib, tqdm, the codecs) is
imported until a measurement needs it.
"""

from .measure import (
    PeakMemory,
    ReconReference,
    bench_codec,
    compress_at,
    measure_codec,
    prepare_recon,
    recon_noise_std,
)
from .records import (
    ORIGIN_THIS_RUN,
    BenchRecord,
    BenchResult,
    Rate,
    Samples,
    as_rate_control,
    format_number,
    format_table,
    load_results,
    parse_rates,
    run_info,
    write_results,
)
from .runner import benchmark_scan, default_rates, run_bench, scan_checksum, scan_noise_model

__all__ = [
    "ORIGIN_THIS_RUN",
    "BenchRecord",
    "BenchResult",
    "PeakMemory",
    "Rate",
    "ReconReference",
    "Samples",
    "as_rate_control",
    "bench_codec",
    "benchmark_scan",
    "compress_at",
    "default_rates",
    "format_number",
    "format_table",
    "load_results",
    "measure_codec",
    "parse_rates",
    "prepare_recon",
    "recon_noise_std",
    "run_bench",
    "run_info",
    "scan_checksum",
    "scan_noise_model",
    "write_results",
]
