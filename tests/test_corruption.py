"""Corruption matrix: damage to a .ctpz file is always detected, never decoded into wrong
data and never a traceback.

For a small file of every registered codec (plus version-1 and version-2 golden files,
written before chunk digests): every single-bit flip in the fixed head, header, header
CRC, index and footer, and a sample of bit flips in every chunk and auxiliary payload
(``CTPRESS_FULL=1``: every bit of every payload), must make ``verify(decode=True)`` and
``ctpress.decompress`` raise a :class:`~ctpress.errors.CtpressError` on one line; a flip
in a chunk names that chunk.  Truncation at every chunk boundary names the chunk.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import ctpress
from ctpress.cli import main
from ctpress.codecs import list_codecs
from ctpress.container import CtpzFile
from ctpress.errors import CtpressError

DATA = Path(__file__).parent / "data"
FULL = os.environ.get("CTPRESS_FULL") == "1"
#: Bits flipped per payload unless CTPRESS_FULL=1.
SAMPLED_BITS = 8
#: Settings that keep the learned codecs' encoders fast on the tiny scan.
FAST_SETTINGS = {"siren": {"steps": 30, "width": 8}}
OLD_FILES = {
    "v1_zstd_lossless": DATA / "v1_zstd_lossless.ctpz",
    "v1_sz3_max_error": DATA / "v1_sz3_max_error.ctpz",
    "v2_golden_jpegls_max_error": DATA / "golden" / "v2_jpegls_max_error.ctpz",
    "v2_golden_siren_psnr": DATA / "golden" / "v2_siren_psnr.ctpz",
}
NAMES = [cls.codec_id for cls in list_codecs()] + sorted(OLD_FILES)


def _tiny_scan() -> ctpress.Scan:
    rng = np.random.default_rng(0)
    x = (rng.integers(1000, 1400, (6, 16, 64)) + np.arange(64) * 50).astype(np.uint16)
    geometry = ctpress.Geometry.circular("cone", 6, 500.0, 1000.0)
    dark = np.full((1, 16, 64), 100, np.uint16)
    return ctpress.Scan(x, geometry, {"units": "counts"}, {"dark": dark})


@functools.cache
def _file(name: str) -> bytes:
    """A small file of 3 chunks written by this ctpress with codec ``name``, or an old file."""
    if name in OLD_FILES:
        return OLD_FILES[name].read_bytes()
    options = FAST_SETTINGS.get(name, {})
    return ctpress.compress(_tiny_scan(), codec=name, chunk_views=2, max_error=3.0, **options)


def _flip(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def _detected(data: bytes, decompress: bool = True) -> str:
    """The one-line error that ``verify(decode=True)`` raises on ``data``; with
    ``decompress``, decompressing it must raise too (any other exception fails the test)."""
    with pytest.raises(CtpressError) as info:
        with CtpzFile(data) as f:
            f.verify(decode=True)
    if decompress:
        with pytest.raises(CtpressError):
            ctpress.decompress(data)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _structure(data: bytes) -> dict[str, range]:
    """Byte ranges of everything but the payloads."""
    header_len = struct.unpack_from("<I", data, 12)[0]
    index_len = struct.unpack_from("<Q", data, len(data) - 20)[0]
    index_start = len(data) - 20 - index_len
    return {
        "fixed head": range(0, 16),
        "header": range(16, 16 + header_len),
        "header CRC": range(16 + header_len, 20 + header_len),
        "index": range(index_start, len(data) - 20),
        "footer": range(len(data) - 20, len(data)),
    }


def _payloads(data: bytes) -> list[tuple[str, range]]:
    """(what an error about it names, byte range) of every chunk and auxiliary payload."""
    with CtpzFile(data) as f:
        blocks = [
            (f"chunk {k} (views {e.start}:{e.stop})", range(e.offset, e.offset + e.length))
            for k, e in enumerate(f.chunks)
        ]
        blocks += [
            (f"auxiliary array {name!r}", range(offset, offset + length))
            for name, (offset, length, _) in f._aux_index.items()
        ]
    return blocks


@pytest.mark.parametrize("name", NAMES)
def test_the_undamaged_file_verifies(name) -> None:
    with CtpzFile(_file(name)) as f:
        summary = f.verify(decode=True)
        assert len(f.chunks) >= 2
    assert summary.startswith(f"{len(f.chunks)} chunks")
    assert ("digests verified" in summary) == (name not in OLD_FILES)


@pytest.mark.parametrize("name", NAMES)
def test_every_bit_flip_outside_the_payloads_is_detected(name) -> None:
    data = _file(name)
    for where, span in _structure(data).items():
        for bit in range(8 * span.start, 8 * span.stop):
            try:
                _detected(_flip(data, bit))
            except BaseException as exc:
                exc.add_note(f"{name}: bit {bit % 8} of byte {bit // 8} ({where})")
                raise


@pytest.mark.parametrize("name", NAMES)
def test_bit_flips_in_payloads_are_detected_and_name_the_block(name) -> None:
    data = _file(name)
    rng = np.random.default_rng(sum(name.encode()))
    for what, span in _payloads(data):
        bits = range(8 * span.start, 8 * span.stop)
        sample = set(rng.choice(bits, SAMPLED_BITS, replace=False).tolist())
        for bit in bits if FULL else sorted(sample):
            # decompressing decodes the chunks before the damaged one: sampled bits only
            message = _detected(_flip(data, bit), decompress=bit in sample)
            assert f"{what}: checksum mismatch (the file is damaged)" in message, (bit, message)


@pytest.mark.parametrize("name", NAMES)
def test_truncation_at_every_chunk_boundary_names_the_chunk(name) -> None:
    data = _file(name)
    with CtpzFile(data) as f:
        chunks = list(f.chunks)
    for k, entry in enumerate(chunks):
        label = f"chunk {k} (views {entry.start}:{entry.stop})"
        end = entry.offset + entry.length
        after = "the last chunk, " if k == len(chunks) - 1 else ""
        assert f"truncated after {after}{label}" in _detected(data[:end])
        middle = entry.offset + entry.length // 2
        assert f"truncated in {label}; the index is missing" in _detected(data[:middle])


def test_cli_verify_exit_codes(tmp_path, capsys) -> None:
    good = tmp_path / "good.ctpz"
    good.write_bytes(_file("zstd"))
    assert main(["verify", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: OK (3 chunks, checksums verified)\n"
    assert main(["verify", str(good), "--decode"]) == 0
    assert capsys.readouterr().out == f"{good}: OK (3 chunks, digests verified)\n"
    old = tmp_path / "old.ctpz"
    old.write_bytes(_file("v1_zstd_lossless"))
    assert main(["verify", str(old), "--decode"]) == 0
    assert "no digests" in capsys.readouterr().out
    with CtpzFile(good) as f:
        entry = f.chunks[1]
    bad = tmp_path / "bad.ctpz"
    bad.write_bytes(_flip(good.read_bytes(), 8 * (entry.offset + entry.length // 2)))
    before = sorted(tmp_path.iterdir())
    for extra in ([], ["--decode"]):
        assert main(["verify", str(bad), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            f"ctpress: error: {bad}: chunk 1 (views 2:4): checksum mismatch (the file is damaged)\n"
        )
    truncated = tmp_path / "truncated.ctpz"
    truncated.write_bytes(good.read_bytes()[: entry.offset + 5])
    assert main(["verify", str(truncated)]) == 2
    assert "truncated in chunk 1 (views 2:4)" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == sorted([*before, truncated])  # verify wrote nothing
