"""Crafted .ctpz files (checksums recomputed so that they pass the CRCs) are refused with
one-line errors before anything large is allocated; reads are capped by
``max_output_bytes``; chunks carry digests of their decoded data; truncation names the
chunk it happened in."""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

import ctpress
from ctpress import container
from ctpress.codecs.framing import chunk_header, parse_chunk_header
from ctpress.container import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DIGEST_SIZE,
    FLAG_CHUNK_DIGESTS,
    FLAG_HEADER_ZSTD,
    CtpzFile,
    chunk_digest,
    container_overhead,
    header_bytes,
    index_bytes,
    parse_index,
)
from ctpress.container import format as container_format
from ctpress.container.format import _FOOT, _HEAD
from ctpress.errors import CorruptFileError, FormatError, InputError
from ctpress.rate import RateControl
from ctpress.scan import _GEOMETRY_FIELD_TYPES

DATA = Path(__file__).parent / "data"
N_VIEWS, ROWS, COLS, CHUNK_VIEWS = 10, 3, 8, 4


def _scan(dtype: str = "uint16") -> ctpress.Scan:
    x = np.random.default_rng(0).integers(0, 4000, (N_VIEWS, ROWS, COLS)).astype(dtype)
    geometry = ctpress.Geometry.circular("cone", N_VIEWS, 500.0, 1000.0)
    dark = np.full((1, ROWS, COLS), 100, np.uint16)
    return ctpress.Scan(x, geometry, {"units": "counts"}, {"dark": dark})


@pytest.fixture(scope="module")
def good() -> bytes:
    """A lossless zstd file of 3 chunks (views 0:4, 4:8, 8:10) with geometry and aux."""
    return ctpress.compress(_scan(), codec="zstd", chunk_views=CHUNK_VIEWS)


