"""Training of the two sparse-view restorations (``ctpress train sparse-unet``).

Both U-Nets learn from 2-D slices of the training volumes (:mod:`ctpress.learned.data`;
the held-out volumes are never seen), simulated as fan-beam sinograms (720 views over
360 degrees, 256 columns, flat and cylindrical detectors) and parallel-beam sinograms (360
views over 180 degrees), noiseless; every sample draws Poisson noise anew at an
incident count log-uniform in :data:`DOSE_RANGE`.  The real neutron sinogram's training
views (the first two thirds) join (a) as counts.

- (a) sinogram domain: a random ``k`` of :data:`~ctpress.learned.sparse.TRAINED_KEEP_EVERY`,
  the whole noisy sinogram reduced to its stored views and prepared exactly as the codec
  does (:func:`~ctpress.learned.sparse.sinogram_inputs`, with the conjugate rays of its
  geometry), a crop of :data:`SINOGRAM_PATCH`; loss: mean squared error of the
  synthesised views against the noisy views that were left out (normalised units).
- (b) image domain: FBP (ram-lak) of every ``k``-th view of a noisy sinogram against the
  FBP of all its views, both divided by the attenuation of water; loss: mean squared error
  on crops of :data:`IMAGE_PATCH`.

``minutes`` is shared :data:`SINOGRAM_SHARE` / rest between them and turned into step
counts after timing the first steps; the weights record the step counts, so
``--steps`` reproduces a run (``--steps N`` gives each network N steps).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import InputError
from ..recon import fbp
from ..scan import DetectorShape, Geometry, GeometryKind
from ..sim.phantom import MU_WATER_PER_MM
from ..sim.simulate import simulate_scan
from .conjugate import ConjugateRays, conjugate_rays
from .data import HELD_OUT_VOLUMES, DataFiles, _stem, load_volume, real_scans
from .fitting import fit
from .models.unet import UNet
from .sparse import (
    IMAGE_UNET,
    SINOGRAM_UNET,
    TRAINED_KEEP_EVERY,
    sinogram_inputs,
    stored_views,
    to_linear,
)
from .unet import ONE, UNetConfig

#: Incident photons per detector pixel of the training samples (log-uniform).
DOSE_RANGE = (1e4, 1e6)
#: Slices per training volume.
SLICES_PER_VOLUME = 12
#: Crop (views, columns) of a sinogram sample, and (ny, nx) of an image sample.
SINOGRAM_PATCH = (128, 128)
IMAGE_PATCH = (128, 128)
BATCH = 16
LEARNING_RATE = 1e-3
#: Share of ``minutes`` spent on the sinogram network.
SINOGRAM_SHARE = 0.6
_COLS = 256


@dataclass(frozen=True)
class Sinogram:
    """A noiseless training sinogram: line integrals (views, cols) and its geometry."""

    name: str
    line_integrals: np.ndarray
    geometry: Geometry


def training_sinograms(files: DataFiles) -> list[Sinogram]:
    """Noiseless fan- and parallel-beam sinograms of :data:`SLICES_PER_VOLUME` slices of
    every volume in ``files`` (about a minute)."""
    sinograms = []
    for path in files.volumes:
        hu, voxel = load_volume(path)
        picks = np.unique(np.linspace(0, hu.shape[0] - 1, SLICES_PER_VOLUME).round().astype(int))
        for n, z in enumerate(picks):
            kind: GeometryKind = "parallel" if n % 3 == 2 else "fan"
            views = 360 if kind == "parallel" else 720
            detector: DetectorShape = "cylindrical" if n % 3 == 1 else "flat"
            scan = simulate_scan(
                hu[z], geometry_kind=kind, n_views=views, det_rows=1, det_cols=_COLS,
                voxel_size_mm=voxel[1], i0=None, dtype="float32", detector_shape=detector,
            )  # fmt: skip
            assert scan.geometry is not None
            name = f"{_stem(path)}-{z}-{kind}-{views}-{detector}"
            sinograms.append(Sinogram(name, scan.array()[:, 0], scan.geometry))
    return sinograms


def noisy(line_integrals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Line integrals with Poisson noise at a dose drawn log-uniform in DOSE_RANGE."""
    i0 = math.exp(rng.uniform(*np.log(DOSE_RANGE)))
    counts = rng.poisson(i0 * np.exp(-line_integrals.astype(np.float64)))
    return -np.log(np.maximum(counts, 1) / i0)


