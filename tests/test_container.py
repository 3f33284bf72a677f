"""The .ctpz container and the Python API: round trips, view ranges, damage detection."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import ctpress
from ctpress import _compact
from ctpress.codecs import get_codec
from ctpress.codecs.framing import parse_chunk_header
from ctpress.container import (
    FORMAT_VERSION,
    HEADER_DICTIONARY,
    MAGIC,
    build_header,
    default_chunk_views,
    header_bytes,
)
from ctpress.errors import CorruptFileError, FormatError, InputError
from ctpress.rate import RateControl
from ctpress.sim.simulate import fit_geometry

DATA = Path(__file__).parent / "data"


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
        monkeypatch.setattr(
            f, "_decode_chunk", lambda e, *ab: decoded.append((e.start, *ab)) or original(e, *ab)
        )
        part = f[9:14]
        np.testing.assert_array_equal(part, cone_scan.projections[9:14])
        assert decoded == [(8, 1, 4), (12, 0, 2)]  # both chunks only partly needed
        decoded.clear()
        np.testing.assert_array_equal(f[8:14], cone_scan.projections[8:14])
        assert decoded == [(8,), (12, 0, 2)]  # the first one whole
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


@pytest.mark.parametrize("parallel", [True, False])
def test_codecs_choose_whether_chunks_encode_and_decode_in_threads(
    cone_scan, monkeypatch, parallel: bool
) -> None:
    """Chunks go to ``jobs`` threads unless the codec's parallel_encode / parallel_decode
    is off (dvc: many small steps holding the GIL), when the calling thread does them."""
    import threading

    from ctpress.codecs.generic import Zstd
    from ctpress.container import writer

    monkeypatch.setattr(Zstd, "parallel_encode", parallel)
    monkeypatch.setattr(Zstd, "parallel_decode", parallel)
    threads = set()
    original = writer.encode_chunk

    def spy(*args):
        threads.add(threading.get_ident())
        return original(*args)

    monkeypatch.setattr(writer, "encode_chunk", spy)
    data = ctpress.compress(cone_scan, codec="zstd", chunk_views=4, jobs=2)
    assert (threads == {threading.get_ident()}) is not parallel
    with ctpress.open(data, jobs=2) as f:
        threads.clear()
        decode = f._decode_chunk
        monkeypatch.setattr(
            f, "_decode_chunk", lambda *a: threads.add(threading.get_ident()) or decode(*a)
        )
        np.testing.assert_array_equal(f[:], cone_scan.projections)
    assert (threads == {threading.get_ident()}) is not parallel


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


# ------------------------------------------------------------------- format version 2
def _golden_scan() -> ctpress.Scan:
    """The scan of the version-1 golden files in tests/data (see its README)."""
    rng = np.random.default_rng(1234)
    proj = (rng.integers(1000, 1400, (10, 3, 8)) + np.arange(8) * 50).astype(np.uint16)
    geometry = ctpress.Geometry(
        kind="helical",
        angles_rad=tuple(np.arange(10) * 0.3 * 1.1),
        source_isocenter_mm=541.0,
        source_detector_mm=949.0,
        detector_spacing_mm=(1.0, 1.2),
        detector_shape="cylindrical",
        detector_offset_mm=(0.1, -0.3),
        z_mm=tuple(-3.0 + np.arange(10) * 0.37),
    )
    metadata = {"units": "counts", "i0": 1e5, "note": "é"}
    return ctpress.Scan(proj, geometry, metadata, {"dark": np.full((1, 3, 8), 100, np.uint16)})


@pytest.mark.parametrize(
    ("name", "bound"),
    [("v1_zstd_lossless", 0.0), ("v1_jpegls_max_error", 3.0), ("v1_sz3_max_error", 0.5)],
)
def test_version_1_files_still_decode(name, bound) -> None:
    scan = _golden_scan()
    data = (DATA / f"{name}.ctpz").read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 1
    expected = scan.projections if "sz3" not in name else scan.projections.astype(np.float32) / 7
    with ctpress.open(data) as f:
        assert f.format_version == 1
        assert f.header["format_version"] == 1
        assert all(data[e.offset : e.offset + 4] == b"CPC1" for e in f.chunks)
        full = f.read_views()
        np.testing.assert_array_equal(f.read_views(3, 6), full[3:6])
        f.verify()
    assert full.dtype == expected.dtype
    assert np.max(np.abs(full.astype(np.float64) - expected)) <= bound
    out = ctpress.decompress(data)
    if "sz3" in name:
        assert out.geometry is None and out.metadata == {} and out.aux == {}
    else:
        assert out.geometry == scan.geometry
        assert out.metadata == scan.metadata
        np.testing.assert_array_equal(out.aux["dark"], scan.aux["dark"])


def test_header_dictionary_never_changes() -> None:
    # part of format version 2: files written with it must stay readable
    assert zlib.crc32(HEADER_DICTIONARY) == 0x728514C9
    assert len(HEADER_DICTIONARY) == 2022


def _default_like_scan() -> ctpress.Scan:
    """The default simulated scan's layout, geometry and metadata (zero projections)."""
    geometry = fit_geometry(
        "cone", 360, (16, 192), (96.0, 303.0, 366.0), detector_shape="cylindrical"
    )
    label = "totalseg_example_ct_3mm[72:104] (TotalSegmentator, Apache-2.0)"
    metadata = {
        "units": "line_integral",
        "i0": 1e5,
        "rescale_slope": 2.0**-13,
        "rescale_intercept": -0.0147705078125,
        "mu_water_per_mm": 0.0192,
        "origin": f"ctpress.sim.simulate_scan of {label}, seed 0",
        "simulation": {
            "volume": label,
            "volume_shape": [32, 101, 122],
            "voxel_size_mm": [3.0, 3.0, 3.0],
            "seed": 0,
            "noise": "poisson",
            "step_mm": 1.5,
        },
    }
    return ctpress.Scan(np.zeros((360, 16, 192), np.uint16), geometry, metadata)


