"""Compressing a memory-mapped .npy and decompressing to .npy stream chunk by chunk: the
process's anonymous memory (RssAnon, not the file pages of the maps) stays far below the
scan's size, and the round trip is exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ctpress

PROBE = """
import json, sys, threading, time
import ctpress

def anon():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

peaks, done = [0], [False]
def watch():
    while not done[0]:
        peaks[0] = max(peaks[0], anon())
        time.sleep(0.002)

source, ctpz, back = sys.argv[1:4]
threading.Thread(target=watch, daemon=True).start()
base = anon()
ctpress.compress(source, ctpz, codec="jpegls", lossless=True, jobs=2)
compress_peak = peaks[0] - base
peaks[0], base = 0, anon()
scan = ctpress.decompress(ctpz, back, jobs=2)
decompress_peak = peaks[0] - base
done[0] = True
print(json.dumps({"compress": compress_peak, "decompress": decompress_peak,
                  "shape": list(scan.projections.shape)}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_memory_mapped_round_trip_never_holds_the_scan(tmp_path: Path, suffix: str) -> None:
    """A .npy, or a contiguous unfiltered HDF5 dataset, is memory-mapped and compressed
    chunk by chunk; decompressing to .npy writes chunk by chunk."""
    import h5py

    shape = (384, 256, 512)  # 96 MiB of uint16
    source = tmp_path / f"scan{suffix}"
    handle = None
    if suffix == ".npy":
        scan = np.lib.format.open_memmap(source, mode="w+", dtype=np.uint16, shape=shape)
    else:
        handle = h5py.File(source, "w")
        scan = handle.create_dataset("projections", shape=shape, dtype=np.uint16)
    rng = np.random.default_rng(0)
    cols = np.arange(shape[2])
    for first in range(0, shape[0], 64):
        views = np.arange(first, first + 64)[:, None, None]
        signal = 20000 + 10000 * np.sin(0.01 * cols + 0.02 * views)
        block = signal + rng.integers(0, 64, (64, *shape[1:]))
        scan[first : first + 64] = block.astype(np.uint16)
    if handle is not None:
        handle.close()
    else:
        scan.flush()
    del scan
    ctpz, back = tmp_path / "scan.ctpz", tmp_path / "back.npy"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(source), str(ctpz), str(back)],
        capture_output=True,
        text=True,
        check=True,
    )
    peaks = json.loads(result.stdout)
    size = int(np.prod(shape)) * 2
    assert peaks["compress"] < size / 4, peaks
    assert peaks["decompress"] < size / 4, peaks
    assert peaks["shape"] == list(shape)
    original = ctpress.read_scan(source).projections
    decoded = np.load(back, mmap_mode="r")
    for first in range(0, shape[0], 64):
        np.testing.assert_array_equal(decoded[first : first + 64], original[first : first + 64])
