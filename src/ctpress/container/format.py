"""The ``.ctpz`` file format: constants, the header and index and their (de)serialisation
and validation.

Layout (all integers little-endian; see ``docs/format.md``)::

    magic "CTPZ\\r\\n\\x1a\\n" (8) | format version u16 | flags u16 | header length u32
    header: UTF-8 JSON (codec config, shape, dtype, geometry, metadata, rate control...);
        version 2: zstd-compressed with a built-in dictionary, per-view float arrays of
        the geometry packed (``ctpress._compact``)
    header CRC-32 u32 (of the stored header bytes)
    chunk payloads, in view order (each one codec.encode() output)
    auxiliary payloads (dark/flat frames, lossless zstd)
    index: length and CRC-32 of every chunk and aux block (version 1: JSON with
        offsets; version 2: binary varints, payloads back to back), and with flag
        ``FLAG_CHUNK_DIGESTS`` a BLAKE2b digest of every chunk's decoded data
    index length u64 | index CRC-32 u32 | end magic "CTPZEND\\n" (8)
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from .._compact import ARRAY_KEY, get_varint, pack_float_lists, put_varint, unpack_float_lists
from ..errors import InputError
from ..rate import RateControl
from ..scan import SUPPORTED_DTYPES, Geometry

MAGIC = b"CTPZ\r\n\x1a\n"
END_MAGIC = b"CTPZEND\n"
FORMAT_VERSION = 2
#: Flag bit (version 2): the header is zstd-compressed with :data:`HEADER_DICTIONARY`.
FLAG_HEADER_ZSTD = 0x0001
#: Flag bit (version 2): each chunk entry of the index ends with the chunk's digest
#: (:func:`chunk_digest`, :data:`DIGEST_SIZE` bytes).
FLAG_CHUNK_DIGESTS = 0x0002
_KNOWN_FLAGS = FLAG_HEADER_ZSTD | FLAG_CHUNK_DIGESTS
#: Bytes of a chunk digest (BLAKE2b).
DIGEST_SIZE = 16
_HEAD = struct.Struct("<8sHHI")
_FOOT = struct.Struct("<QI8s")
#: Default raw size of one chunk along the view axis (bytes of input data).
DEFAULT_CHUNK_BYTES = 1 << 20
#: Refuse headers/indexes larger than this (a damaged length field must not allocate GBs).
_MAX_JSON_BYTES = 256 << 20
#: Default ``max_output_bytes`` of a reader: the most one read may allocate (the views
#: asked for plus the auxiliary arrays).  Not tied to the file size: 1300:1 files and
#: constant dark frames are legitimate.
DEFAULT_MAX_OUTPUT_BYTES = 32 << 30
#: Largest size of one dimension in a header (and smallest: 1).
_MAX_DIM = (1 << 31) - 1
#: Memory of one unpacked geometry value (a list slot and a Python float).
_FLOAT_OBJECT_BYTES = 32
#: Most levels of codec configs in a header: a codec, the inner codec it wraps, ...
MAX_CODEC_DEPTH = 4
#: Bytes read to parse a chunk header without its stream.
_CHUNK_HEADER_READ = 1 << 16


@dataclass(frozen=True)
class ChunkEntry:
    """Where one encoded chunk lives: views ``start:stop`` at ``offset`` (``length`` bytes),
    with the CRC-32 of those bytes and the digest of what they decode to."""

    start: int
    stop: int
    offset: int
    length: int
    crc32: int
    #: :func:`chunk_digest` of the decoded chunk (None in files written before digests).
    digest: bytes | None = None


#: Raw-content zstd dictionary of version-2 headers: JSON keys and common values, so that
#: a header of a few hundred bytes compresses well.  Part of the file format: these bytes
#: must never change (a new dictionary needs a new flag bit); a test pins their CRC-32.
HEADER_DICTIONARY = (
    b'{"corrections":{},"dicom_series_uid":"","dicom_transposed":false,"dicom_filenames":[],'
    b'"ffs_mode":"","scan_type":"","beam_geometry":"","source_angular_steps":,'
    b'"origin":"dicom-ctpd","units":"counts","i0":null,"aux":{"dark":{"shape":[1,'
    b'"dtype":"<u2"},"flat":{"shape":[1,"dtype":"<f4"}},"ffs_angular_shift_rad":'
    b'"ffs_axial_shift_mm":"ffs_radial_shift_mm":"time_stamp":"photon_statistics":'
    b'"dicom_headers":"dicom_header_index":"dtype":"|u1"},"dtype":"<i8"},'
    b'"codec":{"id":"zfp","id":"jpegxl","effort":7,"id":"jpeg2000","id":"htj2k",'
    b'"id":"jpegls","id":"blosc2","level":5,"id":"hyperprior","id":"vqvae",'
    b'"rate_point":null,"id":"siren","width":null,"depth":3,"segments":null,'
    b'"omega0":30.0,"encoding":"none","frequencies":4,"steps":2000,"time_budget":null,'
    b'"relative_step":0.06,"meta_init":true,"seed":0},"id":"sz3","id":"sperr",'
    b'"mode":"psnr","mode":"max_error","mode":"lossless","value":null,"data_range":null,'
    b'"id":"zstd","level":9},"dtype":"<f4","dtype":"<i2","dtype":"<u4","dtype":"<i4",'
    b'"dtype":"<f8","dtype":"|u1","original_ndim":2,"geometry":null,"kind":"parallel",'
    b'"kind":"fan","kind":"helical","detector_shape":"flat","source_isocenter_mm":null,'
    b'"source_detector_mm":null,"z_mm":{"f8":,"start":,"step":,"ulp":"KLUv/","raw":"KLUv/"'
    b'"metadata":{},"aux":{}}'
    b'{"format":"ctpz","format_version":2,"library":"ctpress 0.1.0","codec":{"id":"sperr",'
    b'"mode":"bpp","value":0.0,"data_range":null},"rate_control":{"mode":"bpp","value":0.0,'
    b'"data_range":null},"shape":[360,16,192],"dtype":"<u2","original_ndim":3,'
    b'"chunk_views":171,"geometry":{"kind":"cone","angles_rad":{"f8":360,"start":0.0,'
    b'"step":0.017453292519943295},"source_isocenter_mm":5,"source_detector_mm":1,'
    b'"detector_spacing_mm":[1.0,1.0],"detector_shape":"cylindrical",'
    b'"detector_offset_mm":[0.0,0.0],"z_mm":null},"metadata":{"units":"line_integral",'
    b'"i0":100000.0,"rescale_slope":1.0,"rescale_intercept":0.0,"mu_water_per_mm":0.0192,'
    b'"origin":"ctpress.sim.simulate_scan of ","simulation":{"volume":"","volume_shape":[],'
    b'"voxel_size_mm":[],"seed":0,"noise":"poisson","step_mm":1.5}},"aux":{}}'
)


def _header_dict() -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(
        HEADER_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT
    )


def header_bytes(header: dict[str, Any]) -> bytes:
    """The stored (version 2) form of a header dict: JSON with the geometry's float lists
    packed, zstd-compressed with :data:`HEADER_DICTIONARY`."""
    stored = dict(header)
    if stored.get("geometry") is not None:
        stored["geometry"] = pack_float_lists(stored["geometry"])
    text = json.dumps(stored, separators=(",", ":")).encode()
    compressor = zstandard.ZstdCompressor(
        level=19, dict_data=_header_dict(), write_dict_id=False, write_content_size=True
    )
    return compressor.compress(text)


def parse_header(
    data: bytes, flags: int, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
) -> dict[str, Any]:
    """Inverse of :func:`header_bytes` (``flags`` from the fixed head; without
    :data:`FLAG_HEADER_ZSTD` plain JSON, as in version 1), checked by
    :func:`validate_header`.  ValueError if the bytes do not decode or the header is not
    valid; InputError if its geometry alone would take more than ``max_output_bytes``."""
    if flags & FLAG_HEADER_ZSTD:
        try:
            size = zstandard.frame_content_size(data)
            if not 0 <= size <= _MAX_JSON_BYTES:
                raise ValueError("bad header size")
            data = zstandard.ZstdDecompressor(dict_data=_header_dict()).decompress(data)
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from None
    try:
        header = json.loads(data)
    except RecursionError:
        raise ValueError("its JSON is nested too deeply") from None
    return validate_header(header, max_output_bytes)


def _dtype_strings(names: tuple[str, ...]) -> frozenset[str]:
    """NumPy dtype strings of ``names`` in both byte orders."""
    little = [np.dtype(name).newbyteorder("<") for name in names]
    return frozenset([d.str for d in little] + [d.newbyteorder(">").str for d in little])


_PROJECTION_DTYPES = _dtype_strings(SUPPORTED_DTYPES)
#: Dtypes an auxiliary array may have (what the lossless zstd codec stores exactly).
_AUX_DTYPES = _dtype_strings((*SUPPORTED_DTYPES, "int8", "int64", "uint64"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_shape(value: Any, ndims: tuple[int, ...]) -> bool:
    """A list of ``ndims`` integers, each from 1 to :data:`_MAX_DIM`."""
    return (
        isinstance(value, list)
        and len(value) in ndims
        and all(_is_int(size) and 1 <= size <= _MAX_DIM for size in value)
    )


def _is_aux_specs(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(spec, dict)
        and _is_shape(spec.get("shape"), (1, 2, 3))
        and isinstance(spec.get("dtype"), str)
        and spec["dtype"] in _AUX_DTYPES
        for spec in value.values()
    )


def _is_codec_config(value: Any, depth: int = 1) -> bool:
    """A codec config: a JSON object with a string ``"id"``; a setting that is itself a
    codec config (an object with an ``"id"``, e.g. the inner codec of a wrapper) is
    checked the same way, at most :data:`MAX_CODEC_DEPTH` levels deep in all."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and depth <= MAX_CODEC_DEPTH
        and all(
            _is_codec_config(setting, depth + 1)
            for setting in value.values()
            if isinstance(setting, dict) and "id" in setting
        )
    )


