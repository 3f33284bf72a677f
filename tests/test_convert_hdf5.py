"""``ctpress convert`` to HDF5 through hdf5plugin's filters: plain h5py + hdf5plugin read
the files back in a fresh process, within each rate control's bound."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import ctpress
from conftest import smooth_stack
from ctpress import Geometry, InputError, Scan
from ctpress.cli import main
from ctpress.convert import convert

#: (codec, rate control) -> the filter id HDF5 records (as h5py lists it).
CASES = [
    ("zstd", {}, "32015"),
    ("blosc2", {}, "32026"),
    ("zfp", {"lossless": True}, "32013"),
    ("zfp", {"max_error": 3.0}, "32013"),
    ("zfp", {"bpp": 6.0}, "32013"),
    ("sperr", {"max_error": 3.0}, "32028"),
    ("sperr", {"bpp": 2.0}, "32028"),
    ("sperr", {"psnr": 70.0}, "32028"),
    ("sz3", {"max_error": 3.0}, "32024"),
]

#: Read every file with plain h5py + hdf5plugin (no ctpress) and print what it holds.
READER = """
import json, sys
import h5py, hdf5plugin
out = {}
for path in sys.argv[1:]:
    with h5py.File(path, "r") as f:
        ds = f["projections"]
        out[path] = {"values": ds[()].tolist(), "filters": sorted(ds._filters),
                     "stored": ds.id.get_storage_size(), "chunks": list(ds.chunks)}
