"""The API and the container writer/reader: rate control as a value, chunk context,
chunking in views, parallel chunks, nested codec configs."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import pytest

import ctpress
from ctpress.cli import main
from ctpress.codecs import Codec, _isolate, get_codec, registry
from ctpress.codecs.base import _Encoded
from ctpress.codecs.context import ChunkContext
from ctpress.container import format as container_format
from ctpress.errors import CorruptFileError, InputError
from ctpress.noise import NoiseModel
from ctpress.rate import RateControl


def _scan(x: np.ndarray) -> ctpress.Scan:
    geometry = ctpress.Geometry.parallel(x.shape[0])
    return ctpress.Scan(x, geometry, {"units": "counts"})


# ------------------------------------------------------------------- rate control
def test_header_rate_control_is_the_rate_control_value(uint16_stack) -> None:
    data = ctpress.compress(uint16_stack, codec="jpegls", bpp=6.0, chunk_views=8)
    with ctpress.open(data) as f:
        record = f.header["rate_control"]
        assert RateControl.from_dict(record) == RateControl("bpp", 6.0)
        # the chunks aim at the file's target less the container's own bytes
        assert f.codec.mode == "bpp" and f.codec.value is not None and f.codec.value < 6.0
    assert 8 * len(data) / uint16_stack.size == pytest.approx(6.0, rel=0.1)


def test_old_rate_control_records_still_parse() -> None:
    for record in ({"mode": "max_error", "value": 3.0}, {"mode": "lossless", "value": None}):
        assert container_format._is_rate_control(record)
    for bad in ({"mode": "nope"}, {"mode": "bpp", "value": -1}, [1], {"mode": "noise", "value": 1,
                "noise": {"gain": "x"}}):  # fmt: skip
        assert not container_format._is_rate_control(bad)


def test_noise_keywords_are_checked(uint16_stack) -> None:
    with pytest.raises(InputError, match="describe the noise of noise_fraction"):
        ctpress.compress(uint16_stack, codec="zstd", gain=2.0)
    with pytest.raises(InputError, match="either noise or gain"):
        ctpress.compress(uint16_stack, codec="zstd", noise_fraction=0.5, noise={}, gain=2.0)
    with pytest.raises(InputError, match="choose one rate control"):
        ctpress.compress(uint16_stack, codec="zstd", noise_fraction=0.5, max_error=2)
    with pytest.raises(InputError, match="per detector column"):
        ctpress.compress(uint16_stack, codec="zstd", noise_fraction=0.5, i0=np.ones((2, 2)))
    with pytest.raises(InputError, match="needs i0"):
        ctpress.compress(uint16_stack, codec="zstd", noise_fraction=0.5, domain="line_integral")


def test_noise_model_defaults_from_the_metadata() -> None:
    x = np.full((2, 1, 4), 3.0, np.float32)
    scan = ctpress.Scan(x, None, {"units": "line_integral", "i0": 5e4})
    assert ctpress.api.noise_model(scan) == NoiseModel(domain="line_integral", i0=5e4)
    assert ctpress.api.noise_model(scan, i0=[1, 2, 3, 4]).i0 == (1.0, 2.0, 3.0, 4.0)
    scan.metadata["rescale_slope"] = 0.5
    with pytest.raises(InputError, match="rescaled"):
        ctpress.api.noise_model(scan)
    assert ctpress.api.noise_model(ctpress.Scan(x)).domain == "counts"


# ------------------------------------------------------------------- chunk context
class _Recorder(Codec):
    """zstd-like test codec that records the context of every chunk it encodes."""

    codec_id = "test-recorder"
    exact_dtypes = ("uint16",)
    preferred_chunk_views = 5
    seen: ClassVar[list[ChunkContext]] = []

    def _encode_chunk(self, x: np.ndarray, context: ChunkContext | None) -> _Encoded:
        assert context is not None
        self.seen.append(context)
        return super()._encode_chunk(x, context)

    def _encode_exact(self, work: np.ndarray) -> bytes:
        return work.astype("<u2").tobytes()

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        return np.frombuffer(stream, "<u2").reshape(shape).astype(work_dtype)


@pytest.fixture
def recorder(monkeypatch) -> type[_Recorder]:
    monkeypatch.setitem(registry._REGISTRY, _Recorder.codec_id, _Recorder)
    monkeypatch.setattr(_Recorder, "seen", [])
    return _Recorder


def test_writer_passes_each_chunk_its_context_and_chunks_in_views(recorder, uint16_stack) -> None:
    scan = _scan(uint16_stack)
    data = ctpress.compress(scan, codec=recorder.codec_id, jobs=1)
    with ctpress.open(data) as f:
        assert f.chunk_views == 5  # preferred_chunk_views before preferred_chunk_bytes
        assert np.array_equal(f.read_views(), uint16_stack)
    n = uint16_stack.shape[0]
    expected = [(s, min(s + 5, n)) for s in range(0, n, 5)]
    assert [(c.start, c.stop) for c in recorder.seen] == expected
    angles = scan.geometry.angles()
    for context in recorder.seen:
        assert np.array_equal(context.angles, angles[context.start : context.stop])
        assert context.scan_shape == uint16_stack.shape and context.geometry == scan.geometry
        assert context.value_range == (0.0, 65535.0) and context.data_range == 65535.0
        assert context.metadata == {"units": "counts"}
    recorder.seen.clear()
    ctpress.compress(scan, codec=recorder.codec_id, chunk_views=24)
    assert [(c.start, c.stop) for c in recorder.seen] == [(0, 24)]  # chunk_views wins


# ------------------------------------------------------------------- parallel chunks
@pytest.mark.parametrize(
    "codec, rate",
    [("zstd", {"lossless": True}), ("jpegls", {"bpp": 5.0}), ("sz3", {"max_error": 4.0})],
)
def test_output_bytes_do_not_depend_on_jobs(uint16_stack, codec, rate) -> None:
    one = ctpress.compress(uint16_stack, codec=codec, chunk_views=4, jobs=1, **rate)
    three = ctpress.compress(uint16_stack, codec=codec, chunk_views=4, jobs=3, **rate)
    assert one == three
    with ctpress.open(one, jobs=1) as f1, ctpress.open(one, jobs=3) as f3:
        assert len(f3.chunks) == 6
        assert np.array_equal(f1.read_views(3, 21), f3.read_views(3, 21))
        assert f3.verify(decode=True) == "6 chunks, digests verified"


def test_jobs_are_checked(uint16_stack) -> None:
    with pytest.raises(InputError, match="jobs must be >= 1"):
        ctpress.compress(uint16_stack, jobs=0)
    with pytest.raises(InputError, match="jobs must be >= 1"):
        ctpress.open(ctpress.compress(uint16_stack), jobs=0)


def test_parallel_read_reports_the_first_damaged_chunk(uint16_stack) -> None:
    data = bytearray(ctpress.compress(uint16_stack, codec="zstd", chunk_views=4))
    with ctpress.open(bytes(data)) as f:
        second, fourth = f.chunks[1], f.chunks[3]
    for entry in (second, fourth):
        data[entry.offset + entry.length - 1] ^= 0xFF
    with ctpress.open(bytes(data), jobs=4) as f, pytest.raises(CorruptFileError, match="chunk 1 "):
        f.read_views()


def _nap(stream: bytes) -> np.ndarray:
    time.sleep(1.0)
    return np.zeros(4)


@pytest.mark.skipif(not _isolate._can_fork(), reason="no fork: decoders run in-process")
def test_isolated_decodes_run_in_parallel() -> None:
    start = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        results = list(
            pool.map(lambda _: _isolate.decode_isolated(_nap, b"", (4,), "float64", "t"), range(3))
        )
    assert all(r.shape == (4,) for r in results)
    assert time.perf_counter() - start < 2.5  # one worker at a time would take 3 s


# ------------------------------------------------------------------- nested configs
class _Wrap(Codec):
    """Test codec whose chunks are another codec's (its config nests the inner config)."""

    codec_id = "test-wrap"
    exact_dtypes = ("uint16",)

    def __init__(
        self,
        mode: str = "lossless",
        value: float | None = None,
        data_range: float | None = None,
        noise: dict[str, Any] | None = None,
        inner: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(mode, value, data_range, noise)
        self.inner = get_codec(inner or {"id": "zstd"})

    def _options(self) -> dict[str, Any]:
        return {"inner": self.inner.get_config()}

    def _encode_chunk(self, x: np.ndarray, context: ChunkContext | None) -> _Encoded:
        return _Encoded(self.inner.encode(x, context), {"t": "none", "w": x.dtype.str})

    def _encode_exact(self, work: np.ndarray) -> bytes:
        return self.inner.encode(work)

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        return self.inner.decode(stream).reshape(shape)


@pytest.fixture
def wrap(monkeypatch) -> type[_Wrap]:
    monkeypatch.setitem(registry._REGISTRY, _Wrap.codec_id, _Wrap)
    return _Wrap


def test_nested_codec_config_round_trips(wrap, uint16_stack, tmp_path, capsys) -> None:
    inner = {"id": "jpegls", "mode": "max_error", "value": 2, "data_range": None}
    path = tmp_path / "wrapped.ctpz"
    ctpress.compress(uint16_stack, path, codec="test-wrap", max_error=2, inner=inner)
    with ctpress.open(path) as f:
        assert f.header["codec"]["inner"] == dict(inner, value=2.0)
        assert f.verify(decode=True).endswith("digests verified")
    decoded = ctpress.decompress(path).projections
    assert np.abs(decoded.astype(int) - uint16_stack).max() <= 2
    assert main(["info", str(path)]) == 0
    assert '"inner": {"id": "jpegls", "mode": "max_error", "value": 2.0' in capsys.readouterr().out


def test_codec_configs_nest_at_most_max_depth(uint16_stack) -> None:
    config: dict[str, Any] = {"id": "zstd"}
    for _ in range(container_format.MAX_CODEC_DEPTH - 1):
        config = {"id": "test-wrap", "inner": config}
    assert container_format._is_codec_config(config)
    assert not container_format._is_codec_config({"id": "test-wrap", "inner": config})
    assert not container_format._is_codec_config({"id": "test-wrap", "inner": {"id": 3}})
    with ctpress.open(ctpress.compress(uint16_stack)) as f:
        header = json.loads(json.dumps(f.header))
    header["codec"] = {"id": "test-wrap", "inner": config}
    with pytest.raises(ValueError, match="'codec' must be"):
        container_format.validate_header(header)
