"""The learned codecs through the API and the CLI: rate targets, error bounds, shapes."""

from __future__ import annotations

import numpy as np
import pytest

import ctpress
from conftest import smooth_stack
from ctpress.cli import main
from ctpress.codecs import get_codec
from ctpress.codecs.learned import ZooSession, decode_learned, largest_below
from ctpress.learned import zoo

METHODS = ("hyperprior", "vqvae")


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    """(48, 32, 256) uint16, large enough for 0.1 bits/value to cover the container."""
    return np.clip(smooth_stack((48, 32, 256), seed=3), 0, 65535).astype(np.uint16)


def test_zoo_has_rate_points_with_provenance():
    for method in METHODS:
        entries = zoo.rate_points(method)
        assert len(entries) >= 2
        for entry in entries:
            for key in ("sha256", "file", "config", "reproduce", "seed", "held_out", "train_data"):
                assert key in entry, (method, key)


@pytest.mark.parametrize(("method", "bpp", "psnr"), [("vqvae", 0.1, 25), ("hyperprior", 0.25, 38)])
def test_bpp_target_through_the_api(method, bpp, psnr, scan):
    data = ctpress.compress(scan, codec=method, bpp=bpp)
    bits = 8 * len(data) / scan.size
    assert abs(bits - bpp) <= 0.1 * bpp
    decoded = ctpress.decompress(data).projections
    assert decoded.shape == scan.shape and decoded.dtype == scan.dtype
    assert ctpress.metrics.psnr_db(scan, decoded) > psnr


@pytest.mark.parametrize(("method", "bpp"), [("vqvae", "0.1"), ("hyperprior", "0.5")])
def test_cli_compress_bpp_file_size_is_on_disk(method, bpp, scan, tmp_path):
    src, out = tmp_path / "scan.npy", tmp_path / "out.ctpz"
    np.save(src, scan)
    assert main(["-q", "compress", str(src), str(out), "--codec", method, "--bpp", bpp]) == 0
    assert abs(8 * out.stat().st_size / scan.size - float(bpp)) <= 0.1 * float(bpp)
    assert main(["-q", "decompress", str(out), str(tmp_path / "back.npy")]) == 0
    assert np.load(tmp_path / "back.npy").shape == scan.shape


@pytest.mark.parametrize("method", METHODS)
def test_psnr_target_is_met(method, scan):
    data = ctpress.compress(scan[:8], codec=method, psnr=60)
    assert ctpress.metrics.psnr_db(scan[:8], ctpress.decompress(data).projections) >= 60


@pytest.mark.parametrize("method", METHODS)
def test_max_error_holds_on_every_value(method, uint16_stack, float32_stack, int16_stack):
    for x, bound in ((uint16_stack, 3), (float32_stack, 1e-3), (int16_stack, 2)):
        decoded = ctpress.decompress(ctpress.compress(x, codec=method, max_error=bound))
        err = np.abs(decoded.projections.astype(np.float64) - x.reshape(decoded.shape))
        assert err.max() <= bound, (x.dtype, err.max())


@pytest.mark.parametrize("method", METHODS)
def test_lossless_on_integer_data(method, uint16_stack, int16_stack):
    for x in (uint16_stack, int16_stack):
        decoded = ctpress.decompress(ctpress.compress(x, codec=method, lossless=True))
        assert np.array_equal(decoded.user_array(), x)


@pytest.mark.parametrize("shape", [(3, 13, 37), (40, 1, 50), (2, 8, 7), (1, 100, 1)])
def test_any_detector_size(shape):
    x = np.clip(smooth_stack(shape, seed=7), 0, 65535).astype(np.uint16)
    for method in METHODS:
        codec = get_codec(method, mode="max_error", value=10)
        y = codec.decode(codec.encode(x))
        assert y.shape == x.shape and np.abs(y.astype(int) - x).max() <= 10


