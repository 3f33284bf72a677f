"""Measure the installed learned weights again on the held-out scans, with this version's
encoder, and record the result in the weights manifest.

A weights file's held-out quality is measured when it is trained; when the encoder
changes (quantisation, table choice) without the weights changing, this keeps the
manifest's numbers those of the shipped code.  The weights files are not modified.

Usage::

    python benchmarks/remeasure_zoo.py hyperprior [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ctpress.learned import zoo
from ctpress.learned.data import DataFiles, default_data_dir, held_out_scans
from ctpress.learned.train import evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("method", choices=["hyperprior", "vqvae"])
    parser.add_argument("--cache", type=Path, help="cache of simulated noise-free projections")
    args = parser.parse_args(argv)
    data = default_data_dir()
    if data is None:
        print("remeasure_zoo: needs ../shared/data (or $CTPRESS_DATA)")
        return 1
    _, held = DataFiles.find([data]).split()
    scans = held_out_scans(held, args.cache)
    for rate_point, entry in enumerate(zoo.rate_points(args.method)):
        model, _ = zoo.load_model(args.method, rate_point)
        held_out = evaluate(model, scans)
        zoo.install(zoo.weights_dir() / entry["file"], held_out=held_out)
        print(f"{args.method} rate point {rate_point}:", json.dumps(held_out["mean"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