def test_version_2_header_is_small() -> None:
    scan = _default_like_scan()
    codec = get_codec({"id": "sperr", "mode": "bpp", "value": 0.0094, "data_range": None})
    rate = RateControl("bpp", 16 / 1300)
    header = build_header(scan, codec, default_chunk_views(scan.shape, 2), rate)
    assert len(json.dumps(header, separators=(",", ":"))) > 7000  # version 1 stored this
    assert len(header_bytes(header)) < 400
    assert len(json.dumps(_compact.pack_float_lists(header["geometry"]))) < 400
    data = ctpress.compress(scan, codec="zstd")
    with ctpress.open(data) as f:
        assert f.format_version == FORMAT_VERSION == 2
        assert f.header_size < 1024
        assert f.index_size < 16 + 3 * (8 + 16)  # 3 chunks: views, length, CRC, digest
        assert f.header["geometry"] == scan.geometry.to_dict()
        assert f.geometry == scan.geometry
        for entry in f.chunks:
            chunk = data[entry.offset : entry.offset + entry.length]
            assert chunk[:4] == b"CPC2"
            assert parse_chunk_header(chunk)[1] < 40
        assert len(data) - sum(e.length for e in f.chunks) < 400 + 3 * 16


def _same_bits(a: list[float], b: list[float]) -> bool:
    x, y = np.array(a, dtype="<f8"), np.array(b, dtype="<f8")
    return x.shape == y.shape and bool(np.array_equal(x.view("<u8"), y.view("<u8")))


