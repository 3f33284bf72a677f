"""Fuzzing the codec decoders (issue 12): crafted chunk payloads make ``codec.decode``
raise a :class:`~ctpress.errors.CtpressError` (or decode correctly), never anything else,
and never allocate more than a stated multiple of what their chunk header declares.

The payloads are the golden files' chunks (``tests/data/golden``), mutated behind their
checksum: the chunk header's stream length and CRC-32 are recomputed after the stream
or the header fields (shape, dtypes, stream length) are changed, so the parsers behind
the checksum see the damage.  Budgets are small and derandomised (CI is stable); the
atheris harness in ``fuzz/`` runs the same decoders for minutes.
"""

from __future__ import annotations

import functools
import math
import os
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctpress
from ctpress.codecs import Codec, _isolate, get_codec, list_codecs, siren
from ctpress.codecs.framing import chunk_header, parse_chunk_header
from ctpress.errors import CorruptFileError, CtpressError, InputError

DATA = Path(__file__).parent / "data"
CODECS = [cls.codec_id for cls in list_codecs()]
#: Codecs whose decoders work in float64 on the CPU (learned models, SIREN, the residual
#: layer): about 80 bytes per value.
FLOAT64_DECODERS = {"hyperprior", "vqvae", "siren", "dvc"}
#: Stated bounds of a decode's traced peak (NumPy and Python allocations in this process;
#: the worker process of the isolated decoders is bounded by RLIMIT_DATA instead), in
#: multiples of the declared bytes: values x the larger item size of the chunk's dtype
#: and work dtype ...
PEAK_FACTOR = 8
PEAK_FACTOR_FLOAT64 = 16
#: ... or this, whichever is larger.
PEAK_FLOOR = 64 << 20
#: Declared sizes of mutated headers stay below this multiple of the original (time).
_MAX_GROWTH = 4

#: ``CTPRESS_FULL=1`` (``make hardening``): 20 times the examples.
FULL = os.environ.get("CTPRESS_FULL") == "1"
FUZZ = settings(
    max_examples=2000 if FULL else 100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@functools.cache
def golden_chunks(codec_id: str) -> tuple[tuple[Codec, bytes], ...]:
    """(decoding codec, payload) of every chunk of the golden files of ``codec_id``."""
    out = []
    paths = sorted(DATA.glob(f"golden/v2_{codec_id}_*.ctpz")) + sorted(
        DATA.glob(f"v1_{codec_id}_*.ctpz")
    )
    for path in paths:
        raw = path.read_bytes()
        with ctpress.open(path) as f:
            out += [(f.codec, raw[e.offset : e.offset + e.length]) for e in f.chunks]
    return tuple(out)


def rebuild(header: dict[str, Any], stream: bytes) -> bytes:
    """A chunk of ``stream`` with ``header``, its stream length and CRC-32 recomputed."""
    return chunk_header(dict(header, n=len(stream), crc=zlib.crc32(stream))) + stream


def declared_bytes(payload: bytes) -> int:
    """Bytes a chunk declares (values x the larger item size of its two dtypes); 0 when
    its header does not parse."""
    try:
        header, _ = parse_chunk_header(payload)
        size = max(np.dtype(header["dtype"]).itemsize, np.dtype(header["w"]).itemsize)
        return math.prod(int(s) for s in header["shape"]) * size
    except Exception:
        return 0


def peak_bound(codec_id: str, payload: bytes) -> int:
    factor = PEAK_FACTOR_FLOAT64 if codec_id in FLOAT64_DECODERS else PEAK_FACTOR
    return max(factor * declared_bytes(payload), PEAK_FLOOR)


def decode_traced(codec: Codec, payload: bytes) -> tuple[np.ndarray | None, int]:
    """``codec.decode(payload)`` (None when it raised a CtpressError) and the traced
    peak of the decode; any other exception propagates (a finding)."""
    tracemalloc.start()
    try:
        try:
            result: np.ndarray | None = codec.decode(payload)
        except CtpressError:
            result = None
        if codec.codec_id == "siren" and result is not None:
            codec.decode_views(payload, 0, 1)  # the partial decode path too
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_bounded(codec: Codec, payload: bytes) -> None:
    result, peak = decode_traced(codec, payload)
    assert peak <= peak_bound(codec.codec_id, payload), f"peak {peak} bytes"
    if result is not None:
        header, _ = parse_chunk_header(payload)
        assert result.shape == tuple(header["shape"])
        assert result.dtype == np.dtype(header["dtype"])


# ------------------------------------------------------------------- mutations
def _flip_bytes(data: st.DataObject, stream: bytes) -> bytes:
    out = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 8))):
        where = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if out:
            out[where] = data.draw(st.integers(0, 255))
    return bytes(out)


