"""Outputs never destroy what ctpress did not write; bad inputs give one line and exit 2.

Issue 12 ("Hardening"): the output rule (``--force`` / ``overwrite=True``, the
``.ctpress-output`` marker of directory outputs, never the input), ``--dataset``, codec
settings, unsafe DICOM file names, stale temporary files and argument validation.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import ctpress
from ctpress import Geometry, InputError, Scan
from ctpress.cli import main
from ctpress.io import MARKER, OutputExistsError, read_scan, results_directory, write_scan
from ctpress.io._atomic import remove_stale_temps, temp_name
from ctpress.io.dicom_fixtures import make_ctpd_series


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Exit code and stderr of ``ctpress ARGS`` run in this process."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    text = err.strip()
    assert text.count("\n") == 0 and "Traceback" not in text, text
    return text


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` and its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".ctpress-" in p.name and p.name != MARKER]


def cone_scan(n: int = 6, filenames: list[str] | None = None) -> Scan:
    geometry = Geometry(
        kind="cone",
        angles_rad=tuple(np.linspace(0, 2 * math.pi, n, endpoint=False)),
        source_isocenter_mm=500.0,
        source_detector_mm=1000.0,
        detector_spacing_mm=(1.0, 1.0),
    )
    projections = np.random.default_rng(0).integers(0, 4000, (n, 4, 16), dtype=np.uint16)
    metadata = {} if filenames is None else {"dicom_filenames": filenames}
    return Scan(projections, geometry=geometry, metadata=metadata)


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.npy"
    np.save(path, np.arange(6 * 4 * 16, dtype=np.uint16).reshape(6, 4, 16))
    return path


@pytest.fixture
def good_ctpz(tmp_path: Path) -> Path:
    path = tmp_path / "good.ctpz"
    ctpress.compress(cone_scan(), path)
    return path


# --- 1. existing outputs: --force, the marker, symlinks --------------------------------------


def test_decompress_into_the_directory_holding_the_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    ctpress.compress(cone_scan(), victim / "s.ctpz")
    (victim / "notes.txt").write_text("mine")
    before = tree(victim)
    for force in ([], ["--force"]):
        args = ["decompress", str(victim / "s.ctpz"), str(victim), "--format", "dicom-ctpd"]
        code, err = cli(capsys, "-q", *args, *force)
        assert code == 2 and "would replace the input" in one_line(err)
        assert tree(victim) == before
    (victim / MARKER).write_text("")  # even a directory ctpress claims: it holds the input
    code, err = cli(capsys, "-q", *args, "-f")
    assert code == 2 and "would replace the input" in one_line(err)
    assert (victim / "s.ctpz").is_file() and (victim / "notes.txt").is_file()


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_a_directory_ctpress_did_not_write_is_never_replaced(
    tmp_path: Path, small: Path, good_ctpz: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / ("out.ctpz" if command == "compress" else "out.npy")
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    source = small if command == "compress" else good_ctpz
    for force in ([], ["-f"]):
        code, err = cli(capsys, "-q", command, str(source), str(out), *force)
        assert code == 2 and "did not write" in one_line(err) and MARKER in err
        assert tree(out) == {"precious.txt": b"keep me"}
    assert leftovers(tmp_path) == []


def test_a_users_dicom_series_is_never_replaced(
    tmp_path: Path, good_ctpz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = tmp_path / "series"
    scan = cone_scan()
    assert scan.geometry is not None
    make_ctpd_series(series, scan.projections, scan.geometry)
    before = tree(series)
    code, err = cli(
        capsys, "-q", "decompress", str(good_ctpz), str(series), "--format", "dicom-ctpd", "-f"
    )
    assert code == 2 and "did not write" in one_line(err)
    assert tree(series) == before


def test_existing_file_needs_force(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.ctpz"
    out.write_bytes(b"old")
    code, err = cli(capsys, "-q", "compress", str(small), str(out))
    assert one_line(err) == f"ctpress: error: {out} exists; pass --force to replace it"
    assert code == 2 and out.read_bytes() == b"old"
    assert cli(capsys, "compress", "-q", str(small), str(out), "--force")[0] == 0
    assert np.array_equal(ctpress.decompress(out).projections, np.load(small))
    decoded = tmp_path / "d.npy"
    decoded.write_bytes(b"old")
    assert cli(capsys, "-q", "decompress", str(out), str(decoded))[0] == 2
    assert decoded.read_bytes() == b"old"
    assert cli(capsys, "-q", "decompress", str(out), str(decoded), "-f")[0] == 0
    assert np.array_equal(np.load(decoded), np.load(small))
    assert leftovers(tmp_path) == []


def test_missing_output_directory_is_reported_before_any_work(
    tmp_path: Path, small: Path, good_ctpz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for source, name in ((small, "x.ctpz"), (good_ctpz, "x.npy")):
        command = "compress" if source == small else "decompress"
        code, err = cli(capsys, "-q", command, str(source), str(tmp_path / "no" / name))
        assert code == 2 and f"directory {tmp_path / 'no'} does not exist" in one_line(err)


def test_api_refuses_existing_outputs_without_overwrite(tmp_path: Path, small: Path) -> None:
    ctpz, npz, store = tmp_path / "s.ctpz", tmp_path / "s.npz", tmp_path / "s.zarr"
    ctpress.compress(small, ctpz)
    write_scan(cone_scan(), npz)
    write_scan(cone_scan(), store)
    for call in (
        lambda overwrite: ctpress.compress(small, ctpz, overwrite=overwrite),
        lambda overwrite: ctpress.decompress(ctpz, npz, overwrite=overwrite),
        lambda overwrite: write_scan(cone_scan(), store, overwrite=overwrite),
    ):
        with pytest.raises(OutputExistsError, match="exists; pass overwrite=True"):
            call(False)
        call(True)
    assert (store / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ctpz", "s.npz", "s.zarr", "small.npy"]


def test_a_marked_directory_output_is_replaced_with_force(
    tmp_path: Path, good_ctpz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = tmp_path / "series"
    args = ["-q", "decompress", str(good_ctpz), str(series), "--format", "dicom-ctpd"]
    assert cli(capsys, *args)[0] == 0
    assert (series / MARKER).is_file() and len(list(series.glob("*.dcm"))) == 6
    (series / "000001.dcm").write_bytes(b"stale")
    code, err = cli(capsys, *args)
    assert code == 2 and "exists; pass --force" in one_line(err)
    assert cli(capsys, *args, "--force")[0] == 0
    assert np.array_equal(read_scan(series).projections, cone_scan().projections)
    assert leftovers(tmp_path) == []


def test_symlink_output_is_written_through_with_force(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "target.ctpz"
    real.write_bytes(b"old")
    link = tmp_path / "link.ctpz"
    link.symlink_to(real)
    code, err = cli(capsys, "-q", "compress", str(small), str(link))
    assert code == 2 and "exists; pass --force" in one_line(err) and real.read_bytes() == b"old"
    assert cli(capsys, "-q", "compress", str(small), str(link), "-f")[0] == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert np.array_equal(ctpress.decompress(real).projections, np.load(small))
    assert leftovers(tmp_path) == [] and leftovers(real_dir) == []
    dangling = tmp_path / "dangling.ctpz"
    dangling.symlink_to(real_dir / "new.ctpz")
    assert cli(capsys, "-q", "compress", str(small), str(dangling))[0] == 2
    assert cli(capsys, "-q", "compress", str(small), str(dangling), "-f")[0] == 0
    assert dangling.is_symlink() and (real_dir / "new.ctpz").is_file()


def test_readers_ignore_the_marker(tmp_path: Path) -> None:
    scan = cone_scan()
    write_scan(scan, tmp_path / "s.zarr")
    write_scan(scan, tmp_path / "series", format="dicom-ctpd")
    for path in (tmp_path / "s.zarr", tmp_path / "series"):
        assert (path / MARKER).is_file()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert np.array_equal(read_scan(path).projections, scan.projections)


# --- 1b. bench and demo result directories --------------------------------------------------


def test_results_directory_rules(tmp_path: Path) -> None:
    new = results_directory(tmp_path / "a" / "new")
    assert (new / MARKER).is_file()
    (new / "results.csv").write_text("x")
    assert results_directory(new) == new and (new / "results.csv").is_file()  # updated in place
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (results_directory(empty) / MARKER).is_file()
    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.tex").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="did not write"):
            results_directory(users, overwrite=overwrite)
    assert sorted(p.name for p in users.iterdir()) == ["thesis.tex"]
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(OutputExistsError):
        results_directory(file)
    assert (results_directory(file, overwrite=True) / MARKER).is_file()


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_bench_and_demo_check_out_before_any_work(
    tmp_path: Path,
    small: Path,
    command: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the benchmark ran before --out was checked")

    monkeypatch.setattr("ctpress.bench.run_bench", no_work)
    monkeypatch.setattr("ctpress.demo.run_bench", no_work)
    monkeypatch.setattr("ctpress.demo.default_scan", no_work)
    run = ["bench", str(small), "--codecs", "zstd"] if command == "bench" else ["demo"]
    file = tmp_path / "results"
    file.write_text("not a directory")
    code, err = cli(capsys, "-q", *run, "--out", str(file))
    assert code == 2 and one_line(err).endswith("exists; pass --force to replace it")
    users = tmp_path / "users"
    users.mkdir()
    (users / "data.npy").write_text("x")
    code, err = cli(capsys, "-q", *run, "--out", str(users), "--force")
    assert code == 2 and "did not write" in one_line(err)
    assert file.read_text() == "not a directory" and tree(users) == {"data.npy": b"x"}


# --- 2. --dataset ---------------------------------------------------------------------------


def _two_arrays(tmp_path: Path, fmt: str) -> Path:
    projections, other = np.zeros((3, 4, 5), np.uint16), np.ones((2, 4, 5), np.uint16)
    if fmt == "npz":
        path = tmp_path / "two.npz"
        np.savez(path, projections=projections, other=other)
    elif fmt == "hdf5":
        path = tmp_path / "two.h5"
        with h5py.File(path, "w") as f:
            f["projections"], f["other"] = projections, other
    else:
        path = tmp_path / "two.zarr"
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        group.create_array("projections", data=projections)
        group.create_array("other", data=other)
    return path


@pytest.mark.parametrize("fmt", ["npz", "hdf5", "zarr"])
def test_compress_dataset_selects_the_array(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = _two_arrays(tmp_path, fmt), tmp_path / "out.ctpz"
    assert cli(capsys, "-q", "compress", str(source), str(out), "--dataset", "other")[0] == 0
    assert np.array_equal(ctpress.decompress(out).projections, np.ones((2, 4, 5), np.uint16))
    data = ctpress.compress(source, dataset="other")
    assert ctpress.decompress(data).shape == (2, 4, 5)
    code, err = cli(capsys, "-q", "compress", str(source), str(out), "-f", "--dataset", "nope")
    assert code == 2 and "nope" in one_line(err)
    with pytest.raises(InputError, match="not a path"):
        ctpress.compress(np.ones((2, 4, 5), np.uint16), dataset="other")


# --- 3. the output is the input -------------------------------------------------------------


@pytest.mark.parametrize("how", ["same", "hard link", "symlink"])
def test_output_that_is_the_input_is_refused_even_with_force(
    tmp_path: Path, good_ctpz: Path, small: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = good_ctpz.read_bytes()
    out = {"same": good_ctpz, "hard link": tmp_path / "h.npy", "symlink": tmp_path / "l.npy"}[how]
    if how == "hard link":
        os.link(good_ctpz, out)
    elif how == "symlink":
        out.symlink_to(good_ctpz)
    code, err = cli(capsys, "-q", "decompress", str(good_ctpz), str(out), "--format=npy", "-f")
    assert code == 2 and "would replace the input" in one_line(err)
    assert good_ctpz.read_bytes() == before
    link = tmp_path / "input_link.ctpz"
    os.link(small, link)
    code, err = cli(capsys, "-q", "compress", str(small), str(link), "-f")
    assert code == 2 and "would replace the input" in one_line(err)
    assert np.load(small).shape == (6, 4, 16)


# --- 4. one-line errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-O", "data_range=5"], "not a codec setting"),
        (["-O", "level=abc"], "level='abc'"),
        (["-O", "level=null"], "level=None"),
        (["-O", "level=999"], "level=999"),
        (["--codec", "blosc2", "-O", "level=-7"], "level=-7"),
        (["--codec", "hyperprior", "--bpp", "1", "-O", "rate_point=x"], "rate_point='x'"),
        (["--psnr", "-5"], "psnr must be > 0"),
        (["--chunk-views", "0"], "argument --chunk-views: must be >= 1, got 0"),
        (["--jobs", "0"], "argument --jobs: must be >= 1, got 0"),
    ],
)
def test_bad_compress_settings_give_one_line(
    tmp_path: Path, small: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.ctpz"
    code, err = cli(capsys, "-q", "compress", str(small), str(out), *extra)
    assert code == 2 and message in one_line(err)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args",
    [
        ["compress", "IN", "OUT.ctpz", "--jobs", "0"],
        ["bench", "IN", "--out", "OUT", "--jobs", "0"],
        ["demo", "--out", "OUT", "--jobs", "-1"],
        ["recon", "IN", "OUT.npy", "--size", "0"],
        ["compress", "IN", "OUT.ctpz", "--chunk-views", "x"],
    ],
)
def test_counts_must_be_at_least_one(
    tmp_path: Path, small: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.replace("IN", str(small)).replace("OUT", str(tmp_path / "out")) for a in args]
    code, err = cli(capsys, "-q", *args)
    option = args[-2]
    expected = "must be an integer, got 'x'" if args[-1] == "x" else f"must be >= 1, got {args[-1]}"
    assert code == 2 and f"argument {option}: {expected}" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.npy"]


def test_quiet_works_before_and_after_the_command(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.ctpz"
    assert main(["compress", "-q", str(small), str(out)]) == 0
    assert main(["-q", "compress", str(small), str(out), "-f"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["compress", str(small), str(out), "-f"]) == 0
    assert "bits/value" in capsys.readouterr().out


def test_text_file_named_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.npy"
    text.write_text("projection angles: 0 1 2 3\n")
    code, err = cli(capsys, "-q", "compress", str(text), str(tmp_path / "out.ctpz"))
    assert code == 2 and "not a valid .npy file" in one_line(err) and "pickle" not in err


@pytest.mark.parametrize(
    "name",
    ["../../x.dcm", "/etc/x.dcm", "a\0b.dcm", "..", ".", "", ".hidden.dcm", "x" * 252 + ".dcm",
     "ü" * 128, "sub/x.dcm", "..\\x.dcm", "\ud800.dcm", 7],
)  # fmt: skip
def test_unsafe_dicom_file_names_from_a_crafted_header(
    tmp_path: Path, name: object, capsys: pytest.CaptureFixture[str]
) -> None:
    names: list[object] = [f"{i}.dcm" for i in range(6)]
    names[3] = name
    crafted = tmp_path / "crafted.ctpz"
    ctpress.compress(cone_scan(filenames=names), crafted)  # type: ignore[arg-type]
    work = tmp_path / "work"
    work.mkdir()
    out = work / "series"
    code, err = cli(capsys, "-q", "decompress", str(crafted), str(out), "--format", "dicom-ctpd")
    assert code == 2 and "unsafe file name" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.ctpz", "work"]
    assert list(work.iterdir()) == []
    assert not Path("/etc/x.dcm").exists()


def test_safe_dicom_file_names_are_kept(tmp_path: Path) -> None:
    names = [
        "0.dcm",
        "IM-0001-0002.dcm",
        "x" * 251 + ".dcm",
        "ü" * 125 + ".dcm",
        "a b.dcm",
        "F.DCM",
    ]
    write_scan(cone_scan(filenames=names), tmp_path / "series", format="dicom-ctpd")
    assert sorted(p.name for p in (tmp_path / "series").iterdir()) == sorted([*names, MARKER])
    assert read_scan(tmp_path / "series").metadata["dicom_filenames"] == names


@pytest.mark.parametrize("name", [".", ".."])
def test_aux_names_of_only_dots_from_a_crafted_header(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    crafted = tmp_path / "crafted.ctpz"
    ctpress.compress(Scan(np.zeros((2, 3, 4), np.uint16), aux={name: np.zeros(3)}), crafted)
    code, err = cli(capsys, "-q", "decompress", str(crafted), str(tmp_path / "out.h5"))
    assert code == 2 and f"aux name {name!r}" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.ctpz"]


# --- 5. stale temporary files ---------------------------------------------------------------


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_only_temp_files_of_dead_writers_of_this_host_are_removed(tmp_path: Path) -> None:
    dead = dead_pid()
    stale_file = tmp_path / temp_name("a.ctpz", pid=dead)
    stale_file.write_bytes(b"partial")
    stale_dir = tmp_path / temp_name("s.zarr", pid=dead)
    (stale_dir / "projections").mkdir(parents=True)
    alive = tmp_path / temp_name("b.ctpz", pid=os.getpid())
    alive.write_bytes(b"being written")
    host = stale_file.name.split("-")[1]  # .a.ctpz.ctpress-HOST-PID-HEX.tmp
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    kept = [
        alive.name,  # a live writer's
        f".c.ctpz.ctpress-{other_host}-{dead}-1234abcd.tmp",  # another host's
        f".d.ctpz.{dead}.1234abcd.tmp",  # not ctpress's pattern
        f".e.ctpz.ctpress-{host}-{dead}-1234abcd.old",
        f"f.ctpz.ctpress-{host}-{dead}-1234abcd.tmp",  # not hidden
        f".g.ctpz.ctpress-{host}-0-1234abcd.tmp",  # no such process id
        "h.ctpz",
    ]
    for name in kept[1:]:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_writing_removes_stale_temp_files(tmp_path: Path, small: Path) -> None:
    stale = tmp_path / temp_name("other.ctpz", pid=dead_pid())
    stale.write_bytes(b"partial")
    alive = tmp_path / temp_name("other.ctpz", pid=os.getpid())
    alive.write_bytes(b"partial")
    ctpress.compress(small, tmp_path / "out.ctpz")
    assert not stale.exists() and alive.exists()
