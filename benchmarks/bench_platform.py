"""Platform costs (issue 13): what a rate target costs next to one encode, import and start-up
times, and ``ctpress compress`` next to the libraries called directly.

In one run, on the Savu projections (``../shared/data/projections``, 91 x 135 x 160 uint16):

a. **Rate-target cost.**  For every classical codec (``--codecs``) and each target (``bpp``,
   ``psnr``): the codec's encode under that rate control (``Codec.encode`` of the whole scan
   as one chunk, one thread), divided by one encode at the setting the search ended at.
   That setting is read back from the chunk header: the native knob ``k`` (then: the codec's
   lossy transform and one native encode at ``k``), else the quantisation step ``q`` (then:
   quantise at ``q`` and one lossless encode); where the header holds neither, one
   ``max_error`` encode at the error the target achieved (stated per row).  The end-to-end
   :func:`ctpress.compress` time (container, overhead budgeting, ``jobs=1``) over the same
   single encode is given too.  Goal of the issue: at most 3x.
b. **Start-up.**  Wall time and peak RSS of fresh processes (median of ``--repeat``):
   ``python -c "import ctpress"``, ``ctpress --help`` and the reference
   ``python -c "import numpy, imagecodecs"``; and whether ``torch`` is in ``sys.modules``
   after a jpegls lossless ``ctpress.compress``.  Goal: ``--help`` within 3x of the reference.
c. **Compress CLI.**  ``ctpress compress SAVU.npy OUT.ctpz --codec jpegls --lossless`` in a
   fresh process against a one-liner doing the same with numpy + imagecodecs (per-frame
   ``jpegls_encode``), median of ``--repeat``.  Goal: within 3x.

Usage::

    python benchmarks/bench_platform.py --out results/benchmarks [--codecs LIST] [--repeat 5]

writes ``bench_platform.json`` and ``bench_platform.md`` into ``--out`` and prints the tables.
Times depend on the machine's load (2 shared cores in the issue's measurements).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import ctpress
from ctpress.bench import run_info
from ctpress.codecs import Codec, get_codec_class, list_codecs
from ctpress.codecs.framing import parse_chunk_header
from ctpress.errors import CtpressError
from ctpress.rate import RateControl

HERE = Path(__file__).resolve().parent
SAVU = "savu_i12_raw_projections_91x135x160_uint16.npy"
#: Rate targets of part (a): the issue's examples on the Savu projections.
TARGETS = (RateControl("bpp", 1.0), RateControl("psnr", 50.0))
#: The reference one-liner of part (c): numpy + imagecodecs, one JPEG-LS stream per view.
ONE_LINER = (
    "import sys, numpy as np, imagecodecs; x = np.load(sys.argv[1]); "
    "open(sys.argv[2], 'wb').write(b''.join(imagecodecs.jpegls_encode(v) for v in x))"
)


def _best_time(run: Callable[[], object], repeat: int) -> float:
    """Shortest wall time of ``repeat`` calls of ``run``, s."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def _final_setting_encode(
    codec: Codec, x: np.ndarray, chunk: bytes
) -> tuple[Callable[[], object], str]:
    """One encode of ``x`` at the setting recorded in ``chunk`` (a chunk ``codec`` wrote
    under a rate target), and how that setting was found."""
    header, _ = parse_chunk_header(chunk)
    if "k" in header and codec.has_native_lossy:
        knob = float(header["k"])
        lossy = codec._lossy_work(x)
        assert lossy is not None
        work = lossy[0]
        # the knob of a native rate mode (SPERR bpp/psnr, ZFP rate) is that mode's own
        model = codec._rate_model(work, codec._target_mse(x))
        encode = codec._encode_lossy if model is None else model.encode
        if header.get("za"):  # a zfp bpp target met in fixed-accuracy mode, not fixed rate
            from ctpress.codecs.zfp import _fixed_accuracy

            encode = _fixed_accuracy
        how = "the codec's lossy knob" if model is None else "the codec's native rate mode"
        return lambda: encode(work, knob), f"{how} at k={knob:.6g} from the chunk header"
    if header.get("t") == "quant" and not header.get("nb"):
        step = float(header["q"])
        return (
            lambda: codec._encode_exact(codec._exact_work(x, step)[0]),
            f"quantisation step q={step:g} from the chunk header, then the lossless coder",
        )
    decoded = codec.decode(chunk)
    error = float(np.max(np.abs(decoded.astype(np.float64) - x.astype(np.float64))))
    bounded = codec.with_rate(RateControl("max_error", max(error, 1e-12)))
    return (
        lambda: bounded.encode(x),
        f"no setting in the header: max_error encode at the achieved error {error:g}",
    )


