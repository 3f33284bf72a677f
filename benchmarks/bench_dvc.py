"""Issue 15: ``dvc`` (video coding of the views) against per-projection and 3-D codecs.

Rate-distortion curves in the projection domain (bytes on disk through ``ctpress.compress``,
PSNR against each scan's value range) at bpp targets, on the default scan, on held-out
volumes simulated in cone beam (16 x 368 detector, 240 views per turn at two doses, and at
the clinical angular step per channel width, :func:`ctpress.sim.clinical_views`, at one)
and on the real Savu projections, where ``../shared/data`` holds them (single-row
sinograms are one image to dvc, coded as an I-frame: not run); BD-rate of every codec
against ``dvc`` and of ``dvc`` against ``hyperprior``, the prediction ablations (zero
motion, one global shift per view, and plain frame differences: zero motion without the
smoothing), the same BD-rates in the reconstruction domain for the cone-beam scans (FDK of
the decoded scan against FDK of the original views, inside the field of view), and encode /
decode MB/s on 2 cores (decode: the fastest of :data:`DECODE_RUNS`).
x265 (HEVC Main 12 through ffmpeg's libx265, the video codec users would name) is the
video-coding reference where ``ffmpeg`` with libx265 is installed (Debian: ``apt-get install
ffmpeg``) and skipped otherwise: every view is a 12-bit monochrome frame (the scan mapped
linearly onto 0..4095; the mapping's error is in the PSNR and its two float64 ends in the
size), preset ``slow``, ``-tune psnr``, constant QP 0-32 (an RD curve, so BD-rates compare
curves, not targets), the raw HEVC bitstream's bytes.

Usage::

    python benchmarks/bench_dvc.py --out results/benchmarks [--quick]

writes ``bench_dvc.json`` and ``bench_dvc.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import ctpress
from ctpress.bdrate import bd_rate
from ctpress.bench import run_info
from ctpress.learned.data import DataFiles, default_data_dir, load_volume
from ctpress.metrics import recon_metrics
from ctpress.recon import fdk, field_of_view_mask, line_integrals
from ctpress.recon.fbp import default_grid
from ctpress.scan import Scan
from ctpress.sim.phantom import MU_WATER_PER_MM
from ctpress.sim.simulate import default_scan, simulate_scan

BPP_TARGETS = (0.5, 1.0, 2.0, 4.0)
#: Decodes timed per point; the fastest is reported (a shared machine's other work only
#: ever slows a run down).  Encodes, minutes long with the rate search, are timed once.
DECODE_RUNS = 3
T = TypeVar("T")
#: (label, codec, settings)
CODECS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("dvc", "dvc", {}),
    ("dvc zero motion", "dvc", {"motion": "zero"}),
    ("dvc frame differences", "dvc", {"motion": "zero", "smoothing": "none"}),
    ("dvc global shift", "dvc", {"motion": "global"}),
    ("hyperprior", "hyperprior", {}),
    ("jpeg2000", "jpeg2000", {}),
    ("htj2k", "htj2k", {}),
    ("sperr", "sperr", {}),
    ("sz3", "sz3", {}),
    ("zfp", "zfp", {}),
)


#: x265's constant QPs (its RD curve) and the label of its rows.
X265_QPS = (0, 4, 8, 12, 16, 20, 24, 28, 32)
X265 = "x265 (Main 12)"
#: Bytes of the 12-bit mapping x265 needs besides its bitstream (two float64 ends).
X265_SIDE_BYTES = 16


def x265_available() -> bool:
    """Whether ffmpeg with libx265 is installed."""
    if shutil.which("ffmpeg") is None:
        return False
    encoders = subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=False
    ).stdout
    return "libx265" in encoders


def _ffmpeg(args: list[str], data: bytes) -> bytes:
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", *args], input=data,
        capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace").strip()[-300:])
    return done.stdout


def x265_code(views: np.ndarray, qp: int) -> tuple[int, np.ndarray, float, float]:
    """Code ``views`` (n, rows, cols) as a 12-bit monochrome HEVC stream at constant
    ``qp``: (bytes, decoded views as float64 in the scan's units, encode s, decode s)."""
    n, rows, cols = views.shape
    lo, hi = float(views.min()), float(views.max())
    scale = 4095 / ((hi - lo) or 1.0)
    frames = np.round((views.astype(np.float64) - lo) * scale).astype("<u2")
    t0 = time.perf_counter()
    stream = _ffmpeg(
        ["-f", "rawvideo", "-pix_fmt", "gray12le", "-s", f"{cols}x{rows}", "-r", "25",
         "-i", "-", "-c:v", "libx265", "-preset", "slow", "-tune", "psnr",
         "-x265-params", f"qp={qp}:log-level=error", "-f", "hevc", "-"],
        frames.tobytes(),
    )  # fmt: skip
    encode_s = time.perf_counter() - t0
    args = ["-f", "hevc", "-i", "-", "-f", "rawvideo", "-pix_fmt", "gray12le", "-"]
    raw, decode_s = best_time(lambda: _ffmpeg(args, stream))
    decoded = np.frombuffer(raw, dtype="<u2").reshape(n, rows, cols) / scale + lo
    return len(stream) + X265_SIDE_BYTES, decoded, encode_s, decode_s


def x265_point(scan: Scan, qp: int, reference: np.ndarray | None) -> dict[str, Any]:
    """One x265 coding at constant ``qp``, measured as :func:`point` measures the
    ctpress codecs (the decoded values cast back to the scan's dtype)."""
    views = scan.array()
    n_bytes, decoded, encode_s, decode_s = x265_code(views, qp)
    info = np.iinfo(views.dtype) if views.dtype.kind in "iu" else None
    if info is not None:
        decoded = np.clip(np.round(decoded), info.min, info.max)
    decoded_scan = Scan(decoded.astype(views.dtype), scan.geometry, scan.metadata)
    return dict(
        measure(scan, decoded_scan, n_bytes, encode_s, decode_s, reference), target=f"qp {qp}"
    )


def cone_scan(
    hu: np.ndarray, voxel: tuple[float, float, float], views: int | None, i0: float
) -> Scan:
    """A held-out volume in cone beam: ``views`` per turn (None: the clinical angular
    sampling) on a cylindrical 16 x 368 detector, Poisson noise at ``i0``."""
    return simulate_scan(
        hu, geometry_kind="cone", n_views=views, det_rows=16, det_cols=368,
        voxel_size_mm=voxel, i0=i0, seed=7, detector_shape="cylindrical",
    )  # fmt: skip


def scans(quick: bool) -> dict[str, Scan]:
    """The default scan, a held-out volume in cone beam at two doses (240 views per turn),
    and at one dose at the clinical angular sampling (:func:`ctpress.sim.clinical_views`)."""
    found = {"default (360 x 16 x 192)": default_scan()}
    data = default_data_dir()
    if data is None or quick:
        return found
    _, held = DataFiles.find([data]).split()
    for path in sorted(held.volumes)[:1]:
        hu, voxel = load_volume(path)
        name = path.stem.split("_")[0] + "_" + path.stem.split("_")[1]
        for i0 in (1e5, 2.5e4):
            found[f"{name} cone i0={i0:g} (240 x 16 x 368)"] = cone_scan(hu, voxel, 240, i0)
        # the clinical scanner's angular step per channel width (3.6x as many views as
        # above; one dose: it takes as long as the two above together)
        clinical = cone_scan(hu, voxel, None, 1e5)
        found[f"{name} cone i0=1e+05 clinical sampling ({clinical.shape[0]} x 16 x 368)"] = clinical
    for path in held.projections:  # real raw projections (multi-row: Savu)
        if path.name.startswith("savu") and "raw" in path.name:
            views = np.load(path)
            found[f"savu i12 real ({' x '.join(map(str, views.shape))})"] = Scan(views)
    return found


def reconstruct(scan: Scan) -> np.ndarray:
    """FDK of a cone-beam scan, (rows, cols, cols) in 1/mm."""
    assert scan.geometry is not None
    shape = (scan.shape[1], scan.shape[2], scan.shape[2])
    return np.asarray(fdk(line_integrals(scan), scan.geometry, volume_shape=shape), np.float32)


def fov_mask(scan: Scan, volume: np.ndarray) -> np.ndarray:
    """The field of view of ``scan`` over every slice of ``volume``."""
    assert scan.geometry is not None
    _, pixel = default_grid(scan.geometry, scan.shape[2], None)
    mask = field_of_view_mask(volume.shape[-2:], pixel, scan.geometry, scan.shape[2])
    return np.broadcast_to(mask, volume.shape)


def point(
    scan: Scan, codec: str, settings: dict[str, Any], bpp: float, reference: np.ndarray | None
) -> dict[str, Any]:
    """One coding at a bpp target: bits/value, PSNR, MB/s (or the error); with the
    reconstruction of the original views (``reference``), the decoded scan's
    reconstruction PSNR / SSIM / RMSE in HU inside the field of view, against the
    reference's range there."""
    try:
        t0 = time.perf_counter()
        data = ctpress.compress(scan, codec=codec, bpp=bpp, jobs=2, **settings)
        encode_s = time.perf_counter() - t0
        decoded_scan, decode_s = best_time(lambda: ctpress.decompress(data))
    except ctpress.CtpressError as exc:
        return {"target": bpp, "error": str(exc)}
    return dict(measure(scan, decoded_scan, len(data), encode_s, decode_s, reference), target=bpp)


def best_time(run: Callable[[], T]) -> tuple[T, float]:
    """``run()``'s result and its shortest wall time over :data:`DECODE_RUNS` calls."""
    times = []
    for _ in range(DECODE_RUNS):
        t0 = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t0)
    return result, min(times)


