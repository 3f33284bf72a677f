"""Bjontegaard delta rate against curves with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctpress.bdrate import METHODS, bd_rate
from ctpress.errors import InputError

ANCHOR_RATE = [0.8, 1.5, 2.9, 5.2]
ANCHOR_PSNR = [42.0, 49.5, 57.0, 66.0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [0.8, 1.25, 0.5])
def test_scaled_rate_gives_the_scale(method: str, scale: float) -> None:
    """The anchor with every rate multiplied by s is exactly (s - 1) * 100 % (e.g. -20 %)."""
    test_rate = [scale * r for r in ANCHOR_RATE]
    result = bd_rate(ANCHOR_RATE, ANCHOR_PSNR, test_rate, ANCHOR_PSNR, method=method)
    assert result == pytest.approx((scale - 1) * 100, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_psnr_shift_of_a_log_linear_curve(method: str) -> None:
    """log R = a + b PSNR: a curve d dB higher needs exp(-b d) times the rate everywhere."""
    psnr = np.array([40.0, 45.0, 52.0, 60.0, 64.0])
    b, d = 0.12, 1.5
    rate = np.exp(-3 + b * psnr)
    result = bd_rate(rate, psnr, rate, psnr + d, method=method)
    assert result == pytest.approx((math.exp(-b * d) - 1) * 100, rel=1e-9)


def test_published_examples_vceg_m33() -> None:
    """The classic VCEG-M33 cubic BD-rate on two widely used example curve pairs (the second
    from the FAU-LMS ``bjontegaard`` package's README); reference values from an independent
    implementation of the same formula."""
    anchor = ([686.76, 309.58, 157.11, 85.95], [40.28, 37.18, 34.24, 31.42])
    test = ([893.34, 407.8, 204.93, 112.75], [40.39, 37.21, 34.17, 31.24])
    assert bd_rate(*anchor, *test, method="cubic") == pytest.approx(31.397374054908, abs=1e-6)
    anchor = ([9487.76, 4593.60, 2486.44, 1358.24], [40.037, 38.615, 36.845, 34.851])
    test = ([9787.80, 4469.00, 2451.52, 1356.24], [40.121, 38.651, 36.970, 34.987])
    assert bd_rate(*anchor, *test, method="cubic") == pytest.approx(-4.420462706, abs=1e-6)
    # pchip stays close to the cubic fit on these smooth curves
    assert bd_rate(*anchor, *test) == pytest.approx(-4.42, abs=0.05)


def test_order_and_symmetry() -> None:
    """Point order does not matter; swapping anchor and test inverts the rate ratio."""
    test_rate = [0.7, 1.4, 2.5, 4.1]
    forward = bd_rate(ANCHOR_RATE, ANCHOR_PSNR, test_rate, ANCHOR_PSNR)
    shuffled = bd_rate(ANCHOR_RATE[::-1], ANCHOR_PSNR[::-1], test_rate, ANCHOR_PSNR)
    backward = bd_rate(test_rate, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR)
    assert shuffled == pytest.approx(forward)
    assert (1 + forward / 100) * (1 + backward / 100) == pytest.approx(1.0)


def test_no_overlap_and_bad_input() -> None:
    assert math.isnan(bd_rate([1, 2], [30, 35], [1, 2], [40, 45]))
    with pytest.raises(InputError):
        bd_rate([1], [30], [1, 2], [30, 35])
    with pytest.raises(InputError):
        bd_rate([1, 2], [30, math.inf], [1, 2], [30, 35])
    with pytest.raises(InputError):
        bd_rate([1, 2], [30, 35], [1, 2], [30, 35], method="akima")
