"""Classical codecs inside ctpress against their libraries called directly (issue 13).

For each case: ``ctpress.compress`` at a bits-per-value target (whole file, header
included) and the library called the way its documentation recommends (SPERR: the whole
2-D or 3-D array in its own ``bpp`` mode), PSNR against the array's max - min.  The same
script runs on any ctpress version with ``ctpress.compress`` (to measure "before", check
out the older commit and put its ``src`` first on ``PYTHONPATH``).

Usage::

    python benchmarks/bench_library_parity.py [--data ../shared/data/projections]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import imagecodecs
import numpy as np

import ctpress
from ctpress.sim import simulate_scan

HERE = Path(__file__).resolve().parent
NEUTRON = "sarepy_neutron_sinogram_459x503_uint16.npy"
SAVU = "savu_i12_raw_projections_91x135x160_uint16.npy"


def psnr_db(x: np.ndarray, y: np.ndarray) -> float:
    x64 = x.astype(np.float64)
    mse = float(np.mean((x64 - y.astype(np.float64)) ** 2))
    peak = float(x64.max() - x64.min())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def ctpress_case(x: np.ndarray, codec: str, bpp: float) -> str:
    t0 = time.perf_counter()
    try:
        data = ctpress.compress(x, codec=codec, bpp=bpp)
    except ctpress.CtpressError as exc:
        return f"refused ({' '.join(str(exc).split())[:60]}...)"
    seconds = time.perf_counter() - t0
    decoded = ctpress.decompress(data).projections.reshape(x.shape)
    return f"{8 * len(data) / x.size:.3f} b/v, {psnr_db(x, decoded):.2f} dB, {seconds:.2f} s"


def sperr_library(x: np.ndarray, bpp: float) -> str:
    work = np.squeeze(x).astype(np.float64)
    t0 = time.perf_counter()
    stream = imagecodecs.sperr_encode(work, level=bpp, mode="bpp")
    seconds = time.perf_counter() - t0
    decoded = imagecodecs.sperr_decode(stream)
    return f"{8 * len(stream) / x.size:.3f} b/v, {psnr_db(work, decoded):.2f} dB, {seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/projections")
    args = parser.parse_args(argv)
    neutron = np.load(args.data / NEUTRON)
    savu = np.load(args.data / SAVU)
    cone = simulate_scan(n_views=96, det_rows=32, det_cols=384, i0=1e5, seed=1).projections
    cases = [
        ("neutron sinogram", neutron, "sperr", 0.1, True),
        ("neutron sinogram", neutron, "sperr", 0.5, True),
        ("neutron sinogram", neutron, "sperr", 1.0, True),
        ("96x32x384 cone (simulated)", cone, "sperr", 0.2, True),
        ("neutron sinogram", neutron, "jpeg2000", 0.5, False),
        ("Savu projections", savu, "jpeg2000", 1.0, False),
        ("Savu projections", savu, "zfp", 1.0, False),
        ("Savu projections", savu, "zfp", 2.0, False),
    ]
    print(f"ctpress {ctpress.__version__} from {Path(ctpress.__file__).parent}")
    print("| data | codec | target b/v | ctpress.compress | library directly |")
    print("|---|---|---|---|---|")
    for name, x, codec, bpp, library in cases:
        direct = sperr_library(x, bpp) if library else ""
        print(f"| {name} | {codec} | {bpp:g} | {ctpress_case(x, codec, bpp)} | {direct} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
