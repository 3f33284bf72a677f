#!/usr/bin/env python
"""Run the atheris harness (``fuzz_ctpz.py``) in several modes, one after another, and
summarise them: executions, executions per second, coverage (libFuzzer's ``cov:`` edges
and ``ft:`` features of the instrumented ctpress code) and findings.

Modes: ``ctpz`` (whole files), ``ctpz-crc`` (whole files, checksums recomputed) and, with
``--codecs``, ``<codec>-crc`` per codec (its chunk payloads, checksums recomputed).  Each
mode keeps its corpus in ``fuzz/corpus/<mode>``; findings go to ``fuzz/findings/``.

    .venv/bin/python fuzz/run.py --seconds 600                  # make fuzz
    .venv/bin/python fuzz/run.py --seconds 300 --codecs sperr sz3
    .venv/bin/python fuzz/run.py --seconds 300 --codecs all --no-ctpz
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_STATS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+)", re.M)
_FINAL = re.compile(r"^stat::(number_of_executed_units|average_exec_per_sec):\s+(\d+)", re.M)


def run_mode(name: str, options: list[str], seconds: int, log_dir: Path) -> dict[str, object]:
    """One mode for ``seconds``: its libFuzzer log in ``log_dir`` and its last statistics."""
    log = log_dir / f"{name}.log"
    corpus = HERE / "corpus" / name
    command = [sys.executable, str(HERE / "fuzz_ctpz.py"), *options, str(corpus)]
    command += [f"-max_total_time={seconds}", "-print_final_stats=1"]
    before = set((HERE / "findings").glob("*")) if (HERE / "findings").is_dir() else set()
    start = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    text = log.read_text(errors="replace")
    last = _STATS.findall(text)
    runs, cov, ft, speed = (int(v) for v in last[-1]) if last else (0, 0, 0, 0)
    final = {key: int(value) for key, value in _FINAL.findall(text)}
    runs = final.get("number_of_executed_units", runs)
    speed = final.get("average_exec_per_sec", speed)
    findings = sorted(set((HERE / "findings").glob("*")) - before)
    return {"mode": name, "exit": code, "seconds": round(time.monotonic() - start),
            "runs": runs, "exec/s": speed, "cov": cov, "ft": ft,
            "findings": [f.name for f in findings]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600, help="per mode (default 600)")
    parser.add_argument("--codecs", nargs="*", default=[], help="codec ids, or 'all'")
    parser.add_argument("--no-ctpz", action="store_true", help="skip the whole-file modes")
    parser.add_argument("--logs", type=Path, default=HERE / "logs", help="log directory")
    args = parser.parse_args()
    modes: list[tuple[str, list[str]]] = []
    if not args.no_ctpz:
        modes += [("ctpz", []), ("ctpz-crc", ["--recompute-crc"])]
    codecs = args.codecs
    if codecs == ["all"]:
        sys.path.insert(0, str(HERE.parent / "src"))
        from ctpress.codecs import list_codecs

        codecs = [cls.codec_id for cls in list_codecs()]
    modes += [(f"{c}-crc", [f"--codec={c}", "--recompute-crc"]) for c in codecs]
    args.logs.mkdir(parents=True, exist_ok=True)
    failed = False
    for name, options in modes:
        result = run_mode(name, options, args.seconds, args.logs)
        failed |= bool(result["findings"]) or result["exit"] != 0
        print("  ".join(f"{k}: {v}" for k, v in result.items()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
