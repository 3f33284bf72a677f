"""Streaming compress and decompress of a scan larger than memory (issue 17).

Writes a memory-mapped ``.npy`` scan of ``--gigabytes`` (raw counts, uint16): noiseless
line integrals of the embedded real CT volume are simulated once (``--views`` x
``--rows`` x ``--cols``, cone beam) and tiled along the views, each tile with fresh Poisson
noise at ``--i0`` (repeated tiles would flatter zstd and the 3-D codecs).  A child process
then runs ``ctpress.compress(npy, ctpz)`` and ``ctpress.decompress(ctpz, npy)`` while a
thread samples its anonymous memory (RssAnon: not the file pages of the memory maps); the
round trip is checked value by value (lossless codecs) and every file is removed after.

Usage::

    python benchmarks/bench_streaming.py --out results/benchmarks [--gigabytes 8]
        [--codec jpegls] [--jobs N] [--work-dir DIR]

writes ``bench_streaming.json`` and ``bench_streaming.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ctpress.bench import run_info
from ctpress.sim import simulate_scan

CHILD = """
import json, sys, threading, time
import ctpress

def anon():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

peak, done = [0], [False]
def watch():
    while not done[0]:
        peak[0] = max(peak[0], anon())
        time.sleep(0.005)

source, ctpz, back, codec, jobs = sys.argv[1:6]
jobs = int(jobs) if jobs != "all" else None
threading.Thread(target=watch, daemon=True).start()
t0 = time.perf_counter()
ctpress.compress(source, ctpz, codec=codec, lossless=True, jobs=jobs)
compress_s, compress_peak = time.perf_counter() - t0, peak[0]
peak[0] = 0
t0 = time.perf_counter()
ctpress.decompress(ctpz, back, jobs=jobs)
decompress_s, decompress_peak = time.perf_counter() - t0, peak[0]
done[0] = True
print(json.dumps({"compress_s": compress_s, "compress_peak_anon": compress_peak,
                  "decompress_s": decompress_s, "decompress_peak_anon": decompress_peak}))
"""


def write_source(path: Path, gigabytes: float, views: int, rows: int, cols: int, i0: float) -> int:
    """Write the tiled scan (raw counts, uint16) to ``path``; returns its number of views."""
    base = simulate_scan(n_views=views, det_rows=rows, det_cols=cols, i0=None, dtype="float32")
    expected = i0 * np.exp(-base.projections.astype(np.float64))
    tiles = max(1, round(gigabytes * 2**30 / (expected.size * 2)))
    scan = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint16, shape=(tiles * views, rows, cols)
    )
    rng = np.random.default_rng(0)
    for tile in range(tiles):
        counts = rng.poisson(expected)
        scan[tile * views : (tile + 1) * views] = np.minimum(counts, 65535)
    scan.flush()
    n_views = scan.shape[0]
    del scan
    return n_views


def same_values(a: Path, b: Path, block: int = 256) -> bool:
    """Whether two .npy files hold the same array (compared in blocks of views)."""
    first, second = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    if first.shape != second.shape or first.dtype != second.dtype:
        return False
    return all(
        np.array_equal(first[i : i + block], second[i : i + block])
        for i in range(0, first.shape[0], block)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--gigabytes", type=float, default=8.0)
    parser.add_argument("--codec", default="jpegls")
    parser.add_argument("--jobs", default="all", help="encoder/decoder threads, or 'all'")
    parser.add_argument("--views", type=int, default=180)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--i0", type=float, default=2e4)
    parser.add_argument("--work-dir", type=Path, help="where the large files go (default: tmp)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ctpress-stream-", dir=args.work_dir))
    try:
        source, ctpz, back = work / "scan.npy", work / "scan.ctpz", work / "back.npy"
        t0 = time.perf_counter()
        n_views = write_source(source, args.gigabytes, args.views, args.rows, args.cols, args.i0)
        write_s = time.perf_counter() - t0
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(source), str(ctpz), str(back), args.codec, args.jobs],
            capture_output=True,
            text=True,
            check=True,
        )
        row: dict[str, Any] = json.loads(child.stdout)
        size = source.stat().st_size
        row.update(
            codec=args.codec,
            jobs=args.jobs,
            shape=[n_views, args.rows, args.cols],
            input_bytes=size,
            ctpz_bytes=ctpz.stat().st_size,
            write_source_s=write_s,
            compress_mb_s=size / 1e6 / row["compress_s"],
            decompress_mb_s=size / 1e6 / row["decompress_s"],
            lossless_round_trip=same_values(source, back),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"run": run_info(), "streaming": row}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    mib = 2**20
    table = "\n".join(
        [
            "# Streaming compress / decompress (memory-mapped .npy to .ctpz and back)",
            "",
            f"{row['shape']} uint16 ({size / 2**30:.2f} GiB), codec {args.codec} lossless, "
            f"jobs {args.jobs}, {os.cpu_count()} CPUs.",
            "",
            "| step | seconds | MB/s | peak anonymous memory (MiB) |",
            "|---|---:|---:|---:|",
            f"| compress | {row['compress_s']:.1f} | {row['compress_mb_s']:.1f} | "
            f"{row['compress_peak_anon'] / mib:.0f} |",
            f"| decompress | {row['decompress_s']:.1f} | {row['decompress_mb_s']:.1f} | "
            f"{row['decompress_peak_anon'] / mib:.0f} |",
            "",
            f"ratio {size / row['ctpz_bytes']:.2f}:1; round trip exact: "
            f"{row['lossless_round_trip']}.",
        ]
    )
    (args.out / "bench_streaming.md").write_text(table + "\n")
    print(table)
    return 0 if row["lossless_round_trip"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
