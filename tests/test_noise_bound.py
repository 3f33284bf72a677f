"""The noise-bounded rate control through ``ctpress.compress``/``decompress``: every
decoded value within ``f x sigma`` of the original, zeros and the dtype's maximum kept
exactly, the noise model stated in the header."""

from __future__ import annotations

import numpy as np
import pytest

import ctpress
from ctpress.cli import main
from ctpress.noise import NoiseModel
from ctpress.rate import RateControl

CODECS = ("sperr", "zfp", "sz3", "jpegls", "jpeg2000", "zstd")
FRACTION = 0.5
SHAPE = (6, 4, 40)


def _counts() -> np.ndarray:
    """uint16 raw counts over the detector's range: dark offset, zeros and saturation."""
    rng = np.random.default_rng(7)
    mean = np.geomspace(150, 60000, SHAPE[2])[None, None, :] * np.ones(SHAPE)
    x = np.clip(rng.poisson(mean), 0, 65535).astype(np.uint16)
    x[0, 0, :5] = 0
    x[1, 2, -5:] = 65535
    x[2, 1, 3] = 100  # at the dark level: sigma is the read noise alone
    return x


def _line_integrals() -> np.ndarray:
    """float32 line integrals from 0 (unattenuated, kept exactly) to 12 (few counts)."""
    rng = np.random.default_rng(8)
    p = np.linspace(0, 12, SHAPE[2])[None, None, :] + rng.normal(0, 0.01, SHAPE)
    p = np.abs(p).astype(np.float32)
    p[0, 0, :4] = 0
    return p


def _check(x: np.ndarray, data: bytes, model: NoiseModel) -> None:
    with ctpress.open(data) as f:
        assert f.rate_control == RateControl("noise", FRACTION, noise=model)
    y = ctpress.decompress(data).projections
    assert y.dtype == x.dtype and y.shape == x.shape
    error = np.abs(y.astype(np.float64) - x.astype(np.float64))
    assert (error <= FRACTION * model.sigma(x)).all()
    exact = x == 0
    if x.dtype.kind == "u":
        exact |= x == np.iinfo(x.dtype).max
    assert np.array_equal(y[exact], x[exact])


@pytest.mark.parametrize("codec", CODECS)
def test_raw_counts_with_gain_read_noise_and_dark(codec) -> None:
    x = _counts()
    model = NoiseModel(gain=2.6, read_noise=3.0, dark=100.0, source="user")
    data = ctpress.compress(
        x, codec=codec, noise_fraction=FRACTION, gain=2.6, read_noise=3.0, dark=100.0
    )
    _check(x, data, model)
    assert 8 * len(data) / x.size < 12  # lossy: well under 16 bits/value


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("per_column", [False, True])
def test_line_integrals_with_scalar_and_per_column_i0(codec, per_column) -> None:
    x = _line_integrals()
    i0 = np.linspace(4e4, 1.2e5, SHAPE[2]) if per_column else 1e5
    scan = ctpress.Scan(x, None, {"units": "line_integral"})
    data = ctpress.compress(scan, codec=codec, noise_fraction=FRACTION, i0=i0)
    expected_i0 = tuple(i0.tolist()) if per_column else 1e5  # type: ignore[union-attr]
    model = NoiseModel(domain="line_integral", i0=expected_i0, source="ideal Poisson")
    _check(x, data, model)


def test_noise_model_object_and_metadata_i0() -> None:
    x = _line_integrals()
    scan = ctpress.Scan(x, None, {"units": "line_integral", "i0": 2e4})
    data = ctpress.compress(scan, codec="sz3", noise_fraction=FRACTION)
    _check(x, data, NoiseModel(domain="line_integral", i0=2e4))
    model = NoiseModel(gain=1.5, read_noise=2.0, source="flat/dark frames")
    data = ctpress.compress(_counts(), codec="zfp", noise_fraction=FRACTION, noise=model)
    _check(_counts(), data, model)


def test_cli_noise_flags_and_info(tmp_path, capsys) -> None:
    x = _line_integrals()
    i0 = np.linspace(4e4, 1.2e5, SHAPE[2])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "i0.npy", i0)
    out = tmp_path / "x.ctpz"
    argv = ["compress", str(tmp_path / "x.npy"), str(out), "--codec", "sperr", "-q"]
    argv += ["--noise-fraction", str(FRACTION), "--domain", "line_integral"]
    assert main([*argv, "--i0", str(tmp_path / "i0.npy")]) == 0
    _check(x, out.read_bytes(), NoiseModel(domain="line_integral", i0=tuple(i0.tolist())))
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rate:        noise=0.5\n" in text
    assert "noise model: line_integral: sigma^2 = 1 x (x - 0) + 0^2, i0 per column" in text
    assert main([*argv, "--i0", "nothing.txt", "-f"]) == 2
    assert "--i0 takes a number or a .npy file" in capsys.readouterr().err
