"""Run every speed benchmark in this folder (``make bench``); not part of ``make test``.

Usage::

    python benchmarks/run_all.py --out results/benchmarks [--only codecs,recon,platform]

Each benchmark writes its own JSON into ``--out`` (``bench_codecs.json``,
``bench_recon.json``, ``bench_learned.json``, ``bench_siren.json``,
``bench_platform.json``); this script adds ``run_all.json`` with the command, library
version, machine, and per benchmark its exit status, wall time and output file.
``learned`` and ``platform`` need ``../shared/data`` (or ``$CTPRESS_DATA``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

from ctpress.bench import run_info

HERE = Path(__file__).resolve().parent
#: name -> (script, its result file)
BENCHMARKS = {
    "codecs": ("bench_codecs.py", "bench_codecs.json"),
    "recon": ("bench_recon.py", "bench_recon.json"),
    "learned": ("bench_learned.py", "bench_learned.json"),
    "siren": ("bench_siren.py", "bench_siren.json"),
    "platform": ("bench_platform.py", "bench_platform.json"),
}


def _load(script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(script).stem, HERE / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    args = parser.parse_args(argv)
    summary = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "run": run_info()}
    status = 0
    for name in args.only.split(","):
        script, output = BENCHMARKS[name]
        print(f"== {name}: {script}", flush=True)
        t0 = time.perf_counter()
        try:
            code = _load(script).main(["--out", str(args.out)])
        except Exception:  # a failing benchmark must not hide the others' results
            traceback.print_exc()
            code = 1
        status = status or code
        summary[name] = {
            "script": f"benchmarks/{script}",
            "exit_status": code,
            "wall_s": time.perf_counter() - t0,
            "output": str(args.out / output),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "run_all.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out / 'run_all.json'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
