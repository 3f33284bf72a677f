"""``ctpress batch``: compress many scans in parallel, resumably.

One task per input scan, run by a ``dask.distributed`` LocalCluster of ``workers``
processes (one thread each), or by the Dask cluster at ``scheduler``.  Outputs keep the inputs'
paths relative to their common folder, with ``.ctpz`` appended (``a.npy`` and ``a.h5``
never map to one output).  A bad input does not stop the batch: its error is recorded.

Resuming: ``OUT_DIR/.ctpress-batch.json`` records, per output, the input it was made from
(path, size, modification time, SHA-256) and the options.  A finished output is skipped
only if its record matches the input and options and the file verifies (every block's
CRC); anything else is compressed again, and an output the batch did not record is never
replaced.  ``OUT_DIR/batch_summary.csv`` lists every input: output, bytes, ratio, metrics,
seconds, status.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._progress import progress_bar
from .errors import CtpressError, InputError
from .io import results_directory

#: The record of what each output was made from, in the output folder.
MANIFEST = ".ctpress-batch.json"
SUMMARY = "batch_summary.csv"
#: Inputs larger than this are split into chunk tasks (:func:`_run`).
SPLIT_BYTES = 1 << 30
#: Seconds to wait for the Dask scheduler a batch is given.
SCHEDULER_TIMEOUT_S = 20


@dataclass
class BatchRecord:
    """One input of a batch: where it went and how it went (``status``: ``done``,
    ``skipped`` (a verified output of the same input and options exists) or ``error``)."""

    input: str
    output: str
    status: str
    input_bytes: int = 0
    output_bytes: int = 0
    ratio: float = 0.0
    bits_per_value: float = 0.0
    max_abs_error: float = 0.0
    psnr_db: float = float("inf")
    seconds: float = 0.0
    tasks: int = 0
    error: str = ""


def expand_inputs(inputs: str | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Input paths: a glob pattern (``**`` recursive) or a sequence of paths, sorted."""
    if isinstance(inputs, str):
        paths = [Path(p) for p in glob.glob(inputs, recursive=True)]
        if not paths:
            raise InputError(f"no input matches {inputs!r}")
    else:
        paths = [Path(p) for p in inputs]
    return sorted(set(paths))


def output_paths(inputs: list[Path], out_dir: Path) -> dict[Path, Path]:
    """Each input's output: its path relative to the inputs' common folder, under
    ``out_dir``, with ``.ctpz`` appended."""
    parents = [str(p.resolve().parent) for p in inputs]
    root = Path(os.path.commonpath(parents)) if parents else Path(".")
    return {p: out_dir / (str(p.resolve().relative_to(root)) + ".ctpz") for p in inputs}


