"""The ``.ctpz`` container: one self-describing, checksummed, chunked file per scan.

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

The header is written first and the index last, so a scan can be encoded as a stream
of chunks; a reader seeks to the footer, reads the index and decodes only the chunks
that cover the views it wants.  Version 1 files are still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import reprlib
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import zstandard

from ._compact import ARRAY_KEY, get_varint, pack_float_lists, put_varint, unpack_float_lists
from ._version import __version__
from .codecs import Codec, get_codec
from .codecs.framing import (
    _CHUNK_MAGIC,
    _CHUNK_MAGIC_2,
    chunk_header_bound,
    parse_chunk_header,
    read_chunk_header,
)
from .errors import CorruptFileError, FormatError, InputError
from .scan import SUPPORTED_DTYPES, Geometry, Scan

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


#: The header's schema: key -> (check, what the value must be, required).  Readers ignore
#: other keys (docs/format.md, Compatibility).
_HEADER_FIELDS: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "format_version": (_is_int, "an integer", True),
    "library": (lambda v: isinstance(v, str), "a string", True),
    "codec": (
        lambda v: isinstance(v, dict) and isinstance(v.get("id"), str),
        'a JSON object with a string "id"',
        True,
    ),
    "rate_control": (lambda v: isinstance(v, dict), "a JSON object", True),
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


def default_chunk_views(
    shape: tuple[int, int, int], itemsize: int, chunk_bytes: int | None = None
) -> int:
    """Views per chunk: chunks of at most about ``chunk_bytes`` (default
    :data:`DEFAULT_CHUNK_BYTES`) of input, about equally long (a small trailing chunk would
    be the hardest to fit to a bpp target, which every chunk must meet on its own)."""
    per_view = shape[1] * shape[2] * itemsize
    n_chunks = max(1, -(-shape[0] * per_view // (chunk_bytes or DEFAULT_CHUNK_BYTES)))
    return int(max(1, -(-shape[0] // n_chunks)))


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def chunk_digest(array: np.ndarray) -> bytes:
    """Digest of a decoded chunk as the index stores it: BLAKE2b (:data:`DIGEST_SIZE`
    bytes) of its values in C order, as little-endian bytes of its dtype."""
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return hashlib.blake2b(data.data, digest_size=DIGEST_SIZE).digest()


def build_header(
    scan: Scan, codec: Codec, chunk_views: int, rate: dict[str, Any]
) -> dict[str, Any]:
    """The JSON header of a ``.ctpz`` file for ``scan`` coded with ``codec``."""
    return {
        "format": "ctpz",
        "format_version": FORMAT_VERSION,
        "library": f"ctpress {__version__}",
        "codec": codec.get_config(),
        "rate_control": rate,
        "shape": list(scan.shape),
        "dtype": scan.dtype.str,
        "original_ndim": scan.original_ndim,
        "chunk_views": chunk_views,
        "geometry": None if scan.geometry is None else scan.geometry.to_dict(),
        "metadata": scan.metadata,
        "aux": {
            name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in scan.aux.items()
        },
    }


def encode_aux(array: np.ndarray) -> bytes:
    """Lossless payload of an auxiliary array (dark/flat frames, ...)."""
    return get_codec("zstd").encode(array if array.ndim >= 2 else array.reshape(1, -1))


def write_ctpz(
    out: BinaryIO,
    scan: Scan,
    codec: Codec,
    *,
    chunk_views: int | None = None,
    rate: dict[str, Any] | None = None,
    jobs: int = 1,
    progress: bool = False,
) -> int:
    """Encode ``scan`` with ``codec`` into the open binary stream ``out``.

    Chunks of ``chunk_views`` views are encoded independently (``jobs`` threads; the
    bytes do not depend on ``jobs``) and written in order, each with the digest of what
    it decodes to (the input itself when lossless; else the encoder decodes its own
    payload).  Returns the bytes written.
    """
    from tqdm.auto import tqdm  # here, not at the top: ``import ctpress`` stays light

    n_views = scan.shape[0]
    chunk_views = chunk_views or default_chunk_views(
        scan.shape, scan.dtype.itemsize, codec.preferred_chunk_bytes
    )
    if chunk_views < 1:
        raise InputError(f"chunk_views must be >= 1, got {chunk_views}")
    rate = rate or {"mode": codec.mode, "value": codec.value}
    header = header_bytes(build_header(scan, codec, chunk_views, rate))
    head = (
        _HEAD.pack(MAGIC, FORMAT_VERSION, FLAG_HEADER_ZSTD | FLAG_CHUNK_DIGESTS, len(header))
        + header
        + struct.pack("<I", _crc(header))
    )
    out.write(head)
    pos = len(head)
    starts = list(range(0, n_views, chunk_views))
    chunks: list[ChunkEntry] = []
    aux: dict[str, tuple[int, int]] = {}

    lossless = codec.mode == "lossless"

    def encode(start: int) -> tuple[bytes, bytes]:
        chunk = scan.projections[start : start + chunk_views]
        payload = codec.encode(chunk)
        return payload, chunk_digest(chunk if lossless else codec.decode(payload))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        encoded = pool.map(encode, starts) if jobs > 1 else map(encode, starts)
        with tqdm(total=n_views, unit="view", desc=codec.codec_id, disable=not progress) as bar:
            for start, (payload, digest) in zip(starts, encoded, strict=True):
                stop = min(start + chunk_views, n_views)
                out.write(payload)
                chunks.append(ChunkEntry(start, stop, pos, len(payload), _crc(payload), digest))
                pos += len(payload)
                bar.update(stop - start)
    for name, array in scan.aux.items():
        payload = encode_aux(array)
        out.write(payload)
        aux[name] = (len(payload), _crc(payload))
        pos += len(payload)
    index = index_bytes(chunks, aux)
    out.write(index + _FOOT.pack(len(index), _crc(index), END_MAGIC))
    return pos + len(index) + _FOOT.size


def container_overhead(
    scan: Scan, codec: Codec, chunk_views: int, rate: dict[str, Any], chunk_bytes: int
) -> int:
    """Bytes a :func:`write_ctpz` file spends besides the chunks' coded streams: fixed
    head and footer, compressed header, index (with the chunk digests), per-chunk framing
    (an upper bound) and the auxiliary payloads, for chunks of about ``chunk_bytes``
    stream bytes each."""
    header = header_bytes(build_header(scan, codec, chunk_views, rate))
    n_views = scan.shape[0]
    chunks = []
    for start in range(0, n_views, chunk_views):
        stop = min(start + chunk_views, n_views)
        shape = (stop - start, *scan.shape[1:])
        length = chunk_header_bound(shape, scan.dtype, chunk_bytes) + chunk_bytes
        chunks.append(ChunkEntry(start, stop, 0, length, 0, bytes(DIGEST_SIZE)))
    aux_payloads = {name: encode_aux(a) for name, a in scan.aux.items()}
    index = index_bytes(chunks, {name: (len(p), 0) for name, p in aux_payloads.items()})
    framing = sum(entry.length - chunk_bytes for entry in chunks)
    aux_bytes = sum(len(p) for p in aux_payloads.values())
    return _HEAD.size + len(header) + 4 + framing + aux_bytes + len(index) + _FOOT.size


def encode_ctpz(scan: Scan, codec: Codec, **kwargs: Any) -> bytes:
    """:func:`write_ctpz` into memory; returns the file's bytes."""
    buffer = io.BytesIO()
    write_ctpz(buffer, scan, codec, **kwargs)
    return buffer.getvalue()


