"""Issue 14 study: the convlstm coder's adaptive context model against a learned
conditional distribution per pixel ("measure both and keep what wins").

Both code the same residuals: the closed loop of ``convlstm`` (lossless, predictor
``all``) runs once per scan and records, for every pixel, the coder's state before the
pixel is coded (:data:`ctpress.codecs._predictive.TRACE_FIELDS`: the prediction, the
blend's recent errors around the pixel, the sub-predictors' spread, the bias correction).

* adaptive: the bytes of the codec's stream (its adaptive binary contexts, headers
  included);
* learned: a small MLP (11 causal features: log errors, log level, log spread, signed log
  corrections, the prediction's fraction) maps each pixel to a mixture of three discretised
  logistics over the residual ``value - guess``; trained on scans of training volumes
  (the aorta in cone beam, the head phantom in fan beam, three doses), scored by its ideal
  code length (``-log2 P``; what an arithmetic coder gets to within a few bytes) on
  held-out scans.  Its weights are not counted (they would ship in the package) and it
  runs in float32 (a codec would need it in integers, like the ConvLSTM).

Usage::

    python benchmarks/study_predictive_distribution.py --out results/benchmarks

writes ``study_predictive_distribution.{json,md}`` (about 5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_predictive import DATA, Simulation, noise_free, poisson_counts

from ctpress.api import make_codec
from ctpress.bench import run_info
from ctpress.codecs import _predictive as kernel
from ctpress.codecs.convlstm import ConvLstm
from ctpress.learned.conjugate import causal_conjugate_rays

DOSES = (2e3, 1e4, 5e4)
TRAINING = (
    Simulation("totalseg_aorta_ct_cropped_1p5mm", "cone", 64, 192, 120, "flat"),
    Simulation("dcmqact_philips_head_phantom_std_1mm", "fan", 1, 256, 360, "flat"),
)
HELD_OUT = (
    Simulation("totalseg_pulmonary_ct_cropped_1p5mm", "cone", 64, 192, 90, "flat"),
    Simulation("dcmqact_ge_human_head_tilted", "cone", 64, 192, 90, "cylindrical"),
    Simulation("totalseg_pulmonary_ct_cropped_1p5mm", "fan", 1, 256, None, "flat"),
    Simulation("dcmqact_ge_human_head_tilted", "fan", 1, 256, None, "flat"),
)
#: Mixture components, hidden width, training steps and batch of the learned model.
COMPONENTS, HIDDEN, STEPS, BATCH = 3, 48, 4000, 8192


def traced(sim: Simulation, seed: int) -> list[dict[str, Any]]:
    """Each dose of ``sim``: its name, the codec's bits/value, features and residuals."""
    clean = noise_free(DATA, sim)
    out = []
    for d, i0 in enumerate(DOSES):
        scan, _ = poisson_counts(clean, i0, seed=seed + d)
        x = scan.array()
        codec = make_codec(scan, "convlstm", lossless=True)
        assert isinstance(codec, ConvLstm) and scan.geometry is not None
        # the conjugate rays where they predict the scan, as the container's chunks get them
        codec._rays = causal_conjugate_rays(x, scan.geometry, np.asarray(scan.geometry.angles_rad))
        trace = np.zeros((*x.shape, kernel.N_TRACE), dtype=np.int64)
        stream, _ = codec._code(x, 0, trace=trace)
        t = trace.reshape(-1, kernel.N_TRACE).astype(np.float64)
        name = f"{sim.volume.split('_', 1)[1]} {sim.kind} {'x'.join(map(str, x.shape))} i0={i0:g}"
        out.append(
            {
                "name": name,
                "codec_bits_per_value": 8 * len(stream) / x.size,
                "features": features(t),
                "residual": x.reshape(-1).astype(np.float64) - t[:, 7],
            }
        )
    return out


def features(t: np.ndarray) -> np.ndarray:
    """(n, 11) float32 model inputs from (n, N_TRACE) trace rows."""

    def signed_log(a: np.ndarray) -> np.ndarray:
        return np.sign(a) * np.log2(1 + np.abs(a))

    logs = np.log2(1 + np.maximum(t[:, [1, 2, 3, 4, 5, 6, 7, 8]], 0))
    fraction = (t[:, 0] + t[:, 9] - 8 * t[:, 7]) / 8.0  # the prediction's offset from guess
    return np.column_stack([logs, signed_log(t[:, 9]), signed_log(t[:, 11]), fraction]).astype(
        np.float32
    )