class SinogramSampler:
    """Batches (inputs (B, 7, v, c), targets (B, 1, v, c), masks (B, 1, v, c)) for (a):
    crops of ``patch`` (views, columns), with Poisson noise unless ``noise`` is False, every
    sinogram reduced to every k-th view for a k drawn from ``keep_every``."""

    def __init__(
        self,
        sinograms: list[Sinogram],
        real: list[np.ndarray],
        seed: int,
        patch: tuple[int, int] = SINOGRAM_PATCH,
        noise: bool = True,
        keep_every: tuple[int, ...] = TRAINED_KEEP_EVERY,
    ) -> None:
        self.sinograms = sinograms
        self.real = real  # counts (views, cols)
        self.rng = np.random.default_rng(seed)
        self.patch = patch
        self.noise = noise
        self.keep_every = keep_every
        self.rays = [
            conjugate_rays(s.geometry, np.asarray(s.geometry.angles_rad), s.line_integrals.shape[1])
            for s in sinograms
        ]

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One crop of a whole noisy sinogram prepared as a codec chunk is: its stored
        views give the normalisation and the conjugate-ray interpolation."""
        rng = self.rng
        real = bool(self.real) and rng.random() < 0.1
        rays: ConjugateRays | None = None
        if real:
            source = to_linear(self.real[int(rng.integers(len(self.real)))], counts=True)
        else:
            i = int(rng.integers(len(self.sinograms)))
            source, rays = self.sinograms[i].line_integrals, self.rays[i]
        if rng.random() < 0.5:
            source = source[::-1]
            rays = None if rays is None else rays.reversed_views()
        if rng.random() < 0.5:
            source = source[:, ::-1]
            rays = None if rays is None else rays.flipped_columns()
        source = np.asarray(source, dtype=np.float64)
        if not real and self.noise:
            source = noisy(source, rng)
        n_views = source.shape[0]
        k = int(rng.choice(self.keep_every))
        kept = stored_views(n_views, k)
        pv, pc = self.patch
        v0 = int(rng.integers(n_views - pv + 1))
        c0 = int(rng.integers(source.shape[1] - pc + 1))
        lo = float(source[kept].min())
        span = float(source[kept].max()) - lo or 1.0
        x, _, _ = sinogram_inputs(source[kept][:, None], kept, n_views, (lo, span), rays)
        window = (slice(v0, v0 + pv), slice(c0, c0 + pc))
        mask = np.ones(n_views)
        mask[kept] = 0
        return (
            x[0][:, window[0], window[1]] / ONE,
            ((source[window] - lo) / span)[None],
            np.broadcast_to(mask[window[0], None], (pv, pc))[None],
        )

    def batch(self) -> tuple[torch.Tensor, ...]:
        parts = [self.sample() for _ in range(BATCH)]
        return tuple(torch.from_numpy(np.stack([p[i] for p in parts])).float() for i in range(3))


def image_pairs(sinograms: list[Sinogram], seed: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(FBP of every k-th view, FBP of all views, k), both in units of water, of one noisy
    realisation of every sinogram for every trained k."""
    rng = np.random.default_rng(seed)
    pairs = []
    for sino in sinograms:
        li = noisy(sino.line_integrals, rng).astype(np.float32)
        full = fbp(li, sino.geometry) / MU_WATER_PER_MM
        for k in TRAINED_KEEP_EVERY:
            geometry = replace(sino.geometry, angles_rad=sino.geometry.angles_rad[::k])
            sparse = fbp(li[::k], geometry) / MU_WATER_PER_MM
            pairs.append((sparse.astype(np.float32), full.astype(np.float32), k))
    return pairs