def input_fingerprint(path: Path) -> dict[str, Any]:
    """Size, modification time and SHA-256 of an input file (for a folder, such as a
    DICOM series or a Zarr store: its files' total size, and the SHA-256 of their relative
    paths, sizes and times)."""
    stat = path.stat()
    size = stat.st_size
    digest = hashlib.sha256()
    if path.is_dir():
        size = 0
        for child in sorted(path.rglob("*")):
            if child.is_file():
                info = child.stat()
                size += info.st_size
                digest.update(
                    f"{child.relative_to(path)}|{info.st_size}|{info.st_mtime_ns}\n".encode()
                )
    else:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return {"size": size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def _compress_one(
    source: str,
    output: str,
    options: dict[str, Any],
    replace: bool,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Task of one input (run in a worker process): compress, verify, measure.  With an
    ``executor``, the chunks are encoded as its tasks (see :func:`ctpress.compress`)."""
    from .api import compress
    from .container import CtpzFile

    t0 = time.perf_counter()
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        written = compress(source, output, jobs=1, overwrite=replace, executor=executor, **options)
        with CtpzFile(output, jobs=1) as f:
            f.verify()
            tasks = _task_count(f) if executor is not None else 1
            n_values = f.shape[0] * f.shape[1] * f.shape[2]
            raw = n_values * f.dtype.itemsize
            exact = f.rate_control.mode == "lossless" and f.stored_views().all()
            errors = {} if exact else _errors(source, f)
    except CtpressError as exc:
        message = " ".join(str(exc).split())
        if source not in message:
            message = f"{source}: {message}"
        return {"status": "error", "error": message, "seconds": time.perf_counter() - t0}
    return {
        "status": "done",
        "output_bytes": written,
        "ratio": raw / written,
        "bits_per_value": 8 * written / n_values,
        "seconds": time.perf_counter() - t0,
        "tasks": tasks,
        **errors,
    }


def _task_count(f: Any) -> int:
    """The tasks ``compress(executor=...)`` ran for the file ``f``."""
    from .api import task_sizes

    view_bytes = f.dtype.itemsize * f.shape[1] * f.shape[2]
    return len(task_sizes([entry.stop - entry.start for entry in f.chunks], view_bytes))


def _errors(source: str, f: Any) -> dict[str, float]:
    """Max abs error and PSNR (against the input's max - min) of a lossy output, chunk by
    chunk (a memory-mapped input is never read whole)."""
    import numpy as np

    from .io import read_scan

    original = read_scan(source).projections
    squared, worst, lo, hi = 0.0, 0.0, np.inf, -np.inf
    for first, decoded in f.iter_chunks():
        reference = np.asarray(original[first : first + len(decoded)], dtype=np.float64)
        diff = decoded.astype(np.float64) - reference
        squared += float(np.sum(diff * diff))
        worst = max(worst, float(np.max(np.abs(diff))))
        lo, hi = min(lo, float(reference.min())), max(hi, float(reference.max()))
    mse = squared / original.size
    peak = (hi - lo) or 1.0
    psnr = float("inf") if mse == 0 else 10 * float(np.log10(peak**2 / mse))
    return {"max_abs_error": worst, "psnr_db": psnr}


def _verified(output: Path) -> bool:
    from .container import CtpzFile

    try:
        with CtpzFile(output) as f:
            f.verify()
    except (CtpressError, OSError):
        return False
    return True


def batch(
    inputs: str | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    **options: Any,
) -> list[BatchRecord]:
    """Compress every input into ``out_dir`` (see the module docstring).

    Parameters
    ----------
    inputs : str or sequence of paths
        A glob pattern (``'scans/**/*.h5'``) or the paths themselves.
    out_dir : path
        Output folder (created; a non-empty folder ctpress did not write is refused).
    workers : int, optional
        Processes of the LocalCluster (default: every core), one thread each.  A script
        that calls :func:`batch` must guard its top level with
        ``if __name__ == "__main__":`` (the workers start by importing it).
    scheduler : str, optional
        Address of a Dask scheduler (``tcp://host:8786``) to run the tasks on instead.
    progress : bool
        Show a progress bar.
    **options
        Keywords of :func:`ctpress.compress` (codec, rate control, codec settings).

    Returns
    -------
    list of BatchRecord
        One per input, in input order (also written to ``OUT_DIR/batch_summary.csv``).
    """
    if workers is not None and workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    out = results_directory(out_dir)
    # a glob over a tree holding the output folder must not take the batch's own outputs
    paths = [p for p in expand_inputs(inputs) if not p.resolve().is_relative_to(out.resolve())]
    if not paths:
        raise InputError(f"no input outside the output folder {out}")
    targets = output_paths(paths, out)
    manifest_path = out / MANIFEST
    manifest = _read_manifest(manifest_path)
    # the options that were given (a CLI passes every keyword, unset ones as None/False)
    options = {k: v for k, v in options.items() if v is not None and v is not False}
    settings = json.dumps(options, sort_keys=True, default=str)
    records: dict[Path, BatchRecord] = {}
    todo: list[Path] = []
    fingerprints: dict[Path, dict[str, Any]] = {}
    for source in paths:
        target = targets[source]
        record = BatchRecord(str(source), str(target), "pending")
        records[source] = record
        try:
            fingerprint = input_fingerprint(source)
        except OSError as exc:
            record.status, record.error = "error", f"{source}: cannot read ({exc.strerror})"
            continue
        record.input_bytes = fingerprint["size"]
        fingerprints[source] = fingerprint
        known = manifest.get(str(target.relative_to(out)))
        made_here = known is not None
        if made_here and known == {"input": str(source), **fingerprint, "options": settings}:
            if _verified(target):
                size = target.stat().st_size
                record.status, record.output_bytes = "skipped", size
                continue
        if target.exists() and not made_here:
            record.status = "error"
            record.error = f"{target} exists and this batch did not write it; move it away"
            continue
        todo.append(source)

    def finish(source: Path, result: dict[str, Any]) -> None:
        """Record a finished task; the manifest is rewritten at once, so a batch stopped
        part way resumes from what it finished."""
        record = records[source]
        for key, value in result.items():
            setattr(record, key, value)
        if record.status == "done":
            key = str(targets[source].relative_to(out))
            manifest[key] = {"input": str(source), **fingerprints[source], "options": settings}
            _write_manifest(manifest_path, manifest)

    split = {source for source in todo if fingerprints[source]["size"] > SPLIT_BYTES}
    _run(todo, split, targets, options, manifest, out, workers, scheduler, progress, finish)
    ordered = [records[p] for p in paths]
    _write_summary(out / SUMMARY, ordered)
    return ordered


def _run(
    todo: list[Path],
    split: set[Path],
    targets: dict[Path, Path],
    options: dict[str, Any],
    manifest: dict[str, Any],
    out: Path,
    workers: int | None,
    scheduler: str | None,
    progress: bool,
    finish: Callable[[Path, dict[str, Any]], None],
) -> None:
    """Run the compress tasks on a Dask cluster (the one at ``scheduler``, else a
    LocalCluster of ``workers`` processes with one thread each), handing each result to
    ``finish`` as it completes; a task that fails outside ctpress's own errors (a worker
    killed, say) is recorded as that input's error.  The inputs of ``split`` are compressed
    here, one after the other, their chunks encoded as tasks of the same cluster (each
    reads its own chunk), while the other inputs run as one task each."""
    if not todo:
        return
    from dask.distributed import Client
    from dask.distributed import as_completed as dask_completed

    bar = progress_bar(len(todo), "batch", "scan", progress)
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            cluster = stack.enter_context(_local_cluster(workers or os.cpu_count() or 1))
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(scheduler, timeout=SCHEDULER_TIMEOUT_S))
            except (OSError, ValueError) as exc:
                raise InputError(
                    f"cannot reach the Dask scheduler at {scheduler!r} ({exc}); check the "
                    "address (tcp://host:8786) and that the scheduler runs"
                ) from None

        def task_args(source: Path) -> tuple[str, str, dict[str, Any], bool]:
            replace = str(targets[source].relative_to(out)) in manifest
            return str(source), str(targets[source]), options, replace

        whole = {
            client.submit(_compress_one, *task_args(source), pure=False): source
            for source in todo
            if source not in split
        }
        chunk_executor = client.get_executor(pure=False)
        driver = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        in_chunks = {
            driver.submit(_compress_one, *task_args(source), executor=chunk_executor): source
            for source in todo
            if source in split
        }
        done: Iterator[Any] = itertools.chain(dask_completed(whole), as_completed(in_chunks))
        for future in done:
            source = whole.get(future) or in_chunks[future]
            try:
                result = future.result()
            except Exception as exc:  # the worker's failure, not ctpress's: recorded
                message = " ".join(f"{type(exc).__name__}: {exc}".split())
                result = {"status": "error", "error": f"{source}: {message}"}
            finish(source, result)
            bar.update(1)
    bar.close()


def _local_cluster(workers: int) -> Any:
    """A dask.distributed LocalCluster of ``workers`` processes, one thread each, quiet,
    without a dashboard: its housekeeping that takes CPU from the encoders (the workers'
    sampling profiler and GIL monitor, ticks every 20 ms, memory checks every 100 ms, work
    stealing) is off or slowed down (idle, 2 workers: 0.17 s of CPU per 10 s instead of
    1.1 s)."""
    import logging

    import dask
    from dask.distributed import LocalCluster

    quiet = {
        "distributed.worker.profile.enabled": False,
        "distributed.admin.system-monitor.gil.enabled": False,
        "distributed.admin.system-monitor.interval": "5s",
        "distributed.admin.tick.interval": "1s",
        "distributed.worker.memory.monitor-interval": "1s",
        "distributed.scheduler.work-stealing": False,
    }
    with dask.config.set(quiet):  # the scheduler and nannies take it; workers get it
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    """The batch's record of its outputs (empty if absent or unreadable: then no existing
    output counts as the batch's own, and none is replaced)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    temporary.replace(path)


def _write_summary(path: Path, records: list[BatchRecord]) -> None:
    fields = list(asdict(records[0])) if records else list(BatchRecord.__dataclass_fields__)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for record in records:
            writer.writerow(asdict(record))
