"""SIREN at the original study's compression ratios, next to SZ3 and SPERR.

The study (SIREN MLPs on TCIA LDCT projections, fp32 parameters counted as the size)
reported PSNR 22.07 dB at about 1300:1 versus uint16.  Here every codec is asked for
``16 / ratio`` bits per value of the *whole file* (the real ``.ctpz`` bytes: container
header, geometry, chunk headers, network weights, side information) at the ratios
1300, 750, 330, 250 and 50 : 1 versus uint16, and quality is measured on every stored
projection after decoding.  PSNR is given against the scan's own range (max - min) and,
as the study did, against 65535.

Scans: the default scan (:func:`ctpress.sim.default_scan`: cone beam, 360 x 16 x 192
uint16) and, when ``../shared/data`` is present, the held-out real volumes (never used
to train the meta-learned initialisations) simulated the same way with 256 detector
columns.  Output: ``bench_siren.json`` (records, machine, settings) and
``bench_siren.md`` (the study-format table), in ``--out``.

Usage::

    python benchmarks/bench_siren.py --out results/benchmarks [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ctpress.bench import BenchRecord, measure_codec, run_info
from ctpress.learned.data import HELD_OUT_VOLUMES, default_data_dir, load_volume
from ctpress.scan import Scan
from ctpress.sim import default_scan, simulate_scan

#: The study's rate points, versus uint16.
RATIOS = (1300, 750, 330, 250, 50)
CODECS = ("siren", "sz3", "sperr")
#: The study's SIREN result at about 1300:1 (PSNR in dB with data range 65535).
STUDY_PSNR_DB = 22.07


def scans(quick: bool) -> dict[str, Scan]:
    """The default scan and the held-out volumes' simulated scans."""
    out = {"default (cone 360x16x192)": default_scan()}
    root = default_data_dir()
    if quick or root is None:
        return out
    for stem in HELD_OUT_VOLUMES:
        path = next((root / "volumes").glob(f"{stem}*.npy"), None)
        if path is None:
            continue
        hu, voxel = load_volume(path)
        out[f"{stem} (cone 360x16x256)"] = simulate_scan(
            hu, geometry_kind="cone", n_views=360, det_rows=16, det_cols=256,
            voxel_size_mm=voxel, i0=1e5, detector_shape="cylindrical", seed=1,
        )  # fmt: skip
    return out


def psnr_65535(record: BenchRecord) -> float | None:
    """PSNR with the study's convention (data range 65535 on uint16)."""
    if record.mse is None:
        return None
    return math.inf if record.mse == 0 else 10 * math.log10(65535.0**2 / record.mse)


def table(rows: list[dict[str, object]]) -> str:
    """Markdown table in the study's format plus the honest extras."""
    head = [
        "scan", "method", "target", "ratio vs uint16", "Size for 1 GB", "PSNR (scan range)",
        "PSNR (65535)", "SSIM", "HaarPSI", "VSI", "MSE", "encode s/MB", "decode MB/s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rec: dict[str, object] = r["record"]  # type: ignore[assignment]
        if rec.get("error"):
            cells = [rec["scan"], rec["codec"], f"{r['ratio']}:1", f"n/a: {rec['error']}"]
            cells += [""] * (len(head) - len(cells))
        else:
            enc_s_mb = 1.0 / rec["encode_mb_s"] if rec.get("encode_mb_s") else None  # type: ignore[operator]
            cells = [
                rec["scan"], rec["codec"], f"{r['ratio']}:1", f"{rec['ratio_vs_uint16']:.0f}:1",
                f"{1000 / rec['ratio']:.2f} MB", f"{rec['psnr_db']:.2f}",  # type: ignore[operator]
                f"{r['psnr_65535']:.2f}", f"{rec['ssim']:.4f}", f"{rec['haarpsi']:.4f}",
                f"{rec['vsi']:.4f}", f"{rec['mse']:.4g}",
                f"{enc_s_mb:.2f}" if enc_s_mb else "", f"{rec['decode_mb_s']:.2f}",
            ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--quick", action="store_true", help="default scan only, 3 ratios")
    args = parser.parse_args(argv)
    ratios = (1300, 330, 50) if args.quick else RATIOS
    rows: list[dict[str, object]] = []
    t0 = time.perf_counter()
    for name, scan in scans(args.quick).items():
        for ratio in ratios:
            for codec in CODECS:
                record, _ = measure_codec(scan, codec, ("bpp", 16.0 / ratio), scan_name=name)
                rows.append({"ratio": ratio, "psnr_65535": psnr_65535(record),
                             "record": asdict(record)})  # fmt: skip
                status = record.error or (
                    f"{record.ratio_vs_uint16:.0f}:1 {record.psnr_db:.2f} dB "
                    f"({psnr_65535(record):.2f} dB at 65535), enc {record.encode_s:.1f} s"
                )
                print(f"{name} {codec} {ratio}:1 -> {status}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": run_info(),
        "seconds": round(time.perf_counter() - t0, 1),
        "study_psnr_db_at_1300": STUDY_PSNR_DB,
        "rows": rows,
    }
    (args.out / "bench_siren.json").write_text(json.dumps(result, indent=1, default=str))
    md = (
        f"# SIREN vs SZ3 / SPERR at the study's ratios\n\nStudy: SIREN {STUDY_PSNR_DB} dB "
        "(data range 65535) at ~1300:1, fp32 parameters counted, PSNR on interpolated "
        "projections.\n\n" + table(rows) + "\n"
    )
    (args.out / "bench_siren.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
