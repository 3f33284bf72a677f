"""``ctpress batch``: parallel, resumable compression of many scans."""

from __future__ import annotations

import csv
import importlib
import os
from pathlib import Path

import numpy as np
import pytest

import ctpress
from conftest import smooth_stack
from ctpress.batch import MANIFEST, SUMMARY
from ctpress.cli import main


def _inputs(root: Path) -> list[Path]:
    """Two good scans in two folders (same file name), a third beside one, and a text
    file posing as a .npy."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    paths = []
    for k, name in enumerate(["a/scan.npy", "b/scan.npy", "b/other.npy"]):
        x = np.clip(smooth_stack((12, 8, 32), seed=k), 0, 65535).astype(np.uint16)
        np.save(root / name, x)
        paths.append(root / name)
    (root / "b" / "broken.npy").write_text("not an array")
    return paths


def test_batch_compresses_resumes_and_reports_the_bad_input(tmp_path: Path, capsys) -> None:
    good = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    pattern = str(tmp_path / "in" / "**" / "*.npy")
    args = ["-q", "batch", pattern, str(out), "--codec", "jpegls", "--lossless", "--workers", "2"]
    assert main(args) == 2  # one input failed: reported, the others done
    err = capsys.readouterr().err
    assert "broken.npy" in err and err.count("\n") == 1
    outputs = {p: out / (str(p.relative_to(tmp_path / "in")) + ".ctpz") for p in good}
    for source, output in outputs.items():  # relative paths kept: a/ and b/ scan.npy apart
        np.testing.assert_array_equal(ctpress.decompress(output).projections, np.load(source))
    with (out / SUMMARY).open() as fh:
        rows = {Path(r["input"]).name + r["input"][-14:]: r for r in csv.DictReader(fh)}
    statuses = sorted(r["status"] for r in rows.values())
    assert statuses == ["done", "done", "done", "error"]
    times = {p: p.stat().st_mtime_ns for p in outputs.values()}

    assert main(args) == 2  # rerun: nothing to do but the broken input
    for output, mtime in times.items():
        assert output.stat().st_mtime_ns == mtime
    records = ctpress.batch(pattern, out, workers=1, codec="jpegls", lossless=True)
    assert sorted(r.status for r in records) == ["error", "skipped", "skipped", "skipped"]

    everything = str(tmp_path / "in" / "**" / "*.npy*")  # would match outputs too
    inside = ctpress.batch(everything, tmp_path / "in" / "out", codec="zstd")
    again = ctpress.batch(everything, tmp_path / "in" / "out", codec="zstd")
    assert len(again) == len(inside) == 4  # the batch's own outputs are never inputs
    assert all("/out/" not in r.input for r in again)

    changed = good[0]
    np.save(changed, np.load(changed) + 1)  # a changed input is compressed again
    records = ctpress.batch(good, out, workers=1, codec="jpegls", lossless=True)
    by_input = {Path(r.input): r.status for r in records}
    assert by_input[changed] == "done" and list(by_input.values()).count("skipped") == 2
    records = ctpress.batch(good, out, workers=1, codec="jpegls", max_error=2)
    assert {r.status for r in records} == {"done"}  # other options: all again
    assert all(r.max_abs_error <= 2 and r.psnr_db > 30 for r in records)


def test_batch_never_replaces_an_output_it_did_not_write(tmp_path: Path) -> None:
    good = _inputs(tmp_path / "in")[:1]
    out = tmp_path / "out"
    out.mkdir()
    (out / ".ctpress-output").write_text("")
    stranger = out / "scan.npy.ctpz"
    stranger.write_bytes(b"mine")
    (record,) = ctpress.batch(good, out, workers=1, codec="zstd")
    assert record.status == "error" and "did not write it" in record.error
    assert stranger.read_bytes() == b"mine"
    (out / MANIFEST).write_text("{ damaged")  # an unreadable record protects outputs too
    (record,) = ctpress.batch(good, out, workers=1, codec="zstd")
    assert record.status == "error"


def test_batch_runs_on_an_existing_dask_cluster_by_address(tmp_path: Path) -> None:
    from dask.distributed import LocalCluster

    good = _inputs(tmp_path / "in")
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        records = ctpress.batch(
            good, tmp_path / "out", scheduler=cluster.scheduler_address, codec="zstd"
        )
    assert [r.status for r in records] == ["done"] * 3
    for record in records:
        with ctpress.open(record.output) as f:
            np.testing.assert_array_equal(f.read_scan().projections, np.load(record.input))


def test_an_unreachable_scheduler_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.import_module("ctpress.batch"), "SCHEDULER_TIMEOUT_S", 1)
    good = _inputs(tmp_path / "in")[:1]
    with pytest.raises(ctpress.InputError, match="cannot reach the Dask scheduler"):
        ctpress.batch(good, tmp_path / "out", scheduler="tcp://127.0.0.1:1")
    assert not os.path.exists(tmp_path / "out" / "scan.npy.ctpz")


def test_a_large_scan_is_split_into_chunk_tasks_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above SPLIT_BYTES a scan's chunks are tasks of the cluster; the file is the one
    ctpress.compress writes alone."""
    monkeypatch.setattr(importlib.import_module("ctpress.batch"), "SPLIT_BYTES", 7000)
    monkeypatch.setattr(importlib.import_module("ctpress.api"), "TASK_BYTES", 4096)
    good = _inputs(tmp_path / "in")  # 12 x 8 x 32 uint16: 6 KiB each, plus the npy header
    big = tmp_path / "in" / "big.npy"
    np.save(big, np.clip(smooth_stack((40, 8, 32), seed=9), 0, 65535).astype(np.uint16))
    records = ctpress.batch(
        [*good, big], tmp_path / "out", workers=2, codec="jpegls", lossless=True, chunk_views=4
    )
    by_input = {Path(r.input).name: r for r in records}
    # ten chunks of 4 x 8 x 32 uint16 (2 KiB), two per task
    assert by_input["big.npy"].status == "done" and by_input["big.npy"].tasks == 5
    assert {r.tasks for r in records if r.input != str(big)} == {1}
    alone = ctpress.compress(big, codec="jpegls", lossless=True, chunk_views=4, jobs=1)
    assert Path(by_input["big.npy"].output).read_bytes() == alone