def _truncate(data: st.DataObject, stream: bytes) -> bytes:
    return stream[: data.draw(st.integers(0, max(len(stream) - 1, 0)))]


def _insert(data: st.DataObject, stream: bytes) -> bytes:
    where = data.draw(st.integers(0, len(stream)))
    return stream[:where] + data.draw(st.binary(min_size=1, max_size=16)) + stream[where:]


def _size_field(data: st.DataObject, stream: bytes) -> bytes:
    """A 1, 2, 4 or 8-byte field in the first 64 bytes (where the inner headers keep
    their sizes) set to an extreme value."""
    width = data.draw(st.sampled_from([1, 2, 4, 8]))
    where = data.draw(st.integers(0, max(min(len(stream), 64) - width, 0)))
    value = data.draw(st.sampled_from([0, 1, 2, 255, 1 << 15, 1 << 16, 1 << 31, -1]))
    field = (value % (1 << (8 * width))).to_bytes(
        width, data.draw(st.sampled_from(["little", "big"]))
    )
    return stream[:where] + field + stream[where + width :]


STREAM_MUTATIONS = [_flip_bytes, _truncate, _insert, _size_field]


def _mutated_header(data: st.DataObject, header: dict[str, Any]) -> dict[str, Any]:
    """``header`` with its shape, dtypes or transform changed (declared size kept within
    :data:`_MAX_GROWTH` times the original)."""
    header = dict(header)
    field = data.draw(st.sampled_from(["shape", "dtype", "w", "t"]))
    if field == "shape":
        shape = list(header["shape"])
        axis = data.draw(st.integers(0, len(shape) - 1))
        shape[axis] = data.draw(st.integers(1, max(_MAX_GROWTH * shape[axis], 2)))
        if data.draw(st.booleans()):
            shape = shape[::-1] if data.draw(st.booleans()) else shape[1:]
        header["shape"] = shape
    elif field in ("dtype", "w"):
        header[field] = data.draw(st.sampled_from(["|u1", "<u2", "<i2", "<i4", "<f4", "<f8"]))
        if field == "dtype" and header["dtype"].endswith("f4"):
            header["lo"], header["hi"] = float(header["lo"]), float(header["hi"])
    else:
        header["t"] = data.draw(st.sampled_from(["none", "quant", "affine"]))
        header.setdefault("o", 0.0)
        header.setdefault("q", 1.0)
    return header


@pytest.mark.parametrize("codec_id", CODECS)
@FUZZ
@given(data=st.data())
def test_mutated_chunks_fail_cleanly_and_bounded(codec_id: str, data: st.DataObject) -> None:
    codec, payload = data.draw(st.sampled_from(golden_chunks(codec_id)))
    header, offset = parse_chunk_header(payload)
    stream = payload[offset:]
    if data.draw(st.integers(0, 4)) == 0:
        header = _mutated_header(data, header)
    else:
        stream = data.draw(st.sampled_from(STREAM_MUTATIONS))(data, stream)
    assert_bounded(codec, rebuild(header, stream))


@pytest.mark.parametrize("codec_id", CODECS)
@settings(FUZZ, max_examples=500 if FULL else 25)
@given(data=st.data())
def test_random_bytes_fail_cleanly(codec_id: str, data: st.DataObject) -> None:
    """Random streams behind a valid chunk header (CRC recomputed), and random payloads."""
    codec, payload = data.draw(st.sampled_from(golden_chunks(codec_id)))
    header, _ = parse_chunk_header(payload)
    noise = data.draw(st.binary(max_size=2048))
    assert_bounded(codec, rebuild(header, noise))
    prefix = data.draw(st.sampled_from([b"", b"CPC1", b"CPC2"]))
    assert_bounded(codec, prefix + noise)


@pytest.mark.parametrize("codec_id", CODECS)
def test_golden_chunks_decode_within_the_bound(codec_id: str) -> None:
    for codec, payload in golden_chunks(codec_id):
        result, peak = decode_traced(codec, payload)
        assert result is not None
        assert peak <= peak_bound(codec_id, payload)


# --------------------------------------------------- declared shape vs the stream
#: Codecs whose streams state their own size (checked before decoding): a chunk header
#: declaring more is refused before anything of the declared size is allocated.
SELF_DESCRIBING = sorted(set(CODECS) - FLOAT64_DECODERS)
#: ... those of them whose streams state a byte or value count, not dimensions.
SIZE_ONLY = {"zstd", "blosc2", "sz3"}


@pytest.mark.parametrize("codec_id", SELF_DESCRIBING)
def test_inflated_declared_shape_is_refused_before_allocating(codec_id: str) -> None:
    codec, payload = golden_chunks(codec_id)[0]
    header, offset = parse_chunk_header(payload)
    n, rows, cols = header["shape"]
    shapes = [[n * 4096, rows, cols], [n, rows * 64, cols * 64]]
    if codec_id not in SIZE_ONLY:
        shapes.append([n, cols, rows])  # same size, other dimensions
    for shape in shapes:
        crafted = rebuild(dict(header, shape=shape), payload[offset:])
        tracemalloc.start()
        try:
            with pytest.raises(CorruptFileError):
                codec.decode(crafted)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20, (shape, peak)