class ImageSampler:
    """Batches (inputs (B, 2, h, w), targets (B, 1, h, w), masks) for (b)."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray, int]], seed: int) -> None:
        self.pairs = pairs
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng
        sparse, full, k = self.pairs[int(rng.integers(len(self.pairs)))]
        ph, pw = IMAGE_PATCH
        y0 = int(rng.integers(sparse.shape[0] - ph + 1))
        x0 = int(rng.integers(sparse.shape[1] - pw + 1))
        turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)

        def crop(a: np.ndarray) -> np.ndarray:
            a = np.rot90(a[y0 : y0 + ph, x0 : x0 + pw], turns)
            return a[:, ::-1] if flip else a

        x = np.stack([np.clip(crop(sparse), -8, 8), np.full((ph, pw), k / 16)])
        return x, crop(full)[None], np.ones((1, ph, pw))

    def batch(self) -> tuple[torch.Tensor, ...]:
        parts = [self.sample() for _ in range(BATCH)]
        return tuple(
            torch.from_numpy(np.ascontiguousarray(np.stack([p[i] for p in parts]))).float()
            for i in range(3)
        )


def _fit(
    config: UNetConfig,
    batch: Callable[[], tuple[torch.Tensor, ...]],
    steps: int | None,
    seconds: float | None,
    say: Callable[..., None],
    label: str,
    learning_rate: float = LEARNING_RATE,
) -> tuple[UNet, int, float, list[dict[str, float]]]:
    """Train a U-Net on ``batch()`` (inputs, targets, masks) for ``steps`` or ``seconds``:
    the masked mean squared error of input channel 0 plus its correction; returns (model,
    steps, seconds, loss history)."""
    model = UNet(config)

    def loss() -> tuple[torch.Tensor, dict[str, float]]:
        x, target, mask = batch()
        out = x[:, :1] + model(x)
        return ((out - target) ** 2 * mask).sum() / mask.sum().clamp_min(1), {}

    total, spent, history = fit(
        model.parameters(), loss, steps=steps, seconds=seconds,
        learning_rate=learning_rate, say=say, label=label,
    )  # fmt: skip
    return model.eval(), total, spent, history


def image_weights_path(out: Path) -> Path:
    """Where ``ctpress train sparse-unet --out OUT`` writes the image-domain network."""
    return out.with_name(out.stem + "-image" + out.suffix)


def train_sparse_unet(
    data: list[Path],
    out: Path,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    only: str | None = None,
    command: str | None = None,
    log: bool = True,
) -> dict[str, Any]:
    """Train both restorations, or ``only`` one (``"sinogram"`` or ``"image"``, which
    then gets the whole time budget); write (a) to ``out`` and (b) to
    :func:`image_weights_path` (float32 safetensors, provenance in the metadata).
    Returns the metadata of the first trained with that of (b) under ``"image"``."""
    if only not in (None, "sinogram", "image"):
        raise InputError(f"sparse-unet trains the 'sinogram' or 'image' restoration, not {only!r}")
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    say = print if log else (lambda *a, **k: None)
    train_files, _ = DataFiles.find(data).split()
    if not train_files.volumes:
        raise InputError("sparse-unet trains on CT volumes: give a data root with volumes/")
    sinograms = training_sinograms(train_files)
    real = [
        real_scans(p, held_out=False)[1][:, 0]
        for p in train_files.projections
        if np.load(p, mmap_mode="r").ndim == 2
    ]
    say(f"sparse-unet: {len(sinograms)} simulated sinograms, {len(real)} real ones")
    total_seconds = None if minutes is None else minutes * 60
    share = {None: SINOGRAM_SHARE, "sinogram": 1.0, "image": 0.0}[only]
    sino_seconds = None if total_seconds is None else total_seconds * share
    trained = {}
    if only != "image":
        sampler = SinogramSampler(sinograms, real, seed)
        trained["sinogram"] = _fit(
            SINOGRAM_UNET, sampler.batch, steps, sino_seconds, say, "sinogram"
        )
    if only != "sinogram":
        t_pairs = time.perf_counter()
        pairs = image_pairs(sinograms, seed + 1)
        say(f"sparse-unet: {len(pairs)} image pairs in {time.perf_counter() - t_pairs:.0f} s")
        image_seconds = None
        if total_seconds is not None:
            image_seconds = max(60.0, total_seconds - (time.perf_counter() - t_start))
        trained["image"] = _fit(
            IMAGE_UNET, ImageSampler(pairs, seed + 2).batch, steps, image_seconds, say, "image"
        )
    common = {
        "seed": seed,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "train_data": sorted({_stem(p) for p in (*train_files.volumes, *train_files.projections)}),
        "held_out_volumes": list(HELD_OUT_VOLUMES),
        "command": command or "",
        "ctpress": __version__,
        "torch": torch.__version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    paths = {"sinogram": out, "image": image_weights_path(out)}
    option = f" --only {only}" if only else ""
    for label, (model, n, seconds, history) in trained.items():
        path = paths[label]
        metadata: dict[str, Any] = {
            **common,
            "method": f"sparse-unet-{label}",
            "config": model.config(),
            "steps": n,
            "train_seconds": round(seconds, 1),
            "history": history[-5:],
            "reproduce": f"ctpress train sparse-unet --out {out} --steps {n} --seed {seed}{option}",
        }
        metadata["sha256"] = save_unet(model, path, metadata)
        say(f"wrote {path} (sha256 {metadata['sha256'][:16]}...)")
        records[label] = metadata
    first = records[next(iter(records))]
    first["total_seconds"] = round(time.perf_counter() - t_start, 1)
    return {**first, **({"image": records["image"]} if len(records) > 1 else {})}


def save_unet(model: torch.nn.Module, path: Path, metadata: dict[str, Any]) -> str:
    """Write a U-Net's float32 weights as safetensors (``config`` and the provenance in the
    header); returns the SHA-256."""
    import safetensors.torch

    state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    header = {"config": json.dumps(metadata["config"]), "metadata": json.dumps(metadata)}
    safetensors.torch.save_file(state, str(path), metadata=header)
    return hashlib.sha256(path.read_bytes()).hexdigest()
