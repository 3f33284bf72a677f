"""Training of ``--codec dvc``'s P-frame model (``ctpress train dvc --rate-point R``).

A P-frame is the residual of a view against its motion-compensated prediction from the
previous decoded view: noise and moving edges around a flat middle, unlike the
projections the ``hyperprior`` model's entropy model learned.  The trainer starts from the
shipped ``hyperprior`` model of rate point R (same wavelet transform, same step: the two
code at the same distortion for a gain) and fine-tunes its entropy model (hyper
analysis / synthesis, the channel context, the factorized prior) on exactly the images the
P model will code: the residuals of :func:`ctpress.learned.video.code_gop`, run in the
closed loop with the shipped model on

- cone-beam scans simulated from the training volumes with the views close as a scanner
  takes them (:data:`VIEWS` over a turn, :data:`ROWS` rows, :data:`COLS` columns, flat and
  cylindrical detectors, every dose of :data:`~ctpress.learned.data.DOSES`),
- the training views (first two thirds) of the real multi-row projections,

GOPs of :data:`GOP` views each coded at a gain drawn log-uniformly in the model's range.
Held out: the scans of :data:`~ctpress.learned.data.HELD_OUT_VOLUMES` and the last third of
the real views, on which the P-frames are coded with the initial and with the trained
model (bits/value of the P-frames, PSNR of the GOP, BD-rate).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import bdrate, metrics
from ..errors import InputError
from ..scan import DetectorShape
from ..sim.simulate import simulate_scan
from . import zoo
from .data import (
    DOSES,
    SLICE_VOLUMES,
    DataFiles,
    _stem,
    load_volume,
    real_scans,
)
from .fitting import fit, main_command, training_device, training_record
from .fixed_point import grid_values
from .models.base import LearnedModel
from .models.hyperprior import MeanScaleHyperprior
from .store import read_entry, weights_dir
from .video import code_gop

#: Views per turn, detector rows and columns of the simulated training scans.
VIEWS, ROWS, COLS = 240, 16, 192
#: Views per GOP (the codec's default chunk).
GOP = 16
#: Latent columns of a training crop (wavelet channels at 1/16 resolution: 256 pixels).
CROP_COLUMNS = 16
#: Residual images per batch, and the learning rate of the fine-tuning.
BATCH = 32
LEARNING_RATE = 3e-4
#: Gains at which the held-out P-frames are coded (for the BD-rate).
HELD_OUT_GAINS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: The dose of the held-out simulated scans.
HELD_DOSE = "i0=100000"


def dvc_scans(files: DataFiles, seed: int) -> dict[str, np.ndarray]:
    """Cone-beam scans (n_views, rows, cols) uint16 simulated from the volumes of
    ``files`` (names as keys): see the module docstring."""
    scans: dict[str, np.ndarray] = {}
    for k, path in enumerate(files.volumes):
        if _stem(path) in SLICE_VOLUMES:
            continue
        hu, voxel = load_volume(path)
        detector: DetectorShape = "cylindrical" if k % 2 else "flat"
        for i0 in DOSES:
            scans[f"{path.stem}-cone-{VIEWS}x{ROWS}x{COLS}-{detector}-i0={i0:g}"] = simulate_scan(
                hu, geometry_kind="cone", n_views=VIEWS, det_rows=ROWS, det_cols=COLS,
                voxel_size_mm=voxel, i0=i0, seed=seed + k, detector_shape=detector,
            ).array()  # fmt: skip
    return scans


def _real_multi_row(files: DataFiles, held_out: bool) -> dict[str, np.ndarray]:
    found = (real_scans(path, held_out) for path in files.projections)
    return {name: views for name, views in found if views.shape[1] >= 8}


def _gops(scan: np.ndarray) -> list[tuple[np.ndarray, float, float]]:
    """The GOPs of a scan as the codec normalises its chunks: (views float64, offset,
    scale), ``(views - offset) / scale`` in [0, 1]."""
    gops = []
    for start in range(0, len(scan), GOP):
        views = scan[start : start + GOP].astype(np.float64)
        lo, hi = float(views.min()), float(views.max())
        gops.append((views, lo, hi - lo if hi > lo else 1.0))
    return gops


def p_frame_images(
    scans: dict[str, np.ndarray], model: LearnedModel, rng: np.random.Generator
) -> list[np.ndarray]:
    """The residual images the P model codes in the closed loop over every GOP of
    ``scans`` (block motion, ``model`` for I- and P-frames, a random gain per GOP)."""
    lo, hi = (math.log(g) for g in model.gain_range)
    images: list[np.ndarray] = []
    for scan in scans.values():
        for views, offset, scale in _gops(scan):
            if len(views) > 1:  # a GOP of one view has no P-frame
                gain = float(np.exp(rng.uniform(lo, hi)))
                unit = (views - offset) / scale
                images += code_gop(unit, model, model, gain, "block").p_images
    return images


class ResidualSampler:
    """Batches of wavelet channels of residual images: images of one shape per batch
    (picked with probability proportional to their area), cropped to
    :data:`CROP_COLUMNS` latent columns."""

    def __init__(self, views: list[np.ndarray], seed: int) -> None:
        groups: dict[tuple[int, ...], list[np.ndarray]] = {}
        for v in views:
            groups.setdefault(v.shape, []).append(v)
        self.groups = [np.stack(g) for g in groups.values()]
        area = np.array([g.shape[0] * g.shape[2] * g.shape[3] for g in self.groups], float)
        self.weights = area / area.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> np.ndarray:
        """(size, channels, h, <= CROP_COLUMNS) float32."""
        group = self.groups[self.rng.choice(len(self.groups), p=self.weights)]
        width = min(CROP_COLUMNS, group.shape[3])
        picks = self.rng.integers(0, group.shape[0], size)
        starts = self.rng.integers(0, group.shape[3] - width + 1, size)
        return np.stack([group[i, :, :, c : c + width] for i, c in zip(picks, starts, strict=True)])


def _initial_model(rate_point: int) -> tuple[MeanScaleHyperprior, str]:
    """A trainable copy of the shipped ``hyperprior`` model of ``rate_point`` and its
    weights' SHA-256."""
    entries = zoo.rate_points("hyperprior")
    if not 0 <= rate_point < len(entries):
        raise InputError(f"unknown rate point {rate_point} of 'dvc' (0..{len(entries) - 1})")
    data, digest = read_entry(str(weights_dir()), entries[rate_point])
    model, _ = zoo.load_weights(data)
    assert isinstance(model, MeanScaleHyperprior)
    model.clear_inference_cache()
    return model, digest