def rate_target_cost(x: np.ndarray, codec_id: str, target: RateControl) -> dict[str, Any]:
    """Part (a) for one codec and target (see the module docstring)."""
    row: dict[str, Any] = {"codec": codec_id, "target": str(target)}
    codec = get_codec_class(codec_id)(mode=target.mode, value=target.value)
    mb = x.nbytes / 1e6
    try:
        t0 = time.perf_counter()
        chunk = codec.encode(x)
        row["target_encode_s"] = time.perf_counter() - t0
        single, row["method"] = _final_setting_encode(codec, x, chunk)
        row["single_encode_s"] = _best_time(single, 3)
        t0 = time.perf_counter()
        rate: dict[str, Any] = {target.mode: target.value}
        data = ctpress.compress(x, codec=codec_id, jobs=1, **rate)
        row["compress_s"] = time.perf_counter() - t0
    except CtpressError as exc:
        row["error"] = " ".join(str(exc).split())
        return row
    row["bits_per_value"] = 8 * len(data) / x.size
    row["target_mb_s"] = mb / row["target_encode_s"]
    row["single_mb_s"] = mb / row["single_encode_s"]
    row["cost_ratio"] = row["target_encode_s"] / row["single_encode_s"]
    row["compress_ratio"] = row["compress_s"] / row["single_encode_s"]
    return row


#: Runs a command once and prints its wall time (s) and peak RSS (KiB): the launcher is a
#: small process, so the child's RSS high-water mark does not start at a large parent's.
LAUNCHER = (
    "import resource, subprocess, sys, time; t0 = time.perf_counter(); "
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
    "print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def _process(argv: list[str], repeat: int) -> dict[str, Any]:
    """Median wall time (s) and peak RSS (MB) of ``repeat`` fresh processes of ``argv``."""
    walls, rss = [], []
    for _ in range(repeat):
        launched = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *argv], capture_output=True, text=True, check=True
        )
        wall, kib = launched.stdout.split()
        walls.append(float(wall))
        rss.append(int(kib) / 1024)
    return {
        "command": shlex.join(argv),
        "wall_s": statistics.median(walls),
        "wall_s_all": walls,
        "rss_mb": statistics.median(rss),
    }


def _ctpress_command() -> list[str]:
    """The ``ctpress`` console script of this interpreter, else ``python -m ctpress.cli``."""
    script = Path(sys.executable).parent / "ctpress"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ctpress.cli"]


