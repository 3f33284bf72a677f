"""Sparse views + U-Net restoration (issue 16) against the codecs that keep every view.

Held-out scans (volumes never seen in training, ``ctpress.learned.data.HELD_OUT_VOLUMES``):
fan-beam sinograms (720 views over 360 degrees, 256 columns) of a thorax and a head slice
at two doses, and a cone-beam scan (360 views, 16 rows, 256 columns, cylindrical
detector) of the thorax, all stored as scanners store them (uint16 line integrals on a
fine grid, ``quantise_uint16``).

Reference: the reconstruction (FBP / FDK, ram-lak) of every original (noisy) view, which is
what the user has.  The noise of a view that is not stored is in that reference and in no
stored byte, so no restoration can remove it: the ``bound`` is the reconstruction of the
stored (noisy) views with the *noiseless* missing views (the same scan simulated without
noise), the best any restoration can reach in expectation, and the gain over linear
interpolation that a restoration could attain at most is ``bound - linear``.  Every
method is scored inside the field of view with that reconstruction's range as the data
range (``ctpress.metrics.recon_metrics``): PSNR, SSIM, RMSE in HU, and HaarPSI of the
central slice.

For k = 2, 4, 8, 16 (every k-th view kept):

- ``sparse FBP``: the kept views alone (no restoration);
- ``linear``: missing views linearly interpolated (``sparse-unet`` with
  ``restoration=linear``), the honest baseline;
- ``(a) unet``: missing views synthesised by the sinogram U-Net (``sparse-unet``, the
  file ``ctpress decompress`` returns);
- ``(b) image``: the kept views reconstructed and corrected by the image U-Net
  (``ctpress recon --restore``).

The stored views are coded losslessly (JPEG-LS, the default inner codec); the total ratio is
the whole file's size against uint16.  At each of those ratios the codecs that keep every
view (SPERR in its native bpp mode on the whole scan, JPEG 2000, and the best of SZ3, ZFP
and HTJ2K by reconstruction PSNR) are run at the same bits per value, and sparse views with
a lossy inner codec (SPERR on the stored views) reach higher ratios, so the crossover is
visible: at which ratios, if any, storing fewer views wins.

Usage::

    python benchmarks/bench_sparse.py --out results/benchmarks [--quick]

writes ``bench_sparse.json``, ``bench_sparse.md``, ``sparse_psnr_vs_ratio.png`` and
``sparse_grid_k{k}.png`` to the output folder.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import ctpress
from ctpress.learned.data import DataFiles, default_data_dir, load_volume
from ctpress.metrics import haarpsi, recon_metrics
from ctpress.recon import fbp, fdk, field_of_view_mask, line_integrals
from ctpress.restore import reconstruct_restored
from ctpress.scan import Geometry, Scan
from ctpress.sim.phantom import MU_WATER_PER_MM
from ctpress.sim.simulate import simulate_scan

KEEP_EVERY = (2, 4, 8, 16)
#: Codecs that keep every view, run at the total ratios of sparse-unet.
FULL_VIEW_CODECS = ("sperr", "jpeg2000", "sz3", "zfp", "htj2k")
QUICK_CODECS = ("sperr", "jpeg2000")
#: Sparse views with a lossy inner codec (k, inner codec, bits per stored value): higher
#: total ratios, to find where (if anywhere) storing fewer views wins.
LOSSY_INNER = ((4, "sperr", 2.0), (4, "sperr", 0.5), (16, "sperr", 2.0), (16, "sperr", 0.5))
#: Target: (a) or (b) this many dB above linear interpolation at these k.
TARGET_DB = 3.0
TARGET_K = (4, 8)


def held_out_scans(quick: bool) -> dict[str, tuple[Scan, np.ndarray]]:
    """The held-out scans (see the module docstring), each with its noiseless line
    integrals (float32, the scan's shape)."""
    data = default_data_dir()
    if data is None:
        raise SystemExit("bench_sparse needs ../shared/data (the held-out CT volumes)")
    _, held = DataFiles.find([data]).split()
    volumes = {p.stem.split("_")[0] + "_" + p.stem.split("_")[1]: p for p in held.volumes}
    scans: dict[str, tuple[Scan, np.ndarray]] = {}
    for name, path in sorted(volumes.items()):
        hu, voxel = load_volume(path)
        z = hu.shape[0] // 2
        doses = (1e5,) if quick else (1e5, 2.5e4)
        fan = dict(
            geometry_kind="fan", n_views=720, det_rows=1, det_cols=256, voxel_size_mm=voxel[1]
        )
        clean = simulate_scan(hu[z], **fan, i0=None, dtype="float32").array()
        for i0 in doses:
            scans[f"{name}-fan-i0={i0:g}"] = (simulate_scan(hu[z], **fan, i0=i0, seed=7), clean)
        if not quick and "pulmonary" in str(path):
            cone = dict(
                geometry_kind="cone", n_views=360, det_rows=16, det_cols=256,
                voxel_size_mm=voxel, detector_shape="cylindrical",
            )  # fmt: skip
            scans[f"{name}-cone-i0=1e5"] = (
                simulate_scan(hu, **cone, i0=1e5, seed=7),
                simulate_scan(hu, **cone, i0=None, dtype="float32").array(),
            )
    return scans


def reconstruct(scan: Scan) -> np.ndarray:
    """FBP (fan) or FDK (cone) of a scan, (slices, ny, nx) in 1/mm."""
    assert scan.geometry is not None
    return reconstruct_line_integrals(np.asarray(line_integrals(scan)), scan.geometry)


def reconstruct_line_integrals(li: np.ndarray, geometry: Geometry) -> np.ndarray:
    """FBP (fan) or FDK (cone) of line integrals (views, rows, cols), (slices, ny, nx)."""
    if geometry.kind == "cone":
        volume = fdk(li, geometry, volume_shape=(li.shape[1], li.shape[2], li.shape[2]))
    else:
        volume = fbp(li, geometry)
    return np.asarray(volume, dtype=np.float32).reshape(-1, *np.shape(volume)[-2:])


def noise_bound(scan: Scan, clean: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """The reconstruction of the ``stored`` views (mask) of ``scan`` with the noiseless
    line integrals ``clean`` in place of the others: what a perfect restoration gives."""
    assert scan.geometry is not None
    li = np.asarray(line_integrals(scan), dtype=np.float32).reshape(clean.shape).copy()
    li[~stored] = clean[~stored]
    return reconstruct_line_integrals(li, scan.geometry)


def fov_mask(scan: Scan, volume: np.ndarray) -> np.ndarray:
    assert scan.geometry is not None
    from ctpress.recon.fbp import default_grid

    _, pixel = default_grid(scan.geometry, scan.shape[2], None)
    mask = field_of_view_mask(volume.shape[-2:], pixel, scan.geometry, scan.shape[2])
    return np.broadcast_to(mask, volume.shape)


def score(ref: np.ndarray, volume: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Recon-domain quality of ``volume`` against ``ref`` inside ``mask``."""
    q = recon_metrics(ref, volume, mask, MU_WATER_PER_MM)
    mid = ref.shape[0] // 2
    inside = mask[mid]
    lo, hi = float(ref[mid][inside].min()), float(ref[mid][inside].max())
    q["haarpsi"] = haarpsi(
        np.where(inside, ref[mid], lo), np.where(inside, volume[mid], lo), hi - lo
    )
    return {k: round(float(v), 4) for k, v in q.items() if k != "added_noise_ratio"}


def sparse_fbp(scan: Scan, k: int) -> np.ndarray:
    """Reconstruction of every k-th view alone."""
    assert scan.geometry is not None
    g = scan.geometry
    sparse = Scan(
        scan.array()[::k], replace(g, angles_rad=g.angles_rad[::k]),
        scan.metadata,
    )  # fmt: skip
    return reconstruct(sparse)


def run(quick: bool, out: Path) -> dict[str, Any]:
    scans = held_out_scans(quick)
    codecs = QUICK_CODECS if quick else FULL_VIEW_CODECS
    results: dict[str, Any] = {}
    grids: dict[int, dict[str, np.ndarray]] = {}
    for name, (scan, clean) in scans.items():
        t0 = time.perf_counter()
        raw_bytes = scan.projections.size * 2
        ref = reconstruct(scan)
        mask = fov_mask(scan, ref)
        entry: dict[str, Any] = {"shape": list(scan.shape), "sparse": {}, "full_view": {}}
        for k in KEEP_EVERY:
            row: dict[str, Any] = {}
            row["sparse_fbp"] = score(ref, sparse_fbp(scan, k), mask)
            volumes = {}
            for label, restoration in (("linear", "linear"), ("unet_a", "unet")):
                t = time.perf_counter()
                data = ctpress.compress(
                    scan, codec="sparse-unet", keep_every=k, restoration=restoration
                )
                encode_s = time.perf_counter() - t
                t = time.perf_counter()
                decoded = ctpress.decompress(data)
                decode_s = time.perf_counter() - t
                volumes[label] = reconstruct(decoded)
                row[label] = dict(
                    score(ref, volumes[label], mask),
                    ratio=round(raw_bytes / len(data), 3),
                    bits_per_value=round(8 * len(data) / scan.projections.size, 4),
                    encode_s=round(encode_s, 2),
                    decode_s=round(decode_s, 2),
                )
            stored = ctpress.open(data).stored_views()
            row["bound"] = score(ref, noise_bound(scan, clean, stored), mask)
            volumes["image_b"] = np.asarray(reconstruct_restored(data)).reshape(ref.shape)
            row["image_b"] = dict(
                score(ref, volumes["image_b"], mask), ratio=row["unet_a"]["ratio"]
            )
            entry["sparse"][str(k)] = row
            if "fan" in name and "i0=100000" in name and k not in grids:
                mid = ref.shape[0] // 2
                grids[k] = {
                    "full-view FBP": ref[mid],
                    f"sparse FBP (every {k}th)": sparse_fbp(scan, k)[mid],
                    "linear interpolation": volumes["linear"][mid],
                    "(a) sinogram U-Net": volumes["unet_a"][mid],
                    "(b) image U-Net": volumes["image_b"][mid],
                    "mask": mask[mid],
                }
            # codecs that keep every view, at the same total bits per value
            bpp = row["unet_a"]["bits_per_value"]
            for codec in codecs:
                try:
                    data = ctpress.compress(scan, codec=codec, bpp=bpp)
                    volume = reconstruct(ctpress.decompress(data))
                    q = dict(score(ref, volume, mask), ratio=round(raw_bytes / len(data), 3))
                except ctpress.CtpressError as exc:
                    q = {"error": " ".join(str(exc).split())[:200]}
                entry["full_view"].setdefault(str(k), {})[codec] = q
            print(f"{name} k={k}: " + json.dumps({m: row[m]["psnr_db"] for m in row}), flush=True)
        for k, inner, inner_bpp in LOSSY_INNER:
            data = ctpress.compress(
                scan, codec="sparse-unet", keep_every=k, inner=inner, bpp=inner_bpp
            )
            volume = reconstruct(ctpress.decompress(data))
            bpp = 8 * len(data) / scan.projections.size
            point: dict[str, Any] = {
                "k": k, "inner": inner, "inner_bpp": inner_bpp,
                "unet_a": dict(score(ref, volume, mask), ratio=round(raw_bytes / len(data), 3)),
            }  # fmt: skip
            for codec in QUICK_CODECS:
                try:
                    full = ctpress.compress(scan, codec=codec, bpp=bpp)
                    q = score(ref, reconstruct(ctpress.decompress(full)), mask)
                    point[codec] = dict(q, ratio=round(raw_bytes / len(full), 3))
                except ctpress.CtpressError as exc:
                    point[codec] = {"error": " ".join(str(exc).split())[:200]}
            entry.setdefault("lossy_inner", []).append(point)
            print(
                f"{name} k={k} {inner} {inner_bpp}: "
                + json.dumps(
                    {m: point[m].get("psnr_db") for m in point if isinstance(point[m], dict)}
                ),
                flush=True,
            )
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        results[name] = entry
    summary = {
        "what": __doc__.split("\n\n")[0] if __doc__ else "",
        "results": results,
        "target": f"(a) or (b) >= linear + {TARGET_DB} dB at k in {TARGET_K}",
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "command": " ".join(["python", *sys.argv]),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_sparse.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "bench_sparse.md").write_text(markdown(summary))
    plot_ratio(results, out / "sparse_psnr_vs_ratio.png")
    for k, images in grids.items():
        plot_grid(images, k, out / f"sparse_grid_k{k}.png")
    return summary


def best_full_view(row: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    ok = {c: q for c, q in row.items() if "psnr_db" in q}
    if not ok:
        return None
    codec = max(ok, key=lambda c: ok[c]["psnr_db"])
    return codec, ok[codec]


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Sparse views + U-Net restoration (bench_sparse)",
        "",
        f"Command: `{summary['command']}`.  Reconstruction PSNR (dB, inside the field of view, "
        "against the reconstruction of all original noisy views, its range as the data range); "
        "total ratio of the sparse-unet file (stored views lossless, JPEG-LS) against uint16.",
        "",
    ]
    met_all = True
    unreachable: list[str] = []
    for name, entry in summary["results"].items():
        lines += [
            f"## {name} {tuple(entry['shape'])}",
            "",
            "| k | ratio | sparse FBP | linear | (a) sinogram U-Net | (b) image U-Net | "
            "bound | best of (a),(b) - linear | attainable (bound - linear) | share | "
            "SPERR | JPEG 2000 | best full-view codec |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for k, row in entry["sparse"].items():
            full = entry["full_view"].get(k, {})
            best = best_full_view(full)
            gain = (
                max(row["unet_a"]["psnr_db"], row["image_b"]["psnr_db"]) - row["linear"]["psnr_db"]
            )
            attainable = row["bound"]["psnr_db"] - row["linear"]["psnr_db"]
            if int(k) in TARGET_K and gain < TARGET_DB:
                met_all = False
                if attainable < TARGET_DB:
                    unreachable.append(f"{name} at k = {k} ({attainable:+.2f} dB)")

            def cell(q: dict[str, Any] | None) -> str:
                return "-" if not q or "psnr_db" not in q else f"{q['psnr_db']:.2f}"

            lines.append(
                f"| {k} | {row['unet_a']['ratio']:.2f} | {cell(row['sparse_fbp'])} | "
                f"{cell(row['linear'])} | {cell(row['unet_a'])} | {cell(row['image_b'])} | "
                f"{cell(row['bound'])} | {gain:+.2f} | {attainable:+.2f} | "
                f"{gain / attainable:.0%} | "
                f"{cell(full.get('sperr'))} | {cell(full.get('jpeg2000'))} | "
                + ("-" if best is None else f"{best[0]} {best[1]['psnr_db']:.2f}")
                + " |"
            )
        lines += [
            "",
            "| k | SSIM linear / (a) / (b) | HaarPSI linear / (a) / (b) | "
            "RMSE HU linear / (a) / (b) |",
            "|---|---|---|---|",
        ]
        for k, row in entry["sparse"].items():
            trio = [row["linear"], row["unet_a"], row["image_b"]]
            lines.append(
                f"| {k} | "
                + " / ".join(f"{q['ssim']:.4f}" for q in trio)
                + " | "
                + " / ".join(f"{q['haarpsi']:.4f}" for q in trio)
                + " | "
                + " / ".join(f"{q['rmse_hu']:.1f}" for q in trio)
                + " |"
            )
        if entry.get("lossy_inner"):
            lines += [
                "",
                "Sparse views with a lossy inner codec against codecs keeping every view at the "
                "same total size (recon PSNR, dB):",
                "",
                "| k | inner | bits per stored value | total ratio | (a) | SPERR (ratio) | "
                "JPEG 2000 (ratio) |",
                "|---|---|---|---|---|---|---|",
            ]
            for p in entry["lossy_inner"]:

                def alt(q: dict[str, Any]) -> str:
                    return "-" if "psnr_db" not in q else f"{q['psnr_db']:.2f} ({q['ratio']:.0f})"

                lines.append(
                    f"| {p['k']} | {p['inner']} | {p['inner_bpp']:g} | "
                    f"{p['unet_a']['ratio']:.1f} | {p['unet_a']['psnr_db']:.2f} | "
                    f"{alt(p['sperr'])} | {alt(p['jpeg2000'])} |"
                )
        lines.append("")
    lines += [
        f"Target ({summary['target']}): {'met' if met_all else 'NOT met'} on every scan.",
        "",
        "`bound`: the stored views with the noiseless missing views, the most any restoration "
        "can reach (the reference holds the noise of the views that are not stored); "
        "`share`: the part of the attainable gain over linear interpolation that the better of "
        "(a) and (b) reaches.  "
        + (
            "The target exceeds the bound, so no restoration can meet it, on: "
            + "; ".join(unreachable)
            + "."
            if unreachable
            else "The bound leaves room for the target on every scan."
        ),
        "",
        "![PSNR vs ratio](sparse_psnr_vs_ratio.png)",
        "",
    ]
    for k in KEEP_EVERY:
        lines += [f"![held-out slice, every {k}th view](sparse_grid_k{k}.png)", ""]
    return "\n".join(lines)


def plot_ratio(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], results.items(), strict=True):
        ks = list(entry["sparse"])
        ratios = [entry["sparse"][k]["unet_a"]["ratio"] for k in ks]
        for label, key in (
            ("linear", "linear"),
            ("(a) sinogram U-Net", "unet_a"),
            ("(b) image U-Net", "image_b"),
            ("bound (noiseless missing views)", "bound"),
        ):
            ax.plot(ratios, [entry["sparse"][k][key]["psnr_db"] for k in ks], "o-", label=label)
        lossy = entry.get("lossy_inner", [])
        if lossy:
            pts = sorted((p["unet_a"]["ratio"], p["unet_a"]["psnr_db"]) for p in lossy)
            ax.plot(*zip(*pts, strict=True), "^", label="(a) with lossy inner (SPERR)")
        codecs = sorted({c for row in entry["full_view"].values() for c in row})
        for codec in codecs:
            rows = [*entry["full_view"].values(), *lossy]
            pts = [
                (q["ratio"], q["psnr_db"]) for row in rows if "psnr_db" in (q := row.get(codec, {}))
            ]
            if pts:
                x, y = zip(*sorted(pts), strict=True)
                ax.plot(x, y, "s--", label=codec, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("total ratio vs uint16")
        ax.set_ylabel("recon PSNR (dB) vs full-view recon")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grid(images: dict[str, np.ndarray], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = images.pop("mask")
    ref = images["full-view FBP"]
    hu = 1000.0 / MU_WATER_PER_MM
    names = list(images)
    fig, axes = plt.subplots(2, len(names), figsize=(3 * len(names), 6))
    lo, hi = np.percentile(ref[mask], [1, 99])
    for j, name in enumerate(names):
        axes[0, j].imshow(np.where(mask, images[name], lo), cmap="gray", vmin=lo, vmax=hi)
        axes[0, j].set_title(name, fontsize=8)
        err = np.where(mask, (images[name] - ref) * hu, 0)
        axes[1, j].imshow(err, cmap="RdBu_r", vmin=-100, vmax=100)
        rmse = math.sqrt(float(np.mean(err[mask] ** 2)))
        axes[1, j].set_title(f"error (HU, +-100), RMSE {rmse:.1f}", fontsize=8)
        for ax in axes[:, j]:
            ax.axis("off")
    fig.suptitle(f"held-out slice, every {k}th view stored", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--quick", action="store_true", help="one dose, fan only, two codecs")
    args = parser.parse_args()
    run(args.quick, args.out)


if __name__ == "__main__":
    main()
