"""Study for issue 15 (DVC): what inter-view prediction can save on projection sequences.

Before building a learned video codec, measure the ceiling of its parts with an idealised
coder: each view (or the residual after predicting it from already *decoded* views, closed
loop) goes through a 3-level 2-D CDF 9/7 wavelet, uniform quantisation of the coefficients
(step equalised across subbands by their synthesis norms), and a zero-order entropy per
subband and view (the bits an ideal adaptive coder of that view's histogram would spend,
no side information).  Motion vectors are counted with the entropy of their symbols.  The
same coder runs on every predictor, so the BD-rates between predictors are fair; against
real codecs (SPERR on the whole scan, JPEG 2000 per view: bytes on disk) the idealised
coder is flattered (no headers, no learning cost of its tables), so a predictor that does
not beat SPERR here will not beat it in a real codec.

Predictors (closed loop, GOPs of ``--gop`` views, the first intra):

- ``intra``: none (each view coded alone; the hyperprior / JPEG 2000 regime);
- ``zero``: the previous decoded view (zero motion);
- ``global``: the previous decoded view shifted along the detector columns by one
  quarter-pixel displacement per view (searched by the encoder);
- ``block``: one quarter-pixel column displacement per block of ``--block`` columns (all
  rows), searched in +-``--search`` pixels: depth-dependent motion, coarsely;
- ``column-oracle``: one quarter-pixel displacement per column, searched the same way and
  sent for free (its bits are not counted): a bound on what any flow field that varies
  along the columns, a geometry-aware model or a learned flow, could gain over zero motion
  (optimistic: 33 candidates per 16-pixel column also fit some of the noise);
- ``two-ref``: the mean of the two previous decoded views (noise averaged, half a view
  of lag);
- ``block-two-ref``: the mean of the block-motion predictions from the two previous
  decoded views (motion compensated and noise averaged);
- ``bidir``: hierarchical B views: even views predicted from the even view before
  (zero motion), odd views from the mean of their decoded neighbours;
- ``wavelet-3d``: no prediction: 3 levels of 9/7 along the views of each GOP, then the 2-D
  transform, the same quantiser and entropy (what a learned entropy model over a 3-D
  wavelet, the hyperprior's recipe in three dimensions, could reach).

Usage::

    python benchmarks/study_view_prediction.py --out results/benchmarks [--quick]

writes ``study_view_prediction.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ctpress
from ctpress.bdrate import bd_rate
from ctpress.bench import run_info
from ctpress.learned.data import DataFiles, default_data_dir, load_volume
from ctpress.learned.layers import (
    _dwt_axis,
    _idwt_axis,
    wavelet_channels,
    wavelet_image,
    wavelet_norms,
    wavelet_subbands,
)
from ctpress.scan import Scan
from ctpress.sim.simulate import default_scan, simulate_scan

LEVELS = 3
PREDICTORS = (
    "intra", "zero", "global", "block", "column-oracle", "two-ref", "block-two-ref", "bidir",
)  # fmt: skip
#: The motion models compared with zero motion.
MOTIONS = ("global", "block", "column-oracle")
#: Quantisation steps, in units of the scan's value range.
STEPS = (2e-4, 5e-4, 1.2e-3, 3e-3, 8e-3)
QUARTER = 4  # motion precision: 1/QUARTER pixel
#: No prediction: a 3-D wavelet over each GOP (views x rows x cols), the same entropy.
WAVELET_3D = "wavelet-3d"


def entropy_bits(symbols: np.ndarray) -> float:
    """Zero-order entropy of ``symbols`` times their count (bits)."""
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


class WaveletCoder:
    """The idealised intra coder of one (rows, cols) image: returns (bits, decoded)."""

    def __init__(self, rows: int, cols: int, step: float) -> None:
        pad = 2**LEVELS
        self.rows, self.cols = rows, cols
        self.padded = (math.ceil(rows / pad) * pad, math.ceil(cols / pad) * pad)
        self.norms = wavelet_norms(LEVELS).numpy()[:, None, None]
        self.bands = wavelet_subbands(LEVELS)
        self.step = step

    def __call__(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        h, w = self.padded
        x = np.pad(image, ((0, h - self.rows), (0, w - self.cols)), mode="symmetric")
        y = wavelet_channels(torch.from_numpy(x)[None, None], LEVELS)[0].numpy()
        q = np.rint(y * self.norms / self.step)
        bits = sum(entropy_bits(q[a:b]) for a, b in self.bands)
        decoded = wavelet_image(torch.from_numpy(q * self.step / self.norms)[None], LEVELS)
        return bits, decoded[0, 0].numpy()[: self.rows, : self.cols]


def shifted(image: np.ndarray, quarters: int) -> np.ndarray:
    """``image`` moved along its columns by ``quarters`` / QUARTER pixels (linear
    interpolation, edges repeated)."""
    cols = image.shape[-1]
    source = np.arange(cols) - quarters / QUARTER
    left = np.clip(np.floor(source).astype(int), 0, cols - 1)
    right = np.clip(left + 1, 0, cols - 1)
    frac = source - np.floor(source)
    return image[..., left] * (1 - frac) + image[..., right] * frac


def best_shift(target: np.ndarray, reference: np.ndarray, search: int) -> int:
    """The quarter-pixel shift of ``reference`` nearest ``target`` (sum of squares)."""
    shifts = range(-search * QUARTER, search * QUARTER + 1)
    errors = [float(np.sum((target - shifted(reference, s)) ** 2)) for s in shifts]
    return int(np.argmin(errors)) - search * QUARTER


def block_prediction(
    target: np.ndarray, reference: np.ndarray, block: int, search: int
) -> tuple[np.ndarray, list[int]]:
    """Per block of ``block`` columns, the best shifted reference and the shifts."""
    prediction = np.empty_like(reference)
    moves = []
    candidates = {s: shifted(reference, s) for s in range(-search * QUARTER, search * QUARTER + 1)}
    for first in range(0, target.shape[-1], block):
        cut = slice(first, first + block)
        errors = {
            s: float(np.sum((target[:, cut] - c[:, cut]) ** 2)) for s, c in candidates.items()
        }
        s = min(errors, key=errors.__getitem__)
        prediction[:, cut] = candidates[s][:, cut]
        moves.append(s)
    return prediction, moves


def code_scan(
    views: np.ndarray, predictor: str, step: float, gop: int, block: int, search: int
) -> tuple[float, np.ndarray]:
    """Closed-loop coding of (n, rows, cols) ``views``: (bits, decoded views)."""
    n, rows, cols = views.shape
    coder = WaveletCoder(rows, cols, step)
    decoded = np.empty_like(views)
    bits = 0.0
    moves: list[int] = []
    order = list(range(n))
    if predictor == "bidir":  # even views first, then the odd ones between them
        order = [t for t in range(n) if (t % gop) % 2 == 0 or t == n - 1]
        order += [t for t in range(n) if t not in set(order)]
    for t in order:
        first_of_gop = t % gop == 0
        prediction = np.zeros((rows, cols))
        if predictor == "intra" or first_of_gop:
            pass
        elif predictor == "zero":
            prediction = decoded[t - 1]
        elif predictor == "global":
            s = best_shift(views[t], decoded[t - 1], search)
            prediction, moves = shifted(decoded[t - 1], s), [*moves, s]
        elif predictor == "block":
            prediction, block_moves = block_prediction(views[t], decoded[t - 1], block, search)
            moves += block_moves
        elif predictor == "column-oracle":  # the shifts are not counted
            prediction, _ = block_prediction(views[t], decoded[t - 1], 1, search)
        elif predictor == "block-two-ref" and t % gop >= 2:
            near, near_moves = block_prediction(views[t], decoded[t - 1], block, search)
            far, far_moves = block_prediction(views[t], decoded[t - 2], block, 2 * search)
            prediction, moves = (near + far) / 2, [*moves, *near_moves, *far_moves]
        elif predictor == "block-two-ref":
            prediction, block_moves = block_prediction(views[t], decoded[t - 1], block, search)
            moves += block_moves
        elif predictor == "two-ref":
            prediction = decoded[t - 1] if t % gop == 1 else (decoded[t - 1] + decoded[t - 2]) / 2
        elif predictor == "bidir":
            even = (t % gop) % 2 == 0 or t == n - 1
            if even:
                prediction = decoded[t - 2] if t % gop >= 2 else decoded[t - 1]
            else:
                prediction = (decoded[t - 1] + decoded[t + 1]) / 2
        if first_of_gop or predictor == "intra":
            mean = float(np.round(views[t].mean() / step) * step)  # a DC term, nearly free
            prediction = np.full((rows, cols), mean)
        view_bits, residual = coder(views[t] - prediction)
        bits += view_bits
        decoded[t] = prediction + residual
    if moves:
        bits += entropy_bits(np.asarray(moves))
    return bits, decoded


def _temporal_analysis(block: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` 9/7 steps along the last axis of (rows, cols, T): the bands, coarsest
    low-pass first, then the high-pass bands from coarse to fine."""
    highs = []
    low = block
    for _ in range(levels):
        low, high = _dwt_axis(low, -1)
        highs.append(high)
    return [low, *reversed(highs)]


