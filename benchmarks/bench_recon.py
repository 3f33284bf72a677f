"""Speed of ctpress reconstruction against reference CPU implementations.

* fan-beam FBP, 512 x 512 image from 720 views x 1024 columns (flat detector, full
  scan), against ODL's ``fbp_op`` with the ``astra_cpu`` back-end when ODL imports;
* FDK, 128^3 volume from 360 views x 64 rows x 256 columns (flat panel, full scan),
  against RTK's CPU ``FDKConeBeamReconstructionFilter`` (package ``itk-rtk``) when it
  imports.

The data are exact line integrals of uniform discs / balls, so every run also reports
each reconstruction's error in the phantom's interior and the two methods' difference
(a timing of a wrong result would mean nothing).  Times are the best of ``--repeat``
runs, after one untimed warm-up.

Usage::

    python benchmarks/bench_recon.py --out results/benchmarks [--repeat 3] [--threads N]

writes ``bench_recon.json`` (times, ratios, errors, machine, versions, command) to the
output folder and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctpress.recon import fbp, fdk, field_of_view_mask
from ctpress.scan import Geometry
from ctpress.sim.projector import detector_rays

MU = 0.02
#: Fan case: body disc and an off-centre insert as (x, y, radius mm, mu 1/mm).
FAN_DISCS = ((0.0, 0.0, 100.0, MU), (40.0, -30.0, 20.0, 0.5 * MU))
#: Cone case: a body ball and an off-centre insert as (x, y, z, radius mm, mu 1/mm).
FDK_BALLS = ((0.0, 0.0, 0.0, 25.0, MU), (10.0, -8.0, 6.0, 6.0, 0.5 * MU))
#: Targets: ours no slower than ODL (fan FBP), and than twice RTK (FDK).
TARGETS = {"fan_fbp": 1.0, "fdk": 2.0}


def ball_projections(
    geometry: Geometry, det_shape: tuple[int, int], balls: tuple[tuple[float, ...], ...]
) -> np.ndarray:
    """Exact line integrals of balls (x, y, z, radius, mu), in batches of views.

    For fan and parallel beam the balls are z-cylinders (the same disc in every row).
    """
    out = []
    for start in range(0, geometry.n_views, 32):
        origin, direction, _ = detector_rays(geometry, det_shape, slice(start, start + 32))
        total = torch.zeros(origin.shape[:3], dtype=torch.float64)
        for x, y, z, radius, mu in balls:
            to_centre = torch.tensor([x, y, z], dtype=torch.float64) - origin
            if geometry.kind != "cone":
                to_centre[..., 2] = 0.0
            along = (to_centre * direction).sum(-1)
            dist2 = (to_centre * to_centre).sum(-1) - along**2
            total += mu * 2 * torch.sqrt((radius**2 - dist2).clamp(min=0))
        out.append(total.numpy().astype(np.float32))
    return np.concatenate(out)


def best_time(run: Callable[[], np.ndarray], repeat: int) -> tuple[float, list[float], np.ndarray]:
    """Best and all wall times (s) of ``repeat`` calls after a warm-up, and the result."""
    result = run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), times, result


def rel_rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b)[mask] ** 2) / np.mean(b[mask] ** 2)))


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def bench_fan(repeat: int) -> dict[str, Any]:
    n, pixel, n_views, n_cols = 512, 0.5, 720, 1024
    r_mm, d_mm, pitch = 500.0, 1000.0, 0.6
    geometry = Geometry.circular("fan", n_views, r_mm, d_mm, detector_spacing_mm=(1.0, pitch))
    discs = tuple((x, y, 0.0, r, mu) for x, y, r, mu in FAN_DISCS)
    sino = ball_projections(geometry, (1, n_cols), discs)[:, 0]
    y, x = (np.indices((n, n)) - (n - 1) / 2) * pixel
    truth = sum(mu * (np.hypot(x - cx, y - cy) <= r) for cx, cy, r, mu in FAN_DISCS)
    body = FAN_DISCS[0]
    interior = np.hypot(x, y) < body[2] - 10
    interior &= np.hypot(x - FAN_DISCS[1][0], y - FAN_DISCS[1][1]) > FAN_DISCS[1][2] + 10
    fov = field_of_view_mask((n, n), pixel, geometry, n_cols)
    ours_s, ours_times, ours = best_time(lambda: fbp(sino, geometry, (n, n), pixel), repeat)
    case: dict[str, Any] = {
        "case": "fan_fbp",
        "description": f"fan-beam FBP {n}x{n} from {n_views} views x {n_cols} columns, flat",
        "ours_s": ours_s,
        "ours_times_s": ours_times,
        "ours_interior_mean_rel_error": float(ours[interior].mean() / MU - 1),
        "ours_rel_rmse_vs_truth_fov": rel_rmse(ours, truth, fov),
    }
    try:
        import odl

        tomo = getattr(odl, "tomo", None)
        if tomo is None:
            import odl.applications.tomo as tomo
    except ImportError:
        case["reference"] = "ODL not installed"
        return case
    space = odl.uniform_discr([-n * pixel / 2] * 2, [n * pixel / 2] * 2, [n, n], dtype="float32")
    half = math.pi / n_views
    angles = odl.nonuniform_partition(geometry.angles(), min_pt=-half, max_pt=2 * math.pi - half)
    det = odl.uniform_partition(-n_cols * pitch / 2, n_cols * pitch / 2, n_cols)
    odl_geom = tomo.FanBeamGeometry(angles, det, src_radius=r_mm, det_radius=d_mm - r_mm)
    op = tomo.fbp_op(tomo.RayTransform(space, odl_geom, impl="astra_cpu"), filter_type="Ram-Lak")

    def run_odl() -> np.ndarray:
        result = op(sino)
        return np.asarray(getattr(result, "data", result)).T  # ODL arrays are (x, y)

    ref_s, ref_times, ref = best_time(run_odl, repeat)
    case.update(
        reference=f"ODL {version('odl')} fbp_op, astra_cpu {version('astra-toolbox')}",
        reference_s=ref_s,
        reference_times_s=ref_times,
        reference_interior_mean_rel_error=float(ref[interior].mean() / MU - 1),
        reference_rel_rmse_vs_truth_fov=rel_rmse(ref, truth, fov),
        ours_vs_reference_rel_rmse_fov=rel_rmse(ours, ref, fov),
    )
    return case


def bench_fdk(repeat: int) -> dict[str, Any]:
    n, voxel, n_views, n_rows, n_cols = 128, 1.0, 360, 64, 256
    r_mm, d_mm, pitch = 500.0, 1000.0, (2.0, 1.0)
    geometry = Geometry.circular("cone", n_views, r_mm, d_mm, detector_spacing_mm=pitch)
    proj = ball_projections(geometry, (n_rows, n_cols), FDK_BALLS)
    z, y, x = (np.indices((n, n, n)) - (n - 1) / 2) * voxel
    (bx, by, bz, br, _), (ix, iy, iz, ir, _) = FDK_BALLS
    interior = np.sqrt((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) < br - 5
    interior &= np.sqrt((x - ix) ** 2 + (y - iy) ** 2 + (z - iz) ** 2) > ir + 3
    ours_s, ours_times, ours = best_time(lambda: fdk(proj, geometry, (n, n, n), voxel), repeat)
    case: dict[str, Any] = {
        "case": "fdk",
        "description": f"FDK {n}^3 from {n_views} views x {n_rows} x {n_cols}, flat panel",
        "ours_s": ours_s,
        "ours_times_s": ours_times,
        "ours_interior_mean_rel_error": float(ours[interior].mean() / MU - 1),
    }
    try:
        import itk
        from itk import RTK as rtk
    except ImportError:
        case["reference"] = "itk-rtk not installed"
        return case
    image_type = itk.Image[itk.F, 3]
    rtk_geom = rtk.ThreeDCircularProjectionGeometry.New()
    for angle in np.degrees(geometry.angles()):
        rtk_geom.AddProjection(r_mm, d_mm, float(angle))
    stack = itk.GetImageFromArray(proj)  # RTK: u = columns, v = rows (rotation axis)
    stack.SetSpacing([pitch[1], pitch[0], 1.0])
    stack.SetOrigin([-(n_cols - 1) / 2 * pitch[1], -(n_rows - 1) / 2 * pitch[0], 0.0])

    def run_rtk() -> np.ndarray:
        source = rtk.ConstantImageSource[image_type].New()
        source.SetOrigin([-(n - 1) / 2 * voxel] * 3)
        source.SetSpacing([voxel] * 3)
        source.SetSize([n] * 3)
        source.SetConstant(0.0)
        feldkamp = rtk.FDKConeBeamReconstructionFilter[image_type].New()
        feldkamp.SetInput(0, source.GetOutput())
        feldkamp.SetInput(1, stack)
        feldkamp.SetGeometry(rtk_geom)
        feldkamp.GetRampFilter().SetTruncationCorrection(0.0)
        feldkamp.GetRampFilter().SetHannCutFrequency(0.0)
        feldkamp.Update()
        # RTK's axes (z', y', x') have y' on the rotation axis: ours (z, y, x) = (y', -z', x').
        return np.flip(itk.GetArrayFromImage(feldkamp.GetOutput()).transpose(1, 0, 2), 1)

    ref_s, ref_times, ref = best_time(run_rtk, repeat)
    case.update(
        reference=f"RTK (itk-rtk {version('itk-rtk')}) FDKConeBeamReconstructionFilter, CPU",
        reference_s=ref_s,
        reference_times_s=ref_times,
        reference_interior_mean_rel_error=float(ref[interior].mean() / MU - 1),
        ours_vs_reference_rel_rmse_interior=rel_rmse(ours, ref, interior),
    )
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per method")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cases = [bench_fan(args.repeat), bench_fdk(args.repeat)]
    for case in cases:
        if "reference_s" in case:
            case["ratio_ours_over_reference"] = case["ours_s"] / case["reference_s"]
            case["target_ratio"] = TARGETS[case["case"]]
            case["target_met"] = case["ratio_ours_over_reference"] <= TARGETS[case["case"]]
    payload = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0],
        },
        "versions": {
            name: version(name)
            for name in ("ctpress", "torch", "numpy", "odl", "astra-toolbox", "itk-rtk")
        },
        "cases": cases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_recon.json"
    path.write_text(json.dumps(payload, indent=1))
    for case in cases:
        line = f"{case['case']:8s} ours {case['ours_s']:7.2f} s"
        if "reference_s" in case:
            verdict = "met" if case["target_met"] else "MISSED"
            line += (
                f" | {case['reference']}: {case['reference_s']:7.2f} s"
                f" | ratio {case['ratio_ours_over_reference']:.2f}"
                f" (target <= {case['target_ratio']:g}: {verdict})"
            )
        else:
            line += f" | reference: {case['reference']}"
        print(line)
    print(f"load average {payload['machine']['load_average_1min']:.2f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
