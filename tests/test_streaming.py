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


def _write_chunked_hdf5(path: Path, views: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(
            "projections", data=views, chunks=(4, *views.shape[1:]), compression="gzip"
        )


def _write_zarr(path: Path, views: np.ndarray) -> None:
    import zarr

    stored = zarr.create_array(
        store=str(path), shape=views.shape, dtype=views.dtype, chunks=(4, *views.shape[1:])
    )
    stored[...] = views


def _write_tiff_pages(path: Path, views: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, views, photometric="minisblack")


def _write_ctpd(path: Path, views: np.ndarray) -> None:
    from ctpress.io.dicom_fixtures import make_ctpd_series

    make_ctpd_series(path, views, ctpress.Geometry.circular("cone", len(views), 595.0, 1085.6))


LAZY_INPUTS = {
    "chunked gzip HDF5": (".h5", _write_chunked_hdf5, (96, 16, 48), np.uint16),
    "chunked gzip HDF5 sinograms": (".h5", _write_chunked_hdf5, (96, 48), np.float32),
    "Zarr": (".zarr", _write_zarr, (96, 16, 48), np.float32),
    "multi-page TIFF": (".tif", _write_tiff_pages, (96, 16, 48), np.uint16),
    "DICOM-CT-PD directory": ("_ctpd", _write_ctpd, (96, 16, 48), np.uint16),
}


def _lazy_source(tmp_path: Path, name: str) -> tuple[Path, np.ndarray]:
    """The input ``name`` of :data:`LAZY_INPUTS` written to ``tmp_path``, and its values."""
    suffix, write, shape, dtype = LAZY_INPUTS[name]
    rng = np.random.default_rng(1)
    values = (1000 + 500 * rng.random(shape)).astype(dtype)
    source = tmp_path / f"scan{suffix}"
    write(source, values)
    return source, values


@pytest.fixture
def slab_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Views of every read of a LazyViews, with every input read lazily (threshold 0) and
    block-wise first passes of one view at a time."""
    from ctpress.io import LazyViews, _lazy

    monkeypatch.setattr(_lazy, "LAZY_BYTES", 0)
    monkeypatch.setattr(ctpress.scan, "_CHECK_BLOCK_BYTES", 1)
    slabs: list[int] = []
    read_views = LazyViews._views

    def counted(self: LazyViews, start: int, stop: int) -> np.ndarray:
        slabs.append(stop - start)
        return read_views(self, start, stop)

    monkeypatch.setattr(LazyViews, "_views", counted)
    return slabs


@pytest.mark.parametrize("name", LAZY_INPUTS)
def test_lazy_input_is_compressed_a_few_views_at_a_time(
    tmp_path: Path, slab_reads: list[int], name: str
) -> None:
    """With the lazy threshold forced to 0, read_scan gives LazyViews, and compressing
    reads no slab larger than a chunk (never the whole scan), in two passes over the
    views; the lossless output decodes to the input bit-exactly."""
    from ctpress.io import LazyViews

    source, values = _lazy_source(tmp_path, name)
    assert isinstance(ctpress.read_scan(source).projections, LazyViews)
    slab_reads.clear()
    ctpz = tmp_path / "scan.ctpz"
    ctpress.compress(source, ctpz, codec="zstd", lossless=True, chunk_views=8, jobs=2)
    assert slab_reads and max(slab_reads) == 8, slab_reads  # chunks of 8 views
    assert sum(slab_reads) == 2 * len(values)  # one first pass (range, NaN check), one coding
    decoded = ctpress.decompress(ctpz)
    np.testing.assert_array_equal(decoded.user_array(), values)


def test_convert_of_a_lazy_input_writes_the_store_block_by_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slab_reads: list[int]
) -> None:
    """``convert`` copies a lazily read scan into the Zarr store a block of whole chunks
    at a time (16 views here), and the store reads back exactly."""
    from ctpress.io import _zarr

    source, values = _lazy_source(tmp_path, "chunked gzip HDF5")
    monkeypatch.setattr(_zarr, "_WRITE_BLOCK_BYTES", 16 * values[0].nbytes)
    store = tmp_path / "scan.zarr"
    ctpress.convert(source, store, codec="zstd", lossless=True, chunk_views=8)
    assert slab_reads and max(slab_reads) <= 16, slab_reads
    back = ctpress.read_scan(store).projections
    np.testing.assert_array_equal(np.asarray(back), values)


def test_lazy_views_index_like_an_array() -> None:
    """Indexes and slices of views read only what they cover and match NumPy's."""
    from ctpress.io import LazyViews

    values = np.arange(10 * 2 * 3, dtype=np.int32).reshape(10, 2, 3)
    reads: list[tuple[int, int]] = []

    def read(start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return values[start:stop]

    views = LazyViews(read, values.shape, values.dtype, "test")
    for key in (3, -1, slice(2, 5), slice(None, None, 3), slice(8, 1, -2), slice(5, 2)):
        np.testing.assert_array_equal(views[key], values[key])
    assert reads[:3] == [(3, 4), (9, 10), (2, 5)]
    assert (len(views), views.nbytes, views.ndim) == (10, values.nbytes, 3)
    np.testing.assert_array_equal(np.asarray(views), values)
    with pytest.raises(IndexError):
        views[10]


def test_noise_model_of_a_lazy_scan_reads_one_run_of_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slab_reads: list[int]
) -> None:
    """The noise model of the noise-bounded mode is estimated from a run of views of at
    most NOISE_SAMPLE_BYTES (16 views here), read once, not from the whole scan."""
    from ctpress import api

    source, values = _lazy_source(tmp_path, "chunked gzip HDF5")
    monkeypatch.setattr(api, "NOISE_SAMPLE_BYTES", 16 * values[0].nbytes)
    scan = ctpress.read_scan(source)
    slab_reads.clear()
    model = api.noise_model(scan)
    assert slab_reads == [16]
    assert model.domain == "counts"


def test_lazy_views_read_whole_source_blocks_once() -> None:
    """With blocks of 4 views, neighbouring reads that share a block decode it once, and
    a read is a copy (the kept block is not changed through it); a huge block is not
    read whole."""
    from ctpress.io import LazyViews

    values = np.arange(10 * 2 * 3, dtype=np.int32).reshape(10, 2, 3)
    reads: list[tuple[int, int]] = []

    def read(start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return values[start:stop].copy()

    views = LazyViews(read, values.shape, values.dtype, "test", block_views=4)
    first, second = views[0:3], views[3:10]
    np.testing.assert_array_equal(np.concatenate([first, second]), values)
    assert reads == [(0, 4), (4, 8), (8, 10)]
    first[:] = -1
    np.testing.assert_array_equal(views[1], values[1])
    assert len(reads) == 3
    reads.clear()  # a block over CACHE_BYTES (chunked across the views) is never read whole
    across = LazyViews(read, values.shape, values.dtype, "test", block_views=2**40)
    np.testing.assert_array_equal(across[2:4], values[2:4])
    assert reads == [(2, 4)]


def test_an_open_hdf5_dataset_is_compressed_without_reading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An h5py dataset is a ViewStack: a Scan keeps it, ``compress`` slices it a chunk
    (8 views) or a one-view check block at a time, and the stream decodes to its values."""
    import h5py

    source, values = _lazy_source(tmp_path, "chunked gzip HDF5")
    monkeypatch.setattr(ctpress.scan, "_CHECK_BLOCK_BYTES", 1)
    keys: list[object] = []
    read = h5py.Dataset.__getitem__

    def recorded(self: h5py.Dataset, key: object, **kwargs: object) -> object:
        keys.append(key)
        return read(self, key, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recorded)
    with h5py.File(source, "r") as f:
        dataset = f["projections"]
        scan = ctpress.Scan(dataset)
        assert scan.projections is dataset
        data = ctpress.compress(scan, codec="zstd", lossless=True, chunk_views=8)
    assert keys and all(isinstance(k, slice) and k.stop - k.start <= 8 for k in keys), keys
    np.testing.assert_array_equal(ctpress.decompress(data).projections, values)


def test_a_lazily_read_series_cut_short_after_reading_is_a_format_error(
    tmp_path: Path, slab_reads: list[int]
) -> None:
    """A DICOM-CT-PD file truncated between read_scan and compressing: FormatError naming
    it (no garbage views)."""
    source, _ = _lazy_source(tmp_path, "DICOM-CT-PD directory")
    scan = ctpress.read_scan(source)
    victim = sorted(source.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ctpress.FormatError, match="PixelData was cut short"):
        ctpress.compress(scan, codec="zstd", lossless=True)


@pytest.mark.parametrize("name", ["scan.zarr", "scan.h5", "series", "scan.tif", "scan.npz"])
def test_a_large_scan_decompresses_to_a_block_wise_writer_chunk_by_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Decompressing to Zarr, HDF5, DICOM-CT-PD, TIFF or .npz decodes a few chunks per read
    (never the whole scan) when the scan is large (threshold 0 here), and writes exact
    values."""
    from ctpress.container import CtpzFile
    from ctpress.io import _lazy, _zarr

    rng = np.random.default_rng(5)
    values = rng.integers(0, 4000, (48, 4, 20)).astype(np.uint16)
    geometry = ctpress.Geometry.circular("cone", 48, 500.0, 1000.0)
    ctpz = tmp_path / "scan.ctpz"
    ctpress.compress(ctpress.Scan(values, geometry), ctpz, codec="zstd", lossless=True,
                     chunk_views=8)  # fmt: skip
    monkeypatch.setattr(_lazy, "LAZY_BYTES", 0)
    monkeypatch.setattr(_zarr, "CHUNK_BYTES", 8 * values[0].nbytes)
    monkeypatch.setattr(_zarr, "_WRITE_BLOCK_BYTES", 16 * values[0].nbytes)
    monkeypatch.setattr(ctpress.scan, "_CHECK_BLOCK_BYTES", 16 * values[0].nbytes)
    reads: list[int] = []
    read_views = CtpzFile.read_views

    def counted(self: CtpzFile, start: int = 0, stop: int | None = None, out: object = None):  # type: ignore[no-untyped-def]
        reads.append((self.shape[0] if stop is None else stop) - start)
        return read_views(self, start, stop, out)  # type: ignore[arg-type]

    monkeypatch.setattr(CtpzFile, "read_views", counted)
    output = tmp_path / name
    fmt = "dicom-ctpd" if name == "series" else None
    back = ctpress.decompress(ctpz, output, output_format=fmt)
    assert reads and max(reads) <= 16, reads
    np.testing.assert_array_equal(np.asarray(back.projections), values)
    np.testing.assert_array_equal(ctpress.read_scan(output).array(), values)
