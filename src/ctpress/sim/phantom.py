"""Volumes to simulate: analytic phantoms, HU conversion, and the embedded real CT volume.

Phantom arrays follow the projector's conventions (:mod:`ctpress.sim.projector`): axes
(z, y, x) or (y, x), index increasing with the coordinate, centred on the isocentre.
Phantoms are defined on the unit cube ``[-1, 1]^d``; the physical size comes from the
voxel size given to the projector.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = [
    "MU_WATER_PER_MM",
    "disc_phantom",
    "hu_to_mu",
    "load_default_volume",
    "shepp_logan_2d",
    "shepp_logan_3d",
]

#: Linear attenuation of water at a typical effective CT energy (~70 keV), 1/mm.
MU_WATER_PER_MM = 0.0192

#: Original Shepp-Logan ellipses: value, semi-axes (a, b), centre (x0, y0), angle (deg).
#: Values are relative to water: brain 1.02 (+20 HU), skull 2.0 (+1000 HU).
_SL_2D = (
    (2.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.98, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.02, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.02, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.01, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.01, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.01, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.01, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.01, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.01, 0.023, 0.046, 0.06, -0.605, 0.0),
)

#: 3-D extension (Schabel's ``phantom3d`` geometry, rotations about z only):
#: semi-axis c and centre z0 of each ellipsoid, in the order of :data:`_SL_2D`.
_SL_3D_Z = (
    (0.81, 0.0),
    (0.78, 0.0),
    (0.22, 0.0),
    (0.28, 0.0),
    (0.41, -0.15),
    (0.05, 0.25),
    (0.05, 0.25),
    (0.05, 0.0),
    (0.02, 0.0),
    (0.02, 0.0),
)


def _axis(n: int) -> np.ndarray:
    """Pixel-centre coordinates of ``n`` pixels spanning [-1, 1], float64."""
    return (np.arange(n) - (n - 1) / 2) * (2.0 / n)


def _ellipses(coords: tuple[np.ndarray, ...], with_z: bool) -> np.ndarray:
    out = np.zeros(np.broadcast_shapes(*(c.shape for c in coords)))
    x, y = coords[-1], coords[-2]
    for (value, a, b, x0, y0, deg), (c, z0) in zip(_SL_2D, _SL_3D_Z, strict=True):
        th = np.deg2rad(deg)
        xr = (x - x0) * np.cos(th) + (y - y0) * np.sin(th)
        yr = -(x - x0) * np.sin(th) + (y - y0) * np.cos(th)
        r2 = (xr / a) ** 2 + (yr / b) ** 2
        if with_z:
            r2 = r2 + ((coords[0] - z0) / c) ** 2
        out += value * (r2 <= 1.0)
    return out


def shepp_logan_2d(n: int, mu_water_per_mm: float = MU_WATER_PER_MM) -> np.ndarray:
    """Original (low-contrast) Shepp-Logan head phantom.

    Parameters
    ----------
    n : int
        Image size in pixels; the phantom spans the unit square [-1, 1]^2.
    mu_water_per_mm : float
        Attenuation that the relative value 1 maps to.

    Returns
    -------
    ndarray, shape (n, n), float32
        Attenuation in 1/mm, axes (y, x): soft tissue ~0.0196, skull ~0.038, air 0.
    """
    y, x = np.meshgrid(_axis(n), _axis(n), indexing="ij")
    return (mu_water_per_mm * _ellipses((y, x), with_z=False)).astype(np.float32)


def shepp_logan_3d(n: int, mu_water_per_mm: float = MU_WATER_PER_MM) -> np.ndarray:
    """3-D Shepp-Logan phantom (ellipsoids; values as :func:`shepp_logan_2d`).

    Parameters
    ----------
    n : int
        Size in voxels along each axis; the phantom spans the unit cube [-1, 1]^3.
    mu_water_per_mm : float
        Attenuation that the relative value 1 maps to.

    Returns
    -------
    ndarray, shape (n, n, n), float32
        Attenuation in 1/mm, axes (z, y, x).
    """
    c = _axis(n)
    coords = (c[:, None, None], c[None, :, None], c[None, None, :])
    return (mu_water_per_mm * _ellipses(coords, with_z=True)).astype(np.float32)


def disc_phantom(
    n: int,
    radius_px: float,
    mu: float = MU_WATER_PER_MM,
    *,
    center_px: tuple[float, float] = (0.0, 0.0),
    n_slices: int | None = None,
    supersample: int = 8,
) -> np.ndarray:
    """Uniform disc (or z-cylinder), anti-aliased by pixel-area supersampling.

    Parameters
    ----------
    n : int
        Image size (n, n) in pixels.
    radius_px : float
        Disc radius in pixels.
    mu : float
        Attenuation inside the disc, 1/mm.
    center_px : (float, float)
        Centre (y, x) in pixels relative to the image centre.
    n_slices : int, optional
        If given, return a cylinder along z of ``n_slices`` identical slices.
    supersample : int
        Sub-samples per pixel along each axis for the partial-area values.

    Returns
    -------
    ndarray, shape (n, n) or (n_slices, n, n), float32
        Attenuation in 1/mm.
    """
    k = supersample
    sub = (np.arange(n * k) - (n * k - 1) / 2) / k
    inside = (sub[:, None] - center_px[0]) ** 2 + (sub[None, :] - center_px[1]) ** 2 <= radius_px**2
    img = (mu * inside.reshape(n, k, n, k).mean(axis=(1, 3))).astype(np.float32)
    return img if n_slices is None else np.repeat(img[None], n_slices, axis=0)


def hu_to_mu(hu: np.ndarray, mu_water_per_mm: float = MU_WATER_PER_MM) -> np.ndarray:
    """Convert Hounsfield units to linear attenuation.

    ``mu = mu_water * (1 + HU / 1000)``, clipped at 0 (air at -1000 HU and below).

    Parameters
    ----------
    hu : ndarray
        Any shape, HU.
    mu_water_per_mm : float
        Attenuation of water in 1/mm.

    Returns
    -------
    ndarray, same shape, float32
        Attenuation in 1/mm.
    """
    mu = mu_water_per_mm * (1.0 + np.asarray(hu, dtype=np.float32) / 1000.0)
    return np.maximum(mu, 0.0).astype(np.float32)


#: File of the embedded volume inside the ``ctpress`` package (see data/LICENSES.md).
DEFAULT_VOLUME_FILE = "default_volume.npz"
#: Provenance of the embedded volume.
DEFAULT_VOLUME_NAME = "totalseg_example_ct_3mm[72:104] (TotalSegmentator, Apache-2.0)"


def load_default_volume() -> tuple[np.ndarray, float]:
    """The embedded real CT volume: 32 abdominal slices of a body CT at 3 mm.

    Returns
    -------
    hu : ndarray, shape (32, 101, 122), int16
        Hounsfield units, axes (z, y, x).
    voxel_size_mm : float
        Isotropic voxel size, 3.0 mm.
    """
    ref = resources.files("ctpress").joinpath("data", DEFAULT_VOLUME_FILE)
    with ref.open("rb") as fh, np.load(fh) as npz:
        hu = np.asarray(npz["hu"])
        voxel = float(npz["voxel_size_mm"])
    return hu, voxel
