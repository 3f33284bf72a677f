"""Rate-distortion and speed of the learned codecs next to JPEG 2000 and HTJ2K.

Every codec codes each projection (or the sinogram of rows=1 scans) on its own.  Scans:
the held-out simulated scans (volumes never used in training, dose 1e5, cone beam with 64
rows and a rows=1 fan-beam sinogram) and the held-out views of the real projections
(``../shared/data/projections``).  Rates are the real ``.ctpz`` bytes; quality is
measured on the decoded data.  BD-rate (PCHIP, PSNR) of each codec against JPEG 2000 per
scan.  Throughput: MB/s of the input per second of wall time, torch using 2 threads.

Usage::

    python benchmarks/bench_learned.py --out results/learned [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ctpress.bdrate import bd_rate
from ctpress.bench import bench_codec, run_info
from ctpress.learned import zoo
from ctpress.learned.codec import _Session
from ctpress.learned.data import DataFiles, default_data_dir, held_out_scans
from ctpress.scan import Scan

CODECS = ("hyperprior", "vqvae", "jpeg2000", "htj2k")
BPP_TARGETS = (0.1, 0.2, 0.4, 0.8, 1.6)
ANCHOR = "jpeg2000"


def _single_pass_mb_s(method: str, scan: Scan, rate_point: int) -> float:
    """Encoder throughput at one fixed operating point (no rate search): analysis,
    entropy coding and the float64 synthesis whose CRC goes into the stream."""
    x = scan.projections
    t0 = time.perf_counter()
    _Session(method, x).stream(rate_point, 1.0, None)
    return x.nbytes / 1e6 / (time.perf_counter() - t0)


def run(out: Path, quick: bool) -> dict:
    """Benchmark every codec at every bpp target on every held-out scan."""
    torch.set_num_threads(2)
    data = default_data_dir()
    if data is None:
        raise SystemExit("needs ../shared/data (or $CTPRESS_DATA)")
    _, held = DataFiles.find([data]).split()
    scans = held_out_scans(held, cache=out / "cache")
    targets = BPP_TARGETS[::2] if quick else BPP_TARGETS
    records = []
    for name, scan in scans.items():
        for codec in CODECS:
            for target in targets:
                record = bench_codec(scan, codec, "bpp", target, scan_name=name)
                records.append(record)
                print(
                    f"{name[:48]:48s} {codec:10s} bpp={target:<5g} -> "
                    + (
                        f"{record.bits_per_value:.3f} b/v, {record.psnr_db:.2f} dB, "
                        f"SSIM {record.ssim:.4f}, enc {record.encode_mb_s:.2f} "
                        f"dec {record.decode_mb_s:.2f} MB/s"
                        if record.error is None
                        else f"n/a: {record.error[:70]}"
                    ),
                    flush=True,
                )
    bd: dict[str, dict[str, float | None]] = {}
    for name in scans:
        anchor = [r for r in records if r.scan == name and r.codec == ANCHOR and not r.error]
        bd[name] = {}
        for codec in CODECS:
            test = [r for r in records if r.scan == name and r.codec == codec and not r.error]
            bd[name][codec] = _bd(anchor, test)
    throughput = {}
    for method in ("hyperprior", "vqvae"):
        scan = next(iter(scans.values()))
        throughput[method] = {
            f"rate_point_{k}_encode_mb_s": round(_single_pass_mb_s(method, scan, k), 3)
            for k in range(len(zoo.rate_points(method)))
        }
    result = {
        "run": run_info(),
        "settings": {"codecs": CODECS, "bpp_targets": targets, "torch_threads": 2},
        "scans": {name: list(scan.shape) for name, scan in scans.items()},
        "results": [asdict(r) for r in records],
        "bd_rate_vs_jpeg2000_percent": bd,
        "bd_rate_mean_percent": {
            codec: _mean([bd[name][codec] for name in scans]) for codec in CODECS
        },
        "single_pass_encode": throughput,
        "mean_mb_s": {
            codec: {
                "encode": _mean([r.encode_mb_s for r in records if r.codec == codec]),
                "decode": _mean([r.decode_mb_s for r in records if r.codec == codec]),
            }
            for codec in CODECS
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_learned.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _bd(anchor: list, test: list) -> float | None:
    """BD-rate in percent, or None when the curves have < 2 points or do not overlap."""
    pts = []
    for records in (anchor, test):
        by_psnr = {}
        for r in records:
            if math.isfinite(r.psnr_db):
                by_psnr.setdefault(round(r.psnr_db, 6), r.bits_per_value)
        pts.append((list(by_psnr.values()), list(by_psnr.keys())))
    try:
        return round(bd_rate(pts[0][0], pts[0][1], pts[1][0], pts[1][1]), 2)
    except Exception:  # too few points or no overlap: reported as missing
        return None


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.mean(vals)), 3) if vals else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/learned"))
    parser.add_argument("--quick", action="store_true", help="3 rate targets instead of 5")
    args = parser.parse_args()
    result = run(args.out, args.quick)
    print(json.dumps(result["bd_rate_vs_jpeg2000_percent"], indent=1))
    print("mean BD-rate vs JPEG 2000 (%):", result["bd_rate_mean_percent"])
    print("single-pass encode MB/s:", result["single_pass_encode"])
    print("mean MB/s (bpp targets):", result["mean_mb_s"])


if __name__ == "__main__":
    main()
