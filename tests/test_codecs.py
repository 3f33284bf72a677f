"""Every registered codec under every rate control it supports."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ctpress
from ctpress.codecs import RATE_MODES, Codec, get_codec, get_codec_class, list_codecs
from ctpress.errors import CorruptFileError, InputError, RateControlError

CODEC_IDS = [c.codec_id for c in list_codecs()]
DATA = ["uint16_stack", "float32_stack", "int16_stack"]
#: Test-sized settings of codecs that fit a model per chunk (their defaults take minutes).
FAST_OPTIONS: dict[str, dict[str, object]] = {"siren": {"steps": 120}}


def _codec(codec_id: str, mode: str, value: float | None) -> Codec:
    return get_codec_class(codec_id)(mode=mode, value=value, **FAST_OPTIONS.get(codec_id, {}))


def _roundtrip(codec_id: str, x: np.ndarray, mode: str, value: float | None) -> np.ndarray:
    """The views of ``x`` that the codec stores (the rate control's guarantees are on them;
    sparse-unet synthesises the others), decoded, and checked against ``x``'s shape."""
    codec = _codec(codec_id, mode, value)
    decoded = codec.decode(codec.encode(x))
    assert decoded.dtype == x.dtype and decoded.shape == x.shape
    return decoded[_stored(codec_id, x)]


def _stored(codec_id: str, x: np.ndarray) -> np.ndarray:
    """Mask of the views of ``x`` a chunk of the codec stores."""
    return _codec(codec_id, "max_error", 1.0).stored_views(x.shape[0])


def test_registry_lists_the_classical_codecs() -> None:
    assert {
        "zstd",
        "blosc2",
        "jpegls",
        "jpeg2000",
        "htj2k",
        "jpegxl",
        "zfp",
        "sz3",
        "sperr",
    } <= set(CODEC_IDS)
    for cls in list_codecs():
        assert set(cls.rate_modes()) <= set(RATE_MODES)
        assert cls.description


@pytest.mark.parametrize("codec_id", CODEC_IDS)
def test_config_round_trip(codec_id: str) -> None:
    mode = "lossless" if "lossless" in get_codec_class(codec_id).rate_modes() else "max_error"
    codec = get_codec_class(codec_id)(mode=mode, value=None if mode == "lossless" else 2.0)
    rebuilt = get_codec(codec.get_config())
    assert rebuilt.get_config() == codec.get_config()
    assert type(rebuilt) is type(codec)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("codec_id", CODEC_IDS)
def test_lossless_is_bit_exact_or_refused(codec_id: str, data: str, request) -> None:
    x = request.getfixturevalue(data)
    cls = get_codec_class(codec_id)
    if "lossless" not in cls.rate_modes():
        with pytest.raises(InputError, match="does not support 'lossless'"):
            cls(mode="lossless")
        return
    if x.dtype.kind == "f" and "float32" not in cls.exact_dtypes:
        with pytest.raises(RateControlError, match="cannot store float32 data losslessly"):
            cls(mode="lossless").encode(x)
        return
    np.testing.assert_array_equal(
        _roundtrip(codec_id, x, "lossless", None), x[_stored(codec_id, x)]
    )


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("codec_id", CODEC_IDS)
def test_max_error_holds_on_every_value(codec_id: str, data: str, request) -> None:
    x = request.getfixturevalue(data)
    span = float(x.max()) - float(x.min())
    bounds = [3.0, 40.0] if x.dtype.kind in "ui" else [span * 1e-4, span * 3e-3]
    stored = x[_stored(codec_id, x)].astype(np.float64)
    for bound in bounds:
        decoded = _roundtrip(codec_id, x, "max_error", bound)
        err = np.abs(decoded.astype(np.float64) - stored).max()
        assert err <= bound, f"{codec_id}: max error {err} > {bound}"
        assert err > 0 or x.dtype.kind in "ui"  # lossy for floats, at least for some values


@pytest.mark.parametrize("codec_id", CODEC_IDS)
def test_max_error_below_one_on_integers_is_lossless(codec_id: str, uint16_stack) -> None:
    np.testing.assert_array_equal(
        _roundtrip(codec_id, uint16_stack, "max_error", 0.5),
        uint16_stack[_stored(codec_id, uint16_stack)],
    )


