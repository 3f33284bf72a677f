"""Batch throughput (issue 17): ``ctpress.batch`` on ``--scans`` scans with 1 and with 2
local Dask workers (one thread each), one scan of ``4 x --megabytes`` split into chunk tasks
on 1 and 2 workers, and what that means for a large archive.

The scans (``--megabytes`` each, raw counts uint16) are tiles of simulated views with fresh
noise (:func:`bench_streaming.write_source`), written by the benchmark and removed after.

Usage::

    python benchmarks/bench_batch.py --out results/benchmarks [--scans 8] [--megabytes 128]
        [--codec jpegls]

writes ``bench_batch.json`` and ``bench_batch.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_streaming import write_source

import ctpress
from ctpress.bench import run_info

#: The archive the issue names: the TCIA LDCT-and-Projection-data collection.
ARCHIVE_TB = 1.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--megabytes", type=float, default=128.0)
    parser.add_argument("--codec", default="jpegls")
    parser.add_argument("--work-dir", type=Path, help="where the scans go (default: tmp)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per setting; the fastest is reported"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ctpress-batch-", dir=args.work_dir))
    rows, split_rows = [], []
    try:
        inputs = []
        for k in range(args.scans):
            path = work / "in" / f"scan{k:02d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_source(path, "npy", args.megabytes / 1024, views=90, rows=32, cols=512, i0=2e4)
            inputs.append(path)
        total = sum(p.stat().st_size for p in inputs)
        for workers in (1, 2):
            times = []
            for repeat in range(args.repeats):
                t0 = time.perf_counter()
                records = ctpress.batch(
                    inputs, work / f"out{workers}-{repeat}", workers=workers, codec=args.codec,
                    lossless=True,
                )  # fmt: skip
                times.append(time.perf_counter() - t0)
                assert all(r.status == "done" for r in records), records
            seconds = min(times)
            rows.append(
                {"workers": workers, "seconds": seconds, "mb_s": total / 1e6 / seconds,
                 "all_seconds": times}
            )  # fmt: skip
        large = work / "large" / "scan.npy"
        large.parent.mkdir()
        write_source(large, "npy", 4 * args.megabytes / 1024, views=90, rows=32, cols=512, i0=2e4)
        importlib.import_module("ctpress.batch").SPLIT_BYTES = 0  # every input as chunk tasks
        for workers in (1, 2):
            times = []
            for repeat in range(args.repeats):
                t0 = time.perf_counter()
                (record,) = ctpress.batch(
                    [large], work / f"split{workers}-{repeat}", workers=workers,
                    codec=args.codec, lossless=True,
                )  # fmt: skip
                times.append(time.perf_counter() - t0)
                assert record.status == "done" and record.tasks > 1, record
            seconds = min(times)
            mb_s = large.stat().st_size / 1e6 / seconds
            split_rows.append(
                {"workers": workers, "seconds": seconds, "mb_s": mb_s, "tasks": record.tasks,
                 "all_seconds": times}
            )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    speedup = rows[1]["mb_s"] / rows[0]["mb_s"]
    split_speedup = split_rows[1]["mb_s"] / split_rows[0]["mb_s"]
    per_worker = rows[0]["mb_s"]
    hours_100_nodes = ARCHIVE_TB * 1e6 / (per_worker * 100 * (os.cpu_count() or 1)) / 3600
    result = {
        "run": run_info(),
        "scans": args.scans,
        "scan_megabytes": args.megabytes,
        "input_bytes": total,
        "codec": args.codec,
        "rows": rows,
        "speedup_2_workers": speedup,
        "split_rows": split_rows,
        "split_speedup_2_workers": split_speedup,
        "estimate_hours_1p2TB_100_nodes": hours_100_nodes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_batch.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Batch throughput: {args.scans} scans of {args.megabytes:g} MB, {args.codec} lossless",
        "",
        "| workers | seconds | MB/s |",
        "|---:|---:|---:|",
        *(f"| {r['workers']} | {r['seconds']:.1f} | {r['mb_s']:.1f} |" for r in rows),
        "",
        f"2 workers / 1 worker: {speedup:.2f}x ({os.cpu_count()} CPUs; the fastest of "
        f"{args.repeats} runs each, the cluster's start included: "
        f"{', '.join(f'{t:.1f}' for t in rows[0]['all_seconds'])} s with 1 worker, "
        f"{', '.join(f'{t:.1f}' for t in rows[1]['all_seconds'])} s with 2).",
        "",
        f"One scan of {4 * args.megabytes:g} MB split into chunk tasks:",
        "",
        "| workers | chunk tasks | seconds | MB/s |",
        "|---:|---:|---:|---:|",
        *(
            f"| {r['workers']} | {r['tasks']} | {r['seconds']:.1f} | {r['mb_s']:.1f} |"
            for r in split_rows
        ),
        "",
        f"2 workers / 1 worker on one split scan: {split_speedup:.2f}x (this process reads the "
        "scan once for its value range and writes the file; the workers read their chunks).",
        "",
        f"At {per_worker:.0f} MB/s per worker, 1.2 TB on 100 nodes of {os.cpu_count()} cores "
        f"(one worker per core) takes about {hours_100_nodes:.2f} h of compute, if the "
        f"storage delivers {per_worker * 100 * (os.cpu_count() or 1) / 1e3:.1f} GB/s in all "
        "(scans are independent tasks sharing nothing: at that scale the file system, not "
        "the codec, sets the pace).",
    ]
    (args.out / "bench_batch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