def measure(
    scan: Scan, decoded_scan: Scan, n_bytes: int, encode_s: float, decode_s: float,
    reference: np.ndarray | None,
) -> dict[str, Any]:  # fmt: skip
    """Bits/value, PSNR against the scan's value range, MB/s, and with ``reference``
    the reconstruction metrics of ``decoded_scan`` (see :func:`point`)."""
    views = scan.array()
    values = views.astype(np.float64)
    value_range = float(values.max() - values.min())
    decoded = decoded_scan.array().astype(np.float64)
    mse = float(np.mean((decoded - values) ** 2))
    recon: dict[str, float] = {}
    if reference is not None:
        volume = reconstruct(decoded_scan)
        q = recon_metrics(reference, volume, fov_mask(scan, reference), MU_WATER_PER_MM)
        recon = {f"recon_{k}": float(q[k]) for k in ("psnr_db", "ssim", "rmse_hu")}
    return {
        **recon,
        "bits_per_value": 8 * n_bytes / views.size,
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(value_range**2 / mse),
        "encode_mb_s": views.nbytes / 1e6 / encode_s,
        "decode_mb_s": views.nbytes / 1e6 / decode_s,
    }


def bd(
    anchor: list[dict[str, Any]], test: list[dict[str, Any]], key: str = "psnr_db"
) -> float | None:
    """BD-rate (percent) of ``test`` against ``anchor`` on quality ``key``; None without
    overlap."""
    curves = [
        [p for p in c if "error" not in p and key in p and math.isfinite(p[key])]
        for c in (anchor, test)
    ]
    if min(len(c) for c in curves) < 2:
        return None
    try:
        return bd_rate(
            [p["bits_per_value"] for p in curves[0]], [p[key] for p in curves[0]],
            [p["bits_per_value"] for p in curves[1]], [p[key] for p in curves[1]],
        )  # fmt: skip
    except (ValueError, ctpress.CtpressError):
        return None