def _temporal_synthesis(bands: list[torch.Tensor]) -> torch.Tensor:
    low = bands[0]
    for high in bands[1:]:
        low = _idwt_axis(low, high, -1)
    return low


def _temporal_norms(length: int, levels: int) -> list[float]:
    """Synthesis L2 norm of a unit coefficient in each temporal band (its middle)."""
    shapes = [b.shape[-1] for b in _temporal_analysis(torch.zeros(1, 1, length), levels)]
    norms = []
    for k, n in enumerate(shapes):
        bands = [torch.zeros(1, 1, m, dtype=torch.float64) for m in shapes]
        bands[k][..., n // 2] = 1.0
        norms.append(float(_temporal_synthesis(bands).norm()))
    return norms


def code_3d(views: np.ndarray, step: float, gop: int) -> tuple[float, np.ndarray]:
    """The idealised coder in three dimensions: per GOP of ``gop`` views (the last one
    padded by repeating its last view, the padding's bits counted), 3 levels of 9/7 along
    the views, then each temporal band's views through :class:`WaveletCoder`'s 2-D
    transform; zero-order entropy per (temporal band, spatial subband) and GOP."""
    n, rows, cols = views.shape
    t_levels = 3
    t_norms = _temporal_norms(gop, t_levels)
    coder = WaveletCoder(rows, cols, step)
    h, w = coder.padded
    decoded = np.empty_like(views)
    bits = 0.0
    for first in range(0, n, gop):
        block = views[first : first + gop]
        block = np.concatenate([block, np.repeat(block[-1:], gop - len(block), axis=0)])
        x = np.pad(block, ((0, 0), (0, h - rows), (0, w - cols)), mode="symmetric")
        bands = _temporal_analysis(torch.from_numpy(x).permute(1, 2, 0), t_levels)
        coded = []
        for band, t_norm in zip(bands, t_norms, strict=True):
            frames = band.permute(2, 0, 1)[:, None]  # (T', 1, h, w)
            y = wavelet_channels(frames, LEVELS).numpy()
            norms = coder.norms[None] * t_norm
            q = np.rint(y * norms / step)
            bits += sum(entropy_bits(q[:, a:b]) for a, b in coder.bands)
            image = wavelet_image(torch.from_numpy(q * step / norms), LEVELS)
            coded.append(image[:, 0].permute(1, 2, 0))
        out = _temporal_synthesis(coded).permute(2, 0, 1).numpy()
        decoded[first : first + gop] = out[: len(views[first : first + gop]), :rows, :cols]
    return bits, decoded


def psnr_db(reference: np.ndarray, decoded: np.ndarray, value_range: float) -> float:
    mse = float(np.mean((decoded - reference) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(value_range**2 / mse)


def real_codec_curve(scan: Scan, codec: str, targets: list[float]) -> list[tuple[float, float]]:
    """(bits/value, PSNR) of a real ctpress codec at bpp targets (bytes on disk)."""
    views = scan.array().astype(np.float64)
    value_range = float(views.max() - views.min())
    points = []
    for target in targets:
        try:
            data = ctpress.compress(scan, codec=codec, bpp=target, jobs=2)
        except ctpress.CtpressError:
            continue
        decoded = ctpress.decompress(data).array().astype(np.float64)
        points.append((8 * len(data) / views.size, psnr_db(views, decoded, value_range)))
    return points


def study_scans(quick: bool) -> dict[str, Scan]:
    """Multi-row scans: the default scan, held-out volumes in cone beam at two doses, and
    the real Savu projections where ../shared/data holds them."""
    scans = {"default": default_scan()}
    data = default_data_dir()
    if data is None:
        return scans
    _, held = DataFiles.find([data]).split()
    for path in sorted(held.volumes)[: 1 if quick else 2]:
        hu, voxel = load_volume(path)
        name = path.stem.split("_")[0] + "_" + path.stem.split("_")[1]
        for i0 in (1e5,) if quick else (1e5, 2.5e4):
            scans[f"{name}-cone-i0={i0:g}"] = simulate_scan(
                hu, geometry_kind="cone", n_views=360 if quick else 720, det_rows=16,
                det_cols=368, voxel_size_mm=voxel, i0=i0, seed=7, detector_shape="cylindrical",
            )  # fmt: skip
    for path in held.projections:
        if path.name.startswith("savu"):
            scans["savu-i12-real"] = Scan(np.load(path))
    return scans


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(2)
    results: dict[str, Any] = {}
    for name, scan in study_scans(args.quick).items():
        views = scan.array().astype(np.float64)
        value_range = float(views.max() - views.min())
        curves: dict[str, list[tuple[float, float]]] = {}
        seconds: dict[str, float] = {}
        for predictor in (*PREDICTORS, WAVELET_3D):
            t0 = time.perf_counter()
            curves[predictor] = []
            for step in STEPS[1:-1] if args.quick else STEPS:
                if predictor == WAVELET_3D:
                    bits, decoded = code_3d(views, step * value_range, args.gop)
                else:
                    bits, decoded = code_scan(
                        views, predictor, step * value_range, args.gop, args.block, args.search
                    )
                curves[predictor].append((bits / views.size, psnr_db(views, decoded, value_range)))
            seconds[predictor] = time.perf_counter() - t0
            print(
                name, predictor, [f"{b:.3f}b {p:.1f}dB" for b, p in curves[predictor]], flush=True
            )
        span = [b for curve in curves.values() for b, _ in curve]
        targets = list(np.geomspace(max(min(span), 0.02), max(span), 5))
        for codec in ("sperr", "jpeg2000"):
            curves[codec] = real_codec_curve(scan, codec, targets)
            print(name, codec, [f"{b:.3f}b {p:.1f}dB" for b, p in curves[codec]], flush=True)
        bd = {key: _bd(curves["intra"], curve) for key, curve in curves.items() if key != "intra"}
        bd_vs_zero = {p: _bd(curves["zero"], curves[p]) for p in MOTIONS}
        bd_vs_sperr = {p: _bd(curves["sperr"], curves[p]) for p in (*PREDICTORS, WAVELET_3D)}
        results[name] = {
            "shape": list(scan.shape),
            "curves_bits_per_value_psnr_db": curves,
            "bd_rate_vs_intra_percent": bd,
            "bd_rate_vs_zero_motion_percent": bd_vs_zero,
            "bd_rate_vs_sperr_percent": bd_vs_sperr,
            "seconds": seconds,
        }
    return results


def _bd(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
    finite = [[(b, p) for b, p in c if math.isfinite(p)] for c in (anchor, test)]
    if min(len(c) for c in finite) < 2:
        return None
    (anchor_rate, anchor_psnr), (test_rate, test_psnr) = (zip(*c, strict=True) for c in finite)
    try:
        return bd_rate(anchor_rate, anchor_psnr, test_rate, test_psnr)
    except (ValueError, ctpress.CtpressError):
        return None


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.1f} %"

    lines = [
        "# Inter-view prediction on projections: an idealised-coder study (issue 15)",
        "",
        f"GOP {args.gop}, motion blocks of {args.block} columns, search +-{args.search} px at "
        f"1/{QUARTER} px. BD-rate (negative: fewer bits at equal PSNR; PSNR against each "
        "scan's value range).",
        "",
        "| scan | " + " | ".join(PREDICTORS[1:]) + f" | {WAVELET_3D} | SPERR | JPEG 2000 |",
        "|---|" + "---:|" * (len(PREDICTORS) + 2),
    ]
    for name, r in results.items():
        bd = r["bd_rate_vs_intra_percent"]
        keys = [*PREDICTORS[1:], WAVELET_3D, "sperr", "jpeg2000"]
        lines.append(f"| {name} vs intra | " + " | ".join(cell(bd.get(k)) for k in keys) + " |")
    keys = [*PREDICTORS, WAVELET_3D]
    lines += ["", "| scan | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, r in results.items():
        bd = r["bd_rate_vs_sperr_percent"]
        lines.append(f"| {name} vs SPERR | " + " | ".join(cell(bd[k]) for k in keys) + " |")
    lines += [
        "",
        "| scan | " + " | ".join(f"{m} vs zero" for m in MOTIONS) + " |",
        "|---|" + "---:|" * len(MOTIONS),
    ]
    for name, r in results.items():
        bd = r["bd_rate_vs_zero_motion_percent"]
        lines.append(f"| {name} | " + " | ".join(cell(bd[m]) for m in MOTIONS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gop", type=int, default=16)
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--search", type=int, default=2)
    args = parser.parse_args(argv)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"run": run_info(), "settings": vars(args) | {"out": str(args.out)}, **results}
    (args.out / "study_view_prediction.json").write_text(json.dumps(payload, indent=1))
    (args.out / "study_view_prediction.md").write_text(markdown(results, args))
    print(markdown(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
