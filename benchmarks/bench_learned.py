"""Rate-distortion and speed of the learned codecs next to JPEG 2000 and HTJ2K.

Every codec codes each projection (or the sinogram of rows=1 scans) on its own.  Scans:
the held-out simulated scans (volumes never used in training, dose 1e5, cone beam with 64
rows and a rows=1 fan-beam sinogram) and the held-out views of the real projections
(``../shared/data/projections``).  Rates are the real ``.ctpz`` bytes; quality is
measured on the decoded data.  BD-rate (PCHIP, PSNR) of each codec against JPEG 2000 per
scan; JPEG 2000 is also coded at PSNR targets every 2 dB over the scan's PSNR span (its
knob is a whole-dB PSNR, so some bpp targets are out of its reach and would leave gaps
in the anchor curve).

Throughput (MB/s of uint16 input per second of wall time, torch using ``--threads``
threads, 2 by default, weights loaded before timing), of the learned codecs:

- ``large_scan_bpp_target`` (not with ``--quick``): :func:`ctpress.compress` with bpp
  targets 0.2 and 0.8 and :func:`ctpress.decompress` of a clinical-sized simulated scan
  (180 views x 64 rows x 736 columns, 17 MB), where per-file overheads do not dominate;
- ``bpp_target``: :func:`ctpress.compress` with a ``bpp`` target (rate search included)
  and :func:`ctpress.decompress`, over every scan and target: mean, minimum and aggregate
  (all input bytes over all seconds);
- ``fixed_operating_point``: one rate point at gain 1 without a residual (no search):
  the encoder's analysis, entropy coding and float64 synthesis, and the decoder, on the
  largest scan.

``--quick`` uses one scan of each kind (cone beam, fan-beam sinogram, real projections)
and four bpp targets, and runs in a few minutes on 2 cores.

Usage::

    python benchmarks/bench_learned.py --out results/benchmarks [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ctpress
from ctpress.bdrate import bd_rate
from ctpress.bench import BenchRecord, bench_codec, benchmark_scan, run_info
from ctpress.codecs.learned import ZooSession, decode_learned
from ctpress.learned import zoo
from ctpress.learned.data import DataFiles, default_data_dir, held_out_scans
from ctpress.scan import Scan

CODECS = ("hyperprior", "vqvae", "jpeg2000", "htj2k")
LEARNED = ("hyperprior", "vqvae")
BPP_TARGETS = (0.1, 0.2, 0.4, 0.8, 1.6)
QUICK_BPP_TARGETS = (0.2, 0.4, 0.8, 1.6)
#: Scans of ``--quick`` (substrings of the scan names): one of each kind.
#: Clinical-sized scan (views, rows, columns; 17 MB of uint16) for throughput, and its bpp targets.
LARGE_SCAN = (180, 64, 736)
LARGE_SCAN_BPP = (0.2, 0.8)
QUICK_SCANS = ("pulmonary_ct_cropped_1p5mm-0-cone", "pulmonary_ct_cropped_1p5mm-0-fan", "savu")
ANCHOR = "jpeg2000"
#: The anchor is also coded at PSNR targets this many dB apart over the PSNR span of all
#: codecs on the scan, so that its curve has no gaps where bpp targets are unreachable.
ANCHOR_PSNR_STEP = 2


def _fixed_point_mb_s(method: str, scan: Scan, rate_point: int) -> dict[str, float]:
    """Encode and decode throughput at one fixed operating point (no rate search):
    analysis, entropy coding and the float64 synthesis whose CRC goes into the stream;
    the decoder's entropy decoding and synthesis."""
    x = scan.projections
    t0 = time.perf_counter()
    stream, _ = ZooSession(method, x).stream((rate_point, 1.0), None)
    t1 = time.perf_counter()
    decode_learned(method, stream, x.shape, "float64")
    t2 = time.perf_counter()
    mb = x.nbytes / 1e6
    return {
        "encode": round(mb / (t1 - t0), 3),
        "decode": round(mb / (t2 - t1), 3),
        "bits_per_value": round(8 * len(stream) / x.size, 4),
    }


