"""Write the golden .ctpz files and their decoded checksums (``checksums.json``).

Run ONCE, by the ctpress version named in ``checksums.json`` (commit 971204d, before the
codec platform v2); never regenerate: later versions must decode these exact bytes to the
recorded checksums.  A codec added later gets new files of its own (``--only NAME``),
leaving the existing ones untouched.

    python tests/data/golden/make_golden.py [--only CODEC]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import ctpress

HERE = Path(__file__).resolve().parent


def golden_scans() -> dict[str, ctpress.Scan]:
    """The two scans every golden file encodes (rebuilt bit-exactly from a seed)."""
    rng = np.random.default_rng(20261206)
    n, rows, cols = 6, 16, 64
    view = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None, None]
    row = np.linspace(-1, 1, rows)[None, :, None]
    col = np.linspace(-1, 1, cols)[None, None, :]
    body = np.clip(1 - ((col - 0.3 * np.sin(view)) / 0.8) ** 2 - 0.2 * row**2, 0, None)
    values = 30000 * np.sqrt(body) + 2000 + rng.normal(0, 20, (n, rows, cols))
    proj = np.clip(values, 0, 65535).astype(np.uint16)
    proj[0, 0, 0], proj[-1, -1, -1] = 0, 65535
    geometry = ctpress.Geometry(
        kind="cone",
        angles_rad=tuple(np.arange(n) * 0.05),
        source_isocenter_mm=541.0,
        source_detector_mm=949.0,
        detector_spacing_mm=(1.0, 1.2),
        detector_shape="cylindrical",
    )
    metadata = {"units": "counts", "i0": 1e5, "note": "golden é"}
    cone = ctpress.Scan(
        proj, geometry, metadata, {"dark": np.full((1, rows, cols), 100, np.uint16)}
    )
    sino = (values[:, 7:8, :] / 4096).astype(np.float32)  # (6, 1, 64) line-integral-like
    sinogram = ctpress.Scan(
        sino, ctpress.Geometry(kind="parallel", angles_rad=tuple(np.arange(n) * 0.5))
    )
    return {"u16": cone, "f32": sinogram, "fan360": _full_turn_fan()}


def _full_turn_fan() -> ctpress.Scan:
    """Raw counts of two disks in a fan-beam scan over a full turn (24 views, 2 rows,
    48 columns of a flat detector), computed analytically: every ray is measured twice."""
    n, rows, cols, sod, sdd, pitch = 24, 2, 48, 500.0, 900.0, 4.0
    beta = np.arange(n) * (2 * np.pi / n)
    gamma = np.arctan((np.arange(cols) - (cols - 1) / 2) * pitch / sdd)
    source = sod * np.stack([np.cos(beta), np.sin(beta)], -1)[:, None, :]  # (n, 1, 2)
    angle = beta[:, None] + np.pi + gamma[None, :]  # ray direction, (n, cols)
    direction = np.stack([np.cos(angle), np.sin(angle)], -1)
    line = np.zeros((n, cols))
    for centre, radius, mu in (((0.0, 0.0), 150.0, 0.005), ((60.0, -40.0), 40.0, 0.008)):
        to_centre = np.asarray(centre) - source
        along = (to_centre * direction).sum(-1)
        d2 = (to_centre**2).sum(-1) - along**2
        line += 2 * mu * np.sqrt(np.clip(radius**2 - d2, 0, None))
    counts = np.rint(40000 * np.exp(-line))[:, None, :] * np.ones((1, rows, 1))
    geometry = ctpress.Geometry(
        kind="fan",
        angles_rad=tuple(beta),
        source_isocenter_mm=sod,
        source_detector_mm=sdd,
        detector_spacing_mm=(1.0, pitch),
    )
    return ctpress.Scan(counts.astype(np.uint16), geometry, {"units": "counts", "i0": 4e4})


#: (file name, scan, codec, rate options, codec settings)
CASES: list[tuple[str, str, str, dict[str, float | bool], dict[str, object]]] = []
for codec in ("zstd", "blosc2", "jpegls", "jpeg2000", "htj2k", "jpegxl"):
    CASES += [
        (f"{codec}_lossless", "u16", codec, {"lossless": True}, {}),
        (f"{codec}_max_error", "u16", codec, {"max_error": 3}, {}),
        (f"{codec}_bpp", "u16", codec, {"bpp": 6}, {}),
        (f"{codec}_psnr", "u16", codec, {"psnr": 60}, {}),
    ]
CASES += [
    ("zstd_float_lossless", "f32", "zstd", {"lossless": True}, {}),
    ("zfp_lossless", "f32", "zfp", {"lossless": True}, {}),
    ("zfp_max_error", "f32", "zfp", {"max_error": 0.01}, {}),
    ("zfp_bpp", "f32", "zfp", {"bpp": 12}, {}),
    ("zfp_u16_max_error", "u16", "zfp", {"max_error": 3}, {}),
    ("sz3_max_error", "f32", "sz3", {"max_error": 0.01}, {}),
    ("sz3_psnr", "f32", "sz3", {"psnr": 60}, {}),
    ("sz3_u16_max_error", "u16", "sz3", {"max_error": 3}, {}),
    ("sperr_max_error", "f32", "sperr", {"max_error": 0.01}, {}),
    ("sperr_u16_bpp", "u16", "sperr", {"bpp": 4}, {}),
    ("sperr_u16_psnr", "u16", "sperr", {"psnr": 60}, {}),
    ("hyperprior_bpp", "u16", "hyperprior", {"bpp": 2}, {}),
    ("hyperprior_max_error", "u16", "hyperprior", {"max_error": 4}, {}),
    ("hyperprior_lossless", "u16", "hyperprior", {"lossless": True}, {"rate_point": 2}),
    ("vqvae_bpp", "u16", "vqvae", {"bpp": 0.9}, {}),
    ("vqvae_max_error", "u16", "vqvae", {"max_error": 8}, {}),
    ("siren_psnr", "u16", "siren", {"psnr": 35}, {"steps": 60, "width": 16}),
    ("siren_max_error", "u16", "siren", {"max_error": 16}, {"steps": 60, "width": 16}),
    ("convlstm_lossless", "u16", "convlstm", {"lossless": True}, {}),
    ("convlstm_max_error", "u16", "convlstm", {"max_error": 3}, {}),
    ("convlstm_bpp", "u16", "convlstm", {"bpp": 6}, {}),
    ("sparse-unet_lossless", "u16", "sparse-unet", {"lossless": True}, {"keep_every": 2}),
    ("dvc_bpp", "u16", "dvc", {"bpp": 2}, {}),
    ("dvc_max_error", "u16", "dvc", {"max_error": 4}, {}),
    ("dvc_zero_motion_psnr", "u16", "dvc", {"psnr": 45}, {"motion": "zero"}),
    # a full turn: the conjugate-ray tables (one chunk)
    ("convlstm_conjugate_lossless", "fan360", "convlstm", {"lossless": True}, {"chunk_views": 24}),
    (
        "sparse-unet_conjugate_lossless",
        "fan360",
        "sparse-unet",
        {"lossless": True},
        {"keep_every": 4, "chunk_views": 24},
    ),
    (
        "sparse-unet_linear_max_error",
        "u16",
        "sparse-unet",
        {"max_error": 3},
        {"keep_every": 2, "restoration": "linear", "inner": "zstd"},
    ),
    # convlstm stream version 2 (counters adapting at 1 / (n + 1.5)); the files above are
    # version 1
    ("convlstm_stream2_lossless", "u16", "convlstm", {"lossless": True}, {}),
    ("convlstm_stream2_max_error", "u16", "convlstm", {"max_error": 3}, {}),
    (
        "convlstm_stream2_conjugate_lossless",
        "fan360",
        "convlstm",
        {"lossless": True},
        {"chunk_views": 24},
    ),
    # dvc stream version 2 (P-frames by the dvc model of ``ctpress train dvc``); the dvc
    # files above are version 1
    ("dvc_stream2_bpp", "u16", "dvc", {"bpp": 2}, {}),
    ("dvc_stream2_max_error", "u16", "dvc", {"max_error": 4}, {}),
    ("dvc_stream2_global_motion_psnr", "u16", "dvc", {"psnr": 45}, {"motion": "global"}),
    # dvc stream version 3 (one range-coded stream per GOP, a quality cascade over the
    # views); the dvc files above are versions 1 and 2
    ("dvc_stream3_bpp", "u16", "dvc", {"bpp": 2}, {}),
    ("dvc_stream3_max_error", "u16", "dvc", {"max_error": 4}, {}),
    ("dvc_stream3_global_motion_psnr", "u16", "dvc", {"psnr": 45}, {"motion": "global"}),
    ("dvc_stream3_zero_motion_psnr", "u16", "dvc", {"psnr": 45}, {"motion": "zero"}),
    # dvc stream version 4 (prediction modes: means of up to 4 references); the dvc files
    # above are versions 1 to 3
    ("dvc_stream4_bpp", "u16", "dvc", {"bpp": 2}, {}),
    ("dvc_stream4_max_error", "u16", "dvc", {"max_error": 4}, {}),
    ("dvc_stream4_global_motion_psnr", "u16", "dvc", {"psnr": 45}, {"motion": "global"}),
    ("dvc_stream4_zero_motion_psnr", "u16", "dvc", {"psnr": 45}, {"motion": "zero"}),
    # dvc stream version 5 (the P-frames of a GOP in batches written across the views);
    # the dvc files above are versions 1 to 4
    ("dvc_stream5_bpp", "u16", "dvc", {"bpp": 2}, {}),
    ("dvc_stream5_max_error", "u16", "dvc", {"max_error": 4}, {}),
    ("dvc_stream5_global_motion_psnr", "u16", "dvc", {"psnr": 45}, {"motion": "global"}),
    ("dvc_stream5_zero_motion_psnr", "u16", "dvc", {"psnr": 45}, {"motion": "zero"}),
    (
        "sparse-unet_f32_max_error",
        "f32",
        "sparse-unet",
        {"max_error": 0.01},
        {"keep_every": 2, "inner": "sz3"},
    ),
]


def decoded_digest(scan: ctpress.Scan) -> dict[str, object]:
    """What a golden file must decode to: SHA-256 of every array, geometry and metadata."""
    arrays = {"projections": scan.projections, **scan.aux}
    return {
        "shape": list(scan.projections.shape),
        "dtype": scan.projections.dtype.str,
        "sha256": {
            name: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
            for name, a in sorted(arrays.items())
        },
        "geometry": None if scan.geometry is None else scan.geometry.to_dict(),
        "metadata": scan.metadata,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="write only the cases of this codec (a new codec)")
    args = parser.parse_args()
    scans = golden_scans()
    checksums_path = HERE / "checksums.json"
    checksums = json.loads(checksums_path.read_text()) if checksums_path.exists() else {}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    for name, scan_name, codec, rate, settings in CASES:
        path = HERE / f"v2_{name}.ctpz"
        if (args.only and codec != args.only) or path.exists():
            continue
        scan = scans[scan_name]
        ctpress.compress(scan, path, codec=codec, **{"chunk_views": 4, **rate, **settings})
        decoded = ctpress.decompress(path)
        checksums[path.name] = dict(
            decoded_digest(decoded),
            scan=scan_name,
            codec=codec,
            rate=rate,
            settings=settings,
            written_by=f"ctpress {ctpress.__version__} at {commit}",
        )
        checksums_path.write_text(json.dumps(checksums, indent=1, sort_keys=True) + "\n")
        print(f"{path.name}: {path.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