# ------------------------------------------------------------------ crafting
def _parts(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(version, flags, stored header, everything after the header CRC)."""
    _, version, flags, size = _HEAD.unpack_from(data)
    return version, flags, data[16 : 16 + size], data[16 + size + 4 :]


def _header_json(data: bytes) -> dict[str, Any]:
    """The stored header JSON (geometry arrays still packed)."""
    _, _, stored, _ = _parts(data)
    text = zstandard.ZstdDecompressor(dict_data=container_format._header_dict()).decompress(stored)
    header: dict[str, Any] = json.loads(text)
    return header


def _store_header(data: bytes, stored: bytes, flags: int | None = None) -> bytes:
    """``data`` with another stored header, its length and CRC-32 updated."""
    version, old_flags, _, rest = _parts(data)
    flags = old_flags if flags is None else flags
    head = _HEAD.pack(container.MAGIC, version, flags, len(stored))
    return head + stored + struct.pack("<I", zlib.crc32(stored)) + rest


def _compress_text(text: bytes) -> bytes:
    """Header text compressed as :func:`header_bytes` does it."""
    compressor = zstandard.ZstdCompressor(
        level=19, dict_data=container_format._header_dict(), write_dict_id=False
    )
    return compressor.compress(text)


def _edit_header(data: bytes, edit: Callable[[dict[str, Any]], object]) -> bytes:
    """``data`` with its header JSON changed by ``edit`` (in place), stored again with
    :func:`header_bytes` and the CRC recomputed."""
    header = _header_json(data)
    edit(header)
    if not isinstance(header.get("geometry"), dict | None):  # header_bytes would not pack it
        return _store_header(data, _compress_text(json.dumps(header).encode()))
    return _store_header(data, header_bytes(header))


def _index(data: bytes) -> tuple[int, bytes]:
    """(offset, bytes) of the index."""
    length = struct.unpack_from("<Q", data, len(data) - _FOOT.size)[0]
    start = len(data) - _FOOT.size - length
    return start, data[start : start + length]


def _with_index(body: bytes, index: bytes) -> bytes:
    """A file of ``body`` (everything before the index), ``index`` and the footer."""
    return body + index + _FOOT.pack(len(index), zlib.crc32(index), container.END_MAGIC)


def _store_index(data: bytes, index: bytes) -> bytes:
    """``data`` with another index, its length and CRC-32 in the footer updated."""
    return _with_index(data[: _index(data)[0]], index)


def _entries(data: bytes) -> tuple[list[container.ChunkEntry], dict[str, tuple[int, int]]]:
    with CtpzFile(data) as f:
        aux = {name: (length, crc) for name, (_, length, crc) in f._aux_index.items()}
        return list(f.chunks), aux


def _replace_chunk(data: bytes, k: int, payload: bytes) -> bytes:
    """``data`` with chunk ``k``'s payload replaced (index lengths and CRCs updated)."""
    chunks, aux = _entries(data)
    first = chunks[0].offset
    pieces = [data[e.offset : e.offset + e.length] for e in chunks]
    pieces[k] = payload
    aux_start = chunks[-1].offset + chunks[-1].length
    index_start, _ = _index(data)
    new_chunks = [
        dataclasses.replace(e, length=len(p), crc32=zlib.crc32(p))
        for e, p in zip(chunks, pieces, strict=True)
    ]
    body = data[:first] + b"".join(pieces) + data[aux_start:index_start]
    return _with_index(body, index_bytes(new_chunks, aux))


def _one_line_error(data: bytes, error: type[Exception], match: str) -> str:
    """Open and fully read ``data``; the error must be ``error`` on one line matching."""
    with pytest.raises(error, match=match) as info:
        with ctpress.open(data) as f:
            f.read_scan()
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# ------------------------------------------------------------- header schema
def _set(key: str, value: Any) -> Callable[[dict[str, Any]], object]:
    return lambda h: h.__setitem__(key, value)


def _set_geometry(key: str, value: Any) -> Callable[[dict[str, Any]], object]:
    return lambda h: h["geometry"].__setitem__(key, value)


def _b64z(raw: bytes) -> str:
    return base64.b64encode(zstandard.ZstdCompressor().compress(raw)).decode()


HEADER_CASES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "shape missing": (lambda h: h.pop("shape"), "it has no 'shape'"),
    "shape of 2": (_set("shape", [N_VIEWS, ROWS]), "'shape' must be \\[views, rows, cols\\]"),
    "shape negative": (_set("shape", [N_VIEWS, -3, COLS]), "'shape' must be"),
    "shape 2**40": (_set("shape", [2**40, ROWS, COLS]), "'shape' must be .* 2147483647"),
    "shape of bools": (_set("shape", [True, ROWS, COLS]), "'shape' must be"),
    "shape a string": (_set("shape", "10x3x8"), "'shape' must be"),
    "dtype complex": (_set("dtype", "<c16"), "'dtype' must be the NumPy dtype string"),
    "dtype a list": (_set("dtype", ["<u2"]), "'dtype' must be"),
    "chunk_views 0": (_set("chunk_views", 0), "'chunk_views' must be an integer from 1"),
    "chunk_views a string": (_set("chunk_views", "4"), "'chunk_views' must be"),
    "original_ndim 4": (_set("original_ndim", 4), "'original_ndim' must be 2 or 3"),
    "original_ndim 2 with rows": (_set("original_ndim", 2), "'shape' has 3 rows"),
    "metadata a list": (_set("metadata", [1, 2]), "'metadata' must be a JSON object"),
    "metadata a string": (_set("metadata", "counts"), "'metadata' must be a JSON object"),
    "codec a string": (_set("codec", "zstd"), "'codec' must be a JSON object with a string"),
    "codec without id": (_set("codec", {"mode": "lossless"}), "'codec' must be"),
    "rate_control missing": (lambda h: h.pop("rate_control"), "it has no 'rate_control'"),
    "library a number": (_set("library", 1), "'library' must be a string"),
    "aux spec of no shape": (
        lambda h: h["aux"]["dark"].pop("shape"),
        "'aux' must be",
    ),
    "aux shape 0": (lambda h: h["aux"]["dark"].__setitem__("shape", [0]), "'aux' must be"),
    "aux dtype object": (lambda h: h["aux"]["dark"].__setitem__("dtype", "|O"), "'aux' must"),
    "aux a list": (_set("aux", ["dark"]), "'aux' must be"),
    "geometry a list": (_set("geometry", [1.0, 2.0]), "'geometry' must be a JSON object or null"),
    "geometry a string": (_set("geometry", "cone"), "'geometry' must be"),
    "geometry unknown key": (
        _set_geometry("pitch", 1.0),
        "'geometry' is not valid: unknown geometry field",
    ),
    "geometry angles a string": (
        _set_geometry("angles_rad", "0.1 0.2"),
        "geometry field 'angles_rad' must be a list of numbers, got str",
    ),
    "geometry distance a list": (
        _set_geometry("source_isocenter_mm", [500.0]),
        "'source_isocenter_mm' must be a number or null",
    ),
    "geometry kind unknown": (_set_geometry("kind", "spiral"), "geometry kind must be one of"),
    "geometry with 3 angles": (
        _set_geometry("angles_rad", [0.0, 0.1, 0.2]),
        "'geometry' has 3 view angles for 10 views",
    ),
    "packed array claims 2**28": (
        _set_geometry("angles_rad", {"f8": 2**28, "start": 0.0, "step": 1.0}),
        r"claims 268435456 values, expected 10 \(one per view\)",
    ),
    "packed count a float": (
        _set_geometry("angles_rad", {"f8": 10.0, "start": 0.0, "step": 1.0}),
        "claims 10.0 values",
    ),
    "packed raw bomb": (
        _set_geometry("angles_rad", {"f8": N_VIEWS, "raw": _b64z(bytes(64 << 20))}),
        "declares 67108864 bytes, expected 80 to 80",
    ),
    "packed ulp bomb": (
        _set_geometry(
            "angles_rad", {"f8": N_VIEWS, "start": 0.0, "step": 1.0, "ulp": _b64z(bytes(64 << 20))}
        ),
        "declares 67108864 bytes, expected 10 to 100",
    ),
    "packed start a string": (
        _set_geometry("angles_rad", {"f8": N_VIEWS, "start": "0", "step": 1.0}),
        "start and step must be numbers",
    ),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_invalid_header_fields_are_one_line_errors(good, case) -> None:
    edit, match = HEADER_CASES[case]
    t0 = time.perf_counter()
    message = _one_line_error(_edit_header(good, edit), CorruptFileError, match)
    assert message.startswith("<bytes>: damaged header: ")
    assert time.perf_counter() - t0 < 2.0  # nothing large was decompressed or allocated


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"[1, 2]", "it is not a JSON object"),
        (b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"shape": [10, 3, ', "damaged header: Expecting value"),
        (b'{"library": "\xff\xfe"}', "damaged header: .*utf-8"),
    ],
    ids=["not an object", "deeply nested", "cut JSON", "not UTF-8"],
)
def test_undecodable_header_json_is_a_one_line_error(good, text, match) -> None:
    _one_line_error(_store_header(good, _compress_text(text)), CorruptFileError, match)


