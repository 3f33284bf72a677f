"""Reconstruction of sparse-view files with restoration (b) (``ctpress recon --restore``).

A ``sparse-unet`` file stores some views and synthesises the others on decoding
(restoration (a)).  Users who only need the reconstruction can instead reconstruct the
stored views alone and correct the image with the image-domain U-Net
(:func:`ctpress.learned.sparse.restore_images`, FBPConvNet-style).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np

from .container import CtpzFile
from .errors import InputError
from .recon import reconstruct
from .scan import Scan
from .sim.phantom import MU_WATER_PER_MM


def stored_scan(path: str | os.PathLike[str] | bytes) -> tuple[Scan, int]:
    """The views a ``sparse-unet`` file stores, as a scan with their geometry, and the
    file's ``keep_every``; InputError for a file of another codec."""
    with CtpzFile(path) as f:
        keep_every = getattr(f.codec, "keep_every", None)
        if keep_every is None:
            raise InputError(
                f"{f.name} was written by codec {f.codec.codec_id!r}: restoration (b) needs "
                "a file of --codec sparse-unet (reconstruct other files without --restore)"
            )
        mask, stored = f.read_stored_views()
        geometry, metadata = f.geometry, f.metadata
    if geometry is None:
        raise InputError("the file has no geometry: reconstruction needs its angles")
    angles = tuple(a for a, kept in zip(geometry.angles_rad, mask, strict=True) if kept)
    z = None if geometry.z_mm is None else tuple(np.asarray(geometry.z_mm)[mask])
    sparse = Scan(stored, replace(geometry, angles_rad=angles, z_mm=z), metadata)
    return sparse, keep_every


def reconstruct_restored(
    path: str | os.PathLike[str] | bytes, algorithm: str = "fbp", **options: Any
) -> np.ndarray:
    """FBP/FDK of the stored views of a ``sparse-unet`` file, corrected by the image-domain
    U-Net (attenuation in 1/mm, the shape :func:`ctpress.recon.reconstruct` returns)."""
    from .learned.sparse import restore_images

    if algorithm not in ("fbp", "fdk"):
        raise InputError("--restore follows filtered back-projection (fbp/fdk), not sirt")
    scan, keep_every = stored_scan(path)
    volume = np.asarray(reconstruct(scan, algorithm, **options), dtype=np.float32)
    unit = float(scan.metadata.get("mu_water_per_mm", MU_WATER_PER_MM))
    slices = volume[None] if volume.ndim == 2 else volume
    restored = restore_images(slices, keep_every, unit)
    return restored[0] if volume.ndim == 2 else restored
