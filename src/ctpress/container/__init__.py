"""The ``.ctpz`` container: one self-describing, checksummed, chunked file per scan.

:mod:`.format` holds the layout (constants, header and index (de)serialisation and
validation; see ``docs/format.md``), :mod:`.writer` encodes a scan (chunks in parallel,
each with its context; the container's own bytes budgeted out of a bpp target) and
:mod:`.reader` reads one (:class:`CtpzFile`).

The header is written first and the index last, so a scan can be encoded as a stream
of chunks; a reader seeks to the footer, reads the index and decodes only the chunks
that cover the views it wants.  Version 1 files are still read.
"""

from .format import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DIGEST_SIZE,
    END_MAGIC,
    FLAG_CHUNK_DIGESTS,
    FLAG_HEADER_ZSTD,
    FORMAT_VERSION,
    HEADER_DICTIONARY,
    MAGIC,
    ChunkEntry,
    chunk_digest,
    default_jobs,
    header_bytes,
    index_bytes,
    parse_header,
    parse_index,
    validate_header,
)
from .reader import CtpzFile
from .writer import (
    ChunkEncoder,
    budget_for_overhead,
    build_header,
    chunk_contexts,
    chunk_views_for,
    container_overhead,
    default_chunk_views,
    encode_aux,
    encode_chunk,
    encode_ctpz,
    write_ctpz,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DIGEST_SIZE",
    "END_MAGIC",
    "FLAG_CHUNK_DIGESTS",
    "FLAG_HEADER_ZSTD",
    "FORMAT_VERSION",
    "HEADER_DICTIONARY",
    "MAGIC",
    "ChunkEncoder",
    "ChunkEntry",
    "CtpzFile",
    "budget_for_overhead",
    "build_header",
    "chunk_contexts",
    "chunk_digest",
    "chunk_views_for",
    "container_overhead",
    "default_chunk_views",
    "default_jobs",
    "encode_aux",
    "encode_chunk",
    "encode_ctpz",
    "header_bytes",
    "index_bytes",
    "parse_header",
    "parse_index",
    "validate_header",
    "write_ctpz",
]