def test_plain_json_header_is_checked_too(good) -> None:
    header = _header_json(good)
    header["shape"] = [N_VIEWS, ROWS]
    plain = json.dumps(header).encode()
    crafted = _store_header(good, plain, flags=FLAG_CHUNK_DIGESTS)
    _one_line_error(crafted, CorruptFileError, "'shape' must be")


@pytest.mark.parametrize(
    ("codec", "match"),
    [
        ({"id": "no-such-codec"}, "unknown codec 'no-such-codec'"),
        ({"id": "zstd", "mode": "lossless", "level": "high"}, "codec config cannot be used"),
        ({"id": "zstd", "mode": 5}, "unknown rate control 5"),
        ({"id": "zstd", "mode": "lossless", "colour": "red"}, "bad config for codec 'zstd'"),
    ],
    ids=["unknown id", "setting of the wrong type", "mode a number", "unknown setting"],
)
def test_unusable_codec_config_is_a_one_line_error(good, codec, match) -> None:
    message = _one_line_error(_edit_header(good, _set("codec", codec)), CorruptFileError, match)
    assert "written by a newer ctpress; upgrade ctpress" in message


def test_geometry_field_checks_cover_every_field() -> None:
    fields = {f.name for f in dataclasses.fields(ctpress.Geometry)}
    assert set(_GEOMETRY_FIELD_TYPES) == fields


