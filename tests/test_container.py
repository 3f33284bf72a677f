"""The .ctpz container and the Python API: round trips, view ranges, damage detection."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import ctpress
from ctpress.container import FORMAT_VERSION, MAGIC
from ctpress.errors import CorruptFileError, FormatError, InputError


@pytest.fixture
def cone_scan(uint16_stack) -> ctpress.Scan:
    n = uint16_stack.shape[0]
    geometry = ctpress.Geometry.circular(
        "cone", n, 500.0, 1000.0, detector_spacing_mm=(1.0, 1.2), detector_offset_mm=(0.1, -0.3)
    )
    dark = np.full((2, *uint16_stack.shape[1:]), 100, np.uint16)
    flat = np.full((3, *uint16_stack.shape[1:]), 60000, np.uint16)
    return ctpress.Scan(
        uint16_stack,
        geometry,
        {"units": "counts", "i0": 1e5, "note": "é"},
        {"dark": dark, "flat": flat},
    )


def test_round_trip_keeps_geometry_metadata_and_aux(cone_scan, tmp_path) -> None:
    path = tmp_path / "scan.ctpz"
    n_bytes = ctpress.compress(cone_scan, path, codec="jpegls", lossless=True, chunk_views=5)
    assert n_bytes == path.stat().st_size
    out = ctpress.decompress(path)
    np.testing.assert_array_equal(out.projections, cone_scan.projections)
    assert out.geometry == cone_scan.geometry
    assert out.metadata == cone_scan.metadata
    for name in ("dark", "flat"):
        np.testing.assert_array_equal(out.aux[name], cone_scan.aux[name])


def test_view_range_decodes_only_needed_chunks(cone_scan, monkeypatch) -> None:
    data = ctpress.compress(cone_scan, codec="zstd", chunk_views=4)
    with ctpress.open(data) as f:
        assert len(f.chunks) == 6
        decoded = []
        original = f._decode_chunk
        monkeypatch.setattr(f, "_decode_chunk", lambda e: decoded.append(e.start) or original(e))
        part = f[9:14]
        np.testing.assert_array_equal(part, cone_scan.projections[9:14])
        assert decoded == [8, 12]
        sub = f.read_scan(9, 14)
        assert sub.geometry.angles_rad == cone_scan.geometry.angles_rad[9:14]
    out = ctpress.decompress(data, views=(0, 3))
    np.testing.assert_array_equal(out.projections, cone_scan.projections[:3])


def test_two_dimensional_input_round_trips_as_two_dimensional(tmp_path) -> None:
    sino = np.random.default_rng(0).integers(0, 4000, (50, 70), dtype=np.uint16)
    out = ctpress.decompress(ctpress.compress(sino, codec="jpegls"))
    assert out.user_array().shape == (50, 70)
    np.testing.assert_array_equal(out.user_array(), sino)


def test_encoding_is_independent_of_thread_count(cone_scan) -> None:
    one = ctpress.compress(cone_scan, codec="jpeg2000", bpp=3.0, chunk_views=6, jobs=1)
    two = ctpress.compress(cone_scan, codec="jpeg2000", bpp=3.0, chunk_views=6, jobs=2)
    assert one == two


def test_bpp_counts_the_whole_file(cone_scan) -> None:
    big = np.concatenate([cone_scan.projections] * 4)
    data = ctpress.compress(big, codec="sz3", bpp=2.0)
    bits = 8 * len(data) / big.size
    assert abs(bits - 2.0) <= 0.2


def test_psnr_uses_the_scan_range(float32_stack) -> None:
    data = ctpress.compress(float32_stack, codec="sperr", psnr=50.0, chunk_views=6)
    decoded = ctpress.decompress(data).projections
    assert ctpress.metrics.psnr_db(float32_stack, decoded) >= 50.0
    with ctpress.open(data) as f:
        assert f.header["rate_control"]["data_range"] == pytest.approx(
            float(float32_stack.max() - float32_stack.min())
        )


def _damage(data: bytes, offset: int) -> bytes:
    buf = bytearray(data)
    buf[offset] ^= 0x10
    return bytes(buf)


def test_damaged_files_are_detected(cone_scan) -> None:
    data = ctpress.compress(cone_scan, codec="jpegls", chunk_views=6)
    with ctpress.open(data) as f:
        first_chunk = f.chunks[0].offset
    for offset in (
        20,
        first_chunk + 10,
        len(data) - 30,
        len(data) - 3,
    ):  # header, chunk, index, end
        with pytest.raises(CorruptFileError):
            with ctpress.open(_damage(data, offset)) as f:
                f.read_scan()
    for cut in (10, len(data) // 2, len(data) - 1):
        with pytest.raises((CorruptFileError, FormatError)):
            ctpress.open(data[:cut])


def test_other_files_and_newer_versions_are_refused(cone_scan, tmp_path) -> None:
    with pytest.raises(FormatError, match=r"not a \.ctpz"):
        ctpress.open(b"PK\x03\x04" + bytes(100))
    data = bytearray(ctpress.compress(cone_scan, codec="zstd"))
    data[8:10] = struct.pack("<H", FORMAT_VERSION + 1)
    with pytest.raises(FormatError, match="upgrade ctpress"):
        ctpress.open(bytes(data))
    with pytest.raises(InputError, match="no such file"):
        ctpress.open(tmp_path / "missing.ctpz")
    assert bytes(data[:8]) == MAGIC


def test_failed_compress_leaves_no_file(tmp_path) -> None:
    path = tmp_path / "out.ctpz"
    x = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32)
    with pytest.raises(ctpress.RateControlError):
        ctpress.compress(x, path, codec="jpegls", lossless=True)
    assert list(tmp_path.iterdir()) == []


def test_rate_control_arguments_are_checked(uint16_stack) -> None:
    with pytest.raises(InputError, match="choose one rate control"):
        ctpress.compress(uint16_stack, codec="zstd", lossless=True, bpp=2.0)
    with pytest.raises(InputError, match="no lossless mode"):
        ctpress.compress(uint16_stack, codec="sz3")
    with pytest.raises(InputError, match="below the container's own overhead"):
        ctpress.compress(uint16_stack[:1, :2], codec="sz3", bpp=0.01)
