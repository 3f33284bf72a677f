"""Training and held-out data of the learned codecs: real CT volumes and projections.

Training images are projections simulated from real CT volumes (cone beam, flat and
cylindrical detectors, and rows=1 fan-beam sinograms) at three doses (incident counts
2.5e4, 1e5 and 4e5 per pixel, Poisson noise, uint16 line integrals as stored by
scanners), plus the first two thirds (by view) of the real measured projections.  Each
scan is normalised to [0, 1] by its own minimum and maximum, as the codec does per chunk.

Held out for evaluation (never seen in training):

- the volumes :data:`HELD_OUT_VOLUMES` (a thorax and a tilted human head);
- the last third of the views of every real projection file.

Not used at all: volumes whose licence does not allow shipping derived weights
(:data:`EXCLUDED_VOLUMES`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..frames import to_images
from ..scan import DetectorShape, GeometryKind, Scan
from ..sim.simulate import quantise_uint16, simulate_scan

#: Real volumes kept out of training, for evaluation.
HELD_OUT_VOLUMES = ("totalseg_pulmonary_ct_cropped_1p5mm", "dcmqact_ge_human_head_tilted")
#: Volumes never used: no licence stated (stent) or unclear licence for derived weights.
EXCLUDED_VOLUMES = ("imageio_stent", "pyradplan_tg119")
#: Volumes of separate slices (each projected as a fan-beam slice, never in cone beam).
SLICE_VOLUMES = ("pydicom_data_ct_slices",)
#: Incident photons per detector pixel of the simulated scans.
DOSES = (2.5e4, 1e5, 4e5)
#: Incident photons per detector pixel of the simulated raw-count scans (fit in uint16).
COUNT_DOSES = (2e3, 8e3, 2.5e4, 6e4)
#: Fraction of the views of each real projection file used for training (the rest is held out).
TRAIN_VIEW_FRACTION = 2 / 3
#: Voxel size (z, y, x) in mm of the volumes, after the in-plane subsampling below.
_VOXELS: dict[str, tuple[float, float, float]] = {
    "dcmqact_philips_head_phantom_std_1mm": (1.0, 1.8, 1.8),
    "dcmqact_ge_human_head_tilted": (5.0, 1.8, 1.8),
    "pydicom_data_ct_slices": (1.0, 1.5, 1.5),
    "totalseg_example_ct_3mm": (3.0, 3.0, 3.0),
    "totalseg_aorta_ct_cropped_1p5mm": (1.5, 1.5, 1.5),
    "totalseg_pulmonary_ct_cropped_1p5mm": (1.5, 1.5, 1.5),
    "vtk_headsq": (2.0, 3.2, 3.2),
}


def default_data_dir() -> Path | None:
    """``../shared/data`` of a source checkout (or ``$CTPRESS_DATA``), if present."""
    env = os.environ.get("CTPRESS_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[4] / "shared" / "data")
    for path in candidates:
        if (path / "volumes").is_dir() or (path / "projections").is_dir():
            return path
    return None


def _stem(path: Path) -> str:
    """Volume name without its shape/dtype suffix (``dcmqact_ge_human_head_tilted``)."""
    name = path.stem
    for key in _VOXELS:
        if name.startswith(key):
            return key
    return name


@dataclass(frozen=True)
class DataFiles:
    """Volumes (HU, .npy) and real projections (.npy) to train or evaluate on."""

    volumes: tuple[Path, ...]
    projections: tuple[Path, ...]

    @classmethod
    def find(cls, paths: list[Path]) -> DataFiles:
        """Collect files from data roots (with ``volumes/`` and ``projections/``), such
        directories themselves, or single ``.npy`` files inside them."""
        volumes: list[Path] = []
        projections: list[Path] = []
        for path in paths:
            if path.is_file():
                (projections if path.parent.name == "projections" else volumes).append(path)
                continue
            if not path.is_dir():
                raise FileNotFoundError(path)
            if path.name == "volumes":
                volumes += sorted(path.glob("*.npy"))
            elif path.name == "projections":
                projections += sorted(path.glob("*.npy"))
            else:
                volumes += sorted((path / "volumes").glob("*.npy"))
                projections += sorted((path / "projections").glob("*.npy"))
        projections = [p for p in projections if "_dark_" not in p.name and "_flat_" not in p.name]
        return cls(tuple(volumes), tuple(projections))

    def split(self) -> tuple[DataFiles, DataFiles]:
        """(training, held-out) volumes; real projections appear in both (view split)."""
        usable = [v for v in self.volumes if not _stem(v).startswith(EXCLUDED_VOLUMES)]
        train = tuple(v for v in usable if _stem(v) not in HELD_OUT_VOLUMES)
        held = tuple(v for v in usable if _stem(v) in HELD_OUT_VOLUMES)
        return DataFiles(train, self.projections), DataFiles(held, self.projections)


def load_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU volume (z, y, x), subsampled in-plane to at most ~128 px, and its voxel size.

    A ``.npz`` holds ``hu`` and ``voxel_size_mm`` (the embedded default volume's format).
    """
    if path.suffix == ".npz":
        with np.load(path) as archive:
            size = float(archive["voxel_size_mm"])
            return archive["hu"].astype(np.float32), (size, size, size)
    hu = np.load(path).astype(np.float32)
    if _stem(path) == "vtk_headsq":
        hu = hu - 1024.0  # stored as HU + 1024
    step = max(1, hu.shape[-1] // 128)
    hu = hu[:, ::step, ::step]
    voxel = _VOXELS.get(_stem(path), (1.5, 1.5, 1.5))
    return hu, voxel


def _noisy(line_integrals: np.ndarray, i0: float, seed: int, counts: bool) -> np.ndarray:
    """Poisson noise at ``i0`` counts, stored as uint16 line integrals (as
    :func:`simulate_scan`) or, with ``counts``, as the uint16 counts themselves."""
    rng = np.random.default_rng(seed)
    detected = rng.poisson(i0 * np.exp(-line_integrals.astype(np.float64)))
    if counts:
        return np.minimum(detected, 65535).astype(np.uint16)
    return quantise_uint16(-np.log(np.maximum(detected, 1) / i0))[0]


def simulated_scans(
    path: Path, seed: int, cache: Path | None = None, counts: bool = False
) -> Iterator[tuple[str, np.ndarray]]:
    """Simulated uint16 scans (n_views, rows, cols) of one volume: cone beam (64 rows,
    flat and cylindrical detector) and a rows=1 fan-beam sinogram, at every dose of
    :data:`DOSES` as line integrals or, with ``counts``, of :data:`COUNT_DOSES` as raw
    counts.

    Noise-free line integrals are cached in ``cache`` (they take seconds to minutes)."""
    hu, voxel = load_volume(path)
    if hu.shape[0] == 1 or _stem(path) in SLICE_VOLUMES:
        slices = [hu[i] for i in range(hu.shape[0])]
    else:
        slices = [hu]
    for k, vol in enumerate(slices):
        settings: list[tuple[GeometryKind, int, int, int, DetectorShape]] = [
            ("fan", 1, 256, 360, "flat")
        ]
        if vol.ndim == 3:
            settings.append(("cone", 64, 192, 60, "cylindrical" if k % 2 else "flat"))
        for kind, rows, cols, views, detector in settings:
            key = f"{path.stem}-{k}-{kind}-{rows}x{cols}x{views}-{detector}"
            project = functools.partial(_project, vol, voxel, kind, rows, cols, views, detector)
            clean = _cached(cache, key, project)
            for d, i0 in enumerate(COUNT_DOSES if counts else DOSES):
                name = f"{key}-{'counts-' if counts else ''}i0={i0:g}"
                yield name, _noisy(clean, i0, seed + 7919 * d + k, counts)


def _project(
    vol: np.ndarray, voxel: tuple[float, float, float], kind: GeometryKind, rows: int,
    cols: int, views: int, detector: DetectorShape,
) -> np.ndarray:  # fmt: skip
    scan = simulate_scan(
        vol, geometry_kind=kind, n_views=views, det_rows=rows, det_cols=cols,
        voxel_size_mm=voxel if vol.ndim == 3 else voxel[1], i0=None, dtype="float32",
        detector_shape=detector,
    )  # fmt: skip
    return scan.array()


def _cached(cache: Path | None, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    if cache is None:
        return compute()
    name = hashlib.sha256(key.encode()).hexdigest()[:16] + ".npy"
    path = cache / name
    if path.is_file():
        return np.load(path)
    cache.mkdir(parents=True, exist_ok=True)
    array = compute()
    np.save(path, array)
    return array


def real_scans(path: Path, held_out: bool) -> tuple[str, np.ndarray]:
    """A real projection file as (n_views, rows, cols): its training part (first two
    thirds of the views) or its held-out part."""
    data = np.load(path)
    if data.ndim == 2:
        data = data[:, None, :]
    cut = round(data.shape[0] * TRAIN_VIEW_FRACTION)
    part = data[cut:] if held_out else data[:cut]
    return f"{path.stem}[{'held-out' if held_out else 'train'} views]", np.ascontiguousarray(part)


def images_of(scan: np.ndarray) -> list[np.ndarray]:
    """The codec's 2-D images of a scan (projections, or one mosaic if rows < 8), each
    normalised to [0, 1] by the scan's min and max (float32)."""
    x = scan.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo if hi > lo else 1.0)
    return [img.astype(np.float32) for img in to_images(x)]


def training_images(files: DataFiles, seed: int, cache: Path | None) -> list[np.ndarray]:
    """All training images (list of 2-D float32 arrays in [0, 1])."""
    images: list[np.ndarray] = []
    for path in files.volumes:
        for _, scan in simulated_scans(path, seed, cache):
            images += images_of(scan)
    for path in files.projections:
        images += images_of(real_scans(path, held_out=False)[1])
    if not images:
        raise FileNotFoundError("no training data found")
    return images


def held_out_scans(files: DataFiles, cache: Path | None = None) -> dict[str, Scan]:
    """Held-out evaluation scans: the held-out volumes at dose 1e5 (cone 64 rows, fan
    sinogram) and the held-out views of the real projections."""
    scans: dict[str, Scan] = {}
    for path in files.volumes:
        for name, scan in simulated_scans(path, seed=12345, cache=cache):
            if "i0=100000" in name:
                scans[name] = Scan(scan)
    for path in files.projections:
        name, data = real_scans(path, held_out=True)
        scans[name] = Scan(data)
    return scans


class PatchSampler:
    """Random square patches from a list of (C, H, W) arrays (optionally flipped).

    Arrays smaller than the patch are edge-padded; arrays are picked with probability
    proportional to their area.
    """

    def __init__(self, arrays: list[np.ndarray], patch: int, seed: int, flips: bool = True) -> None:
        self.patch = patch
        self.flips = flips
        self.arrays = [self._padded(a) for a in arrays]
        areas = np.array([a.shape[-1] * a.shape[-2] for a in arrays], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.rng = np.random.default_rng(seed)

    def _padded(self, a: np.ndarray) -> np.ndarray:
        ph, pw = max(0, self.patch - a.shape[-2]), max(0, self.patch - a.shape[-1])
        return np.pad(a, ((0, 0), (0, ph), (0, pw)), mode="edge") if ph or pw else a

    def batch(self, size: int) -> np.ndarray:
        """(size, C, patch, patch) float32."""
        channels = self.arrays[0].shape[0]
        out = np.empty((size, channels, self.patch, self.patch), dtype=np.float32)
        picks = self.rng.choice(len(self.arrays), size=size, p=self.weights)
        for i, k in enumerate(picks):
            a = self.arrays[k]
            r = self.rng.integers(0, a.shape[-2] - self.patch + 1)
            c = self.rng.integers(0, a.shape[-1] - self.patch + 1)
            p = a[:, r : r + self.patch, c : c + self.patch]
            if self.flips and self.rng.random() < 0.5:
                p = p[..., ::-1]
            if self.flips and self.rng.random() < 0.5:
                p = p[..., ::-1, :]
            out[i] = p
        return out