# -------------------------------------------------------- version and flags
def test_newer_version_or_unknown_flags_say_damaged_or_newer(good) -> None:
    newer = bytearray(good)
    newer[8:10] = struct.pack("<H", 3)
    message = _one_line_error(bytes(newer), FormatError, "upgrade ctpress")
    assert "format version 3 is newer than this ctpress" in message
    assert "reads (up to 2): the file is damaged, or upgrade ctpress" in message
    flagged = bytearray(good)
    flagged[10:12] = struct.pack("<H", 0x8000 | FLAG_HEADER_ZSTD | FLAG_CHUNK_DIGESTS)
    message = _one_line_error(bytes(flagged), FormatError, "bits 0x8000")
    assert "the file is damaged, or was written by a newer ctpress; upgrade ctpress" in message
    zero = bytearray(good)
    zero[8:10] = struct.pack("<H", 0)
    _one_line_error(bytes(zero), CorruptFileError, "format version 0 does not exist")
    v1 = bytearray((DATA / "v1_zstd_lossless.ctpz").read_bytes())
    v1[10:12] = struct.pack("<H", FLAG_CHUNK_DIGESTS)  # no flags existed in version 1
    _one_line_error(bytes(v1), FormatError, "in format version 1")


# ------------------------------------------------------------------- index
def test_aux_block_and_header_spec_must_match(good) -> None:
    no_spec = _edit_header(good, lambda h: h["aux"].pop("dark"))
    _one_line_error(no_spec, CorruptFileError, r"arrays \['dark'\], the header \[\]")
    extra = {"shape": [2, ROWS, COLS], "dtype": "<f4"}
    no_block = _edit_header(good, lambda h: h["aux"].__setitem__("flat", extra))
    _one_line_error(no_block, CorruptFileError, r"arrays \['dark'\], the header \['dark', 'flat'\]")


def test_aux_payload_is_checked_before_decoding(good) -> None:
    other = _edit_header(good, lambda h: h["aux"]["dark"].__setitem__("shape", [2, ROWS, COLS]))
    _one_line_error(
        other,
        CorruptFileError,
        r"auxiliary array 'dark': its header declares \(1, 3, 8\) uint16, "
        r"expected \(2, 3, 8\) uint16",
    )
    # an aux payload whose zstd frame declares far more than its shape takes
    chunks, _ = _entries(good)
    record, _ = parse_chunk_header(container.encode_aux(np.zeros((1, ROWS, COLS), np.uint16)))
    stream = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    bomb = chunk_header(dict(record, n=len(stream), crc=zlib.crc32(stream))) + stream
    data_end = chunks[-1].offset + chunks[-1].length
    index = index_bytes(chunks, {"dark": (len(bomb), zlib.crc32(bomb))})
    crafted = _with_index(good[:data_end] + bomb, index)
    _one_line_error(crafted, CorruptFileError, "zstd stream declares 67108864 bytes, expected 48")


def _index_of(chunks: list[container.ChunkEntry], data: bytes) -> bytes:
    return index_bytes(chunks, _entries(data)[1])


def test_chunk_view_counts_must_match_the_header(good) -> None:
    chunks, _ = _entries(good)
    merged = [dataclasses.replace(chunks[0], stop=8, length=chunks[0].length + chunks[1].length)]
    merged.append(chunks[2])
    _one_line_error(
        _store_index(good, _index_of(merged, good)),
        CorruptFileError,
        "damaged index: it lists 2 chunks, but 10 views in chunks of 4 make 3",
    )
    uneven = [
        dataclasses.replace(chunks[0], stop=3),
        dataclasses.replace(chunks[1], start=3),
        chunks[2],
    ]
    _one_line_error(
        _store_index(good, _index_of(uneven, good)),
        CorruptFileError,
        r"chunk 0 holds views 0:3, but the header says chunk 0 \(views 0:4\)",
    )
    longer = [dataclasses.replace(chunks[0], length=chunks[0].length + 1), *chunks[1:]]
    _one_line_error(
        _store_index(good, _index_of(longer, good)),
        CorruptFileError,
        "payload lengths do not add up to the data section",
    )
    # digest flag set but the index has no digests
    no_digests = [dataclasses.replace(e, digest=None) for e in chunks]
    _one_line_error(
        _store_index(good, _index_of(no_digests, good)), CorruptFileError, "damaged index"
    )


