import math
import warnings

import numpy as np
import pytest

from ctpress import metrics
from ctpress.errors import InputError


def _stack(n_views: int = 4, rows: int = 24, cols: int = 40, seed: int = 0) -> np.ndarray:
    """Smooth sinogram-like float32 stack with a little texture, values in about [0, 3]."""
    rng = np.random.default_rng(seed)
    v = np.linspace(0, np.pi, n_views)[:, None, None]
    r = np.linspace(-1, 1, rows)[None, :, None]
    c = np.linspace(-1, 1, cols)[None, None, :]
    blob = np.clip(1 - 3 * (c - 0.3 * np.cos(v)) ** 2 - r**2, 0, None)
    return (3 * blob + 0.05 * rng.random((n_views, rows, cols))).astype(np.float32)


def test_known_constant_offset() -> None:
    ref = np.linspace(0, 10, 1000).reshape(10, 100)
    dec = ref + 0.5
    assert metrics.mse(ref, dec) == pytest.approx(0.25)
    assert metrics.mae(ref, dec) == pytest.approx(0.5)
    assert metrics.max_abs_error(ref, dec) == pytest.approx(0.5)
    assert metrics.psnr_db(ref, dec) == pytest.approx(10 * math.log10(10**2 / 0.25))


def test_identical() -> None:
    ref = _stack()
    out = metrics.projection_metrics(ref, ref.copy())
    assert out["psnr_db"] == math.inf
    assert out["mse"] == out["mae"] == out["max_abs_error"] == 0
    assert out["ssim"] == out["haarpsi"] == out["vsi"] == 1


def test_nearly_identical_close_to_one() -> None:
    ref = _stack()
    dec = ref + np.random.default_rng(1).normal(0, 1e-3, ref.shape).astype(np.float32)
    out = metrics.projection_metrics(ref, dec)
    for key in ("ssim", "haarpsi", "vsi"):
        assert 0.98 < out[key] <= 1, key


def test_data_range_default_and_explicit() -> None:
    ref = _stack()
    dec = ref + np.float32(0.01)
    out = metrics.projection_metrics(ref, dec, perceptual=False)
    assert set(out) == {"data_range", "mse", "mae", "max_abs_error", "psnr_db", "ssim"}
    assert out["data_range"] == pytest.approx(float(ref.max()) - float(ref.min()))
    doubled = metrics.psnr_db(ref, dec, data_range=2 * out["data_range"])
    assert doubled == pytest.approx(out["psnr_db"] + 20 * math.log10(2))


def test_averages_over_all_projections() -> None:
    ref = _stack(n_views=8)
    dec = ref.copy()
    dec[-1] += np.random.default_rng(2).normal(0, 0.3, dec[-1].shape).astype(np.float32)
    assert metrics.ssim(ref[:1], dec[:1]) == 1  # what the first-projection-only study would report
    for name in ("ssim", "haarpsi", "vsi"):
        value = getattr(metrics, name)(ref, dec)
        assert 7 / 8 < value < 1, name


def test_image_selection_rule() -> None:
    stack = np.zeros((30, 4, 20))
    assert metrics._images_for_metric(stack, 3).shape == (30, 4, 20)  # projections
    assert metrics._images_for_metric(stack, 11).shape == (4, 30, 20)  # sinograms
    assert metrics._images_for_metric(stack, 21) is None
    assert metrics._images_for_metric(stack[0], 3).shape == (1, 4, 20)


def test_rows1_sinogram_stack() -> None:
    ref = _stack(n_views=90, rows=1, cols=48)
    dec = ref + np.random.default_rng(3).normal(0, 0.05, ref.shape).astype(np.float32)
    out = metrics.projection_metrics(ref, dec)
    for key in ("ssim", "haarpsi", "vsi"):
        assert 0 < out[key] < 1, key
        # the single sinogram (n_views, cols) is the image
        assert out[key] == pytest.approx(getattr(metrics, key)(ref[:, 0], dec[:, 0]))


def test_too_small_images_give_nan_with_warning() -> None:
    ref = _stack(n_views=5, rows=2, cols=30)
    with pytest.warns(RuntimeWarning, match="ssim is NaN"):
        assert math.isnan(metrics.ssim(ref, ref + 0.1))


def test_all_zero_identical_image_is_finite() -> None:
    ref = _stack()
    ref[0] = ref.min()  # shifted to all zeros: piq's HaarPSI alone would return inf for it
    dec = ref.copy()
    dec[1:] += np.float32(0.02)
    assert math.isfinite(metrics.haarpsi(ref, dec))


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_negative_values_never_raise(dtype: type) -> None:
    rng = np.random.default_rng(4)
    ref = (_stack() * 100 - 150).astype(dtype)  # line integrals can be negative after noise
    dec = (ref + rng.normal(0, 40, ref.shape)).astype(dtype)  # under- and overshoots the range
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = metrics.projection_metrics(ref, dec)
    assert all(math.isfinite(v) for v in out.values())
    assert 0 < out["ssim"] < 1


def test_errors() -> None:
    ref = _stack()
    with pytest.raises(InputError, match=r"\(4, 24, 40\).*\(4, 24, 39\)"):
        metrics.mse(ref, ref[..., :-1])
    const = np.full((4, 16, 16), 2.0)
    with pytest.raises(InputError, match="data_range"):
        metrics.psnr_db(const, const + 1)
    assert metrics.psnr_db(const, const + 1, data_range=10) == pytest.approx(20)
    with pytest.raises(InputError, match="data_range"):
        metrics.ssim(ref, ref, data_range=0)
    bad = ref.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        metrics.projection_metrics(ref, bad)
    with pytest.raises(InputError, match="NaN"):
        metrics.mae(bad, ref)
    with pytest.raises(InputError, match="3-D"):
        metrics.ssim(ref[None], ref[None])


def test_size_arithmetic() -> None:
    assert metrics.bits_per_value(100, 400) == 2
    assert metrics.compression_ratio(100, 1600) == 16
    assert metrics.ratio_vs_uint16(100, 400) == 8
    assert metrics.bits_per_value(0, 10) == 0
    with pytest.raises(InputError):
        metrics.bits_per_value(10, 0)
    with pytest.raises(InputError):
        metrics.compression_ratio(0, 10)
