"""Tests of the DICOM-CT-PD reader/writer (ctpress.io._dicom_ctpd) on pydicom-built fixtures."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import ctpress
from ctpress import FormatError, Geometry, InputError, Scan
from ctpress.io import MARKER, format_from_path, read_scan, write_scan
from ctpress.io._dicom_ctpd import CREATOR, read_ctpd, write_ctpd
from ctpress.io.dicom_fixtures import make_ctpd_series

N, ROWS, COLS = 12, 8, 40
SID, SDD, ROW_PITCH, COL_PITCH = 595.0, 1085.6, 1.0947, 1.2858
OFFSET = (0.25 * ROW_PITCH, -1.125 * COL_PITCH)


def geometry(cols: int = COLS) -> Geometry:
    return Geometry(
        kind="helical",
        angles_rad=tuple(np.arange(N) * 2 * math.pi / 5),
        source_isocenter_mm=SID,
        source_detector_mm=SDD,
        detector_spacing_mm=(ROW_PITCH, COL_PITCH),
        detector_shape="cylindrical",
        detector_offset_mm=OFFSET,
        z_mm=tuple(-50 + np.arange(N) * 0.35),
    )


def projections(cols: int = COLS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (N, ROWS, cols), dtype=np.uint16)


@pytest.fixture
def series(tmp_path: Path) -> tuple[Path, list[Path]]:
    """An FFSZ series with random file names (listing order != acquisition order)."""
    return tmp_path / "ctpd", make_ctpd_series(
        tmp_path / "ctpd", projections(), geometry(), ffs_mode="FFSZ"
    )


def pixel_span(path: Path) -> tuple[int, int]:
    elem = pydicom.dcmread(path).get_item(0x7FE00010, keep_deferred=True)
    return elem.value_tell, elem.length


def assert_same_except_pixels(original: Path, written: Path, pixels: np.ndarray) -> None:
    a, b = original.read_bytes(), written.read_bytes()
    start, length = pixel_span(original)
    assert (
        len(a) == len(b) and a[:start] == b[:start] and a[start + length :] == b[start + length :]
    )
    assert b[start : start + length] == np.ascontiguousarray(pixels, "<u2").tobytes()
    da, db = pydicom.dcmread(original), pydicom.dcmread(written)
    assert [e.tag for e in da] == [e.tag for e in db]
    for elem in da:
        if elem.tag != 0x7FE00010:
            assert db[elem.tag].value == elem.value, elem


def test_read_orders_by_instance_number(series: tuple[Path, list[Path]]) -> None:
    directory, paths = series
    names = [p.name for p in paths]
    assert sorted(names) != names  # the listing is not the acquisition order
    scan = read_ctpd(directory)
    assert scan.metadata["dicom_filenames"] == names
    assert scan.dtype == np.uint16 and np.array_equal(scan.projections, projections())
    assert pydicom.dcmread(paths[0]).Rows == COLS  # vendor layout: channels x rows, transposed


def test_read_geometry_and_metadata(series: tuple[Path, list[Path]]) -> None:
    scan = read_ctpd(series[0])
    g, ref = scan.geometry, geometry()
    assert g is not None and g.kind == "helical" and g.detector_shape == "cylindrical"
    diff = np.angle(np.exp(1j * (g.angles() - ref.angles())))
    assert np.abs(diff).max() < 1e-6
    assert np.allclose(g.z_mm, ref.z_mm, atol=1e-5)
    assert (g.source_isocenter_mm, g.source_detector_mm) == pytest.approx((SID, SDD), rel=1e-7)
    assert g.detector_spacing_mm == pytest.approx((ROW_PITCH, COL_PITCH), rel=1e-7)
    assert g.detector_offset_mm == pytest.approx(OFFSET, rel=1e-6)
    meta = scan.metadata
    assert meta["units"] == "line_integral" and meta["origin"] == "dicom-ctpd"
    assert meta["rescale_slope"] == 0.00019311177675
    assert meta["rescale_intercept"] == -0.1977421025986
    assert meta["mu_water_per_mm"] == 0.0192
    assert (meta["ffs_mode"], meta["scan_type"], meta["source_angular_steps"]) == (
        "FFSZ",
        "HELICAL",
        5,
    )


def test_ffs_shifts_and_photon_statistics(tmp_path: Path) -> None:
    photons = np.random.default_rng(3).uniform(1e4, 2e5, (N, COLS))
    make_ctpd_series(
        tmp_path / "s", projections(), geometry(), ffs_mode="FFSZ", photon_statistics=photons
    )
    aux = read_ctpd(tmp_path / "s").aux
    quarter_row = ROW_PITCH * SID / SDD / 4
    assert aux["ffs_axial_shift_mm"].dtype == np.float32
    assert np.allclose(aux["ffs_axial_shift_mm"], quarter_row * (-1) ** np.arange(N), rtol=1e-6)
    assert not aux["ffs_angular_shift_rad"].any() and not aux["ffs_radial_shift_mm"].any()
    assert np.array_equal(aux["photon_statistics"], photons.astype(np.float32))


def test_implicit_vr_reads_the_same(tmp_path: Path) -> None:
    make_ctpd_series(tmp_path / "explicit", projections(), geometry(), ffs_mode="FFSXYZ")
    paths = make_ctpd_series(
        tmp_path / "implicit", projections(), geometry(), ffs_mode="FFSXYZ", implicit_vr=True
    )
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID.is_implicit_VR
    a, b = read_ctpd(tmp_path / "explicit"), read_ctpd(tmp_path / "implicit")
    assert np.array_equal(a.projections, b.projections) and a.geometry == b.geometry
    assert a.metadata == b.metadata
    for name in ("ffs_angular_shift_rad", "ffs_axial_shift_mm", "photon_statistics"):
        assert np.array_equal(a.aux[name], b.aux[name])
    assert np.count_nonzero(a.aux["ffs_angular_shift_rad"]) == N


def test_write_back_is_byte_identical_except_pixels(
    series: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    directory, paths = series
    scan = read_ctpd(directory)
    scan.projections = 65535 - scan.projections
    write_scan(scan, tmp_path / "out", format="dicom-ctpd")
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != MARKER)
    assert written == sorted(p.name for p in paths)
    for view, path in enumerate(paths):
        assert_same_except_pixels(path, tmp_path / "out" / path.name, scan.projections[view].T)
    assert np.array_equal(read_scan(tmp_path / "out").projections, scan.projections)


def test_ctpz_round_trip_restores_the_files(
    series: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    directory, paths = series
    restored = ctpress.decompress(ctpress.compress(read_scan(directory), codec="zstd"))
    write_ctpd(restored, tmp_path / "out")
    for path in paths:
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


def test_fresh_write_rows_by_channels_layout(tmp_path: Path) -> None:
    scan = Scan(projections(), geometry(), metadata={"dicom_transposed": False})
    write_ctpd(scan, tmp_path / "out")
    first = pydicom.dcmread(tmp_path / "out" / "000001.dcm")
    assert (first.Rows, first.Columns) == (ROWS, COLS)
    back = read_ctpd(tmp_path / "out")
    assert np.array_equal(back.projections, scan.projections)
    assert back.geometry is not None and back.geometry.detector_offset_mm == pytest.approx(OFFSET)


def test_format_detection(series: tuple[Path, list[Path]]) -> None:
    directory, paths = series
    assert format_from_path(directory) == "dicom-ctpd"
    assert read_scan(directory).shape == (N, ROWS, COLS)
    with pytest.raises(InputError, match="directory"):
        read_scan(paths[0])


def test_mixed_series_refused(tmp_path: Path) -> None:
    make_ctpd_series(tmp_path, projections(), geometry(), seed=1)
    make_ctpd_series(tmp_path, projections(), geometry(), seed=2)
    uids = {pydicom.dcmread(p).SeriesInstanceUID for p in tmp_path.iterdir()}
    with pytest.raises(InputError, match="2 series") as err:
        read_ctpd(tmp_path)
    assert all(uid in str(err.value) for uid in uids) and ".dcm" in str(err.value)


def test_plain_ct_image_refused(series: tuple[Path, list[Path]]) -> None:
    directory = series[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.InstanceNumber, ds.Modality = generate_uid(), 1, "CT"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(32)
    ds.save_as(directory / "image.dcm", enforce_file_format=True)
    with pytest.raises(FormatError, match=r"image\.dcm.*\(7029,1010\) NumberofDetectorRows"):
        read_ctpd(directory)


def test_missing_private_tag_refused(series: tuple[Path, list[Path]]) -> None:
    path = series[1][4]
    ds = pydicom.dcmread(path)
    del ds.private_block(0x7031, CREATOR)[0x31]
    ds.save_as(path)
    with pytest.raises(FormatError, match=rf"{path.name}.*\(7031,1031\) ConstantRadialDistance"):
        read_ctpd(series[0])


def test_inconsistent_detector_size_refused(tmp_path: Path) -> None:
    make_ctpd_series(tmp_path, projections(), geometry())
    odd = make_ctpd_series(
        tmp_path,
        projections(COLS + 2)[:1],
        replace(geometry(), angles_rad=(0.1,), z_mm=(0.0,)),
        filenames=["odd.dcm"],
    )
    with pytest.raises(InputError, match=r"odd\.dcm.*\(7029,1011\) NumberofDetectorColumns"):
        read_ctpd(tmp_path)
    assert odd == [tmp_path / "odd.dcm"]


def test_write_refusals(series: tuple[Path, list[Path]], tmp_path: Path) -> None:
    scan = read_ctpd(series[0])
    with pytest.raises(InputError, match="uint16"):
        write_ctpd(replace(scan, projections=scan.projections.astype(np.float32)), tmp_path / "a")
    with pytest.raises(InputError, match="stored header"):
        write_ctpd(replace(scan, projections=scan.projections[:, :, 1:]), tmp_path / "b")
    part = ctpress.decompress(ctpress.compress(scan, codec="zstd"), views=(0, 6))
    with pytest.raises(InputError, match="6"):
        write_ctpd(part, tmp_path / "c")
    with pytest.raises(InputError, match="geometry"):
        write_ctpd(Scan(projections()), tmp_path / "d")
    assert not any(tmp_path.glob("[abcd]"))


def test_private_elements_stored_as_un(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_ctpd_series(tmp_path, projections(), geometry(), implicit_vr=True)
    reference = read_ctpd(tmp_path)
    for path in paths:  # as an anonymiser writes them: explicit VR, private elements UN
        ds = pydicom.dcmread(path)
        for tag in [t for t in ds.keys() if t.is_private and t.element >= 0x1000]:
            ds[tag] = DataElement(tag, "UN", ds.get_item(tag).value)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(path)
    monkeypatch.setattr(pydicom.config, "replace_un_with_known_vr", False)
    assert pydicom.dcmread(paths[0])[0x70311003].VR == "UN"
    scan = read_ctpd(tmp_path)
    assert scan.geometry == reference.geometry and scan.metadata == reference.metadata
    for name in ("ffs_axial_shift_mm", "time_stamp", "photon_statistics"):
        assert np.array_equal(scan.aux[name], reference.aux[name])