class CtpzFile:
    """A ``.ctpz`` file opened for reading, with lazy access to view ranges.

    Use :func:`ctpress.open`.  ``f.header`` is the JSON header; ``f[a:b]`` or
    ``f.read_views(a, b)`` decodes views ``a:b`` only (shape (b-a, rows, cols));
    ``f.read_scan()`` decodes everything into a :class:`~ctpress.Scan`.

    Every size in the header and index is checked against the others and the file's
    length when it is opened.  ``max_output_bytes`` caps what one read may allocate (the
    views asked for plus the auxiliary arrays; also one chunk being decoded, and the
    unpacked geometry at open), so that a small crafted file cannot take all memory.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> None:
        if not (_is_int(max_output_bytes) and max_output_bytes >= 1):
            raise InputError(
                f"max_output_bytes must be a positive integer, got {max_output_bytes!r}"
            )
        self.max_output_bytes = max_output_bytes
        if isinstance(source, bytes | bytearray | memoryview):
            self.name = "<bytes>"
            self._fh: IO[bytes] = io.BytesIO(bytes(source))
        else:
            self.name = str(source)
            path = Path(source)
            if not path.is_file():
                raise InputError(f"{self.name}: no such file")
            self._fh = path.open("rb")
        try:
            self._read_structure()
        except Exception:
            self._fh.close()
            raise

    # ---------------------------------------------------------------- parsing
    def _fail(self, message: str) -> CorruptFileError:
        return CorruptFileError(f"{self.name}: {message}")

    def _check_version(self, version: int, flags: int) -> None:
        """Refuse a version or flag bits this reader does not know: damage, or a newer
        writer (the reader cannot tell which)."""
        if version > FORMAT_VERSION:
            raise FormatError(
                f"{self.name}: .ctpz format version {version} is newer than this ctpress "
                f"({__version__}) reads (up to {FORMAT_VERSION}): the file is damaged, or "
                "upgrade ctpress"
            )
        if version < 1:
            raise self._fail(f"format version {version} does not exist (the file is damaged)")
        unknown = flags & ~(_KNOWN_FLAGS if version >= 2 else 0)
        if unknown:
            raise FormatError(
                f"{self.name}: flags {flags:#06x} set bits {unknown:#06x} that this ctpress "
                f"({__version__}) does not know in format version {version}: the file is "
                "damaged, or was written by a newer ctpress; upgrade ctpress"
            )

    def _read_structure(self) -> None:
        fh = self._fh
        fh.seek(0, os.SEEK_END)
        self.file_size = fh.tell()
        fh.seek(0)
        head = fh.read(_HEAD.size)
        if len(head) < _HEAD.size or head[:8] != MAGIC:
            if head[:4] == MAGIC[:4]:
                raise self._fail("truncated or damaged .ctpz header")
            raise FormatError(f"{self.name}: not a .ctpz file (bad magic bytes)")
        _, version, flags, header_len = _HEAD.unpack(head)
        self._check_version(version, flags)
        self.format_version = version
        #: Whether the index holds a digest of every chunk (:meth:`verify`).
        self.has_digests = bool(flags & FLAG_CHUNK_DIGESTS)
        if header_len > min(_MAX_JSON_BYTES, self.file_size):
            raise self._fail("header length field is damaged or the file is truncated")
        header = fh.read(header_len)
        crc_bytes = fh.read(4)
        if len(header) != header_len or len(crc_bytes) != 4:
            raise self._fail("file is truncated inside the header")
        if struct.unpack("<I", crc_bytes)[0] != _crc(header):
            raise self._fail("header checksum mismatch (the file is damaged)")
        try:
            self.header: dict[str, Any] = parse_header(header, flags, self.max_output_bytes)
        except InputError as exc:  # the geometry is larger than max_output_bytes
            raise InputError(f"{self.name}: {exc}") from None
        except ValueError as exc:
            raise self._fail(f"damaged header: {exc}") from None
        try:
            self.codec = get_codec(self.header["codec"])
        except (ValueError, TypeError) as exc:  # InputError: unknown codec or settings
            raise self._fail(
                f"the header's codec config cannot be used ({exc}): the file is damaged, or "
                "was written by a newer ctpress; upgrade ctpress"
            ) from None
        self.header_size = header_len
        self._data_start = _HEAD.size + header_len + 4
        index_start = self._read_index()
        try:
            self._check_layout(index_start)
        except ValueError as exc:
            raise self._fail(f"damaged index: {exc}") from None

    def _read_index(self) -> int:
        """Read the footer and the index (``self.chunks``, ``self._aux_index``); returns
        where the index starts."""
        fh = self._fh
        footer_start = self.file_size - _FOOT.size
        if footer_start < self._data_start:
            raise self._fail(self._truncation())
        fh.seek(footer_start)
        index_len, index_crc, end = _FOOT.unpack(fh.read(_FOOT.size))
        if end != END_MAGIC:
            raise self._fail(self._truncation())
        index_start = footer_start - index_len
        if index_len > _MAX_JSON_BYTES or index_start < self._data_start:
            raise self._fail("index length field is damaged")
        fh.seek(index_start)
        raw_index = fh.read(index_len)
        if _crc(raw_index) != index_crc:
            raise self._fail("index checksum mismatch (the file is damaged)")
        self.index_size = index_len
        try:
            if self.format_version >= 2:
                self.chunks, self._aux_index, end_of_data = parse_index(
                    raw_index, self._data_start, self.has_digests
                )
                if end_of_data != index_start:
                    raise ValueError("its payload lengths do not add up to the data section")
            else:
                self.chunks, self._aux_index = _parse_index_v1(raw_index)
        except ValueError as exc:  # UnicodeDecodeError too
            raise self._fail(f"damaged index: {exc}") from None
        return index_start

    def _check_layout(self, index_start: int) -> None:
        """ValueError unless the index matches the header (chunks of ``chunk_views`` views
        covering every view, one block per auxiliary array) and every block lies in the
        data section."""
        n_views, per_chunk = self.shape[0], self.chunk_views
        n_chunks = -(-n_views // per_chunk)
        if len(self.chunks) != n_chunks:
            raise ValueError(
                f"it lists {len(self.chunks)} chunks, but {n_views} views in chunks of "
                f"{per_chunk} make {n_chunks}"
            )
        for k, entry in enumerate(self.chunks):
            if (entry.start, entry.stop) != self._chunk_views(k):
                raise ValueError(
                    f"chunk {k} holds views {entry.start}:{entry.stop}, but the header says "
                    f"{self._chunk_label(k)}"
                )
        specs = self.header.get("aux", {})
        if set(self._aux_index) != set(specs):
            raise ValueError(
                f"it lists auxiliary arrays {sorted(self._aux_index)}, the header {sorted(specs)}"
            )
        blocks = [(e.offset, e.length) for e in self.chunks]
        blocks += [(offset, length) for offset, length, _ in self._aux_index.values()]
        if any(o < self._data_start or o + n > index_start for o, n in blocks):
            raise ValueError("a block lies outside the data section")

    def _truncation(self) -> str:
        """What a file without its footer lost, found by walking the chunk payloads from
        the data start (each chunk header records the length of its stream)."""
        pos = self._data_start
        last = -(-self.shape[0] // self.chunk_views) - 1
        for k in range(last + 1):
            if pos >= self.file_size and k == 0:
                return "file is truncated after the header: all chunks and the index are missing"
            if pos >= self.file_size:
                missing = f"chunks {k} to {last}" if k < last else f"chunk {last}"
                return (
                    f"file is truncated after {self._chunk_label(k - 1)}: {missing} and "
                    "the index are missing"
                )
            self._fh.seek(pos)
            head = self._fh.read(_CHUNK_HEADER_READ)
            truncated = f"file is truncated in {self._chunk_label(k)}; the index is missing"
            try:
                info, offset = parse_chunk_header(head)
                stream_length = int(info["n"])
                if stream_length < 0:
                    raise ValueError("negative stream length")
            except (ValueError, KeyError, TypeError, IndexError, struct.error):
                cut = pos + len(head) == self.file_size and head[:4] in (
                    _CHUNK_MAGIC[: len(head)],
                    _CHUNK_MAGIC_2[: len(head)],
                )
                if cut:  # the file ends inside this chunk header
                    return truncated
                return (
                    f"no end marker, and {self._chunk_label(k)} has no readable chunk "
                    "header: the file is damaged"
                )
            if pos + offset + stream_length > self.file_size:
                return truncated
            pos += offset + stream_length
        if pos == self.file_size:
            return (
                f"file is truncated after the last chunk, {self._chunk_label(last)}; the "
                "index is missing"
            )
        return (
            f"no end marker after the last chunk, {self._chunk_label(last)}: the file is "
            "truncated in its auxiliary arrays or index, or its end is damaged"
        )

    # ------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_views, det_rows, det_cols) of the stored projections."""
        n, r, c = self.header["shape"]
        return (n, r, c)

    @property
    def dtype(self) -> np.dtype:
        """Data type of the stored projections."""
        return np.dtype(self.header["dtype"])

    @property
    def chunk_views(self) -> int:
        """Views per chunk (the last chunk may hold fewer)."""
        views: int = self.header["chunk_views"]
        return views

    @property
    def geometry(self) -> Geometry | None:
        """Geometry stored with the projections (None if the input had none)."""
        g = self.header.get("geometry")
        return None if g is None else Geometry.from_dict(g)

    @property
    def metadata(self) -> dict[str, Any]:
        """Free metadata stored with the projections."""
        return dict(self.header.get("metadata", {}))

    def __len__(self) -> int:
        return self.shape[0]

    # ---------------------------------------------------------------- decoding
    def _chunk_views(self, k: int) -> tuple[int, int]:
        start = k * self.chunk_views
        return start, min(start + self.chunk_views, self.shape[0])

    def _chunk_label(self, k: int) -> str:
        """How messages name chunk ``k``: "chunk 3 (views 12:16)"."""
        start, stop = self._chunk_views(k)
        return f"chunk {k} (views {start}:{stop})"

    def _entry_label(self, entry: ChunkEntry) -> str:
        return self._chunk_label(entry.start // self.chunk_views)

    def _output_bytes(self, n_views: int) -> int:
        return n_views * self.shape[1] * self.shape[2] * self.dtype.itemsize

    def _aux_bytes(self) -> int:
        return sum(
            math.prod(spec["shape"]) * np.dtype(spec["dtype"]).itemsize
            for spec in self.header.get("aux", {}).values()
        )

    def _check_output(self, n_bytes: int, what: str) -> None:
        _check_output(n_bytes, self.max_output_bytes, f"{self.name}: {what}")

    def _read_block(self, offset: int, length: int, crc: int, what: str) -> bytes:
        self._fh.seek(offset)
        data = self._fh.read(length)
        if len(data) != length:
            raise self._fail(f"{what}: truncated")
        if _crc(data) != crc:
            raise self._fail(f"{what}: checksum mismatch (the file is damaged)")
        return data

    def _chunk_payload(self, entry: ChunkEntry) -> bytes:
        """A chunk's bytes, with their CRC-32 checked and the shape and dtype that the
        chunk header declares compared with the container's before anything is decoded."""
        what = self._entry_label(entry)
        data = self._read_block(entry.offset, entry.length, entry.crc32, what)
        try:
            shape, dtype = read_chunk_header(data)
        except CorruptFileError as exc:
            raise self._fail(f"{what}: {exc}") from None
        expected = (entry.stop - entry.start, *self.shape[1:])
        if shape != expected or dtype != self.dtype:
            raise self._fail(
                f"{what}: its header declares {_array_text(shape, dtype)}, expected "
                f"{_array_text(expected, self.dtype)}"
            )
        return data

    def _decode_chunk(
        self, entry: ChunkEntry, start: int | None = None, stop: int | None = None
    ) -> np.ndarray:
        """Decode one chunk; with ``start``/``stop`` (relative to the chunk) only those
        views, through the codec's :meth:`~ctpress.codecs.Codec.decode_views`."""
        what = self._entry_label(entry)
        data = self._chunk_payload(entry)
        self._check_output(self._output_bytes(entry.stop - entry.start), f"decoding {what}")
        partial = start is not None or stop is not None
        a = 0 if start is None else start
        b = entry.stop - entry.start if stop is None else stop
        try:
            array = self.codec.decode_views(data, a, b) if partial else self.codec.decode(data)
        except CorruptFileError as exc:
            raise self._fail(f"{what}: {exc}") from None
        expected = (b - a, *self.shape[1:])
        if array.shape != expected or array.dtype != self.dtype:
            raise self._fail(
                f"{what} decoded to {_array_text(array.shape, array.dtype)}, expected "
                f"{_array_text(expected, self.dtype)}"
            )
        return array

    def _decode_aux(self, name: str) -> np.ndarray:
        """Decode auxiliary array ``name``, its declared shape, dtype and compressed size
        checked against the header first."""
        offset, length, crc = self._aux_index[name]
        what = f"auxiliary array {name!r}"
        data = self._read_block(offset, length, crc, what)
        spec = self.header["aux"][name]
        shape = tuple(spec["shape"])
        try:
            _check_aux_payload(data, shape, np.dtype(spec["dtype"]))
            return get_codec("zstd").decode(data).reshape(shape)
        except CorruptFileError as exc:
            raise self._fail(f"{what}: {exc}") from None

    def iter_chunks(
        self, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_view, array)`` for each chunk overlapping views ``start:stop``."""
        stop = self.shape[0] if stop is None else stop
        for entry in self.chunks:
            if entry.stop > start and entry.start < stop:
                yield entry.start, self._decode_chunk(entry)

    def _view_range(self, start: int, stop: int | None) -> tuple[int, int]:
        n = self.shape[0]
        stop = n if stop is None else stop
        if not (0 <= start < stop <= n):
            raise InputError(f"view range {start}:{stop} is outside 0:{n}")
        return start, stop

    def read_views(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Decode views ``start:stop`` only; shape (stop-start, rows, cols).

        Chunks inside the range are decoded whole; a chunk the range covers only in part
        goes through the codec's ``decode_views`` (which may evaluate just those views).
        """
        start, stop = self._view_range(start, stop)
        self._check_output(self._output_bytes(stop - start), f"reading views {start}:{stop}")
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        for entry in self.chunks:
            lo, hi = max(start, entry.start), min(stop, entry.stop)
            if lo >= hi:
                continue
            if lo == entry.start and hi == entry.stop:
                array = self._decode_chunk(entry)
            else:
                array = self._decode_chunk(entry, lo - entry.start, hi - entry.start)
            out[lo - start : hi - start] = array
        return out

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise InputError("index a .ctpz file with a contiguous view slice, e.g. f[10:20]")
        start, stop, _ = key.indices(self.shape[0])
        return self.read_views(start, stop)

    def read_aux(self) -> dict[str, np.ndarray]:
        """Auxiliary arrays (e.g. dark/flat frames), decoded losslessly."""
        self._check_output(self._aux_bytes(), "reading the auxiliary arrays")
        return {name: self._decode_aux(name) for name in self._aux_index}

    def read_scan(self, start: int = 0, stop: int | None = None) -> Scan:
        """Decode views ``start:stop`` (default all) with geometry, metadata and aux."""
        start, stop = self._view_range(start, stop)
        self._check_output(
            self._output_bytes(stop - start) + self._aux_bytes(),
            f"reading views {start}:{stop} and the auxiliary arrays",
        )
        projections = self.read_views(start, stop)
        geometry = self.geometry
        if geometry is not None and geometry.n_views:
            geometry = geometry.select_views(start, stop)
        scan = Scan(projections, geometry, self.metadata, self.read_aux())
        scan.original_ndim = int(self.header.get("original_ndim", 3))
        return scan

    def verify(self, decode: bool = False) -> str:
        """Check the file; nothing is written.

        Without ``decode``: the structure (checked at open), every block's CRC-32 and the
        shape and dtype every chunk header declares.  With ``decode``: after those checks,
        also decode every chunk and auxiliary array, and compare each chunk with the digest
        stored when it was written (files written before digests, e.g. version 1, only
        decode).

        Returns
        -------
        str
            What was checked, e.g. ``"3 chunks, digests verified"``.

        Raises
        ------
        CorruptFileError
            Naming the first bad chunk, e.g. ``"chunk 3 (views 12:16): checksum
            mismatch (the file is damaged)"``.
        """
        for entry in self.chunks:
            self._chunk_payload(entry)
        for name, (offset, length, crc) in self._aux_index.items():
            self._read_block(offset, length, crc, f"auxiliary array {name!r}")
        count = f"{len(self.chunks)} chunk{'' if len(self.chunks) == 1 else 's'}"
        if not decode:
            return f"{count}, checksums verified"
        for entry in self.chunks:
            array = self._decode_chunk(entry)
            if entry.digest is not None and chunk_digest(array) != entry.digest:
                raise self._fail(
                    f"{self._entry_label(entry)}: the decoded data differ from the digest "
                    "stored when it was written (the file is damaged, or this machine "
                    "decodes differently)"
                )
        for name in self._aux_index:
            self._decode_aux(name)
        if self.has_digests:
            return f"{count}, digests verified"
        return f"{count} decoded without error; the file has no digests (older ctpress)"

    # ---------------------------------------------------------------- cleanup
    def close(self) -> None:
        """Close the underlying file."""
        self._fh.close()

    def __enter__(self) -> CtpzFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<CtpzFile {self.name}: {self.shape} {self.dtype}, codec {self.codec.codec_id}, "
            f"{len(self.chunks)} chunk(s), {self.file_size} bytes>"
        )