print(json.dumps(out))
"""


def _stack() -> np.ndarray:
    """(45, 12, 64) uint16 views: smooth structure plus noise, so every filter compresses."""
    rng = np.random.default_rng(4)
    smooth = 20000 + 8000 * smooth_stack((45, 12, 64), seed=3) / 65535
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 65535).astype(np.uint16)


def _name(codec: str, rate: dict[str, float]) -> str:
    return "_".join([codec, *(f"{k}{v:g}" for k, v in rate.items())]) + ".h5"


def test_every_filter_reads_back_with_plain_h5py_within_its_bound(tmp_path: Path) -> None:
    stack = _stack()
    paths = []
    for codec, rate, _ in CASES:
        path = tmp_path / _name(codec, rate)
        convert(stack, path, codec=codec, chunk_views=16, **rate)
        paths.append(str(path))
    result = subprocess.run(
        [sys.executable, "-c", READER, *paths], capture_output=True, text=True, check=True
    )
    read = json.loads(result.stdout)
    value_range = float(stack.max()) - float(stack.min())
    for (codec, rate, filter_id), path in zip(CASES, paths, strict=True):
        info = read[path]
        values = np.asarray(info["values"], dtype=np.float64)
        error = values - stack
        assert info["filters"] == [filter_id], (codec, info["filters"])
        assert info["chunks"] == [16, 12, 64]
        if rate.get("lossless") or not rate:
            assert np.array_equal(values, stack), codec
        if "max_error" in rate:
            assert np.abs(error).max() <= rate["max_error"], (codec, np.abs(error).max())
        if "psnr" in rate:
            psnr = 10 * math.log10(value_range**2 / np.mean(error**2))
            # SPERR aims at its PSNR per chunk, on the chunk's range; not a guarantee
            assert psnr >= rate["psnr"] - 0.5, (codec, psnr)
        if "bpp" in rate:  # the filter's own rate, on the chunks it stored
            bits = 8 * info["stored"] / (48 * 12 * 64)  # three chunks of 16 views
            assert 0.8 * rate["bpp"] <= bits <= 1.15 * rate["bpp"], (codec, bits)
        if rate and not rate.get("lossless"):
            assert 0 < np.abs(error).max(), codec  # lossy: the file holds decoded floats


def test_a_configured_codec_instance_is_accepted(tmp_path: Path) -> None:
    from ctpress.codecs import get_codec

    stack = _stack()
    convert(stack, tmp_path / "z.h5", codec=get_codec("zfp", mode="lossless"))
    np.testing.assert_array_equal(ctpress.read_scan(tmp_path / "z.h5").array(), stack)


def test_read_scan_gives_back_geometry_and_values(tmp_path: Path) -> None:
    stack = _stack()
    geometry = Geometry(kind="parallel", angles_rad=tuple(np.linspace(0, math.pi, 45)))
    scan = Scan(stack, geometry=geometry, metadata={"units": "counts"})
    path = tmp_path / "scan.nxs"
    convert(scan, path, codec="blosc2")
    back = ctpress.read_scan(path)
    assert back.geometry == geometry
    assert back.metadata["units"] == "counts"
    np.testing.assert_array_equal(back.array(), stack)
    with h5py.File(path) as f:  # parallel beam: the NXtomo layout
        assert f["entry/instrument/detector/data"].chunks is not None


def test_a_lossy_filter_codes_every_chunk_once_with_darks_and_flats_before_the_views(
    tmp_path: Path,
) -> None:
    """Darks and flats shift the views off the chunk grid; the error bound still holds
    (a chunk written in two parts would be decoded and coded twice)."""
    stack = _stack()
    aux = {"dark": stack[:3] // 8, "flat": stack[:5] + 100}
    geometry = Geometry(kind="parallel", angles_rad=tuple(np.linspace(0, math.pi, 45)))
    path = tmp_path / "nx.h5"
    convert(Scan(stack, geometry=geometry, aux=aux), path, codec="sz3", max_error=2.0)
    back = ctpress.read_scan(path)
    assert np.abs(back.array().astype(np.float64) - stack).max() <= 2.0
    assert np.abs(back.aux["flat"].astype(np.float64) - aux["flat"]).max() <= 2.0


@pytest.mark.parametrize(
    ("codec", "rate", "message"),
    [
        ("sperr", {"lossless": True}, "does not support .lossless."),
        ("sz3", {"bpp": 2.0}, "sz3 with bpp"),
        ("zfp", {"psnr": 60.0}, "zfp with psnr"),
        ("jpegls", {}, "got codec 'jpegls'"),
    ],
)
def test_an_unsupported_codec_or_rate_is_refused_before_writing(
    tmp_path: Path, codec: str, rate: dict[str, object], message: str
) -> None:
    path = tmp_path / "out.h5"
    with pytest.raises(InputError, match=message):
        convert(_stack(), path, codec=codec, **rate)
    assert not path.exists()


def test_chunks_sperrs_filter_fails_on_are_refused_before_writing(tmp_path: Path) -> None:
    """(1, 384) chunks make the filter fail (and abort some processes): refused first."""
    sinograms = np.random.default_rng(0).normal(100, 5, (5, 384)).astype(np.float32)
    path = tmp_path / "s.h5"
    with pytest.raises(InputError, match="fewer than two axes"):
        convert(sinograms, path, codec="sperr", max_error=1.0, chunk_views=1)
    assert not list(tmp_path.iterdir())
    convert(sinograms, path, codec="sperr", max_error=1.0, chunk_views=2)
    assert np.abs(ctpress.read_scan(path).user_array() - sinograms).max() <= 1.0


def test_cli_writes_hdf5_and_refuses_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.npy"
    np.save(source, _stack())
    assert (
        main(["convert", str(source), str(tmp_path / "o.h5"), "--codec", "sperr", "--bpp", "3"])
        == 0
    )
    assert "hdf5plugin filter of sperr" in capsys.readouterr().out
    existing = tmp_path / "mine.h5"
    existing.write_bytes(b"user data")
    assert main(["convert", str(source), str(existing), "--codec", "zstd"]) == 2
    assert existing.read_bytes() == b"user data"
    assert (
        main(["convert", str(source), str(tmp_path / "x.h5"), "--codec", "sz3", "--bpp", "2"]) == 2
    )
    err = capsys.readouterr().err
    assert "HDF5 output supports" in err and "Traceback" not in err