def _is_rate_control(value: Any) -> bool:
    """A :meth:`RateControl.to_dict` record (older files lack ``"noise"`` and may lack
    ``"data_range"``)."""
    try:
        RateControl.from_dict(value)
    except (ValueError, TypeError, OverflowError):  # InputError is a ValueError
        return False
    return True


#: The header's schema: key -> (check, what the value must be, required).  Readers ignore
#: other keys (docs/format.md, Compatibility).
_HEADER_FIELDS: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "format_version": (_is_int, "an integer", True),
    "library": (lambda v: isinstance(v, str), "a string", True),
    "codec": (
        _is_codec_config,
        'a JSON object with a string "id" (codec configs nested in it at most '
        f"{MAX_CODEC_DEPTH} deep)",
        True,
    ),
    "rate_control": (
        _is_rate_control,
        'a rate control {"mode", "value", "data_range"[, "noise"]} (ctpress.rate)',
        True,
    ),
    "shape": (
        lambda v: _is_shape(v, (3,)),
        f"[views, rows, cols], each an integer from 1 to {_MAX_DIM}",
        True,
    ),
    "dtype": (
        lambda v: isinstance(v, str) and v in _PROJECTION_DTYPES,
        f"the NumPy dtype string of one of {', '.join(SUPPORTED_DTYPES)}",
        True,
    ),
    "chunk_views": (
        lambda v: _is_int(v) and 1 <= v <= _MAX_DIM,
        f"an integer from 1 to {_MAX_DIM}",
        True,
    ),
    "original_ndim": (lambda v: _is_int(v) and v in (2, 3), "2 or 3", False),
    "metadata": (lambda v: isinstance(v, dict), "a JSON object", False),
    "aux": (
        _is_aux_specs,
        '{name: {"shape": [1 to 3 sizes], "dtype": "<integer or float dtype>"}}',
        False,
    ),
    "geometry": (lambda v: v is None or isinstance(v, dict), "a JSON object or null", False),
}