@pytest.mark.parametrize("codec_id", sorted(FLOAT64_DECODERS))
def test_residual_is_checked_before_the_network_is_evaluated(codec_id: str) -> None:
    """A max_error chunk (with the residual layer) declaring 4096 times its views: the
    residual's block table refuses it before anything of that size is evaluated (found
    by the atheris harness: a 2 KB siren chunk declaring 4 x 278527 x 64 values took
    over 5 GB).  dvc's table of one entry per view refuses it even earlier."""
    path = DATA / "golden" / f"v2_{codec_id}_max_error.ctpz"
    with ctpress.open(path) as f:
        entry, codec = f.chunks[0], f.codec
    payload = path.read_bytes()[entry.offset : entry.offset + entry.length]
    header, offset = parse_chunk_header(payload)
    n, rows, cols = header["shape"]
    crafted = rebuild(dict(header, shape=[n * 4096, rows, cols]), payload[offset:])
    tracemalloc.start()
    try:
        with pytest.raises(
            CorruptFileError, match="truncated" if codec_id == "dvc" else "residual"
        ):
            codec.decode(crafted)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()


def test_zstd_frame_larger_than_declared_is_refused() -> None:
    """A 64 MiB zero frame behind a header declaring 4 KiB: refused from the frame
    header, nothing decompressed (it reached 1.8 GB from a 174 KB file)."""
    frame = zstandard.ZstdCompressor(level=1).compress(bytes(64 << 20))
    header = {"t": "none", "w": "<u2", "dtype": "<u2", "shape": [2, 16, 64], "lo": 0, "hi": 0}
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match="zstd frame content size is 67108864"):
            get_codec("zstd").decode(rebuild(header, frame))
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


#: Positions of the siren side information's fields in ``siren._SIDE``.
SIREN_FIELDS = ("magic", "version", "flags", "segments", "width", "depth", "encoding",
                "frequencies", "omega0", "offset", "scale", "step")  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 60000}, "invalid architecture"),
        ({"depth": 200}, "invalid architecture"),
        ({"encoding": 7}, "invalid architecture"),
        ({"frequencies": 250}, "invalid architecture"),
        ({"omega0": float("nan")}, "invalid architecture"),
        ({"segments": 4000}, "4000 segments for 4 views"),
        ({"width": 1024, "depth": 16}, "weights, more than a chunk of 4096 values may have"),
        ({"scale": -1.0}, "invalid value range"),
        ({"flags": 0x80}, "unknown flags"),
    ],
)
def test_siren_fields_are_checked_before_building(changes: dict, message: str) -> None:
    """One changed field made a 2 KB siren file allocate 24 GB."""
    codec, payload = golden_chunks("siren")[0]
    header, start = parse_chunk_header(payload)
    side = list(siren._SIDE.unpack_from(payload, start))
    for name, value in changes.items():
        side[SIREN_FIELDS.index(name)] = value
    stream = siren._SIDE.pack(*side) + payload[start + siren._SIDE.size :]
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match=message):
            codec.decode(rebuild(header, stream))
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_sperr_encodes_one_view_chunks() -> None:
    """SPERR aborted the process on a (1, 32, 384) array (a 3-D array of one slice)."""
    x = np.random.default_rng(0).normal(size=(1, 32, 384)).cumsum(-1).astype(np.float32)
    codec = get_codec("sperr", mode="max_error", value=0.01)
    y = codec.decode(codec.encode(x))
    assert y.shape == x.shape and float(np.max(np.abs(y - x))) <= 0.01


# ------------------------------------------------------------------- the worker
def _abort(stream: bytes) -> np.ndarray:
    os.abort()


def _allocate(stream: bytes) -> np.ndarray:
    return np.ones(4 << 30, dtype=np.uint8)


def _sleep(stream: bytes) -> np.ndarray:
    time.sleep(30)
    return np.zeros(4)


def _echo(stream: bytes) -> np.ndarray:
    return np.frombuffer(stream, dtype=np.uint8).copy()


