"""The report of a bench run: ``index.html`` (self-contained: inline CSS, plots and images as
embedded PNG, no scripts, no external URLs) and ``summary.md`` with the same tables.

Every number shown comes from the :class:`~ctpress.bench.BenchResult` given: the records of
the run (rows reused from an earlier run are labelled with their origin) and BD-rates computed
from them here.  Sections: run info, results, the original study's table format, RD plots,
BD-rate, speed, and image comparisons at a matched rate.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bdrate import bd_rate
from .bench import ORIGIN_THIS_RUN, BenchRecord, BenchResult
from .bench import format_number as _fmt
from .codecs import get_codec_class

#: Anchor of the BD-rate tables.
ANCHOR = "jpeg2000"
#: Bits per value at which the image comparisons are shown (nearest run per codec).
MATCHED_BPV = 2.0
#: Quality per domain: (record field, label).
DOMAINS: dict[str, tuple[str, str]] = {
    "projection": ("psnr_db", "projection PSNR (dB)"),
    "recon": ("recon_psnr_db", "reconstruction PSNR in the FOV (dB)"),
}

Table = tuple[list[str], list[list[str]]]


def is_learned(codec_id: str) -> bool:
    """Whether a codec declares itself learned (:attr:`~ctpress.codecs.Codec.family`)."""
    return get_codec_class(codec_id).family == "learned"


def rd_curves(
    records: Sequence[BenchRecord], scan: str, metric: str
) -> dict[str, tuple[list[float], list[float]]]:
    """(bits/value, PSNR) points of each codec's lossy runs on ``scan`` (finite PSNR only; of
    runs with equal PSNR the smallest rate), codecs with at least 2 points."""
    points: dict[str, dict[float, float]] = {}
    for r in records:
        q = getattr(r, metric)
        if r.scan == scan and r.ok and not r.exact and q is not None and math.isfinite(q):
            assert r.bits_per_value is not None
            best = points.setdefault(r.codec, {})
            best[q] = min(best.get(q, math.inf), r.bits_per_value)
    return {c: (list(p.values()), list(p.keys())) for c, p in sorted(points.items()) if len(p) >= 2}


def bd_rates(records: Sequence[BenchRecord], scan: str, metric: str) -> dict[str, Any]:
    """BD-rates (pchip, %) of every codec on ``scan`` against :data:`ANCHOR` and against the
    best classical codec (the classical codec with the lowest BD-rate against the anchor).

    Returns ``{"best": codec or None, "rows": [{codec, points, psnr_span, vs_anchor,
    vs_best}]}``; a missing anchor or non-overlapping curves give None / NaN.
    """
    curves = rd_curves(records, scan, metric)
    anchor = curves.get(ANCHOR)
    vs_anchor = {c: bd_rate(*anchor, *curve) for c, curve in curves.items()} if anchor else {}
    classical = [
        c
        for c, v in vs_anchor.items()
        if not math.isnan(v) and get_codec_class(c).family == "classical"
    ]
    best = min(classical, key=lambda c: vs_anchor[c]) if classical else None
    rows = [
        {
            "codec": codec,
            "points": len(rate),
            "psnr_span": (min(psnr), max(psnr)),
            "vs_anchor": vs_anchor.get(codec),
            "vs_best": bd_rate(*curves[best], rate, psnr) if best else None,
        }
        for codec, (rate, psnr) in curves.items()
    ]
    return {"best": best, "rows": rows}


# ---------------------------------------------------------------------------------- tables


def _scans(records: Sequence[BenchRecord]) -> list[str]:
    return list(dict.fromkeys(r.scan for r in records))


def _status(r: BenchRecord) -> str:
    return r.note if r.note else f"n/a: {r.error}"


def results_table(records: Sequence[BenchRecord]) -> Table:
    """Every record with every measured quantity (failed/skipped rows: their reason)."""
    many = len(_scans(records)) > 1
    recon = any(r.recon_psnr_db is not None for r in records)
    origin = any(r.origin != ORIGIN_THIS_RUN for r in records)
    head = ["scan"] * many + ["codec", "rate control", "bytes", "bits/value", "ratio"]
    head += ["ratio vs uint16", "PSNR dB", "SSIM", "HaarPSI", "VSI", "MSE", "max abs err"]
    head += ["recon PSNR dB", "recon SSIM", "RMSE HU", "added noise"] * recon
    head += ["enc MB/s", "dec MB/s", "enc peak MB", "dec peak MB"] + ["origin"] * origin
    rows = []
    for r in records:
        lead = [r.scan] * many + [r.codec, r.rate_label]
        tail = [r.origin] * origin
        if not r.ok:
            rows.append([*lead, _status(r), *[""] * (len(head) - len(lead) - 1 - origin), *tail])
            continue
        cells = [str(r.n_bytes), _fmt(r.bits_per_value, ".3f"), _fmt(r.ratio, ".2f")]
        cells += [_fmt(r.ratio_vs_uint16, ".2f"), _fmt(r.psnr_db, ".2f"), _fmt(r.ssim, ".5f")]
        cells += [_fmt(r.haarpsi, ".5f"), _fmt(r.vsi, ".5f"), _fmt(r.mse, ".4g")]
        cells += [_fmt(r.max_abs_error, ".4g")]
        if recon:
            cells += [_fmt(r.recon_psnr_db, ".2f"), _fmt(r.recon_ssim, ".5f")]
            cells += [_fmt(r.recon_rmse_hu, ".3g"), _fmt(r.added_noise_ratio, ".3f")]
        cells += [_fmt(r.encode_mb_s, ".3g"), _fmt(r.decode_mb_s, ".3g")]
        cells += [_fmt(r.encode_peak_mb, ".1f"), _fmt(r.decode_peak_mb, ".1f")]
        rows.append([*lead, *cells, *tail])
    return head, rows


def study_table(records: Sequence[BenchRecord]) -> Table:
    """The original study's format: Size for 1 GB (what 1 GB of input in its own dtype
    compresses to at the measured ratio), PSNR, SSIM, HaarPSI, VSI, MSE."""
    many = len(_scans(records)) > 1
    head = ["scan"] * many + ["method", "Size for 1 GB", "PSNR", "SSIM", "HaarPSI", "VSI", "MSE"]
    rows = []
    for r in records:
        if r.note:
            continue
        lead = [r.scan] * many + [f"{r.codec} ({r.rate_label})"]
        if r.error:
            rows.append([*lead, f"n/a: {r.error}", *[""] * 5])
            continue
        assert r.ratio is not None
        size = f"{1000 / r.ratio:.1f} MB"
        cells = [_fmt(r.psnr_db, ".2f"), _fmt(r.ssim, ".4f"), _fmt(r.haarpsi, ".4f")]
        rows.append([*lead, size, *cells, _fmt(r.vsi, ".4f"), _fmt(r.mse, ".4g")])
    return head, rows


def bd_table(records: Sequence[BenchRecord]) -> tuple[Table, list[str]]:
    """BD-rate rows for every scan and domain, and notes naming the best classical codec."""
    head = [
        "scan",
        "domain",
        "codec",
        "points",
        "PSNR span dB",
        f"vs {ANCHOR}",
        "vs best classical",
    ]
    rows, notes = [], []
    for scan in _scans(records):
        for domain, (metric, _) in DOMAINS.items():
            bd = bd_rates(records, scan, metric)
            if not bd["rows"]:
                continue
            notes.append(f"{scan}, {domain}: best classical codec = {bd['best'] or 'n/a'}")
            for row in bd["rows"]:
                lo, hi = row["psnr_span"]
                pct = [_pct(row["vs_anchor"], ANCHOR), _pct(row["vs_best"], bd["best"])]
                span = f"{lo:.1f}-{hi:.1f}"
                rows.append([scan, domain, row["codec"], str(row["points"]), span, *pct])
    return (head, rows), notes


def _pct(value: float | None, anchor: str | None) -> str:
    if anchor is None or value is None:
        return f"n/a: {ANCHOR} not in the run" if anchor is None else "n/a"
    return "n/a: no PSNR overlap" if math.isnan(value) else f"{value:+.1f} %"


def _html_table(table: Table) -> str:
    head, rows = table
    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        cells, i = [], 0
        while i < len(row):
            span = 1
            if row[i].startswith(("n/a", "skipped")):  # a reason spans the empty cells after it
                while i + span < len(row) and row[i + span] == "":
                    span += 1
                cells.append(f'<td class="na" colspan="{span}">{html.escape(row[i])}</td>')
            else:
                cells.append(f"<td>{html.escape(row[i])}</td>")
            i += span
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join([*out, "</tbody></table>"])


def _md_table(table: Table) -> str:
    head, rows = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- figures


def _png(fig: Any) -> str:
    """A matplotlib figure as an inline ``<img>`` (base64 PNG); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _rd_figure(records: Sequence[BenchRecord], scan: str) -> str | None:
    import matplotlib.pyplot as plt

    panels = [(m, label) for m, label in DOMAINS.values() if rd_curves(records, scan, m)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        for codec, (rate, psnr) in rd_curves(records, scan, metric).items():
            order = np.argsort(rate)
            style = "--" if is_learned(codec) else "-"
            ax.plot(np.array(rate)[order], np.array(psnr)[order], style, marker="o", label=codec)
        ax.set(xlabel="bits per value (whole .ctpz file)", ylabel=label, title=f"{scan}: {label}")
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def _speed_figure(records: Sequence[BenchRecord]) -> str | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    runs = [r for r in records if r.ok and r.encode_mb_s and r.decode_mb_s]
    if not runs:
        return None
    labels = [f"{r.codec} {r.rate_label}" for r in runs]
    height = 1.2 + 0.22 * len(runs)
    fig, axes = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    for ax, attr, title in zip(
        axes, ("encode_mb_s", "decode_mb_s"), ("encode", "decode"), strict=True
    ):
        values = [getattr(r, attr) for r in runs]
        ax.barh(
            range(len(runs)), values, color=["C1" if is_learned(r.codec) else "C0" for r in runs]
        )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(title=f"{title} speed (MB/s of input data, log scale)", xlabel="MB/s")
        ax.grid(True, axis="x", alpha=0.3)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=7)
    axes[0].set_yticks(range(len(runs)), labels, fontsize=8)
    axes[0].invert_yaxis()
    return _png(fig)


