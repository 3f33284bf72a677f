"""SIREN codec: weight coding, fitting, rate control, partial decode, determinism guards."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ctpress
from conftest import smooth_stack
from ctpress.codecs import get_codec
from ctpress.codecs.siren import _SIDE, decode_siren, plan_network
from ctpress.errors import CorruptFileError, CtpressError, InputError
from ctpress.learned import inr, zoo
from ctpress.learned.models.siren import SirenArch, SirenStack

FAST = {"steps": 250}


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    """(24, 8, 48) uint16 sinogram-like stack."""
    return np.clip(smooth_stack((24, 8, 48), seed=3), 0, 65535).astype(np.uint16)


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10((x.max() - x.min()) ** 2 / mse)


def _inner(chunk: bytes) -> bytes:
    """The siren stream inside a codec chunk (after the chunk's own header)."""
    return chunk[chunk.index(b"CTSR") :]


def test_quantised_weights_round_trip_bit_exactly():
    rng = np.random.default_rng(0)
    arch = SirenArch(width=12, depth=2)
    net = SirenStack(arch, segments=3, seed=1)
    init = inr.zero_init(net)
    sens = [float(s) for s in rng.uniform(0.1, 10, len(net.tensors()))]
    q = inr.quantise(net, init, 1e-3, sens)
    shapes = [tuple(t.shape) for t in net.tensors()]
    back = inr.QuantisedWeights.decode(q.encode(), shapes)
    assert back.exponents == q.exponents
    for a, b in zip(q.q, back.q, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    for a, b in zip(q.dequantise(init), back.dequantise(init), strict=True):
        assert torch.equal(a, b)
    # a step of 2**(e/4) is exact and the same on every machine
    assert inr.quant_step(-8) == 0.25 and inr.quant_step(4) == 2.0
    assert inr.quant_step(inr.step_exponent(0.3)) == pytest.approx(0.3, rel=0.1)


def test_small_scan_fits_to_stated_psnr(stack):
    codec = get_codec("siren", mode="psnr", value=30.0, **FAST)
    chunk = codec.encode(stack)
    decoded = codec.decode(chunk)
    assert decoded.dtype == stack.dtype and decoded.shape == stack.shape
    assert _psnr(stack, decoded) >= 30.0
    assert 8 * len(chunk) / stack.size < 3.0  # far below the 16 bits of the input


def test_bpp_target_counts_every_byte(stack):
    for bpp in (0.5, 1.5):  # network only; network + residual layer
        codec = get_codec("siren", mode="bpp", value=bpp, **FAST)
        chunk = codec.encode(stack)
        assert abs(8 * len(chunk) / stack.size - bpp) <= 0.1 * bpp
        assert _psnr(stack, codec.decode(chunk)) > 20


def test_max_error_and_lossless_hold_on_every_value(stack):
    for mode, value in (("max_error", 7.0), ("lossless", None)):
        codec = get_codec("siren", mode=mode, value=value, **FAST)
        decoded = codec.decode(codec.encode(stack))
        err = np.abs(decoded.astype(np.int64) - stack.astype(np.int64))
        assert err.max() <= (value or 0)


def test_float_data_max_error(stack):
    x = stack.astype(np.float32) / 7.0
    codec = get_codec("siren", mode="max_error", value=0.5, **FAST)
    decoded = codec.decode(codec.encode(x))
    assert decoded.dtype == np.float32
    assert np.max(np.abs(decoded.astype(np.float64) - x)) <= 0.5


def test_view_range_decode_equals_full_decode(stack):
    for options in ({"segments": 3, "width": 12}, {"segments": 1, "width": 12}):
        codec = get_codec("siren", mode="max_error", value=40.0, **FAST, **options)
        stream = _inner(codec.encode(stack))
        full = decode_siren(stream, stack.shape)
        for a, b in ((0, 24), (5, 9), (7, 8), (16, 24), (0, 1)):
            assert np.array_equal(decode_siren(stream, stack.shape, a, b), full[a:b])


def test_container_view_range(tmp_path, stack):
    out = tmp_path / "s.ctpz"
    ctpress.compress(stack, out, codec="siren", psnr=30.0, segments=4, width=16, **FAST)
    with ctpress.open(out) as f:
        assert len(f.chunks) == 1  # siren keeps a scan in one chunk (one cascade)
        full = f.read_views()
        assert np.array_equal(f[10:14], full[10:14])
    chunk = get_codec("siren", mode="psnr", value=25.0, width=8, segments=2, steps=50).encode(stack)
    with pytest.raises(InputError):
        get_codec("siren").decode_views(chunk, 20, 30)
    assert np.array_equal(
        get_codec("siren").decode_views(chunk, 3, 9), get_codec("siren").decode(chunk)[3:9]
    )


def test_damaged_weights_fail_loudly(stack):
    codec = get_codec("siren", mode="psnr", value=28.0, segments=2, width=12, **FAST)
    stream = bytearray(_inner(codec.encode(stack)))
    start = _SIDE.size + 4 * 2 + 2 * 8 + 4  # into the range-coded weight symbols
    stream[start + 3] ^= 0x10
    with pytest.raises(CorruptFileError):
        decode_siren(bytes(stream), stack.shape)
    with pytest.raises(CorruptFileError):
        decode_siren(bytes(stream[:40]), stack.shape)


def test_network_plan_grows_segments_not_width():
    base = SirenArch()
    small, s_small = plan_network(10**6, 360, 8000, base)
    big, s_big = plan_network(10**6, 360, 800000, base)
    assert s_small == 1 and small.n_params * 5.5 <= 8000
    assert s_big > 1 and big.n_params <= 2400 * 2
    assert s_big <= 360 // 4


def test_bad_settings_are_refused():
    with pytest.raises(InputError):
        get_codec("siren", mode="psnr", value=30, encoding="wavelet")
    with pytest.raises(InputError):
        get_codec("siren", mode="psnr", value=30, width=0)
    with pytest.raises(InputError):
        get_codec("siren", mode="psnr", value=30, time_budget=-1)


def test_fourier_encoding_and_time_budget(stack):
    codec = get_codec(
        "siren", mode="psnr", value=28.0, encoding="fourier", frequencies=2, time_budget=3.0
    )
    decoded = codec.decode(codec.encode(stack))
    assert _psnr(stack, decoded) >= 28.0


def test_meta_init_is_pinned(tmp_path, stack, monkeypatch):
    """A stream made with a meta-learned initialisation is refused by a ctpress whose
    initialisation differs (and decodes with the right one)."""
    arch = SirenArch(width=12, depth=3)
    init = SirenStack(arch, 1, seed=7)
    directory = tmp_path / "weights"
    directory.mkdir()
    path = directory / "siren-rp0.safetensors"
    inr.save_meta_init(init, path, {"method": "siren", "rate_point": 0})
    zoo_dir = Path(zoo.weights_dir())
    for name in (zoo.MANIFEST, *(e["file"] for m in zoo.manifest()["methods"].values() for e in m)):
        if (zoo_dir / name).is_file() and not (directory / name).exists():
            (directory / name).write_bytes((zoo_dir / name).read_bytes())
    monkeypatch.setenv(zoo.ENV_DIR, str(directory))
    zoo.clear_cache()
    try:
        zoo.install(path)
        assert inr.load_meta_init(arch) is not None
        codec = get_codec(
            "siren", mode="psnr", value=28.0, width=12, depth=3, segments=1, meta_init=True, **FAST
        )
        chunk = codec.encode(stack)
        assert _inner(chunk)[5] & 4  # meta-init flag
        assert _psnr(stack, codec.decode(chunk)) >= 28.0
        other = SirenStack(arch, 1, seed=8)
        inr.save_meta_init(other, path, {"method": "siren", "rate_point": 0})
        zoo.install(path)
        with pytest.raises(CtpressError, match="initialisation"):
            codec.decode(chunk)
    finally:
        monkeypatch.delenv(zoo.ENV_DIR)
        zoo.clear_cache()


_ENCODE = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from ctpress.codecs import get_codec
x = np.load(sys.argv[1])
codec = get_codec("siren", mode="psnr", value=33.0, steps=200, segments=2, width=16)
open(sys.argv[2], "wb").write(codec.encode(x))
"""
_DECODE = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from ctpress.codecs import get_codec
np.save(sys.argv[2], get_codec("siren").decode(open(sys.argv[1], "rb").read()))
"""


def test_decode_is_identical_across_processes_and_threads(tmp_path, stack):
    np.save(tmp_path / "x.npy", stack)
    run = [sys.executable, "-c"]
    subprocess.run([*run, _ENCODE, str(tmp_path / "x.npy"), str(tmp_path / "c"), "1"], check=True)
    chunk = (tmp_path / "c").read_bytes()
    subprocess.run([*run, _DECODE, str(tmp_path / "c"), str(tmp_path / "d.npy"), "2"], check=True)
    here = get_codec("siren").decode(chunk)
    assert np.array_equal(np.load(tmp_path / "d.npy"), here)
    assert _psnr(stack, here) >= 33.0


def test_cli_codec_options(tmp_path, stack, capsys):
    from ctpress.cli import main

    np.save(tmp_path / "x.npy", stack)
    out = tmp_path / "x.ctpz"
    base = ["-q", "compress", str(tmp_path / "x.npy"), str(out), "-f", "--codec", "siren"]
    assert main([*base, "--psnr", "28", "-O", "steps=100", "-O", "width=16"]) == 0
    assert ctpress.open(out).header["codec"]["width"] == 16
    assert main([*base, "--psnr", "28", "-O", "stepz=100"]) == 2
    assert "has no setting 'stepz'" in capsys.readouterr().err
    assert main([*base, "--psnr", "28", "-O", "width=wide"]) == 2
    assert not out.with_name("x.ctpz.tmp").exists()


def test_a_view_larger_than_a_block_is_evaluated_in_rows(monkeypatch):
    """A view larger than the evaluation block is evaluated a few rows at a time, so the
    temporaries stay small however large a (crafted) stream's views are, and the grid is
    the one whole views give."""
    arch = SirenArch(width=12, depth=2)
    net = SirenStack(arch, segments=1, seed=3)
    weights = [t.detach() for t in net.tensors()]
    bounds = np.array([0, 4])
    views = np.arange(4)
    whole = inr.evaluate(arch, weights, bounds, 0, views, 24, 40)
    sizes = []
    addmm = torch.addmm

    def counted(bias, h, w):
        sizes.append(h.shape[0])
        return addmm(bias, h, w)

    monkeypatch.setattr(inr, "_EVAL_BLOCK", 100)
    monkeypatch.setattr(torch, "addmm", counted)
    in_rows = inr.evaluate(arch, weights, bounds, 0, views, 24, 40)
    assert max(sizes) <= 100
    np.testing.assert_array_equal(in_rows, whole)
