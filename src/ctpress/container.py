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
        offsets; version 2: binary varints, payloads back to back)
    index length u64 | index CRC-32 u32 | end magic "CTPZEND\\n" (8)

The header is written first and the index last, so a scan can be encoded as a stream
of chunks; a reader seeks to the footer, reads the index and decodes only the chunks
that cover the views it wants.  Version 1 files are still read.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import zstandard
from tqdm.auto import tqdm

from ._compact import get_varint, pack_float_lists, put_varint, unpack_float_lists
from ._version import __version__
from .codecs import Codec, get_codec
from .codecs.base import chunk_header_bound
from .codecs.generic import Zstd
from .errors import CorruptFileError, FormatError, InputError
from .scan import Geometry, Scan

MAGIC = b"CTPZ\r\n\x1a\n"
END_MAGIC = b"CTPZEND\n"
FORMAT_VERSION = 2
#: Flag bit (version 2): the header is zstd-compressed with :data:`HEADER_DICTIONARY`.
FLAG_HEADER_ZSTD = 0x0001
_KNOWN_FLAGS = FLAG_HEADER_ZSTD
_HEAD = struct.Struct("<8sHHI")
_FOOT = struct.Struct("<QI8s")
#: Default raw size of one chunk along the view axis (bytes of input data).
DEFAULT_CHUNK_BYTES = 1 << 20
#: Refuse headers/indexes larger than this (a damaged length field must not allocate GBs).
_MAX_JSON_BYTES = 256 << 20


@dataclass(frozen=True)
class ChunkEntry:
    """Where one encoded chunk lives: views ``start:stop`` at ``offset`` (``length`` bytes)."""

    start: int
    stop: int
    offset: int
    length: int
    crc32: int


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


def parse_header(data: bytes, flags: int) -> dict[str, Any]:
    """Inverse of :func:`header_bytes` (``flags`` from the fixed head); ValueError if the
    bytes do not decode."""
    if flags & FLAG_HEADER_ZSTD:
        try:
            size = zstandard.frame_content_size(data)
            if not 0 <= size <= _MAX_JSON_BYTES:
                raise ValueError("bad header size")
            data = zstandard.ZstdDecompressor(dict_data=_header_dict()).decompress(data)
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from None
    header = json.loads(data)
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    if isinstance(header.get("geometry"), dict):
        header["geometry"] = unpack_float_lists(header["geometry"])
    return header


def index_bytes(chunks: list[ChunkEntry], aux: dict[str, tuple[int, int]]) -> bytes:
    """Binary (version 2) index: chunk view counts, lengths and CRCs; aux names, lengths
    and CRCs (``aux`` maps name to ``(length, crc32)``).  Payloads lie back to back."""
    out = bytearray(put_varint(len(chunks)))
    for entry in chunks:
        out += put_varint(entry.stop - entry.start) + put_varint(entry.length)
        out += struct.pack("<I", entry.crc32)
    out += put_varint(len(aux))
    for name, (length, crc) in aux.items():
        encoded = name.encode()
        out += put_varint(len(encoded)) + encoded + put_varint(length) + struct.pack("<I", crc)
    return bytes(out)