def run(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    targets = BPP_TARGETS[:3] if quick else BPP_TARGETS
    with_x265 = x265_available()
    if not with_x265:
        print("x265 skipped: ffmpeg with libx265 is not installed", flush=True)
    for name, scan in scans(quick).items():
        cone = scan.geometry is not None and scan.geometry.kind == "cone"
        reference = reconstruct(scan) if cone else None
        curves = {}
        for label, codec, settings in CODECS:
            curves[label] = [point(scan, codec, settings, bpp, reference) for bpp in targets]
            shown = [
                f"{p['bits_per_value']:.2f}b {p['psnr_db']:.1f}dB" if "error" not in p else "n/a"
                for p in curves[label]
            ]
            print(name, label, shown, flush=True)
        if with_x265:
            curves[X265] = [x265_point(scan, qp, reference) for qp in X265_QPS]
            print(name, X265, [f"{p['bits_per_value']:.2f}b {p['psnr_db']:.1f}dB"
                               for p in curves[X265]], flush=True)  # fmt: skip
        results[name] = {
            "curves": curves,
            "bd_rate_vs_dvc_percent": {
                label: bd(curves["dvc"], curves[label]) for label in curves if label != "dvc"
            },
            "dvc_bd_rate_vs_hyperprior_percent": bd(curves["hyperprior"], curves["dvc"]),
            "motion_bd_rate_vs_zero_percent": bd(curves["dvc zero motion"], curves["dvc"]),
            "prediction_bd_rate_vs_frame_differences_percent": bd(
                curves["dvc frame differences"], curves["dvc"]
            ),
            "global_bd_rate_vs_zero_percent": bd(
                curves["dvc zero motion"], curves["dvc global shift"]
            ),
            # the video codec users would name against the 3-D wavelet and the per-view codec
            "x265_bd_rate_percent": {
                f"vs {anchor}{domain}": bd(curves[anchor], curves[X265], key)
                for anchor in ("sperr", "hyperprior")
                for domain, key in (("", "psnr_db"), (" (recon)", "recon_psnr_db"))
            }
            if X265 in curves
            else {},
            "recon_bd_rate_vs_dvc_percent": {
                label: bd(curves["dvc"], curves[label], "recon_psnr_db")
                for label in curves
                if label != "dvc"
            },
        }
    return results


def markdown(results: dict[str, Any]) -> str:
    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.1f} %"

    labels = [label for label, _, _ in CODECS[1:]]
    if any(X265 in r["curves"] for r in results.values()):
        labels.append(X265)
    lines = [
        "# dvc: video coding of the views (issue 15)",
        "",
        "BD-rate of each codec against dvc in the projection domain (positive: it needs more "
        "bits than dvc for the same PSNR; bytes on disk, PSNR against the scan's value "
        "range), bpp targets " + ", ".join(f"{t:g}" for t in BPP_TARGETS) + ".",
        "",
        "| scan | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name, r in results.items():
        bd_row = r["bd_rate_vs_dvc_percent"]
        row = " | ".join(cell(bd_row.get(label)) for label in labels)
        lines.append(f"| {name} | {row} |")
    lines += [
        "",
        "The same in the reconstruction domain (FDK of the decoded scan against FDK of the "
        "original views, PSNR inside the field of view against the reference's range there; "
        "cone-beam scans only):",
        "",
        "| scan | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name, r in results.items():
        bd_row = r["recon_bd_rate_vs_dvc_percent"]
        if any(v is not None for v in bd_row.values()):
            row = " | ".join(cell(bd_row.get(label)) for label in labels)
            lines.append(f"| {name} | {row} |")
    x265_columns = sorted({k for r in results.values() for k in r.get("x265_bd_rate_percent", {})})
    if x265_columns:
        lines += [
            "",
            f"BD-rate of {X265} against SPERR and hyperprior (negative: x265 needs fewer bits):",
            "",
            "| scan | " + " | ".join(x265_columns) + " |",
            "|---|" + "---:|" * len(x265_columns),
        ]
        for name, r in results.items():
            row = " | ".join(cell(r["x265_bd_rate_percent"].get(k)) for k in x265_columns)
            lines.append(f"| {name} | {row} |")
    lines += [
        "",
        "| scan | dvc vs hyperprior | block motion vs zero motion | global shift vs zero motion "
        "| motion + smoothing vs frame differences |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {cell(r['dvc_bd_rate_vs_hyperprior_percent'])} | "
            f"{cell(r['motion_bd_rate_vs_zero_percent'])} | "
            f"{cell(r['global_bd_rate_vs_zero_percent'])} | "
            f"{cell(r['prediction_bd_rate_vs_frame_differences_percent'])} |"
        )
    lines += [
        "",
        "| scan | codec | bits/value | PSNR dB | recon PSNR dB | recon RMSE HU | encode MB/s "
        "| decode MB/s |",
    ]
    lines += ["|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        for label, curve in r["curves"].items():
            for p in curve:
                if "error" in p:
                    lines.append(f"| {name} | {label} | target {p['target']}: n/a | | | | | |")
                    continue
                recon = (
                    f"{p['recon_psnr_db']:.2f} | {p['recon_rmse_hu']:.2f}"
                    if "recon_psnr_db" in p
                    else "- | -"
                )
                lines.append(
                    f"| {name} | {label} | {p['bits_per_value']:.3f} | {p['psnr_db']:.2f} | "
                    f"{recon} | {p['encode_mb_s']:.2f} | {p['decode_mb_s']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--quick", action="store_true", help="the default scan, 3 targets")
    args = parser.parse_args(argv)
    results = run(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"run": run_info(), "quick": args.quick, "results": results}
    (args.out / "bench_dvc.json").write_text(json.dumps(payload, indent=1))
    (args.out / "bench_dvc.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