class MixtureModel(torch.nn.Module):
    """Features -> a mixture of discretised logistics over the integer residual."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        head = torch.nn.Linear(HIDDEN, 3 * COMPONENTS)
        with torch.no_grad():
            head.bias[2 * COMPONENTS :] = 3.0  # scales start near e^3
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(), head,
        )  # fmt: skip

    def bits(self, f: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Code length in bits of each residual ``v`` (n,) given features ``f`` (n, k)."""
        out = self.net(f)
        logit, mean = out[:, :COMPONENTS], out[:, COMPONENTS : 2 * COMPONENTS]
        scale = torch.exp(out[:, 2 * COMPONENTS :]).clamp_min(0.05)
        v = v[:, None]
        p = torch.sigmoid((v + 0.5 - mean) / scale) - torch.sigmoid((v - 0.5 - mean) / scale)
        mixed = (torch.softmax(logit, 1) * p.clamp_min(1e-12)).sum(1)
        return -torch.log2(mixed.clamp_min(1e-12))


def train(scans: list[dict[str, Any]]) -> tuple[MixtureModel, torch.Tensor, torch.Tensor]:
    f = torch.from_numpy(np.concatenate([s["features"] for s in scans]))
    v = torch.from_numpy(np.concatenate([s["residual"] for s in scans]).astype(np.float32))
    mean, std = f.mean(0), f.std(0) + 1e-6
    torch.manual_seed(0)
    model = MixtureModel(f.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(STEPS):
        if step == STEPS // 2:
            for group in optimiser.param_groups:
                group["lr"] = 5e-4
        idx = torch.randint(0, len(v), (BATCH,))
        loss = model.bits((f[idx] - mean) / std, v[idx]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model, mean, std


def learned_bits_per_value(
    model: MixtureModel, mean: torch.Tensor, std: torch.Tensor, scan: dict[str, Any]
) -> float:
    f = torch.from_numpy(scan["features"])
    v = torch.from_numpy(scan["residual"].astype(np.float32))
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(v), 1 << 18):
            part = slice(start, start + (1 << 18))
            total += float(model.bits((f[part] - mean) / std, v[part]).double().sum())
    return total / len(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    training = [s for i, sim in enumerate(TRAINING) for s in traced(sim, 100 * i)]
    model, mean, std = train(training)
    rows = []
    for i, sim in enumerate(HELD_OUT):
        for s in traced(sim, 1000 + 100 * i):
            learned = learned_bits_per_value(model, mean, std, s)
            adaptive = s["codec_bits_per_value"]
            rows.append(
                {
                    "scan": s["name"],
                    "adaptive_bits_per_value": adaptive,
                    "learned_bits_per_value": learned,
                    "learned_vs_adaptive_percent": 100 * (learned / adaptive - 1),
                }
            )
            print(rows[-1], flush=True)
    n_weights = sum(p.numel() for p in model.parameters())
    result: dict[str, Any] = {
        "run": run_info(),
        "runtime_s": time.perf_counter() - t0,
        "model": {
            "components": COMPONENTS,
            "hidden": HIDDEN,
            "steps": STEPS,
            "batch": BATCH,
            "weights": n_weights,
        },
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study_predictive_distribution.json").write_text(json.dumps(result, indent=1))
    changes = [r["learned_vs_adaptive_percent"] for r in rows]
    lines = [
        "# Issue 14 study: adaptive context model against a learned distribution per pixel",
        "",
        f"Command: `python benchmarks/study_predictive_distribution.py --out {args.out}`; "
        f"{result['run']['date']}; git {result['run']['git_revision']}; runtime "
        f"{result['runtime_s']:.0f} s.",
        "",
        "Residuals of convlstm's closed loop (lossless, predictor `all`) on held-out scans. "
        "Adaptive: the codec's stream. Learned: an MLP (11 causal features of the coder's "
        f"state, {HIDDEN}-{HIDDEN} hidden, {n_weights} weights not counted) giving a mixture "
        f"of {COMPONENTS} discretised logistics, trained {STEPS} steps on the aorta (cone) and "
        "head phantom (fan) at three doses, scored by its ideal code length.",
        "",
        "| scan | adaptive b/v | learned b/v | learned vs adaptive |",
        "|---|---|---|---|",
        *(
            f"| {r['scan']} | {r['adaptive_bits_per_value']:.4f} | "
            f"{r['learned_bits_per_value']:.4f} | {r['learned_vs_adaptive_percent']:+.2f} % |"
            for r in rows
        ),
        "",
        f"Learned against adaptive: {min(changes):+.2f} to {max(changes):+.2f} % "
        f"(median {sorted(changes)[len(changes) // 2]:+.2f} %).",
        "",
    ]
    (args.out / "study_predictive_distribution.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'study_predictive_distribution.md'}", flush=True)


if __name__ == "__main__":
    main()