@pytest.mark.skipif(not _isolate._can_fork(), reason="no fork: decoders run in-process")
def test_worker_turns_crashes_overruns_and_hangs_into_corrupt_file_errors(monkeypatch) -> None:
    with pytest.raises(CorruptFileError, match="crashed"):
        _isolate.decode_isolated(_abort, b"", (4,), "float64", "test")
    with pytest.raises(CorruptFileError, match="more memory than allowed"):
        _isolate.decode_isolated(_allocate, b"", (4,), "float64", "test")
    with pytest.raises(CorruptFileError, match="decoded 3 bytes, not 4"):
        _isolate.decode_isolated(_echo, b"abc", (4,), "uint8", "test")
    monkeypatch.setattr(_isolate, "_TIME_BASE_S", 0.5)
    with pytest.raises(CorruptFileError, match="did not finish"):
        _isolate.decode_isolated(_sleep, b"", (4,), "float64", "test")
    out = _isolate.decode_isolated(_echo, b"abcd", (2, 2), "uint8", "test")  # a fresh worker
    assert out.tolist() == [[97, 98], [99, 100]] and out.flags.writeable


# -------------------------------------------------------------- bad settings
BAD_SETTINGS = [
    ("zstd", {"level": 999}, "zstd setting level=999: must be an integer from -131072 to 22"),
    ("zstd", {"level": "abc"}, "zstd setting level='abc': must be an integer from -131072 to 22"),
    ("zstd", {"level": None}, "zstd setting level=None: must be an integer from -131072 to 22"),
    ("blosc2", {"level": -7}, "blosc2 setting level=-7: must be an integer from 0 to 9"),
    ("jpegxl", {"effort": 0}, "jpegxl setting effort=0: must be an integer from 1 to 10"),
    ("hyperprior", {"rate_point": "x"}, "hyperprior setting rate_point='x': must be an integer"),
    ("hyperprior", {"rate_point": 99}, "hyperprior setting rate_point=99: must be an integer"),
    ("vqvae", {"rate_point": 1.5}, "vqvae setting rate_point=1.5: must be an integer from 0 to"),
    ("siren", {"width": "abc"}, "siren setting width='abc': must be an integer from 1 to 1024"),
    ("siren", {"depth": 0}, "siren setting depth=0: must be an integer from 1 to 16"),
    ("siren", {"segments": 70000}, "siren setting segments=70000: must be an integer from 1 to"),
    ("siren", {"frequencies": 17}, "siren setting frequencies=17: must be an integer from 0 to 16"),
    ("siren", {"steps": 0}, "siren setting steps=0: must be an integer from 1 to 10000000"),
    ("siren", {"omega0": -1}, "siren setting omega0=-1: must be a number in (0, 10000)"),
    ("siren", {"omega0": 0.1}, "siren setting omega0=0.1: must be a float32 value"),
    ("siren", {"encoding": "x"}, "siren setting encoding='x': must be one of ('none', 'fourier')"),
    ("siren", {"learning_rate": 2}, "siren setting learning_rate=2: must be a number in (0, 1)"),
    ("siren", {"time_budget": 0}, "siren setting time_budget=0: must be a number > 0"),
    ("siren", {"quant_noise": 0}, "siren setting quant_noise=0: must be a number in (0, 100]"),
    ("siren", {"meta_init": "yes"}, "siren setting meta_init='yes': must be true or false"),
    ("siren", {"seed": "s"}, "siren setting seed='s': must be an integer from"),
    ("convlstm", {"predictor": "x"}, "convlstm setting predictor='x': must be one of ('spatial',"),
    ("convlstm", {"grid": 0}, "convlstm setting grid=0: must be a number > 0"),
    ("zstd", {"mode": "bpp", "value": "x"}, "rate control 'bpp' needs a finite value, got 'x'"),
    ("zstd", {"data_range": "x"}, "data_range must be > 0, got 'x'"),
]


@pytest.mark.parametrize(("codec_id", "options", "message"), BAD_SETTINGS)
def test_bad_settings_are_one_line_input_errors(codec_id: str, options: dict, message: str):
    with pytest.raises(InputError) as info:
        get_codec(codec_id, **options)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"id": "zstd", "lvl": 3}, "bad config for codec 'zstd': no setting 'lvl'; its settings"),
        ({"id": "zstd", "level": [3]}, "zstd setting level=[3]: must be an integer"),
        ({"id": "siren", "width": {"a": 1}}, "siren setting width={'a': 1}: must be an integer"),
        ({"id": ["zstd"]}, "unknown codec ['zstd']"),
        ({"level": 3}, "a codec config is an object with an 'id'"),
        (5, "a codec config is an object with an 'id', got 5"),
        ({"id": "zstd", "mode": {}}, "unknown rate control {}"),
    ],
)
def test_crafted_configs_are_input_errors(config: Any, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(")):
        get_codec(config)


def test_levels_older_versions_clamped_still_open() -> None:
    """blosc2 levels above 9 and jpegxl efforts outside 1..10 were clamped silently by
    earlier versions: configs stored with them still build (clamped the same way)."""
    assert get_codec({"id": "blosc2", "level": 12}).level == 9
    assert get_codec({"id": "jpegxl", "effort": 100}).effort == 10
