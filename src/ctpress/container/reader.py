"""Reading ``.ctpz`` files: :class:`CtpzFile`, with every size checked at open and lazy,
parallel decoding of view ranges."""

from __future__ import annotations

import io
import math
import os
import reprlib
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
import zstandard

from .._version import __version__
from ..codecs import get_codec
from ..codecs.framing import (
    _CHUNK_MAGIC,
    _CHUNK_MAGIC_2,
    parse_chunk_header,
    read_chunk_header,
)
from ..errors import CorruptFileError, FormatError, InputError
from ..io import LazyViews
from ..rate import RateControl
from ..scan import Geometry, Scan
from .format import (
    _AUX_DTYPES,
    _CHUNK_HEADER_READ,
    _FOOT,
    _HEAD,
    _KNOWN_FLAGS,
    _MAX_JSON_BYTES,
    DEFAULT_MAX_OUTPUT_BYTES,
    END_MAGIC,
    FLAG_CHUNK_DIGESTS,
    FORMAT_VERSION,
    MAGIC,
    ChunkEntry,
    _check_output,
    _crc,
    _is_int,
    _parse_index_v1,
    chunk_digest,
    default_jobs,
    parse_header,
    parse_index,
)


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
        jobs: int | None = None,
    ) -> None:
        #: Threads decoding chunks in parallel (default: every core).
        self.jobs = default_jobs(jobs)
        self._io_lock = threading.Lock()
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
    def rate_control(self) -> RateControl:
        """The rate control the file was written with (the header's ``rate_control``)."""
        return RateControl.from_dict(self.header["rate_control"])

    @property
    def metadata(self) -> dict[str, Any]:
        """Free metadata stored with the projections."""
        return dict(self.header.get("metadata", {}))

    def __len__(self) -> int:
        return self.shape[0]

    def stored_views(self) -> np.ndarray:
        """Mask (n_views,) of the views whose values the file stores; the others are
        synthesised on decoding (``sparse-unet``).  All True for every other codec."""
        return np.concatenate([self.codec.stored_views(e.stop - e.start) for e in self.chunks])

    def read_stored_views(self) -> tuple[np.ndarray, np.ndarray]:
        """(:meth:`stored_views`, the stored views decoded (n_stored, rows, cols)), without
        synthesising the others."""
        mask = self.stored_views()
        self._check_output(self._output_bytes(int(mask.sum())), "reading the stored views")
        parts = []
        for entry in self.chunks:
            data = self._chunk_payload(entry)
            try:
                parts.append(self.codec.decode_stored(data))
            except CorruptFileError as exc:
                raise self._fail(f"{self._entry_label(entry)}: {exc}") from None
        return mask, np.concatenate(parts)

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
        with self._io_lock:  # decoding threads share the file handle
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

    def read_views(
        self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Decode views ``start:stop`` only; shape (stop-start, rows, cols).

        Chunks inside the range are decoded whole; a chunk the range covers only in part
        goes through the codec's ``decode_views`` (which may evaluate just those views).
        ``out`` (e.g. a memory-mapped output file) receives the views chunk by chunk, so
        memory holds a few chunks, not the scan.
        """
        start, stop = self._view_range(start, stop)
        self._check_output(self._output_bytes(stop - start), f"reading views {start}:{stop}")
        shape = (stop - start, *self.shape[1:])
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif out.shape != shape or out.dtype != self.dtype:
            raise InputError(f"out must be {shape} {self.dtype}, got {out.shape} {out.dtype}")
        target = out

        def decode(entry: ChunkEntry) -> None:
            lo, hi = max(start, entry.start), min(stop, entry.stop)
            if lo == entry.start and hi == entry.stop:
                array = self._decode_chunk(entry)
            else:
                array = self._decode_chunk(entry, lo - entry.start, hi - entry.start)
            target[lo - start : hi - start] = array

        self._each_chunk(decode, [e for e in self.chunks if e.stop > start and e.start < stop])
        return out

    def _each_chunk(self, work: Callable[[ChunkEntry], None], entries: list[ChunkEntry]) -> None:
        """``work(entry)`` for each entry, in :attr:`jobs` threads (one where the codec's
        decoder does not gain from them, :attr:`~ctpress.codecs.Codec.parallel_decode`);
        the first error in chunk order is raised."""
        if self.jobs == 1 or len(entries) <= 1 or not self.codec.parallel_decode:
            for entry in entries:
                work(entry)
            return
        with ThreadPoolExecutor(max_workers=min(self.jobs, len(entries))) as pool:
            for _ in pool.map(work, entries):
                pass

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise InputError("index a .ctpz file with a contiguous view slice, e.g. f[10:20]")
        start, stop, _ = key.indices(self.shape[0])
        return self.read_views(start, stop)

    def read_aux(self) -> dict[str, np.ndarray]:
        """Auxiliary arrays (e.g. dark/flat frames), decoded losslessly."""
        self._check_output(self._aux_bytes(), "reading the auxiliary arrays")
        return {name: self._decode_aux(name) for name in self._aux_index}

    def read_scan(
        self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> Scan:
        """Decode views ``start:stop`` (default all) with geometry, metadata and aux
        (``out``: as for :meth:`read_views`)."""
        start, stop = self._view_range(start, stop)
        self._check_output(
            self._output_bytes(stop - start) + self._aux_bytes(),
            f"reading views {start}:{stop} and the auxiliary arrays",
        )
        return self._scan_of(self.read_views(start, stop, out), start, stop)

    def _scan_of(self, projections: np.ndarray | LazyViews, start: int, stop: int) -> Scan:
        """A Scan of views ``start:stop`` with these projections: the geometry of those
        views, the metadata and the aux arrays."""
        geometry = self.geometry
        if geometry is not None and geometry.n_views:
            geometry = geometry.select_views(start, stop)
        scan = Scan(projections, geometry, self.metadata, self.read_aux())
        scan.original_ndim = int(self.header.get("original_ndim", 3))
        return scan

    def lazy_scan(self, start: int = 0, stop: int | None = None) -> Scan:
        """Views ``start:stop`` as a Scan whose projections decode on demand
        (:class:`~ctpress.io.LazyViews`: each slice decodes only the chunks it covers),
        with geometry, metadata and aux; valid while the file is open.  Writing it to a
        format whose writer works in blocks of views (Zarr, HDF5/NeXus, DICOM-CT-PD) holds
        a few chunks in memory, not the scan."""
        start, stop = self._view_range(start, stop)
        self._check_output(self._aux_bytes(), "reading the auxiliary arrays")

        def read(first: int, last: int) -> np.ndarray:
            return self.read_views(start + first, start + last)

        views = LazyViews(read, (stop - start, *self.shape[1:]), self.dtype, self.name)
        return self._scan_of(views, start, stop)

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

        def check(entry: ChunkEntry) -> None:
            array = self._decode_chunk(entry)
            if entry.digest is not None and chunk_digest(array) != entry.digest:
                raise self._fail(
                    f"{self._entry_label(entry)}: the decoded data differ from the digest "
                    "stored when it was written (the file is damaged, or this machine "
                    "decodes differently)"
                )

        self._each_chunk(check, self.chunks)
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
