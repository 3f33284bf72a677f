"""Training of the learned codecs (``ctpress train``), on the CPU or a GPU when present.

``train(method, rate_point, data, out, steps=N | minutes=M, seed=S)`` trains one rate
point from scratch on patches of the training images (:mod:`ctpress.learned.data`),
freezes its entropy models into integer tables, writes the weights (safetensors, with
their provenance in the file's metadata) and measures the result on the held-out scans
with the real coding path (bytes from the range coder, decoded and compared).

``minutes`` is turned into a fixed number of steps after timing the first steps, and the
run is recorded with that number: ``--steps N --seed S`` reproduces it (bit-exactly on
the same machine and thread count, within noise elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..errors import InputError
from ..frames import to_images
from . import fixed_point, inr, zoo
from .data import (
    DataFiles,
    PatchSampler,
    held_out_scans,
    real_scans,
    simulated_scans,
    training_images,
)
from .fitting import TIMING_STEPS, fit, training_device, training_record
from .layers import pad_to_multiple
from .models.base import LearnedModel
from .models.siren import SirenArch, SirenStack

#: Architecture and training settings of each shipped rate point (increasing rate).
RATE_POINTS: dict[str, list[dict[str, Any]]] = {
    "hyperprior": [{"step": 0.06}, {"step": 0.016}, {"step": 0.005}],
    "vqvae": [
        {"levels": 1, "factor": 16, "codebook": 512},
        {"levels": 2, "factor": 8, "codebook": 512},
    ],
}
#: Architectures of the shipped SIREN meta-learned initialisations (``ctpress train siren``).
SIREN_INITS: list[dict[str, Any]] = [{"width": w, "depth": 2} for w in (16, 24, 32, 40)]
#: Views per meta-learning task (a window of a training scan).
SIREN_TASK_VIEWS = (16, 96)
#: Patch side and batch size of training.
PATCH = {"hyperprior": 256, "vqvae": 64}
BATCH = {"hyperprior": 16, "vqvae": 16}
LEARNING_RATE = 1e-3


def train(
    method: str,
    rate_point: int,
    data: list[Path],
    out: Path,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    cache: Path | None = None,
    only: str | None = None,
    command: str | None = None,
    log: bool = True,
) -> dict[str, Any]:
    """Train ``method`` at ``rate_point`` and write its weights to ``out``.

    Parameters
    ----------
    method : {"hyperprior", "vqvae", "siren", "convlstm", "sparse-unet", "dvc"}
    rate_point : int
        Index into :data:`RATE_POINTS` (architecture and lambda), or for ``siren`` into
        :data:`SIREN_INITS` (the architecture whose initialisation is meta-learned).
    data : list of Path
        Data roots / directories / files (see :meth:`DataFiles.find`).
    out : Path
        Output ``.safetensors`` file.
    steps, minutes : int or float
        Training length: a number of optimiser steps, or a time budget converted to
        steps after timing the first ones (exactly one of them).
    seed : int
        Seed of the initialisation, the simulated noise and the patch sampler.
    cache : Path, optional
        Directory caching the simulated noise-free projections.
    only : {"sinogram", "image"}, optional
        sparse-unet: train only this restoration.
    command : str, optional
        The command line recorded in the weights' metadata.

    Returns
    -------
    dict
        The provenance and held-out quality stored in the weights file.
    """
    if (steps is None) == (minutes is None):
        raise InputError("give exactly one of steps and minutes")
    if method == "convlstm":
        return train_view_predictor(
            data, out, steps=steps, minutes=minutes, seed=seed, cache=cache, command=command,
            log=log,
        )  # fmt: skip
    if method == "dvc":
        from .train_dvc import train_dvc

        return train_dvc(
            rate_point, data, out, steps=steps, minutes=minutes, seed=seed, command=command,
            log=log,
        )  # fmt: skip
    if method == "sparse-unet":
        from .train_sparse import train_sparse_unet

        return train_sparse_unet(
            data, out, steps=steps, minutes=minutes, seed=seed, only=only, command=command,
            log=log,
        )  # fmt: skip
    if method == "siren":
        return train_siren_init(
            rate_point, data, out, steps=steps, minutes=minutes, seed=seed, cache=cache,
            command=command, log=log,
        )  # fmt: skip
    if method not in RATE_POINTS or not 0 <= rate_point < len(RATE_POINTS[method]):
        raise InputError(f"unknown rate point {rate_point} of {method!r}")
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    files = DataFiles.find(data)
    train_files, held_files = files.split()
    say = print if log else (lambda *a, **k: None)
    say(
        f"training {method} rate point {rate_point} on {len(train_files.volumes)} volumes + "
        f"{len(train_files.projections)} real projection files; held out: "
        f"{', '.join(p.stem for p in held_files.volumes) or 'none'}"
    )
    images = training_images(train_files, seed, cache)
    say(f"{len(images)} training images ({sum(i.size for i in images) / 1e6:.1f} Mpx)")
    device = training_device()
    model = zoo.build_model(method, RATE_POINTS[method][rate_point])
    patch = PATCH[method] // model.training_scale
    views = [model.training_view(img) for img in images]
    sampler = PatchSampler(views, patch, seed, flips=model.training_flips)
    model.initialise(torch.from_numpy(PatchSampler(views, patch, seed + 2).batch(64)))
    model = model.to(device)
    model.train()

    def loss() -> tuple[torch.Tensor, dict[str, float]]:
        batch = torch.from_numpy(sampler.batch(BATCH[method])).to(device)
        return model.training_loss(batch)

    total, train_s, history = fit(
        model.parameters(), loss, steps=steps, seconds=None if minutes is None else minutes * 60,
        learning_rate=LEARNING_RATE, say=say, label=f"{method} ({device})",
    )  # fmt: skip
    model = model.cpu().eval()
    model.update(torch.from_numpy(PatchSampler(views, patch, seed + 1).batch(256)))
    metadata: dict[str, Any] = {
        **training_record(
            method, rate_point, train_files, data, out, steps=total, seed=seed,
            train_seconds=train_s, started=t_start, device=device,
        ),
        "config": model.config(),
        "command": command or "",
        "history": history[-5:],
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    held = evaluate(model, held_out_scans(held_files, cache))
    metadata["held_out"] = held
    sha = zoo.save_weights(model, out, metadata)
    metadata["sha256"] = sha
    say(f"wrote {out} (sha256 {sha[:16]}...); held-out: {held.get('mean', 'none')}")
    return metadata


def evaluate(model: LearnedModel, scans: dict[str, Any]) -> dict[str, Any]:
    """Real coding of each held-out scan at this rate point (gain 1, no residual), as
    the codec does it: images normalised by the scan's range, padded, compressed, the
    decoder-side reconstruction rounded to the output grid and to the data's integers.

    Returns per-scan and mean bits/value (the model's strings; a chunk stream adds 60
    bytes of side information), PSNR (dB versus the scan's range) and SSIM of the
    decoded values.
    """
    results: dict[str, Any] = {}
    for name, scan in scans.items():
        x = scan.projections
        images = to_images(x).astype(np.float64)
        lo, hi = float(images.min()), float(images.max())
        scale = hi - lo if hi > lo else 1.0
        unit = torch.from_numpy(((images - lo) / scale)[:, None])
        strings, recon = model.compress(pad_to_multiple(unit, model.downsampling))
        _, h, w = images.shape
        grid = fixed_point.to_grid(
            recon[:, 0, :h, :w].numpy(), -fixed_point.GRID_LIMIT, fixed_point.GRID_LIMIT
        )
        values = fixed_point.grid_values(grid, lo, scale, x.dtype.kind in "ui")
        decoded = np.clip(np.rint(values), x.min(), x.max()).astype(x.dtype).reshape(x.shape)
        q = metrics.projection_metrics(x, decoded, perceptual=False)
        results[name] = {
            "bits_per_value": round(8 * len(strings.payload) / x.size, 4),
            "psnr_db": round(q["psnr_db"], 3),
            "ssim": round(q["ssim"], 5),
        }
    keys = ("bits_per_value", "psnr_db", "ssim")
    if not results:
        return results
    results["mean"] = {k: round(float(np.mean([r[k] for r in results.values()])), 4) for k in keys}
    return results


def _normalised(x: np.ndarray) -> np.ndarray:
    """A chunk mapped to [-1, 1] by its own range, as the SIREN codec does (float32)."""
    x = x.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    return (2.0 * (x - lo) / (hi - lo if hi > lo else 1.0) - 1.0).astype(np.float32)


def _siren_fit_psnr(arch: SirenArch, x: np.ndarray, init: SirenStack | None, steps: int) -> float:
    """PSNR (dB, range of the chunk) of a float SIREN fitted for ``steps`` steps."""
    stack = SirenStack(arch, 1)
    if init is not None:
        stack.load_state_dict(init.state_dict())
    report = inr.fit_siren(x, stack, steps=steps, progress=False)
    return 10 * math.log10(4.0 / max(report.loss, 1e-30))


def train_siren_init(
    rate_point: int,
    data: list[Path],
    out: Path,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    cache: Path | None = None,
    command: str | None = None,
    log: bool = True,
) -> dict[str, Any]:
    """Meta-learn the SIREN initialisation :data:`SIREN_INITS` [``rate_point``] with
    Reptile on windows of the training scans (:func:`ctpress.learned.inr.meta_train`),
    and measure on held-out scans how much closer a short fit gets from it than from the
    standard SIREN initialisation."""
    if not 0 <= rate_point < len(SIREN_INITS):
        raise InputError(f"unknown rate point {rate_point} of 'siren' (0..{len(SIREN_INITS) - 1})")
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    arch = SirenArch(**SIREN_INITS[rate_point])
    train_files, held_files = DataFiles.find(data).split()
    say = print if log else (lambda *a, **k: None)
    scans = [s for p in train_files.volumes for _, s in simulated_scans(p, seed, cache)]
    scans += [real_scans(p, held_out=False)[1] for p in train_files.projections]
    if not scans:
        raise InputError("no training data found")
    say(f"meta-learning SIREN {arch} on windows of {len(scans)} training scans")

    def task(rng: np.random.Generator) -> np.ndarray:
        scan = scans[int(rng.integers(len(scans)))]
        views = int(rng.integers(*SIREN_TASK_VIEWS))
        start = int(rng.integers(max(1, scan.shape[0] - views + 1)))
        return _normalised(scan[start : start + views])

    total = steps
    if total is None:
        assert minutes is not None
        t0 = time.perf_counter()
        inr.meta_train(arch, task, steps=TIMING_STEPS, seed=seed, progress=False)
        per_step = (time.perf_counter() - t0) / TIMING_STEPS
        total = max(TIMING_STEPS, int(minutes * 60 / per_step))
        say(f"{per_step * 1e3:.0f} ms/task: {total} tasks")
    t_train = time.perf_counter()
    init = inr.meta_train(arch, task, steps=total, seed=seed, progress=log or None)
    train_s = time.perf_counter() - t_train
    held: dict[str, Any] = {}
    for name, scan in held_out_scans(held_files, cache).items():
        x = _normalised(scan.projections[:48])
        held[name] = {
            "fit_steps": 200,
            "psnr_db_meta_init": round(_siren_fit_psnr(arch, x, init, 200), 3),
            "psnr_db_standard_init": round(_siren_fit_psnr(arch, x, None, 200), 3),
        }
    metadata: dict[str, Any] = {
        **training_record(
            "siren", rate_point, train_files, data, out, steps=total, seed=seed,
            train_seconds=train_s, started=t_start, device="cpu",
        ),
        "config": arch.to_dict(),
        "held_out": held,
        "command": command or "",
    }  # fmt: skip
    metadata["sha256"] = inr.save_meta_init(init, out, metadata)
    say(f"wrote {out}; held-out 200-step fits (dB): {held}")
    return metadata


# ---------------------------------------------------------------- convlstm view predictor
#: Views per training window, and the crop of multi-row (rows x cols) and fan (cols) scans.
PREDICTOR_VIEWS = 16
PREDICTOR_CROP = (32, 64)
PREDICTOR_FAN_COLS = 256
#: Windows per batch of multi-row and of fan (rows=1) scans; share of multi-row batches.
PREDICTOR_BATCH = {"multi": 6, "fan": 24}
PREDICTOR_MULTI_SHARE = 0.6
#: Share of each batch drawn from the real projections (their training views).
PREDICTOR_REAL_SHARE = 0.25
PREDICTOR_HIDDEN = 6
PREDICTOR_LEARNING_RATE = 3e-3


def predictor_scans(files: DataFiles, seed: int, cache: Path | None) -> dict[str, list[np.ndarray]]:
    """Training scans (n_views, rows, cols) uint16 of the view predictor by kind:
    ``multi`` / ``fan`` simulated (line integrals at :data:`DOSES` and raw counts at
    :data:`COUNT_DOSES`), ``real_multi`` / ``real_fan`` (first two thirds of the views of
    the real projections)."""
    scans: dict[str, list[np.ndarray]] = {"multi": [], "fan": [], "real_multi": [], "real_fan": []}
    for path in files.volumes:
        for counts in (False, True):
            for _, scan in simulated_scans(path, seed, cache, counts=counts):
                scans["fan" if scan.shape[1] == 1 else "multi"].append(scan)
    for path in files.projections:
        scan = real_scans(path, held_out=False)[1]
        scans["real_fan" if scan.shape[1] == 1 else "real_multi"].append(scan)
    return scans


class ViewWindowSampler:
    """Batches of view windows for the predictor: (inputs (B, T-1, 3, r, c), targets
    (B, T-1, r, c), conditions (B,), difference shifts (B,)), float32, each window
    normalised like a codec chunk (:func:`~ctpress.learned.predictor.chunk_normalisation`
    on the full detector of its views), then cropped, flipped and possibly reversed in
    view order."""

    def __init__(self, scans: dict[str, list[np.ndarray]], seed: int) -> None:
        self.scans = scans
        self.rng = np.random.default_rng(seed)

    def _window(
        self, scan: np.ndarray, rows: int, cols: int
    ) -> tuple[np.ndarray, np.ndarray, float, float]:
        from .predictor import Normalisation, chunk_normalisation, float_inputs

        rng = self.rng
        views = min(PREDICTOR_VIEWS, scan.shape[0])
        start = int(rng.integers(scan.shape[0] - views + 1))
        window = scan[start : start + views]
        if rng.random() < 0.5:
            window = window[::-1]
        norm = Normalisation.decode(chunk_normalisation(np.ascontiguousarray(window)))
        r0 = int(rng.integers(window.shape[1] - rows + 1))
        c0 = int(rng.integers(window.shape[2] - cols + 1))
        crop = window[:, r0 : r0 + rows, c0 : c0 + cols]
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        x = crop.astype(np.float64)
        inputs = float_inputs(crop, norm)[:-1]
        targets = (x[1:] - x[:-1]) * 2.0**-norm.diff_shift
        return inputs, targets, norm.condition, float(norm.diff_shift)

    def batch(self) -> tuple[torch.Tensor, ...]:
        """A batch of multi-row windows (share :data:`PREDICTOR_MULTI_SHARE`) or of fan
        windows, each from the real scans with probability :data:`PREDICTOR_REAL_SHARE`."""
        multi = self.rng.random() < PREDICTOR_MULTI_SHARE
        kind = "multi" if multi else "fan"
        rows, cols = PREDICTOR_CROP if multi else (1, PREDICTOR_FAN_COLS)
        parts = []
        for _ in range(PREDICTOR_BATCH[kind]):
            real = self.scans[f"real_{kind}"] and self.rng.random() < PREDICTOR_REAL_SHARE
            pool = self.scans[f"real_{kind}" if real else kind]
            scan = pool[int(self.rng.integers(len(pool)))]
            parts.append(self._window(scan, min(rows, scan.shape[1]), min(cols, scan.shape[2])))
        views = min(p[0].shape[0] for p in parts)
        inputs = np.stack([p[0][:views] for p in parts])
        targets = np.stack([p[1][:views] for p in parts])
        conditions = np.array([p[2] for p in parts])
        diff_shifts = np.array([p[3] for p in parts])
        return tuple(
            torch.from_numpy(a).float() for a in (inputs, targets, conditions, diff_shifts)
        )


def train_view_predictor(
    data: list[Path],
    out: Path,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    cache: Path | None = None,
    command: str | None = None,
    log: bool = True,
) -> dict[str, Any]:
    """Train the ConvLSTM view predictor (``ctpress train convlstm``) with the Laplace code
    length of its errors, write it (float32 safetensors, provenance in the metadata) and
    measure it on the held-out scans (:func:`evaluate_view_predictor`)."""
    from .models.view_predictor import ConvLSTMPredictor, laplace_bits

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    train_files, held_files = DataFiles.find(data).split()
    say = print if log else (lambda *a, **k: None)
    scans = predictor_scans(train_files, seed, cache)
    for kind in ("multi", "fan"):  # real data is mixed into simulated data of its kind
        if not scans[kind]:
            scans[kind], scans[f"real_{kind}"] = scans[f"real_{kind}"], []
    if not scans["multi"] or not scans["fan"]:
        raise InputError("the view predictor needs multi-row and rows=1 training scans")
    say("view predictor training scans: " + ", ".join(f"{k} {len(v)}" for k, v in scans.items()))
    device = training_device()
    model = ConvLSTMPredictor(PREDICTOR_HIDDEN).to(device)
    sampler = ViewWindowSampler(scans, seed)

    def loss() -> tuple[torch.Tensor, dict[str, float]]:
        inputs, targets, condition, diff_shift = (t.to(device) for t in sampler.batch())
        correction, log_scale = model(inputs, condition)
        bits = laplace_bits(targets - correction, log_scale, diff_shift[:, None, None, None])
        return bits.mean(), {}

    total, train_s, _ = fit(
        model.parameters(), loss, steps=steps, seconds=None if minutes is None else minutes * 60,
        learning_rate=PREDICTOR_LEARNING_RATE, say=say,
        label=f"view predictor ({device}; bits/value, normalised)",
    )  # fmt: skip
    model = model.cpu().eval()
    metadata: dict[str, Any] = {
        **training_record(
            "convlstm", 0, train_files, data, out, steps=total, seed=seed,
            train_seconds=train_s, started=t_start, device=device,
        ),
        "config": model.config(),
        "command": command or "",
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = save_view_predictor(model, out, metadata)
    held = evaluate_view_predictor(model, out, predictor_held_out(held_files, cache))
    metadata["held_out"] = held
    metadata["total_seconds"] = round(time.perf_counter() - t_start, 1)
    sha = save_view_predictor(model, out, metadata)
    metadata["sha256"] = sha
    say(f"wrote {out} (sha256 {sha[:16]}...); held-out: {json.dumps(held, indent=1)}")
    return metadata


def save_view_predictor(model: torch.nn.Module, path: Path, metadata: dict[str, Any]) -> str:
    """Write the predictor's float32 weights as safetensors (``method``, ``config`` and the
    provenance ``metadata`` in the header); returns the SHA-256."""
    import safetensors.torch

    state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    header = {
        "method": "convlstm",
        "config": json.dumps(metadata["config"]),
        "metadata": json.dumps(metadata),
    }
    safetensors.torch.save_file(state, str(path), metadata=header)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def predictor_held_out(files: DataFiles, cache: Path | None) -> dict[str, np.ndarray]:
    """Held-out scans of the view predictor: the held-out views of the real projections and
    the held-out volumes as 64-row cone-beam raw counts (i0 2.5e4) and line integrals
    (i0 1e5)."""
    scans: dict[str, np.ndarray] = {}
    for path in files.projections:
        name, scan = real_scans(path, held_out=True)
        scans[name] = scan
    for path in files.volumes:
        for counts, dose in ((True, "i0=25000"), (False, "i0=100000")):
            for name, scan in simulated_scans(path, seed=12345, cache=cache, counts=counts):
                if scan.shape[1] > 1 and name.endswith(dose):
                    scans[name] = scan
    return scans


def _entropy_bits(values: np.ndarray) -> float:
    """Empirical order-0 entropy (bits/value) of integers."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def evaluate_view_predictor(
    model: torch.nn.Module, weights: Path, scans: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Per held-out scan (one chunk each): mean |error| and empirical entropy (bits/value)
    of the rounded residual of views 1.. for the previous view, the integer predictor (of
    the weights file ``weights``) and the float model, and the integer predictor's ideal
    Laplace code length with its predicted scales (bits/value)."""
    from .predictor import PRED_FRAC_BITS, Normalisation, ViewPredictor, float_inputs

    data = weights.read_bytes()
    predictor = ViewPredictor.from_weights(data, hashlib.sha256(data).digest()[:8])
    results: dict[str, Any] = {}
    for name, scan in scans.items():
        x = scan.astype(np.int64)
        norm_ints = predictor.normalisation(scan)
        norm = Normalisation.decode(norm_ints)
        sequence = predictor.sequence(x.shape[1], x.shape[2], norm_ints)
        integer = np.empty((x.shape[0] - 1, *x.shape[1:]), dtype=np.int64)
        log_scale = np.empty_like(integer)
        for t in range(x.shape[0] - 1):
            prediction, log_scale[t] = sequence.next(x[t])
            integer[t] = (prediction + (1 << (PRED_FRAC_BITS - 1))) >> PRED_FRAC_BITS
        with torch.no_grad():
            inputs = torch.from_numpy(float_inputs(scan, norm)[None, :-1]).float()
            condition = torch.tensor([norm.condition], dtype=torch.float32)
            correction = model(inputs, condition)[0][0].double().numpy()
        floating = np.rint(x[:-1] + correction * 2.0**norm.diff_shift).astype(np.int64)
        scale = np.maximum(2.0 ** (log_scale / 4), 0.5)
        entry: dict[str, Any] = {}
        for label, predicted in (
            ("previous_view", x[:-1]),
            ("integer", integer),
            ("float", floating),
        ):
            residual = x[1:] - predicted
            entry[label] = {
                "mean_abs_error": round(float(np.abs(residual).mean()), 4),
                "entropy_bits": round(_entropy_bits(residual), 4),
            }
        residual = np.abs(x[1:] - integer)
        laplace = residual / scale / math.log(2) + np.log2(2 * scale)
        entry["integer"]["laplace_bits"] = round(float(laplace.mean()), 4)
        entry["integer_vs_float_mean_abs_difference"] = round(
            float(np.abs(integer - floating).mean()), 4
        )
        results[name] = entry
    return results