def parse_index(data: bytes, data_start: int) -> tuple[list[ChunkEntry], dict[str, list[int]], int]:
    """Inverse of :func:`index_bytes`: chunk entries, ``{name: [offset, length, crc]}`` and
    the offset just past the last payload (ValueError if malformed)."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value, pos = get_varint(data, pos)
        return value

    def crc() -> int:
        nonlocal pos
        if pos + 4 > len(data):
            raise ValueError("truncated index")
        (value,) = struct.unpack_from("<I", data, pos)
        pos += 4
        return int(value)

    chunks, aux = [], {}
    view, offset = 0, data_start
    for _ in range(varint()):
        views, length = varint(), varint()
        if views < 1:
            raise ValueError("a chunk of no views")
        chunks.append(ChunkEntry(view, view + views, offset, length, crc()))
        view, offset = view + views, offset + length
    for _ in range(varint()):
        size = varint()
        name = data[pos : pos + size].decode()
        pos += size
        length = varint()
        aux[name] = [offset, length, crc()]
        offset += length
    if pos != len(data):
        raise ValueError("trailing bytes in the index")
    return chunks, aux, offset


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
    return Zstd().encode(array if array.ndim >= 2 else array.reshape(1, -1))


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
    bytes do not depend on ``jobs``) and written in order.  Returns the bytes written.
    """
    n_views = scan.shape[0]
    chunk_views = chunk_views or default_chunk_views(
        scan.shape, scan.dtype.itemsize, codec.preferred_chunk_bytes
    )
    if chunk_views < 1:
        raise InputError(f"chunk_views must be >= 1, got {chunk_views}")
    rate = rate or {"mode": codec.mode, "value": codec.value}
    header = header_bytes(build_header(scan, codec, chunk_views, rate))
    head = (
        _HEAD.pack(MAGIC, FORMAT_VERSION, FLAG_HEADER_ZSTD, len(header))
        + header
        + struct.pack("<I", _crc(header))
    )
    out.write(head)
    pos = len(head)
    starts = list(range(0, n_views, chunk_views))
    chunks: list[ChunkEntry] = []
    aux: dict[str, tuple[int, int]] = {}

    def encode(start: int) -> bytes:
        return codec.encode(scan.projections[start : start + chunk_views])

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        payloads = pool.map(encode, starts) if jobs > 1 else map(encode, starts)
        with tqdm(total=n_views, unit="view", desc=codec.codec_id, disable=not progress) as bar:
            for start, payload in zip(starts, payloads, strict=True):
                stop = min(start + chunk_views, n_views)
                out.write(payload)
                chunks.append(ChunkEntry(start, stop, pos, len(payload), _crc(payload)))
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
    head and footer, compressed header, index, per-chunk framing (an upper bound) and
    the auxiliary payloads, for chunks of about ``chunk_bytes`` stream bytes each."""
    header = header_bytes(build_header(scan, codec, chunk_views, rate))
    n_views = scan.shape[0]
    chunks = []
    for start in range(0, n_views, chunk_views):
        stop = min(start + chunk_views, n_views)
        shape = (stop - start, *scan.shape[1:])
        length = chunk_header_bound(shape, scan.dtype, chunk_bytes) + chunk_bytes
        chunks.append(ChunkEntry(start, stop, 0, length, 0))
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
    """

    def __init__(self, source: str | os.PathLike[str] | bytes) -> None:
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
        if version > FORMAT_VERSION:
            raise FormatError(
                f"{self.name}: written in .ctpz format version {version}, but this ctpress "
                f"({__version__}) reads up to version {FORMAT_VERSION}; upgrade ctpress"
            )
        if version >= 2 and flags & ~_KNOWN_FLAGS:
            raise FormatError(
                f"{self.name}: uses .ctpz features (flags {flags:#06x}) this ctpress "
                f"({__version__}) does not know; upgrade ctpress"
            )
        self.format_version = version
        if header_len > min(_MAX_JSON_BYTES, self.file_size):
            raise self._fail("header length field is damaged or the file is truncated")
        header = fh.read(header_len)
        crc_bytes = fh.read(4)
        if len(header) != header_len or len(crc_bytes) != 4:
            raise self._fail("file is truncated inside the header")
        if struct.unpack("<I", crc_bytes)[0] != _crc(header):
            raise self._fail("header checksum mismatch (the file is damaged)")
        try:
            self.header: dict[str, Any] = (
                parse_header(header, flags) if version >= 2 else json.loads(header)
            )
        except ValueError as exc:
            raise self._fail(f"header does not decode: {exc}") from None
        self.header_size = header_len
        self._data_start = _HEAD.size + header_len + 4
        if self.file_size < self._data_start + _FOOT.size:
            raise self._fail("file is truncated (no index)")
        fh.seek(self.file_size - _FOOT.size)
        index_len, index_crc, end = _FOOT.unpack(fh.read(_FOOT.size))
        if end != END_MAGIC:
            raise self._fail("file is truncated or its end is damaged (no end marker)")
        index_start = self.file_size - _FOOT.size - index_len
        if index_len > _MAX_JSON_BYTES or index_start < self._data_start:
            raise self._fail("index length field is damaged")
        fh.seek(index_start)
        raw_index = fh.read(index_len)
        if _crc(raw_index) != index_crc:
            raise self._fail("index checksum mismatch (the file is damaged)")
        self.index_size = index_len
        if version >= 2:
            try:
                self.chunks, self._aux_index, end_of_data = parse_index(raw_index, self._data_start)
            except (ValueError, UnicodeDecodeError) as exc:
                raise self._fail(f"index does not decode: {exc}") from None
            if end_of_data != index_start:
                raise self._fail("index does not match the data section")
        else:
            index = json.loads(raw_index)
            self.chunks = [ChunkEntry(*entry) for entry in index["chunks"]]
            self._aux_index = index["aux"]
        for entry in self.chunks:
            if entry.offset < self._data_start or entry.offset + entry.length > index_start:
                raise self._fail("chunk index points outside the data section")
        if not self.chunks or self.chunks[-1].stop != self.shape[0]:
            raise self._fail("chunk index does not cover the views of the header")
        self.codec = get_codec(self.header["codec"])

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
    def _read_block(self, offset: int, length: int, crc: int, what: str) -> bytes:
        self._fh.seek(offset)
        data = self._fh.read(length)
        if len(data) != length:
            raise self._fail(f"truncated in {what}")
        if _crc(data) != crc:
            raise self._fail(f"checksum mismatch in {what} (the file is damaged)")
        return data

    def _decode_chunk(
        self, entry: ChunkEntry, start: int | None = None, stop: int | None = None
    ) -> np.ndarray:
        """Decode one chunk; with ``start``/``stop`` (relative to the chunk) only those
        views, through the codec's :meth:`~ctpress.codecs.Codec.decode_views`."""
        what = f"chunk of views {entry.start}:{entry.stop}"
        data = self._read_block(entry.offset, entry.length, entry.crc32, what)
        partial = start is not None or stop is not None
        a = 0 if start is None else start
        b = entry.stop - entry.start if stop is None else stop
        try:
            array = self.codec.decode_views(data, a, b) if partial else self.codec.decode(data)
        except CorruptFileError as exc:
            raise self._fail(f"{what}: {exc}") from None
        expected = (b - a, *self.shape[1:])
        if array.shape != expected or array.dtype != self.dtype:
            raise self._fail(f"{what} decoded to {array.shape} {array.dtype}, expected {expected}")
        return array

    def iter_chunks(
        self, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_view, array)`` for each chunk overlapping views ``start:stop``."""
        stop = self.shape[0] if stop is None else stop
        for entry in self.chunks:
            if entry.stop > start and entry.start < stop:
                yield entry.start, self._decode_chunk(entry)

    def read_views(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Decode views ``start:stop`` only; shape (stop-start, rows, cols).

        Chunks inside the range are decoded whole; a chunk the range covers only in part
        goes through the codec's ``decode_views`` (which may evaluate just those views).
        """
        n = self.shape[0]
        stop = n if stop is None else stop
        if not (0 <= start < stop <= n):
            raise InputError(f"view range {start}:{stop} is outside 0:{n}")
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
        out = {}
        for name, (offset, length, crc) in self._aux_index.items():
            data = self._read_block(offset, length, crc, f"auxiliary array {name!r}")
            spec = self.header["aux"][name]
            out[name] = Zstd().decode(data).reshape(spec["shape"])
        return out

    def read_scan(self, start: int = 0, stop: int | None = None) -> Scan:
        """Decode views ``start:stop`` (default all) with geometry, metadata and aux."""
        stop = self.shape[0] if stop is None else stop
        projections = self.read_views(start, stop)
        geometry = self.geometry
        if geometry is not None and geometry.n_views:
            geometry = geometry.select_views(start, stop)
        scan = Scan(projections, geometry, self.metadata, self.read_aux())
        scan.original_ndim = int(self.header.get("original_ndim", 3))
        return scan

    def verify(self) -> None:
        """Check the checksum of every block (raises CorruptFileError on damage)."""
        for entry in self.chunks:
            self._read_block(entry.offset, entry.length, entry.crc32, f"chunk {entry.start}")
        for name, (offset, length, crc) in self._aux_index.items():
            self._read_block(offset, length, crc, f"auxiliary array {name!r}")

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
