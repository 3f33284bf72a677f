"""Crash safety: ``ctpress compress`` / ``decompress`` killed at random points.

The final name holds either nothing or a complete output (the previous one, or the new one
if the run finished), never a partial file; SIGTERM removes the temporary output; after
SIGKILL the next write into the directory removes the orphan, and never the temporary file of
a live writer.  ``CTPRESS_FULL=1`` (``make hardening``) kills many times; by default a few.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import ctpress
from ctpress.cli import main
from ctpress.io import read_scan
from ctpress.io._atomic import temp_name

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

FULL = os.environ.get("CTPRESS_FULL") == "1"
#: Killed runs per test (each combination of signal and previous output in turn).
RUNS = {"compress": 24 if FULL else 4, "decompress": 12 if FULL else 2}
COMBINATIONS = [
    (signal.SIGKILL, False),
    (signal.SIGTERM, True),
    (signal.SIGKILL, True),
    (signal.SIGTERM, False),
]


def projections() -> np.ndarray:
    """4 MiB of uint16 with some structure (zstd at level 19 works on it for a while)."""
    rng = np.random.default_rng(0)
    profile = 20000 * np.sin(np.linspace(0, 20, 512))[None, None, :] + 30000
    return (profile + rng.normal(0, 30, (32, 128, 512))).astype(np.uint16)


def temp_files(directory: Path, pid: int | None = None) -> list[Path]:
    """Temporary outputs of ctpress in ``directory`` (of process ``pid`` if given)."""
    writer = r"\d+" if pid is None else str(pid)
    pattern = re.compile(rf"^\..+\.ctpress-[0-9a-f]{{8}}-{writer}-[0-9a-f]{{8}}\.tmp$")
    return sorted(p for p in directory.iterdir() if pattern.match(p.name))


def start(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "ctpress.cli", "-q", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_while_writing(
    proc: subprocess.Popen[str], directory: Path, sig: int, delay: float
) -> tuple[int, str]:
    """Wait until ``proc`` has a temporary output in ``directory``, then ``delay`` seconds,
    then send ``sig``; return the exit code and stderr."""
    deadline = time.monotonic() + 120
    while not temp_files(directory, proc.pid) and proc.poll() is None:
        assert time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def kill_runs(
    tmp_path: Path,
    args: list[str],
    output_name: str,
    window: float,
    is_complete: Callable[[Path], bool],
    first: int = 0,
) -> None:
    """Killed runs of ``ctpress ARGS WORK/OUTPUT_NAME --force`` in one directory WORK (the
    combinations of signal and previous output from ``COMBINATIONS[first]`` on), checking the
    final name, the temporary files and the removal of orphans after each.

    ``tmp_path / "previous<suffix>"`` is the complete output; ``window`` is about how long
    the temporary output exists; ``is_complete(path)`` checks a complete output."""
    work = tmp_path / "work"
    work.mkdir()
    output = work / output_name
    previous = tmp_path / ("previous" + output.suffix)
    rng = np.random.default_rng(12 + first)
    live = work / temp_name(output_name, pid=os.getpid())  # a concurrent writer's: kept
    live.write_bytes(b"being written by a live process")
    orphans: list[Path] = []
    for run in range(RUNS[args[0]]):
        sig, with_previous = COMBINATIONS[(run + first) % len(COMBINATIONS)]
        if output.is_dir():
            shutil.rmtree(output)
        output.unlink(missing_ok=True)
        if with_previous:
            (shutil.copytree if previous.is_dir() else shutil.copy2)(previous, output)
        proc = start(*args, str(output), "--force")
        code, err = kill_while_writing(proc, work, sig, rng.uniform(0, 1.2 * window))
        context = f"run {run}: {sig!r}, previous output {with_previous}, exit {code}: {err}"
        assert code in (0, -sig, 128 + sig), context
        assert not [p for p in orphans if p.exists()], context  # removed by this run
        if os.path.lexists(output):
            assert is_complete(output), context
        else:
            assert code != 0, context
        left = [p for p in temp_files(work) if p != live]
        if sig == signal.SIGTERM:
            assert left == [], context
            if code == 128 + sig:
                assert err.strip() == "ctpress: stopped by SIGTERM", context
            elif code == -sig:  # during interpreter shutdown, after main() returned
                assert os.path.lexists(output), context
        orphans = left
    ctpress.compress(np.zeros((2, 3, 4), np.uint16), work / "next.ctpz")  # a next write here
    assert not [p for p in orphans if p.exists()] and live.exists()
    assert temp_files(work) == [live]


def test_compress_killed_at_random_points(tmp_path: Path) -> None:
    source = tmp_path / "scan.npy"
    np.save(source, projections())
    previous = tmp_path / "previous.ctpz"
    t0 = time.perf_counter()
    ctpress.compress(source, previous, level=19)
    window = time.perf_counter() - t0
    expected = previous.read_bytes()  # compression is deterministic: old and new are equal

    def is_complete(path: Path) -> bool:
        with ctpress.open(path) as f:
            f.verify()
        return path.read_bytes() == expected

    args = ["compress", str(source), "-O", "level=19"]  # zstd's slowest level: ~1 s of work
    kill_runs(tmp_path, args, "out.ctpz", window, is_complete)


@pytest.mark.parametrize("suffix", [".npy", ".zarr"])
def test_decompress_killed_at_random_points(tmp_path: Path, suffix: str) -> None:
    data = projections()
    source = tmp_path / "scan.ctpz"
    ctpress.compress(data, source, level=1)
    t0 = time.perf_counter()
    ctpress.decompress(source, tmp_path / f"previous{suffix}")
    window = time.perf_counter() - t0

    def is_complete(path: Path) -> bool:
        return np.array_equal(read_scan(path).projections, data)

    first = 0 if suffix == ".npy" else 2  # the other two combinations in the default run
    kill_runs(tmp_path, ["decompress", str(source)], f"out{suffix}", window, is_complete, first)


def test_sighup_is_handled_like_sigterm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In this process: SIGHUP while ``main`` compresses removes the temporary output and
    returns 128 + SIGHUP with one line."""
    source, output = tmp_path / "scan.npy", tmp_path / "out.ctpz"
    np.save(source, projections())
    writing_done = threading.Event()

    def hang_up() -> None:
        while not temp_files(tmp_path) and not writing_done.is_set():
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGHUP)

    before = signal.signal(signal.SIGHUP, lambda *_: None)  # what main() restores: harmless
    sender = threading.Thread(target=hang_up)
    try:
        sender.start()
        code = main(["-q", "compress", str(source), str(output), "-O", "level=19"])
        writing_done.set()
        sender.join()
    finally:
        signal.signal(signal.SIGHUP, before)
    assert code == 128 + signal.SIGHUP
    assert capsys.readouterr().err == "ctpress: stopped by SIGHUP\n"
    assert not output.exists() and temp_files(tmp_path) == []
