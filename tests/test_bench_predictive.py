"""benchmarks/bench_predictive.py: the Poisson entropy floor against a brute-force sum, and
the harness on a tiny simulated scan, with a stand-in ``convlstm`` codec registered so that
the learned rows (predictor ablation, target checks) are exercised."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctpress.codecs import registry
from ctpress.codecs.jpegls import JpegLs
from ctpress.sim import simulate_scan

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_predictive.py"


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_predictive", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def brute_force_entropy_bits(lam: float) -> float:
    """-sum P(k) log2 P(k) over k up to far into the tail."""
    if lam == 0:
        return 0.0
    top = int(lam + 60 * math.sqrt(lam) + 60)
    k = np.arange(top + 1, dtype=np.float64)
    log_p = k * math.log(lam) - lam - np.array([math.lgamma(v + 1) for v in k])
    p = np.exp(log_p)
    return float(-np.sum(p * log_p) / math.log(2))


def test_poisson_floor_matches_brute_force(bench: Any) -> None:
    lams = np.array([0.0, 1e-3, 0.3, 1.0, 4.5, 19.99, 20.0, 35.0, 400.0, 2e3, 5e4])
    got = bench.poisson_entropy_bits(lams)
    want = np.array([brute_force_entropy_bits(v) for v in lams])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_least_squares_reference(bench: Any) -> None:
    t, r, c = np.meshgrid(np.arange(12), np.arange(6), np.arange(20), indexing="ij")
    ramp = (1000 + 7 * t + 3 * r - 2 * c).astype(np.uint16)  # exactly linear: no residual
    assert bench.least_squares_reference_bits(ramp) < 0.01
    noise = np.random.default_rng(0).integers(0, 256, (12, 6, 20))  # nothing to predict
    assert 7.95 < bench.least_squares_reference_bits(noise) < 8.5
    sinogram = np.random.default_rng(1).integers(0, 16, (12, 1, 40))
    assert 3.95 < bench.least_squares_reference_bits(sinogram) < 4.5
    assert bench.least_squares_reference_bits(noise[:2]) is None  # no view has 2 before it


class StandInConvLstm(JpegLs):
    """JPEG-LS under the learned codec's id, with its ``predictor`` setting."""

    codec_id = "convlstm"

    def __init__(self, *, predictor: str = "all", **rate: Any) -> None:
        super().__init__(**rate)
        self.predictor = predictor

    def _options(self) -> dict[str, Any]:
        return {"predictor": self.predictor}


def test_harness_on_a_tiny_scan(bench: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._REGISTRY, "convlstm", StandInConvLstm)
    yy, xx = np.mgrid[-16:16, -16:16]
    disk = np.where(yy**2 + xx**2 < 14**2, 0.0, -1000.0).astype(np.float32)
    clean = simulate_scan(
        disk, geometry_kind="fan", n_views=24, det_rows=1, det_cols=48, voxel_size_mm=4.0,
        i0=None, dtype="float32",
    )  # fmt: skip
    counts, floor = bench.poisson_counts(clean, 1e4, seed=3)
    truth = bench.NoiseModel("counts", source="true")
    scans = [bench.BenchScan("tiny", counts, "simulated", floor, truth, "true", False)]
    plan = bench.Plan(
        simulations=(), doses=(1e4,), line_integral_dose=1e4, efforts=(3,), error_bounds=(2,),
        noise_fractions=(0.25,), speed_runs=1, speed_dose=1e4, real_views=None,
    )  # fmt: skip
    result = bench.run(scans, plan, lambda message: None)

    rows = {r["codec"]: r for r in result["lossless"]}
    assert [f"convlstm[predictor={p}]" in rows for p in bench.PREDICTORS] == [True] * 5
    assert rows["jpegls"]["bits_per_value"] > floor > 0
    summary = result["lossless_summary"][0]
    best = min(r["n_bytes"] for r in rows.values() if not r["learned"])
    over = summary["learned_over_best"]["convlstm[predictor=all]"]
    assert over == pytest.approx(best / rows["jpegls"]["n_bytes"])
    near = [r for r in result["near_lossless"] if r["codec"] == "convlstm"]
    assert len(near) == 1 and near[0]["measured_max_error"] <= 2
    noise = [r for r in result["noise_bounded"] if r["codec"] == "convlstm"]
    assert len(noise) == 1 and 0 < noise[0]["recon_std_rise"] < 0.05
    checks = {t["check"].split(":")[0] for t in result["targets"]}
    assert {"lossless tiny", "near-lossless tiny E=2", "encode speed"} <= checks
    text = bench.markdown({"run": bench.run_info(), "command": "test", "runtime_s": 0.0, **result})
    assert "Issue 14 targets" in text and "convlstm[predictor=spatial]" in text
