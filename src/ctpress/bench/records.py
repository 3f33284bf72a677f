"""Bench records and result files: one :class:`BenchRecord` per codec, rate control and
scan, a :class:`BenchResult` per run, their CSV/JSON/npz files, the text table, and the
``--rates`` syntax (rate controls are :class:`~ctpress.rate.RateControl` values).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import InputError
from ..rate import RATE_MODES, RateControl

#: A rate control: a :class:`RateControl`, or the pair (mode, target) with target None for
#: lossless (the form earlier versions used; :func:`as_rate_control` converts it).
Rate = RateControl | tuple[str, float | None]
#: Decoded images kept for the report: "projection" (middle view), "sinogram" (middle row),
#: "slice" (middle reconstructed slice, 1/mm).
Samples = dict[str, np.ndarray]

ORIGIN_THIS_RUN = "this run"


def as_rate_control(rate: Rate) -> RateControl:
    """``rate`` as a :class:`RateControl` (InputError for an unknown mode or a bad value)."""
    if isinstance(rate, RateControl):
        return rate
    mode, target = rate
    return RateControl(mode, target)


@dataclass
class BenchRecord:
    """One codec at one rate control on one scan (sizes in bytes, times in s, memory in MB).

    ``error`` holds why a codec could not meet the rate control (the run failed); ``note`` why
    the combination was not run at all (e.g. the codec lacks the mode).  ``origin`` is
    ``"this run"`` or where a reused result was measured.  Recon fields are None without
    ``recon``; ``recon_rmse_hu`` is in Hounsfield units.
    """

    scan: str
    codec: str
    mode: str
    target: float | None
    n_bytes: int | None = None
    bits_per_value: float | None = None
    ratio: float | None = None
    ratio_vs_uint16: float | None = None
    data_range: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    haarpsi: float | None = None
    vsi: float | None = None
    mse: float | None = None
    max_abs_error: float | None = None
    recon_psnr_db: float | None = None
    recon_ssim: float | None = None
    recon_rmse_hu: float | None = None
    added_noise_ratio: float | None = None
    encode_s: float | None = None
    decode_s: float | None = None
    encode_mb_s: float | None = None
    decode_mb_s: float | None = None
    encode_peak_mb: float | None = None
    decode_peak_mb: float | None = None
    error: str | None = None
    note: str | None = None
    origin: str = ORIGIN_THIS_RUN

    @property
    def rate_label(self) -> str:
        """Human-readable rate control, e.g. ``max_error=4``."""
        return self.mode if self.target is None else f"{self.mode}={self.target:g}"

    @property
    def exact(self) -> bool:
        """Whether the run is lossless: the lossless rate control and no decoded value off
        (a codec that synthesises views is lossless on the stored views only)."""
        return self.mode == "lossless" and not self.max_abs_error

    @property
    def key(self) -> str:
        """``scan|codec|rate`` identifying the measurement (for resuming and samples)."""
        return f"{self.scan}|{self.codec}|{self.rate_label}"

    @property
    def ok(self) -> bool:
        """Whether the run produced measurements (not failed, not skipped)."""
        return self.error is None and self.note is None


@dataclass
class BenchResult:
    """Everything a bench run produced: records (in task order), run info, settings, and the
    decoded sample images by :attr:`BenchRecord.key` (``"<scan>|original"`` for originals)."""

    records: list[BenchRecord]
    run: dict[str, Any]
    settings: dict[str, Any]
    samples: dict[str, Samples] = field(default_factory=dict)


def parse_rates(text: str) -> list[RateControl] | None:
    """Parse ``--rates``: ``default`` (None: the bench's default sweep per codec) or a comma
    list like ``lossless,max_error=4,bpp=2,psnr=60,noise=0.5`` (modes: the keys of
    :data:`ctpress.rate.RATE_MODES`; ``noise`` is the noise fraction)."""
    if text.strip() == "default":
        return None
    rates: list[RateControl] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        mode, _, value = item.partition("=")
        spec = RATE_MODES.get(mode)
        if spec is None or spec.needs_value == (value == ""):
            valued = [m for m, s in RATE_MODES.items() if s.needs_value]
            raise InputError(
                f"bad rate {item!r}: use lossless or MODE=VALUE with MODE one of "
                f"{', '.join(valued)} (e.g. max_error=4,bpp=2)"
            )
        try:
            number = float(value) if spec.needs_value else None
        except ValueError:
            raise InputError(f"bad rate {item!r}: {value!r} is not a number") from None
        try:
            rates.append(RateControl(mode, number))
        except InputError as exc:
            raise InputError(f"bad rate {item!r}: {exc}") from None
    if not rates:
        raise InputError("--rates is empty")
    return rates


def run_info() -> dict[str, Any]:
    """Library version, git revision and machine, stored with every result file."""
    try:
        revision = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
                check=False,
            ).stdout.strip()
            or None
        )
    except OSError:
        revision = None
    return {
        "library": f"ctpress {__version__}",
        "git_revision": revision,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(result: BenchResult, out_dir: Path) -> None:
    """Write ``results.csv`` (one row per record, plus this run's date, library version, git
    revision and machine), ``results.json`` (records, run info and settings) and
    ``samples.npz`` (the decoded images the report shows) to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = {f"run_{k}": result.run.get(k) for k in ("date", "library", "git_revision", "machine")}
    names = [f.name for f in fields(BenchRecord)] + list(run)
    with open(out_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in result.records:
            writer.writerow(asdict(r) | run)
    payload = {
        "run": result.run,
        "settings": result.settings,
        "results": [asdict(r) for r in result.records],
    }
    text = json.dumps(json_safe(payload), indent=1, allow_nan=False)
    (out_dir / "results.json").write_text(text)
    arrays = {f"{key}|{name}": a for key, s in result.samples.items() for name, a in s.items()}
    np.savez_compressed(out_dir / "samples.npz", **arrays)  # type: ignore[arg-type]


def load_results(out_dir: Path) -> BenchResult:
    """Read what :func:`write_results` wrote (samples where ``samples.npz`` exists)."""
    payload = json.loads((out_dir / "results.json").read_text())
    known = {f.name for f in fields(BenchRecord)}
    records = [
        BenchRecord(**{k: _json_float(v) for k, v in r.items() if k in known})
        for r in payload["results"]
    ]
    samples: dict[str, Samples] = {}
    if (out_dir / "samples.npz").exists():
        with np.load(out_dir / "samples.npz") as npz:
            for name in npz.files:
                key, _, image = name.rpartition("|")
                samples.setdefault(key, {})[image] = npz[name]
    return BenchResult(records, payload["run"], payload["settings"], samples)


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by the strings "inf", "-inf", "nan" (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _json_float(value: Any) -> Any:
    return float(value) if value in ("inf", "-inf", "nan") else value


def format_number(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``; ``-`` for None/NaN, ``inf`` for infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "inf" if math.isinf(value) else format(value, spec)


def format_table(records: Sequence[BenchRecord]) -> str:
    """A fixed-width text table of the records (failures and skips show their reason; rows
    reused from an earlier run are marked ``*``)."""
    recon = any(r.recon_psnr_db is not None for r in records)
    head = (
        f"{'codec':10s} {'rate control':14s} {'bits/val':>8s} {'ratio':>6s} {'PSNR dB':>7s} "
        f"{'SSIM':>6s} {'max err':>8s} "
        + (f"{'rec PSNR':>8s} {'RMSE HU':>7s} {'noise+':>6s} " if recon else "")
        + f"{'enc MB/s':>8s} {'dec MB/s':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        mark = "*" if r.origin != ORIGIN_THIS_RUN else " "
        lead = f"{r.codec:10s} {r.rate_label:14s}{mark}"
        if not r.ok:
            lines.append(f"{lead}{r.note or 'n/a: ' + str(r.error)}"[: len(head) + 40])
            continue
        columns = [(r.bits_per_value, "8.3f"), (r.ratio, "6.2f"), (r.psnr_db, "7.2f")]
        columns += [(r.ssim, "6.4f"), (r.max_abs_error, "8.4g")]
        if recon:
            columns += [(r.recon_psnr_db, "8.2f"), (r.recon_rmse_hu, "7.2f")]
            columns += [(r.added_noise_ratio, "6.3f")]
        columns += [(r.encode_mb_s, "8.2f"), (r.decode_mb_s, "8.2f")]
        cells = [f"{format_number(v, spec):>{spec.split('.')[0]}s}" for v, spec in columns]
        lines.append(lead + " ".join(cells))
    if any(r.origin != ORIGIN_THIS_RUN for r in records):
        lines.append("* reused from an earlier run (see the origin column of results.csv)")
    return "\n".join(lines)
