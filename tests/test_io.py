"""Tests of ctpress.io: round trips, NXtomo reading, errors and atomic writes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

import ctpress.io as cio
from ctpress import FormatError, Geometry, InputError, Scan
from ctpress.io import FORMATS, _npy, format_from_path, read_scan, write_scan

RICH = ["npz", "tiff", "hdf5", "zarr"]
EXT = {name: exts[0] for name, exts in FORMATS.items()}


def cone_scan() -> Scan:
    rng = np.random.default_rng(0)
    n, rows, cols = 12, 5, 7
    geometry = Geometry.circular("cone", n, 500.0, 1000.0, detector_spacing_mm=(1.0, 1.2))
    return Scan(
        rng.integers(0, 65535, (n, rows, cols), dtype=np.uint16),
        geometry=geometry,
        metadata={"units": "counts", "i0": 1e5},
        aux={
            "dark": rng.integers(0, 100, (2, rows, cols), dtype=np.uint16),
            "flat": rng.integers(0, 65535, (3, rows, cols), dtype=np.uint16),
        },
    )


def helical_scan() -> Scan:
    n = 9
    angles = np.arange(n) * 0.7
    geometry = Geometry(
        kind="helical",
        angles_rad=tuple(angles),
        source_isocenter_mm=595.0,
        source_detector_mm=1085.6,
        detector_shape="cylindrical",
        z_mm=tuple(np.arange(n) * 0.1 / 3),
    )
    data = np.random.default_rng(1).random((n, 4, 6), dtype=np.float32)
    return Scan(data, geometry=geometry, metadata={"units": "line_integral"})


def assert_same(a: Scan, b: Scan) -> None:
    assert a.user_array().dtype == b.user_array().dtype
    assert a.user_array().shape == b.user_array().shape
    assert np.array_equal(a.user_array(), b.user_array())
    assert a.original_ndim == b.original_ndim
    assert a.geometry == b.geometry
    assert a.metadata == b.metadata
    assert a.aux.keys() == b.aux.keys()
    for name, arr in a.aux.items():
        assert b.aux[name].dtype == arr.dtype
        assert np.array_equal(b.aux[name], arr)


@pytest.mark.parametrize("fmt", RICH)
def test_round_trip_cone_with_aux(tmp_path: Path, fmt: str) -> None:
    scan = cone_scan()
    path = tmp_path / f"scan{EXT[fmt]}"
    write_scan(scan, path)
    assert_same(scan, read_scan(path))


@pytest.mark.parametrize("fmt", RICH)
def test_round_trip_helical(tmp_path: Path, fmt: str) -> None:
    scan = helical_scan()
    path = tmp_path / f"scan{EXT[fmt]}"
    write_scan(scan, path)
    assert_same(scan, read_scan(path))


@pytest.mark.parametrize("fmt", [*RICH, "npy"])
def test_round_trip_2d_sinogram(tmp_path: Path, fmt: str) -> None:
    sino = np.random.default_rng(2).random((10, 16), dtype=np.float32)
    scan = Scan(sino)
    path = tmp_path / f"sino{EXT[fmt]}"
    write_scan(scan, path)
    back = read_scan(path)
    assert back.original_ndim == 2
    assert back.user_array().shape == (10, 16)
    assert_same(scan, back)


def test_npy_stores_only_the_array(tmp_path: Path) -> None:
    scan = cone_scan()
    path = tmp_path / "scan.npy"
    write_scan(scan, path)
    back = read_scan(path)
    assert np.array_equal(back.projections, scan.projections)
    assert back.geometry is None and back.metadata == {} and back.aux == {}


def test_hdf5_parallel_is_nxtomo(tmp_path: Path) -> None:
    scan = Scan(np.ones((4, 2, 3), np.float32), geometry=Geometry.parallel(4))
    path = tmp_path / "par.h5"
    write_scan(scan, path)
    with h5py.File(path) as f:
        assert f["entry"].attrs["NX_class"] == "NXentry"
        assert f["entry/definition"][()] == b"NXtomo"
        assert f["entry/instrument/detector/data"].shape == (4, 2, 3)
        assert np.allclose(f["entry/sample/rotation_angle"][()], [0, 45, 90, 135])
    assert_same(scan, read_scan(path))


def test_hdf5_nxtomo_keeps_odd_aux_exactly(tmp_path: Path) -> None:
    proj = np.random.default_rng(4).random((4, 2, 3), dtype=np.float32)
    aux = {"dark": np.ones((2, 3), np.uint16), "flat": proj[:2].copy(), "mask": np.eye(3)}
    scan = Scan(proj, geometry=Geometry.parallel(4), aux=aux)
    path = tmp_path / "odd.h5"
    write_scan(scan, path)
    with h5py.File(path) as f:
        assert list(f["entry/instrument/detector/image_key"][()]) == [1, 1, 0, 0, 0, 0]
    assert_same(scan, read_scan(path))


def test_hdf5_plain_dataset_name(tmp_path: Path) -> None:
    scan = cone_scan()
    path = tmp_path / "plain.h5"
    write_scan(scan, path, dataset="/exchange/data")
    with h5py.File(path) as f:
        assert f["exchange/data"].shape == scan.shape
    assert_same(scan, read_scan(path))
    assert_same(scan, read_scan(path, dataset="/exchange/data"))


def make_nxtomo(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hand-built NXtomo: dark, flats, projections, flats, dark, projections, as at a beamline."""
    rng = np.random.default_rng(3)
    keys = np.array([2, 1, 1, 0, 0, 0, 1, 2, 0, 0], dtype=np.int32)
    data = rng.integers(0, 4000, (keys.size, 3, 4), dtype=np.uint16)
    angles = np.where(keys == 0, 0.0, -1.0)
    angles[keys == 0] = [0.0, 36.0, 72.0, 108.0, 144.0]
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXtomo"
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        det = inst.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        det["data"] = data
        det["image_key"] = keys
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample["rotation_angle"] = angles
        sample["rotation_angle"].attrs["units"] = "degree"
        f["other/mask"] = np.zeros((3, 4), np.uint8)  # a second 2-D dataset: not a candidate
    return data, keys, angles, np.radians(angles[keys == 0])