def matched_runs(result: BenchResult, scan: str, target: float = MATCHED_BPV) -> list[BenchRecord]:
    """Per codec, the lossy run on ``scan`` with decoded samples nearest to ``target`` bits
    per value (in log ratio)."""
    best: dict[str, tuple[float, BenchRecord]] = {}
    for r in result.records:
        if r.scan != scan or not r.ok or r.exact or r.key not in result.samples:
            continue
        assert r.bits_per_value is not None
        distance = abs(math.log(r.bits_per_value / target))
        if r.codec not in best or distance < best[r.codec][0]:
            best[r.codec] = (distance, r)
    return [best[c][1] for c in sorted(best)]


def _comparison_figure(result: BenchResult, scan: str) -> str | None:
    import matplotlib.pyplot as plt

    runs = matched_runs(result, scan)
    original = result.samples.get(f"{scan}|original")
    if not runs or not original:
        return None
    mu_water = result.settings["scans"][scan].get("recon", {}).get("mu_water_per_mm")
    kinds = [k for k in ("projection", "sinogram", "slice") if k in original]
    scale = {"slice": 1000.0 / mu_water} if mu_water else {}
    titles = {"projection": "middle view", "sinogram": "middle-row sinogram", "slice": "slice"}
    lim = {}
    for k in kinds:
        errs = [np.abs(result.samples[r.key][k] - original[k]) * scale.get(k, 1.0) for r in runs]
        lim[k] = max(float(np.percentile(np.concatenate([e.ravel() for e in errs]), 99.5)), 1e-9)
    fig, axes = plt.subplots(
        len(runs) + 1, 2 * len(kinds), figsize=(2.3 * 2 * len(kinds), 1.9 * (len(runs) + 1))
    )
    for row, r in enumerate([None, *runs]):
        images = original if r is None else result.samples[r.key]
        name = "original" if r is None else f"{r.codec} {r.rate_label}\n{r.bits_per_value:.2f} b/v"
        if r is not None:
            name += f", {_fmt(r.psnr_db, '.1f')} dB"
        for col, k in enumerate(kinds):
            ax, ax_err = axes[row, 2 * col], axes[row, 2 * col + 1]
            s = scale.get(k, 1.0)
            lo, hi = np.percentile(original[k] * s, [0.5, 99.5])
            ax.imshow(images[k] * s, cmap="gray", vmin=lo, vmax=hi, aspect="auto")
            err = (images[k] - original[k]) * s
            ax_err.imshow(err, cmap="RdBu_r", vmin=-lim[k], vmax=lim[k], aspect="auto")
            unit = " HU" if k in scale else ""
            if row == 0:
                ax.set_title(titles[k], fontsize=9)
                ax_err.set_title(f"error (±{lim[k]:.3g}{unit})", fontsize=9)
            for a in (ax, ax_err):
                a.set_xticks([])
                a.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------- output

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:12px;margin:.6em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eef}td:nth-child(-n+2){text-align:left}
td.na{color:#a33;text-align:left}p.note{font-size:13px;color:#444}
img{max-width:100%;display:block;margin:.5em 0}pre{font-size:12px;background:#f6f6f6;padding:.6em}
"""


def _run_info_rows(result: BenchResult) -> list[tuple[str, str]]:
    run, settings = result.run, result.settings
    rows = [(k, str(v)) for k, v in run.items()]
    for key in ("codecs", "rates", "perceptual_metrics", "jobs", "data_range", "metrics_domain"):
        rows.append((key, str(settings.get(key))))
    rows += [(key, str(settings.get(key))) for key in ("timing", "peak_memory", "size")]
    for name, info in settings.get("scans", {}).items():
        desc = {k: v for k, v in info.items() if k not in ("metadata", "recon")}
        rows.append((f"scan {name}", json.dumps(desc)))
        rows.append((f"scan {name} metadata", json.dumps(info.get("metadata"))))
        if "recon" in info:
            rows.append((f"scan {name} reconstruction", json.dumps(info["recon"])))
    return rows


_NOTES = (
    "Sizes are complete .ctpz files on disk; ratio is versus the input in its own dtype; "
    "Size for 1 GB = 1000 MB / ratio. Projection PSNR/MSE/max error over every value, SSIM/"
    "HaarPSI/VSI averaged over 2-D images (see ctpress.metrics); peak = max. Reconstruction "
    "metrics compare the reconstructions of the decoded and of the original scan (same "
    "algorithm) inside the field of view; added noise = std of their difference / quantum "
    "noise std of the original reconstruction (estimator in the run info). BD-rate: "
    "Bjontegaard delta rate (piecewise cubic interpolation of log bits/value over PSNR, "
    "ctpress.bdrate), negative = fewer bits than the reference at equal PSNR; lossless runs "
    "(infinite PSNR) are not part of the curves."
)


def write_report(result: BenchResult, out_dir: Path) -> Path:
    """Write ``index.html`` and ``summary.md`` for ``result`` into ``out_dir``; return the
    path of ``index.html``."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    records = result.records
    scans = _scans(records)
    bd, bd_notes = bd_table(records)
    reused = sorted({r.origin for r in records if r.origin != ORIGIN_THIS_RUN})
    origin_note = (
        "Rows reused from earlier runs are labelled in the origin column: " + "; ".join(reused)
        if reused
        else "Every number was measured in this run."
    )
    e = html.escape
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,"><title>ctpress bench report</title>',
        f"<style>{_CSS}</style></head><body><h1>ctpress bench report</h1>",
        f'<p class="note">{e(origin_note)}</p><h2>Run</h2>',
        _html_table((["item", "value"], [list(row) for row in _run_info_rows(result)])),
        "<h2>Results</h2>",
        _html_table(results_table(records)),
        f'<p class="note">{e(_NOTES)}</p>',
        "<h2>Original study's table format</h2>",
        _html_table(study_table(records)),
        "<h2>Rate-distortion</h2>",
    ]
    for scan in scans:
        parts.append(_rd_figure(records, scan) or f"<p>{e(scan)}: no lossy RD points.</p>")
    parts.append(
        '<p class="note">Lossy runs only (lossless has infinite PSNR; its size is in the '
        "tables); dashed lines: learned codecs.</p><h2>BD-rate</h2>"
    )
    parts.append(_html_table(bd) if bd[1] else "<p>Not enough RD points for BD-rates.</p>")
    parts += [f'<p class="note">{e(n)}</p>' for n in bd_notes]
    parts += ["<h2>Speed</h2>", _speed_figure(records) or "<p>No successful runs.</p>"]
    parts.append(
        '<p class="note">Wall-clock MB/s of input data on the machine above (encode includes '
        "any rate-control search); orange bars: learned codecs. Peak memory: results table.</p>"
    )
    parts.append(f"<h2>Images at about {MATCHED_BPV:g} bits/value</h2>")
    for scan in scans:
        fig = _comparison_figure(result, scan)
        parts.append(fig or f"<p>{e(scan)}: no decoded images kept.</p>")
        if fig:
            parts.append(
                f'<p class="note">{e(scan)}: per codec the lossy run nearest to '
                f"{MATCHED_BPV:g} bits/value; grey scales of the original, error = decoded - "
                "original (projections in stored units, slices in HU), same scale per column."
                "</p>"
            )
    parts.append("</body></html>")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    info = "\n".join(f"- {k}: {v}" for k, v in _run_info_rows(result))
    summary = [
        "# ctpress bench summary",
        origin_note,
        "## Run",
        info,
        "## Results",
        _md_table(results_table(records)),
        _NOTES,
        "## Original study's table format",
        _md_table(study_table(records)),
        "## BD-rate",
        _md_table(bd) if bd[1] else "Not enough RD points for BD-rates.",
        "\n".join(f"- {n}" for n in bd_notes),
        "Plots and image comparisons: index.html.",
    ]
    (out_dir / "summary.md").write_text("\n\n".join(summary) + "\n", encoding="utf-8")
    return index
