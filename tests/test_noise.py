"""ctpress.noise estimation: gain and read noise from the data and from flat/dark frames,
checked on simulated detectors of known gain (scaled Poisson) and read noise."""

from __future__ import annotations

import numpy as np
import pytest

from ctpress.errors import InputError
from ctpress.noise import (
    NoiseModel,
    estimate_noise_model,
    noise_model_from_frames,
    robust_noise_std,
)

GAIN, READ_NOISE, DARK = 2.6, 20.0, 100.0


def detector(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Counts of a detector with gain GAIN (scaled Poisson: variance GAIN x signal), Gaussian
    read noise READ_NOISE and offset DARK, stored as uint16."""
    counts = GAIN * rng.poisson(signal / GAIN) + rng.normal(0, READ_NOISE, signal.shape) + DARK
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def smooth_scan(views: int = 64, rows: int = 16, cols: int = 256, peak: float = 4000) -> np.ndarray:
    """A noiseless signal from ~50 to ~50 + peak counts that moves with the view angle."""
    u = np.linspace(-1, 1, cols)[None, None, :]
    shift = 0.5 * np.cos(np.linspace(0, np.pi, views))[:, None, None]
    return 50 + peak * np.exp(-((u - shift) ** 2) / 0.3) * np.ones((1, rows, 1))


def test_estimate_counts_gain_and_read_noise() -> None:
    rng = np.random.default_rng(0)
    x = detector(smooth_scan(), rng)
    model = estimate_noise_model(x, dark=DARK)
    assert model.gain == pytest.approx(GAIN, rel=0.1)
    assert model.read_noise == pytest.approx(READ_NOISE, rel=0.1)
    assert model.dark == DARK and model.domain == "counts"
    assert model.source == "estimated from the data"
    # an ideal Poisson counter reads gain 1, no read noise
    ideal = rng.poisson(smooth_scan()).astype(np.uint16)
    poisson = estimate_noise_model(ideal)
    assert poisson.gain == pytest.approx(1.0, rel=0.1) and poisson.read_noise < 3
    # along the views (dense enough here for the signal to look smooth) as well
    assert estimate_noise_model(x, dark=DARK, axis=0).gain == pytest.approx(GAIN, rel=0.1)


def test_estimate_ignores_zeros_and_saturation() -> None:
    rng = np.random.default_rng(1)
    x = detector(smooth_scan(), rng)
    x[:, :, :20] = 0
    x[:, :, 120:140] = 65535
    assert estimate_noise_model(x, dark=DARK).gain == pytest.approx(GAIN, rel=0.1)


def test_estimate_line_integrals() -> None:
    """Line integrals of a gain-2.6 detector at i0 = 1e5 (scalar and per column)."""
    rng = np.random.default_rng(2)
    p = smooth_scan(peak=4) - 50 + 0.05  # 0.05 .. 4.05
    i0 = np.linspace(8e4, 1.2e5, p.shape[-1])
    counts = GAIN * rng.poisson(i0 * np.exp(-p) / GAIN)
    line = -np.log(np.maximum(counts, 1) / i0)
    model = estimate_noise_model(line.astype(np.float32), "line_integral", i0=tuple(i0))
    assert model.domain == "line_integral" and model.gain == pytest.approx(GAIN, rel=0.1)
    flat_i0 = GAIN * rng.poisson(1e5 * np.exp(-p) / GAIN)
    line = -np.log(np.maximum(flat_i0, 1) / 1e5)
    assert estimate_noise_model(line, "line_integral", i0=1e5).gain == pytest.approx(GAIN, rel=0.1)


def test_noise_model_from_frames() -> None:
    rng = np.random.default_rng(3)
    shape = (12, 32, 48)
    flat_signal = 3000 * (1 + 0.2 * np.sin(np.linspace(0, 3, 48)))[None, None, :]
    fixed_pattern = rng.normal(0, 3, shape[1:])  # per-pixel offsets: cancel across frames
    flats = detector(flat_signal * np.ones(shape), rng) + fixed_pattern
    darks = detector(np.zeros(shape), rng) + fixed_pattern
    model = noise_model_from_frames(flats, darks)
    assert model.gain == pytest.approx(GAIN, rel=0.1)
    assert model.read_noise == pytest.approx(READ_NOISE, rel=0.1)
    assert model.dark == pytest.approx(DARK, abs=1)
    assert model.source == "flat/dark frames"
    assert np.allclose(model.sigma(np.array([DARK])), READ_NOISE, rtol=0.1)


def test_robust_noise_std_ignores_edges() -> None:
    rng = np.random.default_rng(4)
    steps = np.repeat(rng.uniform(0, 1000, 4), 64)  # piecewise constant: 3 edges per row
    values = steps[None, :] + rng.normal(0, 3.0, (200, 256))
    assert robust_noise_std(values) == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: estimate_noise_model(np.ones((4, 4))), "too little data"),
        (lambda: estimate_noise_model(np.full((64, 64), 500.0)), "too few signal levels"),
        (lambda: estimate_noise_model(np.ones((64, 64)), "line_integral"), "needs i0"),
        (lambda: estimate_noise_model(np.ones((64, 64)), "photons"), "domain"),
        (lambda: estimate_noise_model(np.ones((64, 64)), axis=2), "valid axis"),
        (
            lambda: estimate_noise_model(np.ones((64, 64)), "line_integral", i0=(1.0, 2.0)),
            "detector has 64 columns",
        ),
        (lambda: noise_model_from_frames(np.ones((1, 4, 4)), np.ones((2, 4, 4))), "n >= 2"),
        (lambda: noise_model_from_frames(np.ones((2, 4, 4)), np.ones((2, 4, 5))), "differ"),
        (lambda: noise_model_from_frames(np.zeros((2, 4, 4)), np.ones((2, 4, 4))), "brighter"),
    ],
)
def test_bad_input_is_one_line_input_error(call: object, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_estimated_model_round_trips_through_its_dict() -> None:
    model = estimate_noise_model(detector(smooth_scan(), np.random.default_rng(5)), dark=DARK)
    assert NoiseModel.from_dict(model.to_dict()) == model
