"""The ConvLSTM closed-loop predictive codec: exact round trips, error bounds on every
value, identical bytes and values across processes, thread counts and instruction sets,
and damage confined to the chunk it hits."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import ctpress
from conftest import SHARED_DATA, damage_chunk
from ctpress.codecs.convlstm import PREDICTORS, ConvLstm
from ctpress.codecs.framing import chunk_header, parse_chunk_header
from ctpress.errors import CorruptFileError, InputError
from ctpress.learned.store import WeightsMismatchError
from ctpress.noise import NoiseModel

SAVU = SHARED_DATA / "projections" / "savu_i12_raw_projections_91x135x160_uint16.npy"


def _counts(n: int = 6, rows: int = 12, cols: int = 40, seed: int = 0) -> np.ndarray:
    """Poisson counts of a smooth object rotating over the views, with 0 and 65535 in it."""
    rng = np.random.default_rng(seed)
    view = np.arange(n)[:, None, None] * 0.2
    col = np.linspace(-1, 1, cols)[None, None, :]
    row = np.linspace(-1, 1, rows)[None, :, None]
    mean = 40000 * np.exp(-3 * np.clip(1 - (col - 0.3 * np.sin(view)) ** 2 - row**2 / 4, 0, 1))
    x = np.clip(rng.poisson(mean), 0, 65535).astype(np.uint16)
    x[0, 0, 0], x[-1, -1, -1], x[2, 5, 7] = 0, 65535, 65535
    return x


def test_trace_records_the_coder_state_without_changing_the_stream() -> None:
    from ctpress.codecs import _predictive as kernel

    x = _counts()
    codec = ConvLstm()
    trace = np.zeros((*x.shape, kernel.N_TRACE), dtype=np.int64)
    stream, decoded = codec._code(x, 0, trace=trace)
    assert stream == codec._code(x, 0)[0]
    np.testing.assert_array_equal(decoded, x)
    fields = dict(zip(kernel.TRACE_FIELDS, np.moveaxis(trace, -1, 0), strict=True))
    guess = fields["guess (values)"]
    prediction = fields["prediction"] + fields["bias correction"]  # 1/8, before rounding
    np.testing.assert_array_equal(guess, np.clip((prediction + 4) >> 3, 0, int(x.max())))
    assert (fields["activity"] >= 0).all() and (fields["spread of the sub-predictors"] >= 0).all()
    # a decent prediction: most residuals are far smaller than the values
    assert np.median(np.abs(x.astype(np.int64) - guess)) < 0.05 * np.median(x)


@pytest.mark.parametrize("predictor", sorted(PREDICTORS))
def test_lossless_round_trip_is_bit_exact(predictor: str) -> None:
    x = _counts()
    codec = ConvLstm(predictor=predictor)
    data = codec.encode(x)
    np.testing.assert_array_equal(codec.decode(data), x)
    assert len(data) < x.nbytes  # it compresses


def test_counted_adaptation_beats_fixed_rates_and_version_1_still_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stream version 2's counters adapt at 1 / (n + 1.5) of their n-th update: a small
    chunk codes smaller than with version 1's fixed rates, and version-1 streams (the
    golden files hold more) still decode."""
    x = _counts(n=12, rows=8, cols=64, seed=3)
    sizes = {}
    for version in (1, 2):
        monkeypatch.setattr("ctpress.codecs.convlstm._VERSION", version)
        data = ConvLstm().encode(x)
        monkeypatch.undo()
        assert data[parse_chunk_header(data)[1]] == version
        np.testing.assert_array_equal(ConvLstm().decode(data), x)
        sizes[version] = len(data)
    assert sizes[2] < sizes[1]


@pytest.mark.skipif(not SAVU.is_file(), reason="needs ../shared/data")
def test_lossless_on_real_counts_beats_jpegls() -> None:
    x = np.load(SAVU)[60:]  # the views the predictor never trained on
    data = ConvLstm().encode(x)
    np.testing.assert_array_equal(ConvLstm().decode(data), x)
    jpegls = ctpress.codecs.get_codec("jpegls").encode(x)
    assert len(data) < len(jpegls)


