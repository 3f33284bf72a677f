"""The bench report: index.html (self-contained, renders in headless Chromium) and summary.md."""

from __future__ import annotations

import base64
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ctpress.bench import BenchResult, parse_rates, run_bench
from ctpress.report import bd_rates, is_learned, matched_runs, study_table, write_report
from ctpress.sim import simulate_scan

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def result() -> BenchResult:
    """jpeg2000 and sz3 at lossless, three PSNR targets and an impossible rate, with recon."""
    scan = simulate_scan(None, geometry_kind="fan", n_views=64, det_rows=4, det_cols=64)
    rates = parse_rates("lossless,psnr=50,psnr=60,psnr=70,bpp=0.05")
    return run_bench({"fan": scan}, ["jpeg2000", "sz3"], rates, recon=True, progress=False)


@pytest.fixture(scope="module")
def report(result: BenchResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(result, tmp_path_factory.mktemp("report"))


def test_bd_rates_and_matched_runs(result: BenchResult) -> None:
    for metric in ("psnr_db", "recon_psnr_db"):
        bd = bd_rates(result.records, "fan", metric)
        rows = {row["codec"]: row for row in bd["rows"]}
        assert set(rows) == {"jpeg2000", "sz3"} and rows["jpeg2000"]["points"] == 3
        assert rows["jpeg2000"]["vs_anchor"] == pytest.approx(0.0)
        assert bd["best"] in rows and rows[bd["best"]]["vs_best"] == pytest.approx(0.0)
        assert rows["sz3"]["vs_anchor"] is not None and np.isfinite(rows["sz3"]["vs_anchor"])
    runs = matched_runs(result, "fan")
    assert [r.codec for r in runs] == ["jpeg2000", "sz3"] and all(r.ok for r in runs)


def test_learned_codecs_are_styled_and_ranked_apart(result: BenchResult) -> None:
    assert [is_learned(c) for c in ("hyperprior", "vqvae", "siren")] == [True, True, True]
    assert not any(is_learned(c) for c in ("jpeg2000", "jpegls", "sperr", "sz3", "zfp", "zstd"))
    # a learned codec with half of sz3's bits would be the best by BD-rate: it must not be
    # named the best classical codec
    halved = [
        dataclasses.replace(r, codec="siren", bits_per_value=r.bits_per_value / 2)
        for r in result.records
        if r.codec == "sz3" and r.bits_per_value is not None
    ]
    bd = bd_rates([*result.records, *halved], "fan", "psnr_db")
    rows = {row["codec"]: row for row in bd["rows"]}
    assert rows["siren"]["vs_anchor"] < min(rows["sz3"]["vs_anchor"], 0.0)
    assert bd["best"] in {"jpeg2000", "sz3"} and rows["siren"]["vs_best"] < 0


def test_report_content(result: BenchResult, report: Path) -> None:
    text = report.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    for heading in ("Run", "Results", "Original study", "Rate-distortion", "BD-rate", "Speed"):
        assert f"<h2>{heading}" in text
    assert text.count("<table") == 4
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3  # RD plots, speed bars, image comparison
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "n/a: 0.05 bits/value is below the container" in text
    assert "Every number was measured in this run." in text
    for r in result.records:  # the numbers shown are those of the records
        if r.ok and r.mode != "lossless":
            assert f"<td>{r.psnr_db:.2f}</td>" in text and f"<td>{r.n_bytes}</td>" in text
    summary = (report.parent / "summary.md").read_text()
    assert "| method | Size for 1 GB | PSNR | SSIM | HaarPSI | VSI | MSE |" in summary
    assert (
        "| fan | projection | jpeg2000 | 3 |" in summary and "| fan | recon | sz3 | 3 |" in summary
    )
    lossy = next(r for r in result.records if r.codec == "sz3" and r.mode == "psnr")
    size = study_table([lossy])[1][0][1]
    assert lossy.ratio is not None and size == f"{1000 / lossy.ratio:.1f} MB"


def test_reused_rows_are_labelled(result: BenchResult, tmp_path: Path) -> None:
    origin = "earlier run of 2020-01-01 (ctpress 0.0.1, abc123)"
    records = [dataclasses.replace(result.records[1], origin=origin), *result.records[2:]]
    text = write_report(dataclasses.replace(result, records=records), tmp_path).read_text()
    assert f"<td>{origin}</td>" in text and "Rows reused from earlier runs" in text
    assert origin in (tmp_path / "summary.md").read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    """Screenshot not blank, plots drawn (coloured pixels), tables and images in the DOM, no
    console messages."""
    import matplotlib.image

    assert CHROMIUM is not None
    shot = tmp_path / "shot.png"
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2000",
        "--enable-logging=stderr",
        "--v=0",
    ]
    url = report.resolve().as_uri()
    run = subprocess.run(
        [*flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "CONSOLE" not in run.stderr and "Uncaught" not in run.stderr
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert (pixels.min(axis=-1) < 0.9).mean() > 0.03  # not blank
    colour = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (colour > 0.3).sum() > 500  # the RD plot's coloured curves
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count("<table") == 4 and dom.count('<img alt="figure"') == 3