def test_rate_point_option_round_trips_in_config(scan):
    codec = get_codec("hyperprior", mode="psnr", value=40, rate_point=0)
    assert get_codec(codec.get_config()).rate_point == 0
    y = codec.decode(codec.encode(scan[:4]))
    assert y.shape == scan[:4].shape
    with pytest.raises(ctpress.InputError):
        get_codec("hyperprior", mode="psnr", value=40, rate_point=99).encode(scan[:2])


def test_float_data_lossless_is_refused(float32_stack):
    with pytest.raises(ctpress.RateControlError):
        ctpress.compress(float32_stack, codec="hyperprior", lossless=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize("bpp", [0.3, 1.0, 3.0])
def test_bpp_search_lands_within_tolerance(method, dtype, bpp):
    """Gain search, residual fill and the rate point walk: the chunk lands within 10 %."""
    x = np.clip(smooth_stack((6, 32, 96), seed=11), 0, 65535)
    x = x.astype(np.uint16) if dtype == "uint16" else (x / 4096).astype(np.float32)
    codec = get_codec(method, mode="bpp", value=bpp)
    chunk = codec.encode(x)
    assert abs(8 * len(chunk) / x.size - bpp) <= 0.1 * bpp
    assert codec.decode(chunk).shape == x.shape


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("psnr", [35.0, 50.0, 70.0])
def test_psnr_search_meets_target(method, psnr):
    x = np.clip(smooth_stack((6, 32, 96), seed=12), 0, 65535).astype(np.uint16)
    codec = get_codec(method, mode="psnr", value=psnr)
    y = codec.decode(codec.encode(x))
    assert ctpress.metrics.psnr_db(x, y) >= psnr


def test_largest_below_power_law_in_few_probes():
    calls = []

    def bits(gain: float) -> float:
        calls.append(gain)
        return 2.0 * gain**-1.3

    kw = {"increasing": False, "accept": 0.02, "start": 1.0, "slope": -1.0}
    gain, value = largest_below(bits, 0.5, 0.5, 8.0, **kw)
    assert 0.49 <= value <= 0.5 and bits(gain) == value
    assert len(calls) <= 5  # four probes and the check above


def test_largest_below_bounds_and_odd_steps():
    kw = {"increasing": False, "accept": 0.02, "start": 1.0, "slope": -1.0}
    # target below the measure everywhere: nothing feasible
    assert largest_below(lambda g: 10.0 / g, 0.1, 0.5, 8.0, **kw) is None
    # target above the measure everywhere: the bound that comes closest
    assert largest_below(lambda g: 1.0 / g, 5.0, 0.5, 8.0, **kw) == (0.5, 2.0)
    # an empty interval is one probe
    assert largest_below(lambda g: 1.0 / g, 5.0, 1.0, 1.0, **kw) == (1.0, 1.0)
    # odd integer steps 2h - 1: the finest feasible one, with a value <= target
    h, value = largest_below(
        lambda h: 100.0 / (2 * h - 1), 9.0, 1.0, 500.0, increasing=False, accept=0.02,
        start=2.0, slope=-1.0, integer=True,
    )  # fmt: skip
    assert 2 * h - 1 == 13.0 and value == pytest.approx(100 / 13)


@pytest.mark.parametrize("method", METHODS)
def test_version_1_streams(method, scan):
    """Version 2 changed only the hyperprior's payload: older VQ-VAE streams still decode,
    older hyperprior streams are refused with a message (not decoded into garbage)."""
    x = scan[:4]
    stream, _ = ZooSession(method, x).stream((0, 1.0), None)
    expected = decode_learned(method, stream, x.shape, "float64")
    old = stream[:4] + b"\x01" + stream[5:]
    if method == "vqvae":
        assert np.array_equal(decode_learned(method, old, x.shape, "float64"), expected)
    else:
        with pytest.raises(zoo.WeightsMismatchError, match="earlier ctpress"):
            decode_learned(method, old, x.shape, "float64")


def test_a_rate_point_not_installed_names_those_that_are() -> None:
    count = len(zoo.rate_points("hyperprior"))
    with pytest.raises(zoo.WeightsMismatchError, match=rf"has rate points 0\.\.{count - 1}\)"):
        zoo.load_model("hyperprior", count)
