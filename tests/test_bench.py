"""ctpress.bench and ``ctpress bench``: measurements, failure rows, result files, recon metrics."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ctpress import metrics
from ctpress.bench import (
    BenchRecord,
    BenchResult,
    PeakMemory,
    bench_codec,
    benchmark_scan,
    format_table,
    load_results,
    parse_rates,
    prepare_recon,
    recon_noise_std,
    run_bench,
    write_results,
)
from ctpress.cli import main
from ctpress.errors import InputError
from ctpress.io import write_scan
from ctpress.noise import NoiseModel
from ctpress.rate import RateControl
from ctpress.scan import Scan
from ctpress.sim import simulate_scan

RATES = parse_rates("lossless,psnr=50,psnr=60,bpp=2")


@pytest.fixture(scope="module")
def tiny_scan() -> Scan:
    """(64, 4, 64) uint16 parallel-beam scan of the embedded volume (Poisson noise)."""
    return simulate_scan(None, geometry_kind="parallel", n_views=64, det_rows=4, det_cols=64)


@pytest.fixture(scope="module")
def tiny_result(tiny_scan: Scan) -> BenchResult:
    return run_bench({"tiny": tiny_scan}, ["jpegls", "sz3"], RATES, recon=True, progress=False)


def test_parse_rates() -> None:
    assert parse_rates("default") is None
    assert parse_rates("lossless, max_error=4,bpp=2,psnr=60,noise=0.5") == [
        RateControl("lossless"),
        RateControl("max_error", 4.0),
        RateControl("bpp", 2.0),
        RateControl("psnr", 60.0),
        RateControl("noise", 0.5),
    ]
    for bad in ("lossless=1", "bpp", "quality=3", "bpp=x", "", "bpp=-1", "noise=nan"):
        with pytest.raises(InputError, match=r"bad rate|empty"):
            parse_rates(bad)


def test_records_failures_and_skips(tiny_result: BenchResult) -> None:
    by_key = {r.key: r for r in tiny_result.records}
    labels = ("lossless", "psnr=50", "psnr=60", "bpp=2")
    assert list(by_key) == [f"tiny|{c}|{r}" for c in ("jpegls", "sz3") for r in labels]
    lossless = by_key["tiny|jpegls|lossless"]
    assert lossless.ok and lossless.psnr_db == math.inf and lossless.max_abs_error == 0
    assert lossless.recon_psnr_db == math.inf and lossless.recon_rmse_hu == 0
    assert lossless.added_noise_ratio == 0
    failed = by_key["tiny|jpegls|bpp=2"]  # JPEG-LS cannot get this low on so small a scan
    assert not failed.ok and "cannot reach" in str(failed.error) and failed.n_bytes is None
    skipped = by_key["tiny|sz3|lossless"]
    assert skipped.note and "no lossless" in skipped.note and skipped.error is None
    for key in ("tiny|sz3|psnr=50", "tiny|jpegls|psnr=60"):
        r = by_key[key]
        target = 50 if "50" in key else 60
        assert r.ok and r.psnr_db is not None and r.psnr_db >= target - 0.01
        assert r.n_bytes and r.bits_per_value == pytest.approx(8 * r.n_bytes / (64 * 4 * 64))
        assert r.ratio_vs_uint16 == pytest.approx(r.ratio)  # uint16 input
        assert r.encode_mb_s and r.decode_mb_s and r.vsi is not None
        assert r.recon_psnr_db is not None and 20 < r.recon_psnr_db < 120
        assert r.recon_ssim is not None and 0 < r.recon_ssim <= 1
        assert r.added_noise_ratio is not None and 0 < r.added_noise_ratio < 5
        assert r.origin == "this run"
    # lower PSNR target, more added noise
    assert (
        by_key["tiny|sz3|psnr=50"].added_noise_ratio > by_key["tiny|sz3|psnr=60"].added_noise_ratio
    )
    table = format_table(tiny_result.records)
    assert "n/a: codec 'jpegls' cannot reach" in table and "skipped: sz3" in table
    assert set(tiny_result.samples) >= {"tiny|original", "tiny|sz3|psnr=50"}
    assert tiny_result.samples["tiny|original"]["slice"].shape == (64, 64)


def test_result_files_and_resume(tiny_scan: Scan, tiny_result: BenchResult, tmp_path: Path) -> None:
    write_results(tiny_result, tmp_path)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["run"]["library"].startswith("ctpress ") and "machine" in payload["run"]
    assert "git_revision" in payload["run"] and payload["settings"]["codecs"] == ["jpegls", "sz3"]
    recon = payload["settings"]["scans"]["tiny"]["recon"]
    assert recon["algorithm"] == "fbp" and recon["noise_std_hu"] > 0
    assert "Poisson" in recon["noise_estimator"]
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 8 and rows[0]["psnr_db"] == "inf" and rows[3]["error"]
    loaded = load_results(tmp_path)
    assert [r.key for r in loaded.records] == [r.key for r in tiny_result.records]
    assert loaded.records[0].psnr_db == math.inf
    np.testing.assert_array_equal(
        loaded.samples["tiny|sz3|psnr=50"]["sinogram"],
        tiny_result.samples["tiny|sz3|psnr=50"]["sinogram"],
    )
    # Resume: matching records are reused and labelled, a new rate is measured (2 workers).
    again = run_bench(
        {"tiny": tiny_scan},
        ["sz3"],
        [("psnr", 50.0), ("max_error", 100.0)],
        recon=True,
        jobs=2,
        resume=loaded,
        progress=False,
    )
    reused, fresh = again.records
    assert reused.origin.startswith("earlier run of") and reused.psnr_db == pytest.approx(
        tiny_result.records[5].psnr_db
    )
    assert fresh.origin == "this run" and fresh.ok and fresh.max_abs_error <= 100
    assert "*" in format_table(again.records)
    # A different scan is never matched.
    other = Scan(tiny_scan.projections[::-1].copy(), tiny_scan.geometry, tiny_scan.metadata)
    redo = run_bench({"tiny": other}, ["sz3"], [("psnr", 50.0)], resume=loaded, progress=False)
    assert redo.records[0].origin == "this run"


def test_peak_memory() -> None:
    with PeakMemory() as mem:
        a = np.ones(10_000_000)
        del a
    assert mem.mb is None or 70 < mem.mb < 200


def test_recon_noise_estimators(tiny_scan: Scan) -> None:
    """Both estimators against the true noise (noisy minus noiseless reconstruction)."""
    ref = prepare_recon(tiny_scan, n_slices=2)
    clean = simulate_scan(
        None, geometry_kind="parallel", n_views=64, det_rows=4, det_cols=64, i0=None
    )
    truth = float(np.std((ref.volume - ref.reconstruct(clean))[ref.mask]))
    assert ref.noise_std == pytest.approx(truth, rel=0.1)
    meta = {k: v for k, v in tiny_scan.metadata.items() if k != "i0"}
    unknown = Scan(tiny_scan.projections, tiny_scan.geometry, meta)
    even_odd, how = recon_noise_std(unknown, ref.reconstruct, ref.mask)
    assert how.startswith("even/odd") and even_odd > 0.9 * truth  # view aliasing adds to it


def test_recon_metrics_values() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0.02, 0.005, (2, 40, 40))
    mask = np.zeros(ref.shape, bool)
    mask[:, 5:35, 5:35] = True
    same = metrics.recon_metrics(ref, ref, mask, 0.02, noise_std=0.001)
    assert same["psnr_db"] == math.inf and same["ssim"] == 1 and same["rmse_hu"] == 0
    noise = rng.normal(0, 0.0005, ref.shape)
    out = metrics.recon_metrics(ref, ref + noise, mask, 0.02, noise_std=0.001)
    assert out["rmse_hu"] == pytest.approx(np.sqrt(np.mean(noise[mask] ** 2)) * 1e3 / 0.02)
    assert out["added_noise_ratio"] == pytest.approx(np.std(noise[mask]) / 0.001)
    assert out["data_range"] == pytest.approx(np.ptp(ref[mask]))
    assert 0 < out["ssim"] < 1
    assert math.isnan(metrics.recon_metrics(ref, ref + noise, mask, 0.02)["added_noise_ratio"])


def test_cli_bench(tiny_scan: Scan, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "scan.npz"
    write_scan(tiny_scan, src)
    out = tmp_path / "out"
    args = ["-q", "bench", str(src), "--codecs", "zstd", "--rates", "lossless,psnr=60"]
    assert main([*args, "--out", str(out), "--no-perceptual"]) == 0
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    for name in ("results.csv", "results.json", "samples.npz", "index.html", "summary.md"):
        assert (out / name).is_file()
    records = load_results(out).records
    assert [r.rate_label for r in records] == ["lossless", "psnr=60"] and records[1].vsi is None
    assert main([*args, "--out", str(out), "--resume", "--no-perceptual"]) == 0
    assert {r.origin == "this run" for r in load_results(out).records} == {False}
    assert main(["bench", str(src), "--rates", "bpp", "--out", str(out)]) == 2
    assert "bad rate" in capsys.readouterr().err


def test_record_labels_and_bench_codec(tiny_scan: Scan) -> None:
    r = BenchRecord("s", "zstd", "max_error", 4.0)
    assert r.rate_label == "max_error=4" and r.key == "s|zstd|max_error=4" and r.ok
    r = bench_codec(tiny_scan, "zstd", ("max_error", 4.0), scan_name="s", perceptual=False)
    assert r.key == "s|zstd|max_error=4" and r.max_abs_error <= 4 and r.haarpsi is None


def test_benchmark_scan_is_simulated_once_then_read_from_its_cache(tmp_path):
    scan, source = benchmark_scan(tmp_path, (4, 8, 16))
    assert scan.projections.shape == (4, 8, 16) and scan.projections.dtype == np.uint16
    assert source.startswith("simulate_scan")
    again, source = benchmark_scan(tmp_path, (4, 8, 16))
    assert source.startswith("cached simulation")
    assert np.array_equal(again.projections, scan.projections)


def test_noise_rate_uses_the_scans_estimated_noise_model() -> None:
    """``noise=F`` runs with the noise model estimated from each scan (stored in the
    settings); every value's error stays within F sigma of that model."""
    rng = np.random.default_rng(1)
    level = 200 + 3000 * np.hanning(96)[None, None, :] * np.ones((16, 4, 1))
    counts = 2.0 * rng.poisson(level / 2.0) + rng.normal(0, 5, level.shape)
    scan = Scan(np.clip(np.round(counts), 1, 60000).astype(np.uint16), None, {"units": "counts"})
    result = run_bench({"raw": scan}, ["sz3"], parse_rates("noise=0.5"), progress=False)
    (record,) = result.records
    model = result.settings["scans"]["raw"]["noise_model"]
    assert record.ok and record.rate_label == "noise=0.5", record.error
    assert model["source"] == "estimated from the data" and model["gain"] == pytest.approx(
        2, rel=0.15
    )
    sigma = NoiseModel.from_dict(model).sigma(scan.projections)
    assert record.max_abs_error is not None and record.max_abs_error <= 0.5 * sigma.max()
    # line integrals without i0 have no noise model: the record says why
    bare = Scan(np.ones((8, 2, 64), np.float32), None, {"units": "line_integral"})
    (failed,) = run_bench({"p": bare}, ["sz3"], [RateControl("noise", 0.5)], progress=False).records
    assert not failed.ok and "without i0" in str(failed.error)