@pytest.mark.parametrize(
    "values",
    [
        np.arange(360) * (2 * math.pi / 360),
        np.linspace(0, 2 * math.pi, 1000, endpoint=False),
        np.linspace(-1.5, 2 * math.pi, 999),
        np.full(50, 3.7),
        np.full(7, -0.0),
        np.array([1.25]),
        np.array([]),
        np.array([0.1, -0.3]),
        np.random.default_rng(0).normal(size=300),
        np.random.default_rng(1).uniform(-1e300, 1e300, 40),
        10 - np.arange(200) * 0.1,
        np.array([-0.0, 0.0, 1e-300, -1e-300, 5e-324, -5e-324, 1.0, -1.0] * 5),
        np.array([1.0, np.inf, np.nan, -np.inf, 2.0, 3.0, 4.0, 5.0, 6.0]),
        np.where(np.arange(300) % 37 == 5, -1e308, np.arange(300) * 0.1),
        np.where(np.arange(300) % 41 == 7, np.nan, 5.0 - np.arange(300) * 0.03),
        np.where(np.arange(300) % 43 == 1, -0.0, np.linspace(-3, 3, 300)),
    ],
)
def test_packed_float_arrays_round_trip_bit_exactly(values) -> None:
    plain = [float(v) for v in values]
    packed = json.loads(json.dumps(_compact.pack_floats(plain)))
    back = _compact.unpack_floats(packed) if isinstance(packed, dict) else packed
    assert _same_bits(back, plain)
    assert len(json.dumps(packed)) <= len(json.dumps(plain))


def test_packed_float_forms() -> None:
    angles = [float(a) for a in np.arange(360) * (2 * math.pi / 360)]
    assert set(_compact.pack_floats(angles)) == {"f8", "start", "step"}
    helical = fit_geometry("helical", 720, (16, 192), (96.0, 303.0, 366.0), helical_pitch=1.3)
    assert helical.z_mm is not None
    for values in (helical.angles_rad, helical.z_mm):
        packed = _compact.pack_floats(list(values))
        assert isinstance(packed, dict) and "ulp" in packed and len(json.dumps(packed)) < 400
        assert _same_bits(_compact.unpack_floats(packed), list(values))
    noise = [float(v) for v in np.random.default_rng(0).normal(size=100)]
    assert "raw" in _compact.pack_floats(noise)
    with pytest.raises(ValueError):
        _compact.unpack_floats({"f8": 3, "raw": "AAAA"})


@pytest.mark.parametrize("kind", ["parallel", "fan", "cone", "helical"])
def test_geometry_round_trips_bit_exactly(kind, tmp_path) -> None:
    geometry = fit_geometry(kind, 40, (4, 16), (20.0, 50.0, 60.0), detector_shape="cylindrical")
    if kind == "parallel":  # arbitrary (measured) angles
        angles = np.sort(np.random.default_rng(3).uniform(0, math.pi, 40))
        geometry = ctpress.Geometry(kind="parallel", angles_rad=tuple(angles))
    x = np.random.default_rng(0).integers(0, 3000, (40, 4, 16)).astype(np.uint16)
    metadata = {"units": "counts", "i0": 1e5, "values": [0.1, 2, 3.5], "nested": {"a": -0.0}}
    scan = ctpress.Scan(x, geometry, metadata)
    path = tmp_path / "g.ctpz"
    ctpress.compress(scan, path, codec="zstd", chunk_views=7)
    out = ctpress.decompress(path)
    assert out.geometry == geometry
    for name in ("angles_rad", "z_mm"):
        if getattr(geometry, name) is not None:
            assert _same_bits(getattr(out.geometry, name), getattr(geometry, name))
    assert json.dumps(out.metadata) == json.dumps(metadata)
    np.testing.assert_array_equal(out.projections, x)