def validate_header(
    header: Any, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
) -> dict[str, Any]:
    """Check a decoded header against the format's schema and unpack its geometry.

    Every size is checked before anything is allocated: the shape, the chunk size, the
    auxiliary arrays' shapes and dtypes, and the count of every packed geometry array
    (one value per view) before it is decompressed.  Returns ``header``, its geometry
    unpacked.

    Raises
    ------
    ValueError
        Naming the first field that is missing or invalid.
    InputError
        If the unpacked geometry would take more than ``max_output_bytes`` of memory.
    """
    if not isinstance(header, dict):
        raise ValueError(f"it is not a JSON object but {reprlib.repr(header)}")
    for key, (check, expected, required) in _HEADER_FIELDS.items():
        if key not in header:
            if required:
                raise ValueError(f"it has no {key!r}")
        elif not check(header[key]):
            raise ValueError(f"{key!r} must be {expected}, got {reprlib.repr(header[key])}")
    if header.get("original_ndim") == 2 and header["shape"][1] != 1:
        raise ValueError(
            f"'original_ndim' is 2 (views, cols), but 'shape' has {header['shape'][1]} rows"
        )
    geometry = header.get("geometry")
    if geometry is not None:
        n_views = header["shape"][0]
        n_packed = sum(isinstance(v, dict) and ARRAY_KEY in v for v in geometry.values())
        _check_output(
            n_packed * n_views * _FLOAT_OBJECT_BYTES,
            max_output_bytes,
            f"unpacking the geometry's per-view arrays ({n_packed} x {n_views} values)",
        )
        try:
            header["geometry"] = unpack_float_lists(geometry, n_views)
            n_angles = Geometry.from_dict(header["geometry"]).n_views
        except ValueError as exc:  # InputError from Geometry too
            raise ValueError(f"'geometry' is not valid: {exc}") from None
        if n_angles not in (0, n_views):
            raise ValueError(f"'geometry' has {n_angles} view angles for {n_views} views")
    return header


