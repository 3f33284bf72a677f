"""Throughput and peak memory of every registered codec on a realistic, larger scan.

The scan is simulated once (cone beam, cylindrical detector, the embedded CT volume, Poisson
noise at i0 = 1e5, uint16; 720 views x 64 rows x 736 columns by default, about 68 MB) and
cached as ``codec_scan_<shape>.npy`` in the output folder; a cached scan is reported as such.
Each codec runs in lossless mode (where it has one) and with a max-error bound of about a
quarter of the scan's quantum noise.  Per run: compressed bits per value, encode/decode wall
time (best of ``--repeat``) and MB/s of input data, peak memory growth of encode/decode
(:class:`ctpress.bench.PeakMemory`), and a check of the decoded data (bit-exact, or within
the bound).

Usage::

    python benchmarks/bench_codecs.py --out results/benchmarks [--repeat 1] [--threads 1]
        [--codecs all|LIST] [--shape 720,64,736]

writes ``bench_codecs.json`` (command, version, machine, scan, results) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import ctpress
from ctpress.bench import PeakMemory, benchmark_scan, default_rates, run_info
from ctpress.codecs import get_codec_class, list_codecs
from ctpress.errors import CtpressError


def bench_one(
    scan: ctpress.Scan, codec: str, mode: str, target: float | None, repeat: int, threads: int
) -> dict[str, Any]:
    """Best-of-``repeat`` encode and decode of one codec at one rate control."""
    rate: dict[str, Any] = {"lossless": True} if mode == "lossless" else {mode: target}
    result: dict[str, Any] = {"codec": codec, "mode": mode, "target": target}
    raw_mb = scan.projections.nbytes / 1e6
    enc_s, dec_s, enc_mb, dec_mb = [], [], [], []
    try:
        for _ in range(repeat):
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                data = ctpress.compress(scan, codec=codec, jobs=threads, **rate)
                enc_s.append(time.perf_counter() - t0)
            enc_mb.append(mem.mb)
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                decoded = ctpress.decompress(data).projections
                dec_s.append(time.perf_counter() - t0)
            dec_mb.append(mem.mb)
    except CtpressError as exc:
        return result | {"error": str(exc)}
    err = float(np.max(np.abs(decoded.astype(np.float64) - scan.projections)))
    return result | {
        "bits_per_value": 8 * len(data) / scan.projections.size,
        "encode_s": min(enc_s),
        "decode_s": min(dec_s),
        "encode_mb_s": raw_mb / min(enc_s),
        "decode_mb_s": raw_mb / min(dec_s),
        "encode_peak_mb": max((m for m in enc_mb if m is not None), default=None),
        "decode_peak_mb": max((m for m in dec_mb if m is not None), default=None),
        "max_abs_error": err,
        "check_passed": err == 0 if mode == "lossless" else err <= float(target or 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per codec and mode")
    parser.add_argument("--threads", type=int, default=1, help="encoder threads (jobs)")
    parser.add_argument("--codecs", default="all", help="comma-separated ids, or 'all'")
    parser.add_argument("--shape", default="720,64,736", help="views,rows,cols of the scan")
    args = parser.parse_args(argv)
    n_views, rows, cols = (int(v) for v in args.shape.split(","))
    scan, source = benchmark_scan(args.out, (n_views, rows, cols))
    ids = [c.codec_id for c in list_codecs()] if args.codecs == "all" else args.codecs.split(",")
    results = []
    for codec in ids:
        modes = get_codec_class(codec).rate_modes()
        for rate in default_rates(scan, modes):
            mode = rate.mode
            if mode not in ("lossless", "max_error"):
                continue
            r = bench_one(scan, codec, mode, rate.value, args.repeat, args.threads)
            results.append(r)
            label = f"{codec:10s} {mode:9s}"
            if "error" in r:
                print(f"{label} n/a: {r['error']}", flush=True)
                continue
            peaks = "/".join(
                "-" if r[k] is None else f"{r[k]:.1f}" for k in ("encode_peak_mb", "decode_peak_mb")
            )
            print(
                f"{label} {r['bits_per_value']:6.3f} b/v  enc {r['encode_mb_s']:7.2f} MB/s  "
                f"dec {r['decode_mb_s']:7.2f} MB/s  peak {peaks} MB  "
                f"check {'ok' if r['check_passed'] else 'FAILED'}",
                flush=True,
            )
    payload = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": run_info(),
        "scan": {
            "shape": list(scan.shape),
            "dtype": scan.dtype.name,
            "nbytes": scan.projections.nbytes,
            "source": source,
        },
        "settings": {
            "repeat": args.repeat,
            "threads": args.threads,
            "rates": "lossless, and max_error ~ quantum noise / 4 (ctpress.bench.default_rates)",
            "timing": "best of repeat; MB/s of input data (1 MB = 1e6 bytes)",
            "peak_memory": "ctpress.bench.PeakMemory: growth of VmHWM during the call, MB",
        },
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_codecs.json"
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
