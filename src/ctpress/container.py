"""The ``.ctpz`` container: one self-describing, checksummed, chunked file per scan.

Layout (all integers little-endian; see ``docs/format.md``)::

    magic "CTPZ\\r\\n\\x1a\\n" (8) | format version u16 | flags u16 | header length u32
    header: UTF-8 JSON (codec config, shape, dtype, geometry, metadata, rate control...)
    header CRC-32 u32
    chunk payloads, in view order (each one codec.encode() output)
    auxiliary payloads (dark/flat frames, lossless zstd)
    index: UTF-8 JSON (offset, length, CRC-32 of every chunk and aux block)
    index length u64 | index CRC-32 u32 | end magic "CTPZEND\\n" (8)

The header is written first and the index last, so a scan can be encoded as a stream
of chunks; a reader seeks to the footer, reads the index and decodes only the chunks
that cover the views it wants.
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
from tqdm.auto import tqdm

from ._version import __version__
from .codecs import Codec, get_codec
from .codecs.generic import Zstd
from .errors import CorruptFileError, FormatError, InputError
from .scan import Geometry, Scan

MAGIC = b"CTPZ\r\n\x1a\n"
END_MAGIC = b"CTPZEND\n"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sHHI")
_FOOT = struct.Struct("<QI8s")
#: Default raw size of one chunk along the view axis (bytes of input data).
DEFAULT_CHUNK_BYTES = 1 << 20
#: Refuse headers/indexes larger than this (a damaged length field must not allocate GBs).
_MAX_JSON_BYTES = 256 << 20


def default_chunk_views(shape: tuple[int, int, int], itemsize: int) -> int:
    """Views per chunk so that a chunk holds about :data:`DEFAULT_CHUNK_BYTES` of input."""
    per_view = shape[1] * shape[2] * itemsize
    return int(max(1, min(shape[0], round(DEFAULT_CHUNK_BYTES / per_view))))


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class ChunkEntry:
    """Where one encoded chunk lives: views ``start:stop`` at ``offset`` (``length`` bytes)."""

    start: int
    stop: int
    offset: int
    length: int
    crc32: int


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
    chunk_views = chunk_views or default_chunk_views(scan.shape, scan.dtype.itemsize)
    if chunk_views < 1:
        raise InputError(f"chunk_views must be >= 1, got {chunk_views}")
    rate = rate or {"mode": codec.mode, "value": codec.value}
    header = json.dumps(
        build_header(scan, codec, chunk_views, rate), separators=(",", ":")
    ).encode()
    head = (
        _HEAD.pack(MAGIC, FORMAT_VERSION, 0, len(header)) + header + struct.pack("<I", _crc(header))
    )
    out.write(head)
    pos = len(head)
    starts = list(range(0, n_views, chunk_views))
    index: dict[str, Any] = {"chunks": [], "aux": {}}

    def encode(start: int) -> bytes:
        return codec.encode(scan.projections[start : start + chunk_views])

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        payloads = pool.map(encode, starts) if jobs > 1 else map(encode, starts)
        with tqdm(total=n_views, unit="view", desc=codec.codec_id, disable=not progress) as bar:
            for start, payload in zip(starts, payloads, strict=True):
                stop = min(start + chunk_views, n_views)
                out.write(payload)
                index["chunks"].append([start, stop, pos, len(payload), _crc(payload)])
                pos += len(payload)
                bar.update(stop - start)
    for name, array in scan.aux.items():
        payload = encode_aux(array)
        out.write(payload)
        index["aux"][name] = [pos, len(payload), _crc(payload)]
        pos += len(payload)
    index_bytes = json.dumps(index, separators=(",", ":")).encode()
    out.write(index_bytes + _FOOT.pack(len(index_bytes), _crc(index_bytes), END_MAGIC))
    return pos + len(index_bytes) + _FOOT.size


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
        _, version, _flags, header_len = _HEAD.unpack(head)
        if version > FORMAT_VERSION:
            raise FormatError(
                f"{self.name}: written in .ctpz format version {version}, but this ctpress "
                f"({__version__}) reads up to version {FORMAT_VERSION}; upgrade ctpress"
            )
        if header_len > min(_MAX_JSON_BYTES, self.file_size):
            raise self._fail("header length field is damaged or the file is truncated")
        header = fh.read(header_len)
        crc_bytes = fh.read(4)
        if len(header) != header_len or len(crc_bytes) != 4:
            raise self._fail("file is truncated inside the header")
        if struct.unpack("<I", crc_bytes)[0] != _crc(header):
            raise self._fail("header checksum mismatch (the file is damaged)")
        self.header: dict[str, Any] = json.loads(header)
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
        index_bytes = fh.read(index_len)
        if _crc(index_bytes) != index_crc:
            raise self._fail("index checksum mismatch (the file is damaged)")
        index = json.loads(index_bytes)
        self.chunks = [ChunkEntry(*entry) for entry in index["chunks"]]
        self._aux_index: dict[str, list[int]] = index["aux"]
        for entry in self.chunks:
            if entry.offset < self._data_start or entry.offset + entry.length > index_start:
                raise self._fail("chunk index points outside the data section")
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

    def _decode_chunk(self, entry: ChunkEntry) -> np.ndarray:
        what = f"chunk of views {entry.start}:{entry.stop}"
        data = self._read_block(entry.offset, entry.length, entry.crc32, what)
        try:
            array = self.codec.decode(data)
        except CorruptFileError as exc:
            raise self._fail(f"{what}: {exc}") from None
        expected = (entry.stop - entry.start, *self.shape[1:])
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
        """Decode views ``start:stop`` only; shape (stop-start, rows, cols)."""
        n = self.shape[0]
        stop = n if stop is None else stop
        if not (0 <= start < stop <= n):
            raise InputError(f"view range {start}:{stop} is outside 0:{n}")
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        for first, array in self.iter_chunks(start, stop):
            lo, hi = max(start, first), min(stop, first + array.shape[0])
            out[lo - start : hi - start] = array[lo - first : hi - first]
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