def _check_output(n_bytes: int, limit: int, what: str) -> None:
    """InputError unless ``what`` (``n_bytes`` of memory) fits in ``max_output_bytes``."""
    if n_bytes > limit:
        raise InputError(
            f"{what} needs {_bytes_text(n_bytes)} of memory, more than max_output_bytes "
            f"({_bytes_text(limit)}); if you trust this file, allow more with "
            "max_output_bytes (--max-output-bytes)"
        )


def _bytes_text(n_bytes: int) -> str:
    """``n_bytes`` in the largest binary unit that keeps it >= 1 (e.g. "1.5 GiB")."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n_bytes >= 1 << shift:
            return f"{n_bytes / (1 << shift):.3g} {unit}"
    return f"{n_bytes} bytes"


def index_bytes(chunks: list[ChunkEntry], aux: dict[str, tuple[int, int]]) -> bytes:
    """Binary (version 2) index: chunk view counts, lengths, CRCs and digests (written when
    the entries have them: :data:`FLAG_CHUNK_DIGESTS`); aux names, lengths and CRCs
    (``aux`` maps name to ``(length, crc32)``).  Payloads lie back to back."""
    out = bytearray(put_varint(len(chunks)))
    for entry in chunks:
        out += put_varint(entry.stop - entry.start) + put_varint(entry.length)
        out += struct.pack("<I", entry.crc32) + (entry.digest or b"")
    out += put_varint(len(aux))
    for name, (length, crc) in aux.items():
        encoded = name.encode()
        out += put_varint(len(encoded)) + encoded + put_varint(length) + struct.pack("<I", crc)
    return bytes(out)


def parse_index(
    data: bytes, data_start: int, digests: bool = False
) -> tuple[list[ChunkEntry], dict[str, list[int]], int]:
    """Inverse of :func:`index_bytes` (``digests``: the chunk entries end with digests):
    chunk entries, ``{name: [offset, length, crc]}`` and the offset just past the last
    payload (ValueError if malformed)."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value, pos = get_varint(data, pos)
        return value

    def take(size: int) -> bytes:
        nonlocal pos
        if pos + size > len(data):
            raise ValueError("truncated index")
        pos += size
        return data[pos - size : pos]

    chunks, aux = [], {}
    view, offset = 0, data_start
    for _ in range(varint()):
        views, length = varint(), varint()
        if views < 1:
            raise ValueError("a chunk of no views")
        crc = struct.unpack("<I", take(4))[0]
        digest = take(DIGEST_SIZE) if digests else None
        chunks.append(ChunkEntry(view, view + views, offset, length, crc, digest))
        view, offset = view + views, offset + length
    for _ in range(varint()):
        name = take(varint()).decode()
        length = varint()
        aux[name] = [offset, length, struct.unpack("<I", take(4))[0]]
        offset += length
    if pos != len(data):
        raise ValueError("trailing bytes in the index")
    return chunks, aux, offset


def _parse_index_v1(data: bytes) -> tuple[list[ChunkEntry], dict[str, list[int]]]:
    """Version-1 JSON index: chunk entries and ``{name: [offset, length, crc]}``
    (ValueError if malformed)."""
    try:
        index = json.loads(data)
    except RecursionError:
        raise ValueError("its JSON is nested too deeply") from None
    if not (
        isinstance(index, dict)
        and isinstance(index.get("chunks"), list)
        and isinstance(index.get("aux"), dict)
    ):
        raise ValueError(f'expected {{"chunks": [...], "aux": {{...}}}}, got {reprlib.repr(index)}')

    def integers(entry: Any, count: int) -> list[int]:
        if not (
            isinstance(entry, list)
            and len(entry) == count
            and all(_is_int(v) and 0 <= v < 1 << 63 for v in entry)
        ):
            raise ValueError(f"entry {reprlib.repr(entry)} is not {count} integers >= 0")
        return entry

    chunks = []
    for entry in index["chunks"]:
        start, stop, offset, length, crc = integers(entry, 5)
        chunks.append(ChunkEntry(start, stop, offset, length, crc))
    return chunks, {name: integers(entry, 3) for name, entry in index["aux"].items()}


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def chunk_digest(array: np.ndarray) -> bytes:
    """Digest of a decoded chunk as the index stores it: BLAKE2b (:data:`DIGEST_SIZE`
    bytes) of its values in C order, as little-endian bytes of its dtype."""
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return hashlib.blake2b(data.data, digest_size=DIGEST_SIZE).digest()


def default_jobs(jobs: int | None) -> int:
    """Threads a writer or reader uses for ``jobs`` (None: every core)."""
    if jobs is None:
        return os.cpu_count() or 1
    if jobs < 1:
        raise InputError(f"jobs must be >= 1, got {jobs}")
    return jobs