def startup_costs(repeat: int) -> dict[str, Any]:
    """Part (b)."""
    py = sys.executable
    out: dict[str, Any] = {
        "reference": _process([py, "-c", "import numpy, imagecodecs"], repeat),
        "import_ctpress": _process([py, "-c", "import ctpress"], repeat),
        "ctpress_help": _process([*_ctpress_command(), "--help"], repeat),
    }
    for key in ("import_ctpress", "ctpress_help"):
        out[key]["vs_reference"] = out[key]["wall_s"] / out["reference"]["wall_s"]
    probe = (
        "import sys, numpy as np, ctpress; "
        "ctpress.compress(np.zeros((4, 8, 8), np.uint16), codec='jpegls', lossless=True); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True)
    out["torch_after_jpegls_roundtrip"] = result.stdout.strip() == "True"
    return out


def compress_costs(path: Path, repeat: int) -> dict[str, Any]:
    """Part (c)."""
    with tempfile.TemporaryDirectory() as tmp:
        ctpz, raw = Path(tmp) / "out.ctpz", Path(tmp) / "out.jls"
        cli = [*_ctpress_command(), "-q", "compress", str(path), str(ctpz)]
        out = {
            "ctpress_compress": _process(
                [*cli, "--codec", "jpegls", "--lossless", "--force"], repeat
            ),
            "one_liner": _process([sys.executable, "-c", ONE_LINER, str(path), str(raw)], repeat),
        }
        out["ctpress_compress"]["bytes"] = ctpz.stat().st_size
        out["one_liner"]["bytes"] = raw.stat().st_size
    out["vs_one_liner"] = out["ctpress_compress"]["wall_s"] / out["one_liner"]["wall_s"]
    return out


def markdown(result: dict[str, Any]) -> str:
    """The three parts as Markdown tables."""
    run = result["run"]
    lines = [
        "# ctpress platform benchmark",
        "",
        f"{run['library']} ({run['git_revision']}), {run['machine']}, {run['cpus']} CPUs, "
        f"{run['date']}; data {result['settings']['data']} {result['settings']['shape']}.",
        "",
        "## (a) Rate-target encode vs one encode at the final setting",
        "",
        result["settings"]["method_a"],
        "",
        "| codec | target | bits/value | target MB/s | single MB/s | target / single "
        "| compress / single | final setting |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rate_targets"]:
        if "error" in r:
            lines.append(f"| {r['codec']} | {r['target']} | failed: {r['error'][:90]} |" + " |" * 5)
            continue
        lines.append(
            f"| {r['codec']} | {r['target']} | {r['bits_per_value']:.3f} | "
            f"{r['target_mb_s']:.2f} | {r['single_mb_s']:.2f} | {r['cost_ratio']:.1f}x | "
            f"{r['compress_ratio']:.1f}x | {r['method']} |"
        )
    start = result["startup"]
    lines += [
        "",
        f"## (b) Start-up (median of {result['settings']['repeat']} fresh processes)",
        "",
        "| command | wall s | vs reference | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for key in ("reference", "import_ctpress", "ctpress_help"):
        p = start[key]
        lines.append(
            f"| `{p['command'].replace(sys.executable, 'python')}` | {p['wall_s']:.2f} | "
            f"{p.get('vs_reference', 1.0):.1f}x | {p['rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"torch imported by a jpegls lossless round trip: {start['torch_after_jpegls_roundtrip']}",
        "",
        "## (c) `ctpress compress` (jpegls lossless) vs numpy + imagecodecs one-liner",
        "",
        "| command | wall s | bytes | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    comp = result["compress"]
    for key in ("ctpress_compress", "one_liner"):
        p = comp[key]
        lines.append(f"| {key} | {p['wall_s']:.2f} | {p['bytes']} | {p['rss_mb']:.0f} |")
    lines.append(f"\nctpress compress / one-liner: {comp['vs_one_liner']:.1f}x")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("CTPRESS_DATA", HERE.parent.parent / "shared" / "data")),
        help="data root holding projections/" + SAVU,
    )
    parser.add_argument(
        "--codecs", default="classical", help="comma-separated ids, 'classical' or 'all'"
    )
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per command")
    args = parser.parse_args(argv)
    path = args.data / "projections" / SAVU
    if not path.exists():
        print(f"bench_platform: {path} not found (give --data)", file=sys.stderr)
        return 1
    x = np.load(path)
    if args.codecs in ("classical", "all"):
        ids = [c.codec_id for c in list_codecs() if args.codecs == "all" or c.family == "classical"]
    else:
        ids = args.codecs.split(",")
    rows = []
    for codec_id in ids:
        for target in TARGETS:
            row = rate_target_cost(x, codec_id, target)
            rows.append(row)
            print(f"{codec_id:10s} {target!s:9s} " + (
                f"failed: {row['error'][:80]}" if "error" in row else
                f"{row['cost_ratio']:5.1f}x single ({row['target_mb_s']:.2f} vs "
                f"{row['single_mb_s']:.2f} MB/s), compress {row['compress_ratio']:.1f}x"
            ), flush=True)  # fmt: skip
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": run_info(),
        "settings": {
            "data": str(path),
            "shape": list(x.shape),
            "codecs": ids,
            "targets": [str(t) for t in TARGETS],
            "repeat": args.repeat,
            "method_a": " ".join(__doc__.split("cost.**")[1].split("b. **")[0].split()),
        },
        "rate_targets": rows,
        "startup": startup_costs(args.repeat),
        "compress": compress_costs(path, args.repeat),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_platform.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (args.out / "bench_platform.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'bench_platform.json'} and bench_platform.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
