"""The ctpress command: round trips through files, and clean errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctpress.cli import main


def run(*args: str) -> int:
    return main(list(args))


@pytest.fixture
def npy_file(tmp_path: Path, uint16_stack: np.ndarray) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, uint16_stack)
    return path


def test_lossless_jpegls_round_trip_is_bit_identical(npy_file: Path, tmp_path: Path) -> None:
    ctpz, out = tmp_path / "x.ctpz", tmp_path / "y.npy"
    assert run("-q", "compress", str(npy_file), str(ctpz), "--codec", "jpegls", "--lossless") == 0
    assert run("-q", "decompress", str(ctpz), str(out)) == 0
    np.testing.assert_array_equal(np.load(out), np.load(npy_file))


def test_max_error_and_bpp_through_the_cli(npy_file: Path, tmp_path: Path, capsys) -> None:
    x = np.load(npy_file)
    ctpz, out = tmp_path / "x.ctpz", tmp_path / "y.npy"
    assert run("compress", str(npy_file), str(ctpz), "--codec", "sz3", "--max-error", "5") == 0
    assert "bits/value" in capsys.readouterr().out
    assert run("-q", "decompress", str(ctpz), str(out)) == 0
    assert np.abs(np.load(out).astype(int) - x).max() <= 5
    assert run("-q", "compress", str(npy_file), str(ctpz), "-f", "--codec=htj2k", "--bpp=3") == 0
    assert abs(8 * ctpz.stat().st_size / x.size - 3) <= 0.3


def test_info_codecs_and_view_range(npy_file: Path, tmp_path: Path, capsys) -> None:
    ctpz, out = tmp_path / "x.ctpz", tmp_path / "part.npy"
    assert run("-q", "compress", str(npy_file), str(ctpz), "--chunk-views", "5") == 0
    assert run("info", str(ctpz)) == 0
    text = capsys.readouterr().out
    assert "checksums OK" in text and "(24, 16, 96)" in text
    assert run("codecs") == 0
    assert "jpeg2000" in capsys.readouterr().out
    assert run("-q", "decompress", str(ctpz), str(out), "--views", "3:12") == 0
    np.testing.assert_array_equal(np.load(out), np.load(npy_file)[3:12])


@pytest.mark.parametrize(
    ("make_input", "extra", "message"),
    [
        (lambda d: d / "missing.npy", [], "no such file"),
        (lambda d: _save(d / "x.txt", np.zeros((3, 4, 5))), [], "extension"),
        (lambda d: _save(d / "nan.npy", np.full((3, 4, 5), np.nan)), [], "NaN"),
        (lambda d: _save(d / "empty.npy", np.zeros((0, 4, 5))), [], "empty"),
        (lambda d: _save(d / "flat.npy", np.zeros(7)), [], "1-D"),
        (lambda d: _save(d / "ok.npy", np.ones((3, 4, 5))), ["--codec", "nope"], "unknown codec"),
        (
            lambda d: _save(d / "noise.npy", _noise()),
            ["--codec", "jpegls", "--bpp", "0.5"],
            "cannot reach",
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(
    tmp_path: Path, capsys, make_input, extra: list[str], message: str
) -> None:
    source = make_input(tmp_path)
    out = tmp_path / "out.ctpz"
    assert run("-q", "compress", str(source), str(out), *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def _noise() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 60000, (4, 64, 128), dtype=np.uint16)


def _save(path: Path, array: np.ndarray) -> Path:
    with open(path, "wb") as fh:
        np.save(fh, array)
    return path


def test_wrong_output_extension_and_damaged_file(npy_file: Path, tmp_path: Path, capsys) -> None:
    assert run("compress", str(npy_file), str(tmp_path / "x.npy2")) == 2
    assert ".ctpz" in capsys.readouterr().err
    ctpz = tmp_path / "x.ctpz"
    assert run("-q", "compress", str(npy_file), str(ctpz), "--codec", "zstd") == 0
    data = bytearray(ctpz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ctpz.write_bytes(bytes(data))
    out = tmp_path / "y.npy"
    assert run("decompress", str(ctpz), str(out)) == 2
    assert "checksum" in capsys.readouterr().err
    assert not out.exists()
    ctpz.write_bytes(bytes(data[: len(data) // 3]))
    assert run("info", str(ctpz)) == 2
    assert "truncated" in capsys.readouterr().err


def test_usage_errors_exit_2_and_console_script_works(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ctpress.cli", "compress"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ctpress.cli",
            "compress",
            "a.npy",
            "b.ctpz",
            "--lossless",
            "--bpp",
            "2",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "not allowed with" in proc.stderr


def test_simulate_compare_and_recon(tmp_path: Path, capsys) -> None:
    scan, ctpz = tmp_path / "s.npz", tmp_path / "s.ctpz"
    assert (
        run(
            "-q",
            "simulate",
            str(scan),
            "--geometry",
            "fan",
            "--views",
            "90",
            "--rows",
            "2",
            "--cols",
            "64",
        )
        == 0
    )
    assert run("-q", "compress", str(scan), str(ctpz), "--codec", "sz3", "--max-error", "10") == 0
    assert run("compare", str(scan), str(ctpz), "--recon", "--json") == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["projection"]["max_abs_error"] <= 10
    assert result["recon"]["rmse_hu"] > 0 and result["recon"]["psnr_db"] > 30
    recon = tmp_path / "r.npy"
    assert run("-q", "recon", str(ctpz), str(recon), "--hu", "--size", "48") == 0
    image = np.load(recon)
    assert image.shape == (2, 48, 48) and image.min() < -500 and image.max() > -200
    assert run("-q", "recon", str(ctpz), str(tmp_path / "r.png")) == 2


def test_simulate_helical_dicom_ctpd_and_reconstruct(tmp_path: Path) -> None:
    series = tmp_path / "series"
    assert (
        run(
            "-q",
            "simulate",
            str(series),
            "--geometry",
            "helical",
            "--views",
            "240",
            "--rows",
            "8",
            "--cols",
            "64",
            "--detector",
            "cylindrical",
            "--format",
            "dicom-ctpd",
        )
        == 0
    )
    assert len(list(series.glob("*.dcm"))) == 240
    out = tmp_path / "h.npy"
    assert run("-q", "recon", str(series), str(out), "--size", "32") == 0
    assert np.load(out).ndim == 3


def test_max_output_bytes_caps_decompress_info_and_verify(
    npy_file: Path, tmp_path: Path, capsys
) -> None:
    ctpz, out = tmp_path / "x.ctpz", tmp_path / "y.npy"
    assert run("-q", "compress", str(npy_file), str(ctpz)) == 0
    size = np.load(npy_file).nbytes
    capsys.readouterr()
    assert run("-q", "decompress", str(ctpz), str(out), "--max-output-bytes", "1K") == 2
    err = capsys.readouterr().err
    assert "max_output_bytes" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert run("-q", "decompress", str(ctpz), str(out), "--max-output-bytes", str(size)) == 0
    for command in ("info", "verify"):
        assert run(command, str(ctpz), "--max-output-bytes", "1M") == 0
    with pytest.raises(SystemExit) as exc:
        run("verify", str(ctpz), "--max-output-bytes", "lots")
    assert exc.value.code == 2
    assert "must be a size like 64G" in capsys.readouterr().err


def test_train_refuses_an_existing_weights_file_before_training(tmp_path: Path, capsys) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"the user's file")
    assert run("-q", "train", "vqvae", "--out", str(weights), "--steps", "1") == 2
    assert "pass --force" in capsys.readouterr().err
    assert weights.read_bytes() == b"the user's file"


def test_train_only_applies_to_sparse_unet(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w.safetensors"
    assert run("-q", "train", "vqvae", "--out", str(out), "--steps", "1", "--only", "image") == 2
    assert "--only applies to ctpress train sparse-unet" in capsys.readouterr().err
    assert not out.exists()


def test_train_dvc_refuses_data_without_multi_row_scans_and_unknown_rate_points(
    tmp_path: Path, capsys
) -> None:
    (tmp_path / "projections").mkdir()
    np.save(tmp_path / "projections" / "sino.npy", np.ones((12, 64), np.uint16))
    out = tmp_path / "w.safetensors"
    train = ("-q", "train", "dvc", "--data", str(tmp_path), "--out", str(out), "--steps", "1")
    assert run(*train) == 2
    assert "ctpress train dvc needs multi-row scans" in capsys.readouterr().err
    assert run(*train, "--rate-point", "9") == 2
    assert "unknown rate point 9 of 'dvc' (0..2)" in capsys.readouterr().err
    assert not out.exists()