def test_read_nxtomo_fixture(tmp_path: Path) -> None:
    path = tmp_path / "beamline.nxs"
    data, keys, _, angles = make_nxtomo(path)
    scan = read_scan(path)
    assert np.array_equal(scan.projections, data[keys == 0])
    assert np.array_equal(scan.aux["flat"], data[keys == 1])
    assert np.array_equal(scan.aux["dark"], data[keys == 2])
    assert scan.geometry is not None and scan.geometry.kind == "parallel"
    assert np.allclose(scan.geometry.angles(), angles)
    assert math.isclose(scan.geometry.angles_rad[1], math.pi / 5)
    same = read_scan(path, dataset="/entry/instrument/detector/data")
    assert np.array_equal(same.projections, scan.projections)


def test_read_plain_tiff_stack(tmp_path: Path) -> None:
    arr = np.arange(4 * 3 * 5, dtype=np.uint16).reshape(4, 3, 5)
    path = tmp_path / "stack.tiff"
    tifffile.imwrite(path, arr, photometric="minisblack")
    scan = read_scan(path)
    assert np.array_equal(scan.projections, arr) and scan.geometry is None


def test_format_override(tmp_path: Path) -> None:
    arr = np.arange(60, dtype=np.int16).reshape(5, 3, 4)
    path = tmp_path / "x.dat"
    write_scan(Scan(arr), path, format="npy")
    assert np.array_equal(np.load(path), arr)
    assert np.array_equal(read_scan(path, format="npy").projections, arr)
    with pytest.raises(InputError, match=r"\.npy"):
        read_scan(path)


def test_format_from_path() -> None:
    assert format_from_path("a/B.TIFF") == "tiff"
    assert format_from_path("scan.nxs") == "hdf5"
    assert format_from_path("scan.txt", "zarr") == "zarr"
    with pytest.raises(InputError, match="unknown format"):
        format_from_path("scan.npy", "jpeg")


def test_zarr_replaces_existing_directory(tmp_path: Path) -> None:
    path = tmp_path / "scan.zarr"
    write_scan(cone_scan(), path)
    scan = helical_scan()
    write_scan(scan, path, overwrite=True)
    assert_same(scan, read_scan(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.zarr"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_scan(tmp_path / "absent.npy")


def test_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.h5"):
        write_scan(cone_scan(), tmp_path / "scan.jpg")


@pytest.mark.parametrize("name", ["bad.npy", "bad.npz", "bad.h5", "bad.tif"])
def test_garbage_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a real file\x00\x01\x02" * 10)
    with pytest.raises(FormatError, match=name):
        read_scan(path)


def test_garbage_zarr(tmp_path: Path) -> None:
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"bad\.zarr"):
        read_scan(tmp_path / "bad.zarr")


def test_1d_array(tmp_path: Path) -> None:
    path = tmp_path / "line.npy"
    np.save(path, np.arange(10.0))
    with pytest.raises(InputError, match="1-D"):
        read_scan(path)


def test_nan_array(tmp_path: Path) -> None:
    path = tmp_path / "nan.npy"
    arr = np.ones((3, 2, 2), np.float32)
    arr[1, 0, 1] = np.nan
    np.save(path, arr)
    with pytest.raises(InputError, match="NaN"):
        read_scan(path)


def test_ambiguous_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.zeros((3, 4, 5), np.uint16)
        f["b/c"] = np.zeros((3, 4), np.uint16)
    with pytest.raises(InputError, match=r"'/a'.*'/b/c'"):
        read_scan(path)
    assert read_scan(path, dataset="b/c").original_ndim == 2
    with pytest.raises(InputError, match="no dataset"):
        read_scan(path, dataset="nope")


def test_dataset_rejected_for_npy(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset"):
        write_scan(cone_scan(), tmp_path / "s.npy", dataset="x")


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_written(projections: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        yield 0, np.asarray(projections[:1])  # the first views, then the disk fills
        raise RuntimeError("disk full")

    monkeypatch.setattr(_npy, "view_blocks", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        write_scan(cone_scan(), tmp_path / "scan.npz")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scan.zarr"
    scan = cone_scan()
    write_scan(scan, path)

    def half_write(scan: Scan, path: Path, dataset: str | None) -> None:
        (path / "junk").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setitem(cio._WRITERS, "zarr", half_write)
    with pytest.raises(KeyboardInterrupt):
        write_scan(helical_scan(), path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["scan.zarr"]
    assert_same(scan, read_scan(path))