def evaluate_p_frames(
    initial: LearnedModel, trained: LearnedModel, scans: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Per held-out scan: bits/value of the P-frames' latents and PSNR of the decoded
    GOPs (against the scan's range) at :data:`HELD_OUT_GAINS`, with the P-frames coded by
    the initial and by the trained model (I-frames by the initial), and the BD-rate of the
    trained P-frames against the initial ones."""
    results: dict[str, Any] = {}
    for name, scan in scans.items():
        curves: dict[str, list[tuple[float, float]]] = {}
        for label, p_model in (("initial", initial), ("trained", trained)):
            curves[label] = [_p_frame_point(scan, initial, p_model, g) for g in HELD_OUT_GAINS]
        (r0, q0), (r1, q1) = (zip(*curves[k], strict=True) for k in ("initial", "trained"))
        try:
            bd: float | None = round(bdrate.bd_rate(r0, q0, r1, q1), 2)
        except InputError:  # no usable curve (e.g. P-frames of no bits on a tiny scan)
            bd = None
        results[name] = {
            "gains": list(HELD_OUT_GAINS),
            **{k: [[round(b, 4), round(p, 3)] for b, p in v] for k, v in curves.items()},
            "bd_rate_percent": bd,
        }
    rates = [r["bd_rate_percent"] for r in results.values() if r["bd_rate_percent"] is not None]
    if rates:
        results["mean_bd_rate_percent"] = round(float(np.mean(rates)), 2)
    return results


def _p_frame_point(
    scan: np.ndarray, i_model: LearnedModel, p_model: LearnedModel, gain: float
) -> tuple[float, float]:
    """(bits/value of the P-frames in the GOPs' streams, PSNR dB of the decoded scan against its
    range)."""
    bits, decoded = 0, []
    for views, offset, scale in _gops(scan):
        gop = code_gop((views - offset) / scale, i_model, p_model, gain, "block")
        bits += gop.p_bits
        decoded.append(grid_values(gop.decoded, offset, scale, integer=True))
    return bits / scan.size, metrics.psnr_db(scan, np.concatenate(decoded))


def train_dvc(
    rate_point: int,
    data: list[Path],
    out: Path,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    command: str | None = None,
    log: bool = True,
) -> dict[str, Any]:
    """Fine-tune the P-frame model of ``rate_point`` (see the module docstring) and write
    it to ``out``; returns its provenance and held-out results (also in the file)."""
    t_start = time.perf_counter()
    say = print if log else (lambda *a, **k: None)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_files, held_files = DataFiles.find(data).split()
    model, initial_sha = _initial_model(rate_point)  # the copy to train
    initial, _ = zoo.load_model("hyperprior", rate_point)  # the shipped model, as it codes
    scans = {**dvc_scans(train_files, seed), **_real_multi_row(train_files, held_out=False)}
    if not scans:
        raise InputError("ctpress train dvc needs multi-row scans: volumes or real projections")
    images = p_frame_images(scans, initial, rng)
    say(f"{len(images)} P-frame residual images from {len(scans)} training scans")
    views = [model.training_view(image) for image in images]
    sampler = ResidualSampler(views, seed)
    device = training_device()
    model.to(device).train()

    def loss() -> tuple[torch.Tensor, dict[str, float]]:
        return model.training_loss(torch.from_numpy(sampler.batch(BATCH)).to(device))

    total, train_s, history = fit(
        model.parameters(), loss, steps=steps, seconds=None if minutes is None else minutes * 60,
        learning_rate=LEARNING_RATE, say=say, label=f"dvc P-frame model ({device})",
    )  # fmt: skip
    model.cpu().eval()
    model.update()
    held_scans = {k: v for k, v in dvc_scans(held_files, seed=12345).items() if HELD_DOSE in k}
    held = evaluate_p_frames(
        initial, model, {**held_scans, **_real_multi_row(held_files, held_out=True)}
    )
    metadata: dict[str, Any] = {
        **training_record(
            "dvc", rate_point, train_files, data, out, steps=total, seed=seed,
            train_seconds=train_s, started=t_start, device=device,
        ),
        "config": model.config(),
        "initial": f"hyperprior rate point {rate_point}, sha256 {initial_sha}",
        "train_images": len(images),
        "command": command or main_command(),
        "history": history[-5:],
        "held_out": held,
    }  # fmt: skip
    metadata["sha256"] = zoo.save_weights(model, out, metadata)
    say(f"wrote {out}; held-out BD-rate of the P-frames: {held.get('mean_bd_rate_percent')} %")
    return metadata