def _large_scan_mb_s(out: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """bpp-target encode and decode throughput of each learned codec on a clinical-sized
    simulated scan (:data:`LARGE_SCAN`, cached in ``out``), where the per-file overheads
    that dominate the small held-out scans are negligible: the scan's origin, and per
    method and target the bits/value and MB/s."""
    scan, source = benchmark_scan(out, LARGE_SCAN)
    mb = scan.projections.nbytes / 1e6
    results: dict[str, dict[str, Any]] = {method: {} for method in LEARNED}
    for method in LEARNED:
        for target in LARGE_SCAN_BPP:
            t0 = time.perf_counter()
            data = ctpress.compress(scan, codec=method, bpp=target)
            t1 = time.perf_counter()
            ctpress.decompress(data)
            t2 = time.perf_counter()
            point = {
                "bits_per_value": round(8 * len(data) / scan.projections.size, 4),
                "encode": round(mb / (t1 - t0), 3),
                "decode": round(mb / (t2 - t1), 3),
            }
            results[method][f"bpp={target:g}"] = point
            print(f"large scan {method} bpp={target:g}: {point}", flush=True)
    return source, results


def _warm_up() -> None:
    """Load every learned rate point and make its float64 decoder copies, so that the
    timings are those of a running process (not of loading weights)."""
    x = np.linspace(0, 60000, 2 * 32 * 48).reshape(2, 32, 48).astype(np.uint16)
    for method in LEARNED:
        for k in range(len(zoo.rate_points(method))):
            stream, _ = ZooSession(method, x).stream((k, 1.0), None)
            decode_learned(method, stream, x.shape, "float64")


def _bench(scan: Scan, name: str, codec: str, mode: str, target: float) -> BenchRecord:
    record = bench_codec(scan, codec, (mode, target), scan_name=name)
    print(
        f"{name[:48]:48s} {codec:10s} {mode}={target:<5g} -> "
        + (
            f"{record.bits_per_value:.3f} b/v, {record.psnr_db:.2f} dB, "
            f"SSIM {record.ssim:.4f}, enc {record.encode_mb_s:.2f} "
            f"dec {record.decode_mb_s:.2f} MB/s"
            if record.error is None
            else f"n/a: {record.error[:70]}"
        ),
        flush=True,
    )
    return record


def _speed(records: list[BenchRecord], scans: dict[str, Scan]) -> dict[str, float | None]:
    """Mean, minimum and aggregate (all input MB over all seconds) encode and decode
    MB/s of the successful records."""
    ok = [r for r in records if r.error is None and r.encode_s and r.decode_s]
    if not ok:
        return {}
    mb = sum(scans[r.scan].projections.nbytes / 1e6 for r in ok)
    speed: dict[str, float | None] = {}
    for op in ("encode", "decode"):
        rates = [getattr(r, f"{op}_mb_s") for r in ok]
        speed[f"{op}_mean"] = _mean(rates)
        speed[f"{op}_min"] = round(min(rates), 3)
        speed[f"{op}_aggregate"] = round(mb / sum(getattr(r, f"{op}_s") for r in ok), 3)
    return speed


def run(out: Path, quick: bool, threads: int = 2) -> dict[str, Any]:
    """Benchmark every codec at every bpp target on every held-out scan."""
    torch.set_num_threads(threads)
    data = default_data_dir()
    if data is None:
        raise FileNotFoundError("needs ../shared/data (or $CTPRESS_DATA)")
    _, held = DataFiles.find([data]).split()
    scans = held_out_scans(held, cache=out / "cache")
    if quick:
        scans = {name: scan for name, scan in scans.items() if any(k in name for k in QUICK_SCANS)}
    targets = QUICK_BPP_TARGETS if quick else BPP_TARGETS
    _warm_up()
    records = []
    for name, scan in scans.items():
        for codec in CODECS:
            for target in targets:
                records.append(_bench(scan, name, codec, "bpp", target))
        # the anchor's knob is a whole-dB PSNR: bpp targets alone leave gaps in its curve
        span = [r.psnr_db for r in records if r.scan == name and r.psnr_db is not None]
        for target in range(math.ceil(min(span)), math.floor(max(span)) + 1, ANCHOR_PSNR_STEP):
            records.append(_bench(scan, name, ANCHOR, "psnr", target))
    bd: dict[str, dict[str, float | None]] = {}
    for name in scans:
        anchor = [r for r in records if r.scan == name and r.codec == ANCHOR and not r.error]
        bd[name] = {}
        for codec in CODECS:
            test = [r for r in records if r.scan == name and r.codec == codec and not r.error]
            bd[name][codec] = _bd(anchor, test)
    largest = max(scans, key=lambda name: scans[name].projections.size)
    throughput = {
        method: {
            "bpp_target": _speed([r for r in records if r.codec == method], scans),
            "fixed_operating_point": {
                f"rate_point_{k}": _fixed_point_mb_s(method, scans[largest], k)
                for k in range(len(zoo.rate_points(method)))
            },
        }
        for method in LEARNED
    }
    large_source = None
    if not quick:
        large_source, large = _large_scan_mb_s(out)
        for method in LEARNED:
            throughput[method]["large_scan_bpp_target"] = large[method]
    result = {
        "run": run_info(),
        "settings": {
            "codecs": CODECS,
            "bpp_targets": targets,
            "torch_threads": threads,
            "quick": quick,
            "fixed_operating_point_scan": largest,
            "large_scan": {"shape": LARGE_SCAN, "source": large_source},
        },
        "scans": {name: list(scan.shape) for name, scan in scans.items()},
        "results": [asdict(r) for r in records],
        "bd_rate_vs_jpeg2000_percent": bd,
        "bd_rate_mean_percent": {
            codec: _mean([bd[name][codec] for name in scans]) for codec in CODECS
        },
        "throughput_mb_s": throughput,
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
    (out / "bench_learned.md").write_text(_markdown(result))
    return result


def _markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: BD-rates, throughput, then every point per scan."""
    codecs = result["settings"]["codecs"]
    lines = [
        "# Learned codecs vs JPEG 2000 / HTJ2K, per projection",
        "",
        f"{result['run']['date']}, {result['run']['library']} "
        f"({result['run']['git_revision']}), {result['run']['cpus']} CPUs, "
        f"torch threads {result['settings']['torch_threads']}. Rates are whole `.ctpz` "
        "files; PSNR uses each scan's own data range.",
        "",
        "## BD-rate vs JPEG 2000 (%, PCHIP over PSNR; negative = fewer bits)",
        "",
        "| scan | " + " | ".join(codecs) + " |",
        "|---" * (len(codecs) + 1) + "|",
    ]
    table = result["bd_rate_vs_jpeg2000_percent"]
    for scan, row in [*table.items(), ("mean", result["bd_rate_mean_percent"])]:
        cells = ["n/a" if row.get(c) is None else f"{row[c]:+.1f}" for c in codecs]
        lines.append(f"| {scan} | " + " | ".join(cells) + " |")
    lines += ["", "## Learned codecs' throughput (MB/s of input)", ""]
    lines += ["| codec | measure | encode | decode |", "|---|---|---|---|"]
    for method, speed in result["throughput_mb_s"].items():
        bpp = speed["bpp_target"]
        lines.append(
            f"| {method} | bpp target: mean (min) | {bpp.get('encode_mean')} "
            f"({bpp.get('encode_min')}) | {bpp.get('decode_mean')} ({bpp.get('decode_min')}) |"
        )
        for point, fixed in speed["fixed_operating_point"].items():
            lines.append(
                f"| {method} | {point}, no search ({fixed['bits_per_value']} b/v) | "
                f"{fixed['encode']} | {fixed['decode']} |"
            )
        shape = "x".join(str(n) for n in result["settings"]["large_scan"]["shape"])
        for target, large in speed.get("large_scan_bpp_target", {}).items():
            lines.append(
                f"| {method} | {shape} scan, {target} ({large['bits_per_value']} b/v) | "
                f"{large['encode']} | {large['decode']} |"
            )
    lines += ["", "## Every point", ""]
    lines += [
        "| scan | codec | target | bits/value | PSNR dB | SSIM | HaarPSI | VSI "
        "| enc MB/s | dec MB/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        target = f"{r['mode']}={r['target']:g}"
        if r["error"]:
            error = r["error"][:90]
            lines.append(f"| {r['scan']} | {r['codec']} | {target} | n/a: {error} |||||||")
            continue
        lines.append(
            f"| {r['scan']} | {r['codec']} | {target} | {r['bits_per_value']:.4f} | "
            f"{r['psnr_db']:.2f} | {r['ssim']:.4f} | {r['haarpsi']:.4f} | {r['vsi']:.4f} | "
            f"{r['encode_mb_s']:.2f} | {r['decode_mb_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _bd(anchor: list[BenchRecord], test: list[BenchRecord]) -> float | None:
    """BD-rate in percent, or None when the curves have < 2 points or do not overlap."""
    pts = []
    for records in (anchor, test):
        by_psnr: dict[float, float] = {}
        for r in records:
            if r.psnr_db is not None and math.isfinite(r.psnr_db) and r.bits_per_value:
                by_psnr.setdefault(round(r.psnr_db, 6), r.bits_per_value)
        pts.append((list(by_psnr.values()), list(by_psnr.keys())))
    try:
        return round(bd_rate(pts[0][0], pts[0][1], pts[1][0], pts[1][1]), 2)
    except Exception:  # too few points or no overlap: reported as missing
        return None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.mean(vals)), 3) if vals else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument(
        "--quick", action="store_true", help="3 scans and 4 bpp targets (a few minutes)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    if default_data_dir() is None:
        print("bench_learned: needs ../shared/data (or $CTPRESS_DATA)")
        return 1
    result = run(args.out, args.quick, args.threads)
    print(json.dumps(result["bd_rate_vs_jpeg2000_percent"], indent=1))
    print("mean BD-rate vs JPEG 2000 (%):", result["bd_rate_mean_percent"])
    print("learned codecs, MB/s:", json.dumps(result["throughput_mb_s"], indent=1))
    print(f"wrote {args.out / 'bench_learned.json'} and bench_learned.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
