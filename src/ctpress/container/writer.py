"""Writing ``.ctpz`` files: the header of a scan, chunks encoded in parallel with their
context, and the container's own bytes budgeted out of a whole-file bpp target."""

from __future__ import annotations

import functools
import io
import math
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

import numpy as np

from .._progress import progress_bar
from .._version import __version__
from ..codecs import Codec, get_codec
from ..codecs.context import ChunkContext
from ..codecs.framing import chunk_header_bound
from ..errors import InputError, RateControlError
from ..rate import RateControl
from ..scan import Scan
from . import format as fmt
from .format import (
    _FOOT,
    _HEAD,
    DEFAULT_CHUNK_BYTES,
    END_MAGIC,
    FLAG_CHUNK_DIGESTS,
    FLAG_HEADER_ZSTD,
    FORMAT_VERSION,
    MAGIC,
    ChunkEntry,
    _crc,
    chunk_digest,
    default_jobs,
    header_bytes,
    index_bytes,
)


def default_chunk_views(
    shape: tuple[int, int, int], itemsize: int, chunk_bytes: int | None = None
) -> int:
    """Views per chunk: chunks of at most about ``chunk_bytes`` (default
    :data:`DEFAULT_CHUNK_BYTES`) of input, about equally long (a small trailing chunk would
    be the hardest to fit to a bpp target, which every chunk must meet on its own)."""
    per_view = shape[1] * shape[2] * itemsize
    n_chunks = max(1, -(-shape[0] * per_view // (chunk_bytes or DEFAULT_CHUNK_BYTES)))
    return int(max(1, -(-shape[0] // n_chunks)))


def chunk_views_for(scan: Scan, codec: Codec, chunk_views: int | None = None) -> int:
    """Views per chunk: ``chunk_views`` if given, else the codec's
    :attr:`~ctpress.codecs.Codec.preferred_chunk_views` (a GOP, a segment), else chunks of
    about its :attr:`~ctpress.codecs.Codec.preferred_chunk_bytes` of input."""
    if chunk_views is not None:
        if chunk_views < 1:
            raise InputError(f"chunk_views must be >= 1, got {chunk_views}")
        return chunk_views
    if codec.preferred_chunk_views is not None:
        return max(1, min(codec.preferred_chunk_views, scan.shape[0]))
    return default_chunk_views(scan.shape, scan.dtype.itemsize, codec.preferred_chunk_bytes)


def build_header(scan: Scan, codec: Codec, chunk_views: int, rate: RateControl) -> dict[str, Any]:
    """The JSON header of a ``.ctpz`` file for ``scan`` coded with ``codec`` (whose config
    holds the chunks' stream target) under the file's rate control ``rate``."""
    return {
        "format": "ctpz",
        "format_version": FORMAT_VERSION,
        "library": f"ctpress {__version__}",
        "codec": codec.get_config(),
        "rate_control": rate.to_dict(),
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


def chunk_contexts(scan: Scan, chunk_views: int) -> list[ChunkContext]:
    """The :class:`~ctpress.codecs.context.ChunkContext` of every chunk of ``scan``: its view
    range and angles, the geometry, the scan's value range (from a block-wise first pass,
    :meth:`~ctpress.scan.Scan.value_range`) and metadata."""
    n_views = scan.shape[0]
    lo, hi = scan.value_range()
    geometry = scan.geometry
    angles = geometry.angles() if geometry is not None and geometry.n_views else None
    return [
        ChunkContext(
            start=start,
            stop=min(start + chunk_views, n_views),
            scan_shape=scan.shape,
            angles=None if angles is None else angles[start : start + chunk_views],
            geometry=geometry,
            data_range=hi - lo or 1.0,
            value_range=(lo, hi),
            metadata=scan.metadata,
        )
        for start in range(0, n_views, chunk_views)
    ]


#: How a file's chunks are encoded: given the codec and every chunk's context, the
#: (payload, digest of what it decodes to) of each chunk, in order (see :func:`write_ctpz`).
ChunkEncoder = Callable[[Codec, list[ChunkContext]], Iterable[tuple[bytes, bytes]]]


def encode_chunk(scan: Scan, codec: Codec, context: ChunkContext) -> tuple[bytes, bytes]:
    """The payload of one chunk of ``scan`` and the digest of what it decodes to."""
    chunk = scan.projections[context.start : context.stop]
    payload, decoded = codec.compress(chunk, context)
    return payload, chunk_digest(decoded)


def write_ctpz(
    out: BinaryIO,
    scan: Scan,
    codec: Codec,
    *,
    chunk_views: int | None = None,
    jobs: int | None = None,
    progress: bool = False,
    encode_chunks: ChunkEncoder | None = None,
) -> int:
    """Encode ``scan`` with ``codec`` into the open binary stream ``out``.

    ``codec.rate`` is the file's rate control, stored in the header; a bpp target is for
    the whole file, so the chunks aim at it less the container's own bytes
    (:func:`budget_for_overhead`).  Chunks of ``chunk_views`` views (default:
    :func:`chunk_views_for`) are encoded independently with their
    :class:`~ctpress.codecs.context.ChunkContext` (``jobs`` threads, default every core,
    one where the codec's encoder does not gain from them,
    :attr:`~ctpress.codecs.Codec.parallel_encode`; the bytes do not depend on ``jobs``) and
    written in order, each with the digest of
    what it decodes to (the input itself when lossless; else the encoder decodes its own
    payload).  ``encode_chunks`` encodes them elsewhere instead (worker processes of a
    cluster, say: :func:`ctpress.compress` with an ``executor``); the bytes are the same.
    Returns the bytes written.
    """
    n_views = scan.shape[0]
    chunk_views = chunk_views_for(scan, codec, chunk_views)
    jobs = default_jobs(jobs)
    rate = codec.rate
    stream_codec = budget_for_overhead(scan, codec, chunk_views) if rate.mode == "bpp" else codec
    header = header_bytes(build_header(scan, stream_codec, chunk_views, rate))
    head = (
        _HEAD.pack(MAGIC, FORMAT_VERSION, FLAG_HEADER_ZSTD | FLAG_CHUNK_DIGESTS, len(header))
        + header
        + struct.pack("<I", _crc(header))
    )
    out.write(head)
    pos = len(head)
    contexts = chunk_contexts(scan, chunk_views)
    chunks: list[ChunkEntry] = []
    aux: dict[str, tuple[int, int]] = {}

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            if encode_chunks is not None:
                encoded = iter(encode_chunks(stream_codec, contexts))
            else:
                encode = functools.partial(encode_chunk, scan, stream_codec)
                threads = jobs > 1 and codec.parallel_encode
                encoded = pool.map(encode, contexts) if threads else map(encode, contexts)
            with progress_bar(n_views, codec.codec_id, "view", progress) as bar:
                for context, (payload, digest) in zip(contexts, encoded, strict=True):
                    start, stop = context.start, min(context.start + chunk_views, n_views)
                    out.write(payload)
                    chunks.append(ChunkEntry(start, stop, pos, len(payload), _crc(payload), digest))
                    pos += len(payload)
                    bar.update(stop - start)
    except RateControlError as exc:
        if rate.mode != "bpp":
            raise
        assert rate.value is not None and stream_codec.value is not None
        raise RateControlError(
            f"{exc} (asked: {rate.value:g} bits/value for the whole file, of which "
            f"{stream_codec.value:.3g} for the coded data after the container's own "
            f"{rate.value - stream_codec.value:.2g})"
        ) from None
    for name, array in scan.aux.items():
        payload = encode_aux(array)
        out.write(payload)
        aux[name] = (len(payload), _crc(payload))
        pos += len(payload)
    index = index_bytes(chunks, aux)
    out.write(index + _FOOT.pack(len(index), _crc(index), END_MAGIC))
    return pos + len(index) + _FOOT.size


def container_overhead(
    scan: Scan, codec: Codec, chunk_views: int, rate: RateControl, chunk_bytes: int
) -> int:
    """Bytes a :func:`write_ctpz` file spends besides the chunks' coded streams: fixed
    head and footer, compressed header (``codec``'s config and the file's ``rate``),
    index (with the chunk digests), per-chunk framing (an upper bound) and the auxiliary
    payloads, for chunks of about ``chunk_bytes`` stream bytes each."""
    header = header_bytes(build_header(scan, codec, chunk_views, rate))
    n_views = scan.shape[0]
    chunks = []
    for start in range(0, n_views, chunk_views):
        stop = min(start + chunk_views, n_views)
        shape = (stop - start, *scan.shape[1:])
        length = chunk_header_bound(shape, scan.dtype, chunk_bytes) + chunk_bytes
        chunks.append(ChunkEntry(start, stop, 0, length, 0, bytes(fmt.DIGEST_SIZE)))
    aux_payloads = {name: encode_aux(a) for name, a in scan.aux.items()}
    index = index_bytes(chunks, {name: (len(p), 0) for name, p in aux_payloads.items()})
    framing = sum(entry.length - chunk_bytes for entry in chunks)
    aux_bytes = sum(len(p) for p in aux_payloads.values())
    return _HEAD.size + len(header) + 4 + framing + aux_bytes + len(index) + _FOOT.size


def budget_for_overhead(scan: Scan, codec: Codec, chunk_views: int) -> Codec:
    """``codec`` with its whole-file bpp target lowered by the container's own bytes
    (compressed header, index, chunk framing, footer, aux payloads): the chunks' stream
    target, so that the *file* lands on the requested bits per value.  The overhead is
    measured on the real header and index."""
    rate = codec.rate
    assert rate.mode == "bpp" and rate.value is not None
    n_values = math.prod(scan.shape)
    n_chunks = -(-scan.shape[0] // chunk_views)
    # stream bytes per chunk, for the size of the length fields (an upper bound)
    chunk_bytes = math.ceil(rate.value * n_values / 8 / n_chunks)
    overhead = container_overhead(scan, codec, chunk_views, rate, chunk_bytes)
    budgeted = codec
    for _ in range(3):  # the header stores the lowered target: settle its length
        chunk_bpp = rate.value - 8.0 * overhead / n_values
        if chunk_bpp <= 0:
            raise InputError(
                f"{rate.value:g} bits/value is below the container's own overhead "
                f"({8.0 * overhead / n_values:.3g} bits/value, {overhead} bytes, for this "
                "scan); ask for more"
            )
        budgeted = codec.with_rate(rate.with_value(chunk_bpp))
        actual = container_overhead(scan, budgeted, chunk_views, rate, chunk_bytes)
        if actual <= overhead:
            break
        overhead = actual
    return budgeted


def encode_ctpz(scan: Scan, codec: Codec, **kwargs: Any) -> bytes:
    """:func:`write_ctpz` into memory; returns the file's bytes."""
    buffer = io.BytesIO()
    write_ctpz(buffer, scan, codec, **kwargs)
    return buffer.getvalue()