@pytest.mark.parametrize("bound", [1, 3, 8])
@pytest.mark.parametrize("predictor", ["both", "all"])
def test_max_error_holds_on_every_value(bound: int, predictor: str) -> None:
    x = _counts(seed=bound)
    codec = ConvLstm(predictor=predictor, mode="max_error", value=bound)
    data, reconstruction = codec.compress(x)
    decoded = codec.decode(data)
    np.testing.assert_array_equal(decoded, reconstruction)
    assert np.abs(decoded.astype(np.int64) - x).max() <= bound
    assert len(data) < len(ConvLstm(predictor=predictor).encode(x))


def test_float_data_is_coded_on_its_quantisation_grid() -> None:
    x = _counts().astype(np.float32) / 1000
    codec = ConvLstm(mode="max_error", value=0.01)
    assert np.abs(codec.decode(codec.encode(x)) - x).max() <= 0.01


def test_noise_bound_holds_on_every_value() -> None:
    x = _counts()
    noise = NoiseModel(domain="counts", gain=1.0, read_noise=0.0)
    codec = ConvLstm(mode="noise", value=0.5, noise=noise)
    decoded = codec.decode(codec.encode(x)).astype(np.float64)
    assert (np.abs(decoded - x) <= 0.5 * noise.sigma(x.astype(np.float64)) + 1e-9).all()


def test_unknown_predictor_is_a_one_line_input_error() -> None:
    with pytest.raises(InputError, match="setting predictor='oracle': must be one of"):
        ConvLstm(predictor="oracle")


_ENCODE = """
import hashlib, sys, numpy as np
from ctpress.codecs.convlstm import ConvLstm
x = np.load(sys.argv[1])
codec = ConvLstm(mode=sys.argv[2], value=float(sys.argv[3]) or None)
data = codec.encode(x)
decoded = codec.decode(data)
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(decoded.tobytes()).hexdigest())
"""


