"""Streaming compress and decompress of a scan larger than memory (issue 17).

Writes a scan of ``--gigabytes`` (raw counts, uint16) in ``--format``: a memory-mapped
``.npy`` (default), a chunked gzip HDF5 dataset, a Zarr v3 array (zarr's default zstd) or
a multi-page TIFF (one page per view); the three last are read view by view
(:class:`ctpress.io.LazyViews`).  Noiseless line integrals of the embedded real CT volume
are simulated once (``--views`` x ``--rows`` x ``--cols``, cone beam) and tiled along the
views, each tile with fresh Poisson noise at ``--i0`` (repeated tiles would flatter zstd
and the 3-D codecs).  A child process then runs ``ctpress.compress(source, ctpz)`` and
``ctpress.decompress(ctpz, npy)`` while a thread samples its anonymous memory (RssAnon:
not the file pages of the memory maps); the round trip is checked value by value
(lossless codecs) and every file is removed after.

Usage::

    python benchmarks/bench_streaming.py --out results/benchmarks [--gigabytes 8]
        [--format npy|hdf5|zarr|tiff] [--codec jpegls] [--jobs N] [--work-dir DIR]

writes ``bench_streaming.json`` and ``bench_streaming.md`` (``bench_streaming_FORMAT.*``
for another format than npy) into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ctpress.bench import run_info
from ctpress.io import read_scan
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


#: ``--format`` -> file suffix of the source scan.
SUFFIXES = {"npy": ".npy", "hdf5": ".h5", "zarr": ".zarr", "tiff": ".tif"}


def tiles(views: int, rows: int, cols: int, i0: float, n_tiles: int) -> Iterator[np.ndarray]:
    """``n_tiles`` tiles of raw counts (uint16), shape (views, rows, cols) each: one
    simulated scan with fresh Poisson noise per tile."""
    base = simulate_scan(n_views=views, det_rows=rows, det_cols=cols, i0=None, dtype="float32")
    expected = i0 * np.exp(-base.projections.astype(np.float64))
    rng = np.random.default_rng(0)
    for _ in range(n_tiles):
        yield np.minimum(rng.poisson(expected), 65535).astype(np.uint16)


def write_source(
    path: Path, fmt: str, gigabytes: float, views: int, rows: int, cols: int, i0: float
) -> int:
    """Write the tiled scan (raw counts, uint16) to ``path`` in ``fmt``, a tile at a time;
    returns its number of views."""
    n_tiles = max(1, round(gigabytes * 2**30 / (views * rows * cols * 2)))
    shape = (n_tiles * views, rows, cols)
    blocks = enumerate(tiles(views, rows, cols, i0, n_tiles))
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for _, tile in blocks:
                for view in tile:
                    tif.write(view, photometric="minisblack", contiguous=True)
        return shape[0]
    with contextlib.ExitStack() as stack:
        if fmt == "npy":
            scan: Any = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
        elif fmt == "hdf5":
            import h5py

            f = stack.enter_context(h5py.File(path, "w"))
            chunks = (8, rows, cols)
            scan = f.create_dataset(
                "projections", shape, np.uint16, chunks=chunks, compression="gzip"
            )
        else:
            import zarr

            scan = zarr.create_array(
                store=str(path), shape=shape, dtype=np.uint16, chunks=(views, rows, cols)
            )
        for tile_index, tile in blocks:
            scan[tile_index * views : (tile_index + 1) * views] = tile
        if fmt == "npy":
            scan.flush()
    return shape[0]


def same_values(a: Path, b: Path, block: int = 256) -> bool:
    """Whether two scans (any format ctpress reads) hold the same values (compared in
    blocks of views)."""
    first, second = read_scan(a).projections, read_scan(b).projections
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
    parser.add_argument("--format", choices=sorted(SUFFIXES), default="npy")
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
        source = work / f"scan{SUFFIXES[args.format]}"
        ctpz, back = work / "scan.ctpz", work / "back.npy"
        t0 = time.perf_counter()
        n_views = write_source(
            source, args.format, args.gigabytes, args.views, args.rows, args.cols, args.i0
        )
        write_s = time.perf_counter() - t0
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(source), str(ctpz), str(back), args.codec, args.jobs],
            capture_output=True,
            text=True,
            check=True,
        )
        row: dict[str, Any] = json.loads(child.stdout)
        size = n_views * args.rows * args.cols * 2  # raw bytes of the scan
        row.update(
            format=args.format,
            source_bytes=sum(p.stat().st_size for p in [source, *source.rglob("*")] if p.is_file()),
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
    stem = "bench_streaming" + ("" if args.format == "npy" else f"_{args.format}")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    mib = 2**20
    table = "\n".join(
        [
            f"# Streaming compress / decompress ({args.format} to .ctpz, back to .npy)",
            "",
            f"{row['shape']} uint16 ({size / 2**30:.2f} GiB raw, "
            f"{row['source_bytes'] / 2**30:.2f} GiB as {args.format}), "
            f"codec {args.codec} lossless, jobs {args.jobs}, {os.cpu_count()} CPUs.",
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
    (args.out / f"{stem}.md").write_text(table + "\n")
    print(table)
    return 0 if row["lossless_round_trip"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