@pytest.mark.parametrize("codec_id", CODEC_IDS)
def test_bpp_target_lands_within_ten_percent(codec_id: str) -> None:
    from conftest import smooth_stack

    x = np.clip(smooth_stack((32, 16, 128), seed=3, noise=60), 0, 65535).astype(np.uint16)
    target = 4.0
    codec = _codec(codec_id, "bpp", target)
    data = codec.encode(x)
    bits = 8 * len(data) / x[_stored(codec_id, x)].size  # per stored value
    assert abs(bits - target) <= 0.1 * target, f"{codec_id}: {bits:.3f} bits/value"
    codec.decode(data)


@pytest.mark.parametrize("codec_id", CODEC_IDS)
def test_psnr_target_is_met(codec_id: str, float32_stack) -> None:
    x = float32_stack
    span = float(x.max() - x.min())
    decoded = _roundtrip(codec_id, x, "psnr", 55.0)
    mse = np.mean((decoded.astype(np.float64) - x[_stored(codec_id, x)]) ** 2)
    assert 10 * math.log10(span**2 / mse) >= 55.0


def test_impossible_rate_requests_are_clear(uint16_stack) -> None:
    with pytest.raises(RateControlError, match="cannot reach"):
        get_codec("jpegls", mode="bpp", value=0.001).encode(uint16_stack)
    with pytest.raises(RateControlError, match="levels"):
        get_codec("jpegxl", mode="max_error", value=1e-9).encode(uint16_stack.astype(np.float32))
    with pytest.raises(InputError, match="needs a finite value"):
        get_codec("zstd", mode="bpp", value=None)
    with pytest.raises(InputError, match="must be > 0"):
        get_codec("zstd", mode="max_error", value=-1.0)
    with pytest.raises(InputError, match="unknown codec"):
        get_codec("nope")
    with pytest.raises(InputError, match="NaN"):
        get_codec("zstd").encode(np.full((2, 3, 4), np.nan, np.float32))


@pytest.mark.parametrize("codec_id", ["jpegls", "jpeg2000", "zfp", "zstd"])
def test_damaged_chunk_stream_raises_corrupt(codec_id: str, uint16_stack) -> None:
    mode = "lossless"
    codec = get_codec(codec_id, mode=mode)
    data = bytearray(codec.encode(uint16_stack))
    with pytest.raises(CorruptFileError):
        codec.decode(bytes(data[:-20]) if codec_id != "zstd" else bytes(data[:40]))
    with pytest.raises(CorruptFileError):
        codec.decode(b"XXXX" + bytes(data[4:]))


def test_two_dimensional_input_keeps_its_shape(uint16_stack) -> None:
    image = uint16_stack[0]
    codec = get_codec("jpegls")
    assert codec.decode(codec.encode(image)).shape == image.shape
    assert ctpress.__version__


def test_jpeg2000_frames_are_bare_codestreams_and_jp2_frames_still_decode(
    uint16_stack, monkeypatch
) -> None:
    """Frames are .j2k codestreams (SOC marker first, no 85-byte JP2 boxes); chunks whose
    frames are JP2 files (written by earlier versions) decode the same."""
    import imagecodecs

    from ctpress.codecs.jpeg2000 import Jpeg2000

    codec = get_codec("jpeg2000", mode="lossless")
    bare = codec.encode(uint16_stack)
    frame = Jpeg2000()._encode_image(uint16_stack[0], 60)
    assert frame[:4] == b"\xff\x4f\xff\x51"

    def jp2(self, image: np.ndarray, knob: float | None) -> bytes:
        level = 0 if knob is None else round(knob)
        return bytes(imagecodecs.jpeg2k_encode(image, level=level, reversible=knob is None))

    monkeypatch.setattr(Jpeg2000, "_encode_image", jp2)
    boxed = codec.encode(uint16_stack)
    assert len(boxed) > len(bare) + 80 * (len(uint16_stack) - 1)
    assert np.array_equal(codec.decode(boxed), uint16_stack)
    assert np.array_equal(codec.decode(bare), uint16_stack)