def test_damaged_compressed_header_is_detected(cone_scan) -> None:
    data = ctpress.compress(cone_scan, codec="zstd", chunk_views=6)
    header_len = struct.unpack_from("<I", data, 12)[0]
    for offset in (16, 16 + header_len // 2, 16 + header_len - 1, 16 + header_len + 2):
        with pytest.raises(CorruptFileError):
            ctpress.open(_damage(data, offset))
    # bytes that pass the CRC but do not decompress
    head = bytearray(data[: 16 + header_len + 4])
    head[20] ^= 0xFF
    head[16 + header_len : 16 + header_len + 4] = struct.pack(
        "<I", zlib.crc32(bytes(head[16 : 16 + header_len]))
    )
    with pytest.raises(CorruptFileError, match="header"):
        ctpress.open(bytes(head) + data[16 + header_len + 4 :])
    unknown_flag = bytearray(data)
    unknown_flag[10:12] = struct.pack("<H", 0x8001)
    with pytest.raises(FormatError, match="upgrade ctpress"):
        ctpress.open(bytes(unknown_flag))


def test_damaged_binary_index_is_detected(cone_scan) -> None:
    data = ctpress.compress(cone_scan, codec="zstd", chunk_views=6)
    index_len = struct.unpack_from("<Q", data, len(data) - 20)[0]
    index_start = len(data) - 20 - index_len
    index = bytearray(data[index_start : index_start + index_len])
    index[1] += 1  # first chunk one view longer: views and offsets no longer add up
    damaged = bytearray(data)
    damaged[index_start : index_start + index_len] = index
    damaged[len(data) - 12 : len(data) - 8] = struct.pack("<I", zlib.crc32(bytes(index)))
    with pytest.raises(CorruptFileError):
        with ctpress.open(bytes(damaged)) as f:
            f.read_scan()


@pytest.mark.parametrize(
    ("codec", "kwargs"),
    [("zstd", {}), ("jpegls", {"max_error": 2}), ("sz3", {"bpp": 2.0}), ("jpeg2000", {"bpp": 3})],
)
def test_partial_reads_equal_slices_of_full_reads(cone_scan, codec, kwargs) -> None:
    data = ctpress.compress(cone_scan, codec=codec, chunk_views=5, **kwargs)
    with ctpress.open(data) as f:
        full = f.read_views()
        for a, b in [(0, 1), (1, 4), (3, 12), (5, 10), (6, 24), (23, 24), (0, 24)]:
            np.testing.assert_array_equal(f.read_views(a, b), full[a:b])
        entry = f.chunks[1]
        payload = data[entry.offset : entry.offset + entry.length]
        np.testing.assert_array_equal(f.codec.decode_views(payload, 1, 3), full[6:8])
        with pytest.raises(InputError):
            f.codec.decode_views(payload, 3, 9)
        with pytest.raises(CorruptFileError):
            f.codec.decode_views(_damage(payload, len(payload) - 1), 0, 1)


def test_cpc2_chunk_headers_round_trip(uint16_stack, float32_stack, int16_stack) -> None:
    for x, codec in [
        (uint16_stack, get_codec({"id": "jpeg2000", "mode": "bpp", "value": 2.0})),
        (float32_stack, get_codec({"id": "zstd", "mode": "max_error", "value": 1e-3})),
        (int16_stack, get_codec({"id": "zstd", "mode": "lossless", "value": None})),
        (float32_stack[0], get_codec({"id": "sz3", "mode": "max_error", "value": 1e-2})),
    ]:
        chunk = codec.encode(x)
        assert chunk[:4] == b"CPC2"
        header, offset = parse_chunk_header(chunk)
        assert offset < 64 and header["shape"] == list(x.shape)
        assert header["dtype"] == x.dtype.str and header["n"] == len(chunk) - offset
        decoded = codec.decode(chunk)
        assert decoded.shape == x.shape and decoded.dtype == x.dtype


def test_bpp_budget_uses_the_compact_overhead(cone_scan) -> None:
    big = ctpress.Scan(
        np.concatenate([cone_scan.projections] * 4),
        ctpress.Geometry.circular("cone", 96, 500.0, 1000.0),
        {"units": "counts"},
    )
    for target in (0.1, 0.25):
        data = ctpress.compress(big, codec="sz3", bpp=target)
        bits = 8 * len(data) / big.projections.size
        assert abs(bits - target) <= 0.1 * target
    with pytest.raises(InputError, match=r"overhead \(0\.0[0-9]+ bits/value"):
        ctpress.compress(big, codec="sz3", bpp=0.002)