def _array_text(shape: tuple[int, ...], dtype: np.dtype) -> str:
    """``(20, 32, 128) uint16``: how messages name an array."""
    return f"{tuple(shape)} {np.dtype(dtype).name}"


def _check_aux_payload(data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """CorruptFileError unless an auxiliary payload (a lossless zstd chunk) declares the
    header's shape and dtype, and its zstd frame exactly the bytes those take, so that
    decoding it allocates no more than the header says."""
    stored = shape if len(shape) >= 2 else (1, *shape)  # as encode_aux passes it
    declared = read_chunk_header(data)
    if declared != (stored, dtype):
        raise CorruptFileError(
            f"its header declares {_array_text(*declared)}, expected {_array_text(stored, dtype)}"
        )
    info, offset = parse_chunk_header(data)
    work = info.get("w")
    if not (isinstance(work, str) and work in _AUX_DTYPES):
        raise CorruptFileError(f"damaged chunk header: work dtype {reprlib.repr(work)}")
    expected = math.prod(stored) * np.dtype(work).itemsize
    try:
        size = zstandard.frame_content_size(data[offset:])
    except zstandard.ZstdError as exc:
        raise CorruptFileError(f"zstd stream could not be decoded: {exc}") from None
    if size != expected:
        raise CorruptFileError(f"zstd stream declares {size} bytes, expected {expected}")