def test_cli_bench_geometry_of_a_bare_array(
    tiny_scan: Scan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--geometry parallel --angles`` makes ``--recon`` work on a plain .npy, with the
    same reconstruction as the scan's own geometry; inconsistent options: one-line error."""
    npy = tmp_path / "scan.npy"
    np.save(npy, tiny_scan.projections)  # 64 views over 180 degrees
    out = tmp_path / "out"
    args = ["-q", "bench", str(npy), "--codecs", "zstd", "--rates", "lossless", "--recon"]
    rows_mm, cols_mm = tiny_scan.geometry.detector_spacing_mm
    args += ["--no-perceptual", "--out", str(out), "--detector-spacing-mm", f"{rows_mm},{cols_mm}"]
    assert main([*args, "--geometry", "parallel", "--angles", "0:180:2.8125"]) == 0
    settings = load_results(out).settings["scans"]["scan"]
    assert settings["geometry"] == "parallel" and settings["recon"]["algorithm"] == "fbp"
    (record,) = load_results(out).records
    assert record.recon_psnr_db == math.inf
    expected = prepare_recon(Scan(tiny_scan.projections, tiny_scan.geometry), n_slices=4)
    assert settings["recon"]["data_range_per_mm"] == pytest.approx(
        expected.describe()["data_range_per_mm"], rel=1e-4
    )
    angles = tmp_path / "angles.txt"
    np.savetxt(angles, np.arange(64) * 180 / 64)
    assert main([*args, "--force", "--geometry", "parallel", "--angles-file", str(angles)]) == 0
    capsys.readouterr()
    np.savetxt(angles, np.arange(63) * 180 / 64)
    bad = {
        ("--geometry", "parallel", "--angles", "0:180:2"): "gives 90 angles where the input has 64",
        ("--geometry", "parallel", "--angles-file", str(angles)): "give 63 finite angles",
        ("--geometry", "parallel"): "needs --angles",
        ("--geometry", "parallel", "--angles", "0:x"): "bad --angles",
        ("--geometry", "fan", "--angles", "0:360"): "needs --source-isocenter-mm",
        ("--angles", "0:180"): "give it too",
        (
            "--geometry",
            "parallel",
            "--angles",
            "0:180",
            "--detector-spacing-mm",
            "1,x",
        ): "bad --det",
        ("--geometry", "parallel", "--angles", "0:180", "--detector-spacing-mm", "-1"): "positive",
    }
    for extra, message in bad.items():
        assert main([*args, "--force", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    npz = tmp_path / "scan.npz"
    write_scan(tiny_scan, npz)
    geometry = ("--geometry", "parallel", "--angles", "0:180")
    assert main(["bench", str(npz), "--out", str(out), "--force", *geometry]) == 2
    assert "stores its own geometry" in capsys.readouterr().err