V1_INDEXES = {
    "a list": (b"[]", 'expected {"chunks"'),
    "chunks a number": (b'{"chunks": 5, "aux": {}}', 'expected {"chunks"'),
    "aux missing": (b'{"chunks": []}', 'expected {"chunks"'),
    "entry of 4": (b'{"chunks": [[0, 10, 50, 5]], "aux": {}}', "is not 5 integers"),
    "entry with a string": (b'{"chunks": [[0, 10, "x", 5, 1]], "aux": {}}', "is not 5 integers"),
    "entry negative": (b'{"chunks": [[0, 10, -5, 5, 1]], "aux": {}}', "is not 5 integers"),
    "aux entry of 2": (b'{"chunks": [], "aux": {"dark": [1, 2]}}', "is not 3 integers"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "no chunks": (b'{"chunks": [], "aux": {}}', "it lists 0 chunks"),
    "outside the data": (
        b'{"chunks": [[0, 10, 0, 5, 1]], "aux": {}}',
        "it lists 1 chunks, but 10 views in chunks of 4 make 3",
    ),
}


@pytest.mark.parametrize("case", sorted(V1_INDEXES))
def test_malformed_version_1_index_is_a_one_line_error(case) -> None:
    text, match = V1_INDEXES[case]
    data = (DATA / "v1_zstd_lossless.ctpz").read_bytes()
    _one_line_error(_store_index(data, text), CorruptFileError, "damaged index: .*" + match)


def test_version_1_chunks_outside_the_data_section_are_refused() -> None:
    data = (DATA / "v1_zstd_lossless.ctpz").read_bytes()
    with CtpzFile(data) as f:
        entries = [[e.start, e.stop, e.offset, e.length, e.crc32] for e in f.chunks]
        aux = f._aux_index
    entries[1][2] = 3  # inside the fixed head
    text = json.dumps({"chunks": entries, "aux": aux}).encode()
    _one_line_error(_store_index(data, text), CorruptFileError, "outside the data section")


# --------------------------------------------------------------- chunk headers
def test_chunk_header_must_declare_the_container_shape_and_dtype(good) -> None:
    int16 = ctpress.compress(_scan("int16"), codec="zstd", chunk_views=CHUNK_VIEWS)
    chunks, _ = _entries(int16)
    payload = int16[chunks[1].offset : chunks[1].offset + chunks[1].length]
    _one_line_error(
        _replace_chunk(good, 1, payload),
        CorruptFileError,
        r"chunk 1 \(views 4:8\): its header declares \(4, 3, 8\) int16, expected "
        r"\(4, 3, 8\) uint16",
    )
    wider = ctpress.compress(np.zeros((4, ROWS, COLS + 1), np.uint16), codec="zstd")
    _one_line_error(
        _replace_chunk(good, 2, wider[_entries(wider)[0][0].offset : _index(wider)[0]]),
        CorruptFileError,
        r"chunk 2 \(views 8:10\): its header declares \(4, 3, 9\) uint16, expected "
        r"\(2, 3, 8\) uint16",
    )
    _one_line_error(
        _replace_chunk(good, 0, b"CPC2" + bytes(3)), CorruptFileError, "chunk 0 .*damaged chunk"
    )


def test_decoded_dtype_mismatch_names_the_expected_dtype(good, monkeypatch) -> None:
    with ctpress.open(good) as f:
        decode = f.codec.decode
        monkeypatch.setattr(f.codec, "decode", lambda data: decode(data).astype(np.int16))
        with pytest.raises(CorruptFileError) as info:
            f.read_views()
    assert str(info.value) == (
        "<bytes>: chunk 0 (views 0:4) decoded to (4, 3, 8) int16, expected (4, 3, 8) uint16"
    )


# ------------------------------------------------------------ max_output_bytes
def _huge_file(good: bytes) -> bytes:
    """A small file whose header, index and chunk header consistently declare a
    (20000, 1000, 1000) uint16 scan (40 GB: more than the default max_output_bytes) in one
    chunk."""
    shape = [20_000, 1000, 1000]

    def edit(h: dict[str, Any]) -> None:
        h.update(shape=shape, chunk_views=shape[0], geometry=None, aux={})

    stream = zstandard.ZstdCompressor().compress(bytes(16))
    record = {"t": "none", "w": "<u2", "dtype": "<u2", "shape": shape, "lo": 0, "hi": 0}
    payload = chunk_header(dict(record, n=len(stream), crc=zlib.crc32(stream))) + stream
    crafted = _edit_header(good, edit)
    data_start = len(crafted) - len(_parts(crafted)[3])
    entry = container.ChunkEntry(0, shape[0], 0, len(payload), zlib.crc32(payload), bytes(16))
    return _with_index(crafted[:data_start] + payload, index_bytes([entry], {}))


def test_reads_are_capped_before_allocating(good) -> None:
    assert DEFAULT_MAX_OUTPUT_BYTES == 32 << 30
    huge = _huge_file(good)
    assert len(huge) < 1000
    with ctpress.open(huge) as f:  # the structure is consistent: it opens
        assert f.shape == (20_000, 1000, 1000)
        assert f.verify() == "1 chunk, checksums verified"
        for read in (f.read_views, f.read_scan, lambda: f.verify(decode=True), lambda: f[:1]):
            with pytest.raises(InputError, match="more than max_output_bytes") as info:
                read()
            assert "\n" not in str(info.value)
    message = str(info.value)
    assert message.startswith("<bytes>: decoding chunk 0 (views 0:20000) needs 37.3 GiB")
    assert "allow more with max_output_bytes (--max-output-bytes)" in message


def test_max_output_bytes_counts_the_views_asked_for_plus_aux() -> None:
    per_view = ROWS * COLS * 2
    aux = ROWS * COLS * 2
    scan = dataclasses.replace(_scan(), geometry=None)
    good = ctpress.compress(scan, codec="zstd", chunk_views=CHUNK_VIEWS)
    with ctpress.open(good, max_output_bytes=CHUNK_VIEWS * per_view) as f:
        np.testing.assert_array_equal(f[1:3], _scan().projections[1:3])
        f.read_views(0, CHUNK_VIEWS)
        with pytest.raises(InputError, match=r"reading views 0:5 needs 240 bytes"):
            f.read_views(0, 5)
    with ctpress.open(good, max_output_bytes=N_VIEWS * per_view) as f:
        f.read_views()
        with pytest.raises(InputError, match="reading views 0:10 and the auxiliary arrays"):
            f.read_scan()
    out = ctpress.decompress(good, max_output_bytes=N_VIEWS * per_view + aux)
    np.testing.assert_array_equal(out.projections, _scan().projections)
    with pytest.raises(InputError, match="max_output_bytes"):
        ctpress.decompress(good, max_output_bytes=N_VIEWS * per_view + aux - 1)
    with pytest.raises(InputError, match="positive integer"):
        ctpress.open(good, max_output_bytes=0)


def test_geometry_unpacking_counts_against_the_cap(good) -> None:
    with pytest.raises(
        InputError, match=r"unpacking the geometry's per-view arrays \(1 x 10 values\)"
    ):
        ctpress.open(good, max_output_bytes=100)


def test_highly_compressed_files_decode_under_the_default_cap() -> None:
    flat = np.full((400, 64, 64), 1000, np.uint16)  # 3.3 MB of constant data
    data = ctpress.compress(ctpress.Scan(flat, aux={"dark": np.zeros((8, 64, 64), np.uint16)}))
    assert flat.nbytes / len(data) > 1000
    np.testing.assert_array_equal(ctpress.decompress(data).projections, flat)


# ------------------------------------------------------------------- digests
@pytest.mark.parametrize(
    ("codec", "kwargs"),
    [
        ("zstd", {}),
        ("sz3", {"max_error": 3.0}),
        ("jpegls", {"max_error": 2}),
        ("jpeg2000", {"psnr": 50}),
    ],
)
def test_chunks_store_the_digest_of_their_decoded_data(codec, kwargs) -> None:
    data = ctpress.compress(_scan(), codec=codec, chunk_views=CHUNK_VIEWS, **kwargs)
    assert struct.unpack_from("<H", data, 10)[0] == FLAG_HEADER_ZSTD | FLAG_CHUNK_DIGESTS
    with ctpress.open(data) as f:
        assert f.has_digests
        for entry in f.chunks:
            assert entry.digest == chunk_digest(f.read_views(entry.start, entry.stop))
            assert len(entry.digest) == DIGEST_SIZE
        assert f.verify(decode=True) == "3 chunks, digests verified"
        assert f.verify() == "3 chunks, checksums verified"


def test_digest_is_blake2b_of_little_endian_c_order_values() -> None:
    import hashlib

    x = np.arange(24, dtype=">u2").reshape(2, 3, 4)
    expected = hashlib.blake2b(x.astype("<u2").tobytes(), digest_size=16).digest()
    assert chunk_digest(x) == chunk_digest(np.asfortranarray(x.astype("<u2"))) == expected


def test_a_wrong_digest_names_the_chunk(good) -> None:
    chunks, aux = _entries(good)
    chunks[1] = dataclasses.replace(chunks[1], digest=bytes(DIGEST_SIZE))
    crafted = _store_index(good, index_bytes(chunks, aux))
    with ctpress.open(crafted) as f:
        assert f.verify() == "3 chunks, checksums verified"  # CRCs and structure are fine
        with pytest.raises(CorruptFileError) as info:
            f.verify(decode=True)
    assert str(info.value).startswith(
        "<bytes>: chunk 1 (views 4:8): the decoded data differ from the digest stored when it "
        "was written"
    )


@pytest.mark.parametrize(
    "path",
    [DATA / "v1_jpegls_max_error.ctpz", DATA / "golden" / "v2_zstd_lossless.ctpz"],
    ids=["v1", "v2 golden"],
)
def test_files_without_digests_still_verify(path) -> None:
    with ctpress.open(path) as f:
        assert not f.has_digests
        summary = f.verify(decode=True)
    assert summary.endswith("decoded without error; the file has no digests (older ctpress)")


def test_container_overhead_counts_the_digests(monkeypatch) -> None:
    scan = _scan()
    data = ctpress.compress(scan, codec="zstd", chunk_views=CHUNK_VIEWS)
    with ctpress.open(data) as f:
        streams = [
            parse_chunk_header(data[e.offset : e.offset + e.length])[0]["n"] for e in f.chunks
        ]
        codec, rate = f.codec, RateControl.from_dict(f.header["rate_control"])
    bound = container_overhead(scan, codec, CHUNK_VIEWS, rate, max(streams))
    assert len(data) - sum(streams) <= bound
    monkeypatch.setattr(container_format, "DIGEST_SIZE", 0)
    without = container_overhead(scan, codec, CHUNK_VIEWS, rate, max(streams))
    assert bound - without == len(streams) * DIGEST_SIZE


# ---------------------------------------------------------------- truncation
def test_truncation_names_the_chunk(good) -> None:
    chunks, _ = _entries(good)
    first = chunks[0].offset
    assert _one_line_error(good[:first], CorruptFileError, "after the header").endswith(
        "file is truncated after the header: all chunks and the index are missing"
    )
    for k, entry in enumerate(chunks):
        label = f"chunk {k} \\(views {entry.start}:{entry.stop}\\)"
        for cut in (entry.offset + 1, entry.offset + 20, entry.offset + entry.length - 1):
            _one_line_error(
                good[:cut], CorruptFileError, f"truncated in {label}; the index is missing"
            )
        end = entry.offset + entry.length
        after = "after the last chunk, " if k == len(chunks) - 1 else "after "
        _one_line_error(good[:end], CorruptFileError, f"truncated {after}{label}")
    _one_line_error(
        good[: first + chunks[0].length],
        CorruptFileError,
        r"after chunk 0 \(views 0:4\): chunks 1 to 2 and the index are missing",
    )
    _one_line_error(
        good[:-1], CorruptFileError, r"no end marker after the last chunk, chunk 2 \(views 8:10\)"
    )


def test_damaged_chunk_header_without_footer_is_reported_as_damage(good) -> None:
    chunks, _ = _entries(good)
    damaged = bytearray(good[:-1])
    damaged[chunks[1].offset] ^= 0xFF  # its magic
    _one_line_error(
        bytes(damaged), CorruptFileError, r"no end marker, and chunk 1 \(views 4:8\) has no"
    )


def test_index_parser_reads_digests_only_when_flagged(good) -> None:
    chunks, aux = _entries(good)
    index = index_bytes(chunks, aux)
    parsed, _, _ = parse_index(index, chunks[0].offset, digests=True)
    assert [e.digest for e in parsed] == [e.digest for e in chunks]
    with pytest.raises(ValueError):
        parse_index(index, chunks[0].offset)