@pytest.mark.parametrize("mode, value", [("lossless", 0), ("max_error", 2)])
def test_bytes_and_values_are_identical_across_processes_threads_and_isa(
    tmp_path: Path, mode: str, value: int
) -> None:
    """The encoder's stream (which embeds every prediction it made) and the decoded values
    are the same bytes under every instruction-set level and thread count."""
    path = tmp_path / "x.npy"
    x = _counts(n=5, rows=16, cols=48, seed=7)
    np.save(path, x)
    package_root = str(Path(ctpress.__file__).resolve().parents[1])
    results = set()
    for isa, threads in [("default", "1"), ("avx2", "2"), ("avx512", "2"), (None, "1")]:
        env = dict(os.environ, PYTHONPATH=package_root, OMP_NUM_THREADS=threads)
        env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
        env.pop("ATEN_CPU_CAPABILITY", None)
        if isa is not None:
            env["ATEN_CPU_CAPABILITY"] = isa
        done = subprocess.run(
            [sys.executable, "-c", _ENCODE, str(path), mode, str(value)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results.add(done.stdout.split()[0] + done.stdout.split()[1])
    codec = ConvLstm(mode=mode, value=value or None)
    here = codec.encode(x)
    assert len(results) == 1
    expected = (
        hashlib.sha256(here).hexdigest() + hashlib.sha256(codec.decode(here).tobytes()).hexdigest()
    )
    assert results == {expected}


def test_a_damaged_chunk_is_detected_and_the_others_still_decode(tmp_path: Path) -> None:
    x = _counts(n=9)
    path = tmp_path / "scan.ctpz"
    ctpress.compress(x, path, codec="convlstm", lossless=True, chunk_views=3)
    damage_chunk(path, 1)
    with ctpress.open(path) as f:
        np.testing.assert_array_equal(f.read_views(0, 3), x[:3])
        np.testing.assert_array_equal(f.read_views(6, 9), x[6:])
        with pytest.raises(CorruptFileError):
            f.read_views(3, 6)


def test_stream_fields_are_checked_before_decoding() -> None:
    """A stream whose CRC is right but whose fields lie (crafted) fails on one line."""
    codec = ConvLstm(predictor="both")
    chunk = codec.encode(_counts())
    header, offset = parse_chunk_header(chunk)
    stream = bytearray(chunk[offset:])
    bad_max = bytearray(stream)
    struct.pack_into("<I", bad_max, 8, 70000)  # largest value beyond uint16
    bad_version = bytearray(stream)
    bad_version[0] = 9
    short_payload = bytearray(stream)
    struct.pack_into("<I", short_payload, 24, 1)  # payload length disagrees with the stream
    bad_mix = bytearray(stream)
    struct.pack_into("<I", bad_mix, 4, 1000)  # more views at E + 1 than the chunk has
    for crafted in (bad_max, bad_version, short_payload, bad_mix):
        with pytest.raises(CorruptFileError):
            body = bytes(crafted)
            codec.decode(chunk_header(dict(header, n=len(body), crc=zlib.crc32(body))) + body)


def test_float_data_on_a_stated_grid_are_lossless() -> None:
    step = 2.0**-13
    x = (_counts().astype(np.float64) * step + 0.5).astype(np.float32)
    codec = ConvLstm(grid=step)
    np.testing.assert_array_equal(codec.decode(codec.encode(x)), x)
    with pytest.raises(InputError, match="not on the grid"):
        codec.encode(x + np.float32(step / 3))


def test_a_stream_of_other_weights_is_refused() -> None:
    codec = ConvLstm(predictor="all")
    chunk = codec.encode(_counts())
    header, offset = parse_chunk_header(chunk)
    stream = bytearray(chunk[offset:])
    stream[24:32] = bytes(8)  # the weights' hash follows the 24-byte head
    body = bytes(stream)
    with pytest.raises(WeightsMismatchError, match="other predictor weights"):
        codec.decode(chunk_header(dict(header, n=len(body), crc=zlib.crc32(body))) + body)


_DECODE_CHUNK = """
import hashlib, sys
from ctpress.codecs.convlstm import ConvLstm
print(hashlib.sha256(ConvLstm().decode(open(sys.argv[1], "rb").read()).tobytes()).hexdigest())
"""


def test_conjugate_rays_of_a_full_rotation_predict_the_second_half_turn(tmp_path: Path) -> None:
    """A fan-beam scan over a full turn: the encoder stores the conjugate-ray table, the
    stream is smaller than without it, exact (lossless) or within E, and decodes to the
    same values in other processes and instruction sets; a damaged table is refused."""
    from ctpress.codecs import _predictive as kernel
    from ctpress.container.writer import chunk_contexts
    from ctpress.sim import simulate_scan

    scan = simulate_scan(
        None, geometry_kind="fan", n_views=96, det_rows=2, det_cols=48, i0=5e4, dtype="counts"
    )
    x = scan.array()
    (context,) = chunk_contexts(scan, 96)
    for mode, value in [("lossless", None), ("max_error", 3)]:
        codec = ConvLstm(mode=mode, value=value)
        chunk = codec.encode(x, context)
        header, offset = parse_chunk_header(chunk)
        assert chunk[offset + 1] & kernel.CONJUGATE
        assert len(chunk) < 0.99 * len(codec.encode(x))  # without the geometry: no table
        decoded = codec.decode(chunk).astype(np.int64)
        assert np.abs(decoded - x).max() <= (value or 0)
    ablation = ConvLstm(conjugate=False)
    assert ablation.get_config()["conjugate"] is False
    without = ablation.encode(x, context)
    assert not without[parse_chunk_header(without)[1] + 1] & kernel.CONJUGATE
    with pytest.raises(InputError, match="conjugate"):
        ConvLstm(conjugate="yes")  # type: ignore[arg-type]
    path = tmp_path / "chunk.bin"
    path.write_bytes(chunk)
    package_root = str(Path(ctpress.__file__).resolve().parents[1])
    for isa in ("default", "avx512"):
        env = dict(os.environ, PYTHONPATH=package_root, ATEN_CPU_CAPABILITY=isa)
        done = subprocess.run(
            [sys.executable, "-c", _DECODE_CHUNK, str(path)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == hashlib.sha256(codec.decode(chunk).tobytes()).hexdigest()
    from ctpress.learned.conjugate import causal_conjugate_rays

    rays = causal_conjugate_rays(x, context.geometry, context.angles)
    assert rays is not None
    stream = bytearray(chunk[offset:])
    at = bytes(stream).find(rays.to_bytes())
    assert at > 0
    struct.pack_into("<I", stream, at + 8, 1 << 30)  # the table's length beyond the stream
    body = bytes(stream)
    with pytest.raises(CorruptFileError, match="conjugate-ray table"):
        codec.decode(chunk_header(dict(header, n=len(body), crc=zlib.crc32(body))) + body)
