#!/usr/bin/env python
"""Atheris (libFuzzer) harness of the ctpress readers (issue 12); see ``fuzz/README.md``.

Container mode (default): an input is a whole ``.ctpz`` file, opened from bytes, verified
and read (every view, a partial view range, the auxiliary arrays).  Codec mode
(``--codec=ID``): an input is one chunk payload, decoded by that codec.  With
``--recompute-crc`` the checksums are recomputed after mutation (the header CRC, the
chunk CRCs in the index, the index CRC, and each chunk header's stream length and CRC),
so the parsers behind the checksums see the damage.

Only :class:`~ctpress.errors.CtpressError` may escape a read; any other exception is a
finding (libFuzzer stops and writes the input to ``crash-*``), as are crashes, inputs
over ``-timeout`` seconds and memory over ``-rss_limit_mb``.  ``--strict`` also reports
a CorruptFileError hiding a TypeError, AttributeError, ZeroDivisionError,
RecursionError or MemoryError raised in ctpress code.  An empty or missing corpus
directory is filled with seeds from the golden files first.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import sys
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path

import atheris
import numpy
import torch  # noqa: F401  (imported before instrumentation: only ctpress is instrumented)

with atheris.instrument_imports(include=["ctpress"]):
    import ctpress
    from ctpress._compact import get_varint, put_varint
    from ctpress.codecs import Codec
    from ctpress.codecs.framing import _CHUNK_MAGIC_2, _CPC2_DTYPES, _CPC2_EXTRA, _CPC2_FIXED
    from ctpress.errors import CtpressError

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SEED_FILES = sorted(DATA.glob("golden/*.ctpz")) + sorted(DATA.glob("v1_*.ctpz"))
#: Most memory one read may allocate (``max_output_bytes``): crafted headers may declare
#: any scan size; the reader must refuse beyond this with a CtpressError.
MAX_OUTPUT_BYTES = 256 << 20
FINDINGS = Path(__file__).resolve().parent / "findings"
#: libFuzzer options added when not given (findings go to fuzz/findings/).
DEFAULT_OPTIONS = ("-rss_limit_mb=4096", "-timeout=60", f"-artifact_prefix={FINDINGS}/")
_HEAD = struct.Struct("<8sHHI")
_FOOT = struct.Struct("<QI8s")
_FLAG_CHUNK_DIGESTS = 0x0002
_DIGEST_SIZE = 16
_HIDDEN_BUGS = (TypeError, AttributeError, ZeroDivisionError, RecursionError, MemoryError)


# ----------------------------------------------------------------- checksums
def fix_chunk(payload: bytearray) -> None:
    """Recompute, in place, the stream length and CRC-32 of a CPC2 chunk header (the
    length only where its varint keeps its width)."""
    head = bytes(payload[:65536])
    try:
        if head[:4] != _CHUNK_MAGIC_2:
            return
        dtype_code, ndim = head[4], head[8]
        pos = _CPC2_FIXED.size
        for _ in range(ndim):
            _, pos = get_varint(head, pos)
        pos += 2 * numpy.dtype(_CPC2_DTYPES[dtype_code]).itemsize
        n_pos = pos
        _, pos = get_varint(head, pos)
        crc_pos = pos
        flags = head[7]
        pos += 4 + 8 * bin(flags & 7).count("1")
        if flags & _CPC2_EXTRA:
            size, pos = get_varint(head, pos)
            pos += size
    except (IndexError, ValueError):
        return
    if crc_pos + 4 > len(payload) or pos > len(payload):
        return
    length = put_varint(len(payload) - pos)
    if len(length) == crc_pos - n_pos:
        payload[n_pos:crc_pos] = length
    struct.pack_into("<I", payload, crc_pos, zlib.crc32(payload[pos:]))


def fix_file(data: bytes) -> bytes:
    """``data`` with its checksums recomputed where its layout can be followed."""
    out = bytearray(data)
    if len(out) < _HEAD.size + 4 + _FOOT.size:
        return data
    _, version, flags, header_len = _HEAD.unpack_from(out)
    data_start = _HEAD.size + header_len + 4
    if data_start + _FOOT.size > len(out):
        return data
    struct.pack_into("<I", out, data_start - 4, zlib.crc32(out[_HEAD.size : data_start - 4]))
    index_len = _FOOT.unpack_from(out, len(out) - _FOOT.size)[0]
    index_start = len(out) - _FOOT.size - index_len
    if not data_start <= index_start:
        return bytes(out)
    index = bytes(out[index_start : index_start + index_len])
    if version >= 2:
        _fix_blocks(out, _blocks_v2(index, flags), data_start, index_start)
        index = bytes(out[index_start : index_start + index_len])
    else:
        index = _fixed_index_v1(out, index, index_start)
        out[index_start:] = index + bytes(_FOOT.size)
        index_len = len(index)
    footer = _FOOT.unpack_from(data, len(data) - _FOOT.size)
    out[-_FOOT.size :] = _FOOT.pack(index_len, zlib.crc32(index), footer[2])
    return bytes(out)


def _blocks_v2(index: bytes, flags: int) -> list[tuple[int, int]]:
    """(length, position of its CRC in the index) of every chunk and aux block that a
    (possibly damaged) version-2 index lists, as far as it parses."""
    blocks: list[tuple[int, int]] = []
    try:
        count, pos = get_varint(index, 0)
        for _ in range(count):
            _, pos = get_varint(index, pos)
            length, pos = get_varint(index, pos)
            blocks.append((length, pos))
            pos += 4 + (_DIGEST_SIZE if flags & _FLAG_CHUNK_DIGESTS else 0)
        count, pos = get_varint(index, pos)
        for _ in range(count):
            size, pos = get_varint(index, pos)
            length, pos = get_varint(index, pos + size)
            blocks.append((length, pos))
            pos += 4
    except (IndexError, ValueError):
        pass
    return [(length, at) for length, at in blocks if at + 4 <= len(index)]


def _fix_blocks(out: bytearray, blocks: list[tuple[int, int]], start: int, end: int) -> None:
    offset = start
    for length, crc_at in blocks:
        if offset + length > end:
            return
        payload = bytearray(out[offset : offset + length])
        fix_chunk(payload)
        out[offset : offset + length] = payload
        struct.pack_into("<I", out, end + crc_at, zlib.crc32(payload))
        offset += length


def _fixed_index_v1(out: bytearray, index: bytes, end: int) -> bytes:
    """A version-1 (JSON) index with the CRCs of the blocks it points to recomputed."""
    try:
        parsed = json.loads(index)
        changed = False
        for entry in [*parsed["chunks"], *parsed["aux"].values()]:
            offset, length = entry[-3], entry[-2]
            if 0 <= offset <= offset + length <= end:
                crc = zlib.crc32(out[offset : offset + length])
                changed, entry[-1] = changed or crc != entry[-1], crc
        return json.dumps(parsed).encode() if changed else index
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        return index


# --------------------------------------------------------------- the targets
def read_file(data: bytes) -> None:
    """Open, verify and read a .ctpz file given as bytes."""
    with ctpress.open(data, max_output_bytes=MAX_OUTPUT_BYTES) as f:
        f.verify()
        n = f.shape[0]
        f.read_views(0, n)
        if n > 1:
            f.read_views(n // 2, n)  # a partial chunk: decode_views
        f.read_aux()


def decode_chunk(codec: Codec, data: bytes) -> None:
    """Decode one chunk payload (and its first view alone, where the codec can)."""
    codec.decode(data)
    if type(codec).decode_views is not Codec.decode_views:
        codec.decode_views(data, 0, 1)


def fixed_chunk(data: bytes) -> bytes:
    payload = bytearray(data)
    fix_chunk(payload)
    return bytes(payload)


def check(target: Callable[[bytes], None], data: bytes, strict: bool) -> None:
    """Run ``target(data)``: a CtpressError is the expected outcome of a damaged input
    (unless ``strict`` and it hides a bug); anything else propagates (a finding)."""
    try:
        target(data)
    except CtpressError as exc:
        hidden = exc.__context__
        if strict and isinstance(hidden, _HIDDEN_BUGS) and _raised_in_ctpress(hidden):
            raise AssertionError(f"{type(exc).__name__} hides a bug: {hidden!r}") from hidden


def _raised_in_ctpress(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "ctpress" in Path(frames[-1].filename).parts


# ------------------------------------------------------------------- seeds
def golden_chunks(codec_id: str) -> tuple[Codec, dict[str, bytes]]:
    """The decoding codec (a golden file's config) and the chunk payloads of the golden
    files of ``codec_id``."""
    codec, chunks = None, {}
    for path in SEED_FILES:
        raw = path.read_bytes()
        with ctpress.open(path) as f:
            if f.codec.codec_id == codec_id:
                codec = codec or f.codec
                for i, e in enumerate(f.chunks):
                    chunks[f"{path.stem}-{i}.chunk"] = raw[e.offset : e.offset + e.length]
    if codec is None:
        raise SystemExit(f"no golden file of codec {codec_id!r}")
    return codec, chunks


def fill_corpus(directory: Path, seeds: dict[str, bytes]) -> None:
    """Write ``seeds`` to ``directory`` unless it holds inputs already."""
    if directory.is_dir() and any(directory.iterdir()):
        return
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (directory / name).write_bytes(data)


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name[=value]`` in ``args`` (removed from them), or the
    environment's ``CTPRESS_FUZZ_<NAME>``; "1" for a bare flag, None when absent."""
    for arg in list(args):
        key, sep, value = arg.partition("=")
        if key == f"--{name}":
            args.remove(arg)
            return value if sep else "1"
    return os.environ.get("CTPRESS_FUZZ_" + name.upper().replace("-", "_"))


def main() -> None:
    args = sys.argv[1:]
    codec_id = _option(args, "codec")
    recompute = _option(args, "recompute-crc") == "1"
    strict = _option(args, "strict") == "1"
    if codec_id is None:
        seeds = {path.name: path.read_bytes() for path in SEED_FILES}
        target, fix = read_file, (fix_file if recompute else bytes)
    else:
        codec, seeds = golden_chunks(codec_id)
        target, fix = functools.partial(decode_chunk, codec), (fixed_chunk if recompute else bytes)
    corpus = [a for a in args if not a.startswith("-")]
    if corpus:  # libFuzzer adds new inputs to the first corpus directory
        fill_corpus(Path(corpus[0]), seeds)
    args += [o for o in DEFAULT_OPTIONS if not any(a.startswith(o.split("=")[0]) for a in args)]
    FINDINGS.mkdir(exist_ok=True)

    def test_one_input(data: bytes) -> None:
        check(target, fix(data), strict)

    atheris.Setup([sys.argv[0], *args], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
