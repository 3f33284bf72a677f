"""Quality and size metrics of decoded projection data versus the original that was encoded.

Plain functions on NumPy arrays (scikit-image style). Every metric is computed on exactly the data
given: all values, and for the image metrics (SSIM, HaarPSI, VSI) all 2-D images of a stack,
averaged with equal weight (the original study averaged only the first projection). Error metrics
accumulate in float64; the piq image metrics run in float32 (VSI is about 2x slower in float64).
They run under torch.no_grad with deterministic algorithms: repeatable for a given number of torch
threads (the last float32 digits can change with it). torch and piq are imported when an image
metric first runs: the error metrics, and ``import ctpress``, do without them.

``data_range`` is the span of possible values (same unit as the data). When it is not given it is
``reference.max() - reference.min()``, i.e. the range of the original data, not of the decoded data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ctpress.errors import InputError

if TYPE_CHECKING:
    import torch

# Image metrics: name of the piq function -> (minimum image height and width in px, channels
# passed to piq, rows below which sinograms are scored instead of projections).
# SSIM: piq's 11x11 Gaussian window is applied without padding, so images need >= 11 px.
# HaarPSI: piq's 3 scales use a 2**(3+1) = 16 px Haar kernel and piq rejects images below 16 px.
# VSI: piq has no explicit check; we require 3 px (its 3x3 Scharr gradient kernel). piq's VSI is
# defined on RGB, so grey images are replicated into 3 channels (as piq would do, with a warning).
# VSI's saliency map is computed on each image resampled to 3x256x256, whatever its size: it
# dominates the run time (about 0.04 CPU-s per image pair in float32).
_IMAGE_METRICS: dict[str, tuple[int, int, int]] = {
    "ssim": (11, 1, 11),
    "haarpsi": (16, 1, 16),
    # piq's VSI resizes every image to 256x256 for its saliency map: on flat projections
    # (fewer than 64 rows) it would mostly measure the resampling, and cost ~20x the pixels,
    # so such stacks are scored on their sinograms.
    "vsi": (3, 3, 64),
}
_BATCH_PIXELS = 1 << 21  # pixels per piq batch (memory bound); images count as >= 256x256


def _validate(reference: ArrayLike, decoded: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ref, dec = np.asarray(reference), np.asarray(decoded)
    if ref.shape != dec.shape:
        raise InputError(f"reference shape {ref.shape} and decoded shape {dec.shape} differ")
    if ref.size == 0:
        raise InputError("cannot compute metrics of empty arrays")
    for name, a in (("reference", ref), ("decoded", dec)):
        if a.dtype.kind not in "iuf":
            raise InputError(f"{name} must be a real numeric array, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise InputError(f"{name} contains NaN or infinite values")
    return ref, dec


def _data_range(ref: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        dr = float(ref.max()) - float(ref.min())
        if dr <= 0:
            raise InputError(
                f"reference is constant (all values {ref.flat[0]}), so its data range"
                " max - min is 0; pass data_range explicitly"
            )
        return dr
    dr = float(data_range)
    if not (np.isfinite(dr) and dr > 0):
        raise InputError(f"data_range must be a finite number > 0, got {data_range!r}")
    return dr


def _abs_diff(ref: np.ndarray, dec: np.ndarray) -> np.ndarray:
    return np.abs(np.subtract(ref, dec, dtype=np.float64))


def mse(reference: ArrayLike, decoded: ArrayLike) -> float:
    """Mean squared error over all values, accumulated in float64 (unit: data unit squared).

    Parameters
    ----------
    reference, decoded : array_like, any shape (same for both)
        Original data and its decoded version.
    """
    return float(np.mean(np.square(_abs_diff(*_validate(reference, decoded)))))


def mae(reference: ArrayLike, decoded: ArrayLike) -> float:
    """Mean absolute error over all values, accumulated in float64 (unit: data unit)."""
    return float(np.mean(_abs_diff(*_validate(reference, decoded))))


def max_abs_error(reference: ArrayLike, decoded: ArrayLike) -> float:
    """Largest absolute difference over all values (unit: data unit); 0 for lossless."""
    return float(np.max(_abs_diff(*_validate(reference, decoded))))


def _psnr(mse_value: float, data_range: float) -> float:
    return float("inf") if mse_value == 0 else float(10 * np.log10(data_range**2 / mse_value))


def psnr_db(reference: ArrayLike, decoded: ArrayLike, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio ``10 * log10(data_range**2 / MSE)`` in dB over all values.

    Parameters
    ----------
    reference, decoded : array_like, any shape (same for both)
    data_range : float > 0, optional
        Default ``reference.max() - reference.min()``.

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the arrays are identical.
    """
    ref, dec = _validate(reference, decoded)
    return _psnr(float(np.mean(np.square(_abs_diff(ref, dec)))), _data_range(ref, data_range))


def _images_for_metric(
    stack: np.ndarray, min_size: int, flat_rows: int | None = None
) -> np.ndarray | None:
    """The 2-D images, shape (n_images, height, width), on which an image metric is averaged.

    A 2-D array (rows, cols) is one image.  A 3-D stack (n_views, rows, cols) gives the n_views
    projections (rows, cols) when rows >= ``flat_rows`` (default ``min_size``) and cols >=
    ``min_size``; otherwise (e.g. rows=1 sinogram stacks) the ``rows`` sinograms (n_views, cols),
    one per detector row, when n_views and cols are >= ``min_size``; failing that the projections
    if they are at least ``min_size`` square; otherwise None (undefined for so small images).
    """
    if stack.ndim not in (2, 3):
        raise InputError(f"image metrics need a 2-D image or 3-D stack, got shape {stack.shape}")
    s = stack[None] if stack.ndim == 2 else stack
    flat_rows = min_size if flat_rows is None else flat_rows
    projections_ok = min(s.shape[1:]) >= min_size
    if projections_ok and (stack.ndim == 2 or s.shape[1] >= flat_rows):
        return s
    if min(s.shape[0], s.shape[2]) >= min_size:
        return s.transpose(1, 0, 2)
    return s if projections_ok else None


@contextmanager
def _torch_deterministic() -> Iterator[None]:
    import torch

    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _unit_tensor(
    images: np.ndarray, shift: float, data_range: float, channels: int
) -> torch.Tensor:
    """(n, h, w) images -> (n, channels, h, w) float32 tensor of (images - shift) / data_range
    in [0, 1]."""
    import torch

    unit = np.clip(np.subtract(images, shift, dtype=np.float64) / data_range, 0.0, 1.0)
    return torch.from_numpy(unit).to(torch.float32)[:, None].expand(-1, channels, -1, -1)


def _image_metric(name: str, ref: np.ndarray, dec: np.ndarray, data_range: float) -> float:
    import piq

    min_size, channels, flat_rows = _IMAGE_METRICS[name]
    func = getattr(piq, name)
    ref_img = _images_for_metric(ref, min_size, flat_rows)
    dec_img = _images_for_metric(dec, min_size, flat_rows)
    if ref_img is None or dec_img is None:  # both or neither (same shape)
        warnings.warn(
            f"{name} is NaN: shape {ref.shape} has neither projections nor sinograms of at least"
            f" {min_size}x{min_size} px, the minimum for piq's {name}",
            RuntimeWarning,
            stacklevel=3,
        )
        return float("nan")
    shift, (n, h, w) = float(ref.min()), ref_img.shape
    batch = max(1, _BATCH_PIXELS // max(h * w, 256 * 256))
    scores, images = np.ones(n), (ref_img, dec_img)
    with _torch_deterministic():
        for i in range(0, n, batch):
            x, y = (_unit_tensor(a[i : i + batch], shift, data_range, channels) for a in images)
            # Identical images score exactly 1 (piq's HaarPSI gives 0/0 = inf for all-zero ones).
            diff = (x != y).flatten(1).any(1)
            if diff.any():
                s = func(x[diff], y[diff], data_range=1.0, reduction="none")
                scores[i : i + batch][diff.numpy()] = s.double().numpy()
    return float(scores.mean())


def ssim(reference: ArrayLike, decoded: ArrayLike, data_range: float | None = None) -> float:
    """Structural similarity index (piq.ssim, 11x11 Gaussian window), mean over all 2-D images.

    Both arrays are shifted by ``reference.min()`` and scaled by ``data_range`` into [0, 1]; values
    outside (decoded undershoot/overshoot, or a ``data_range`` smaller than the reference's range)
    are clipped, since piq requires inputs in [0, data_range]. Images that are identical after this
    step score exactly 1. See ``_images_for_metric`` for which images (projections or sinograms) are
    used; when neither is large enough for the metric, a RuntimeWarning is issued and NaN returned.

    Parameters
    ----------
    reference, decoded : array_like, shape (rows, cols) or (n_views, rows, cols)
    data_range : float > 0, optional
        Default ``reference.max() - reference.min()``.

    Returns
    -------
    float
        Mean of the per-image index (1 for identical images, <= 1 otherwise).
    """
    ref, dec = _validate(reference, decoded)
    return _image_metric("ssim", ref, dec, _data_range(ref, data_range))


def haarpsi(reference: ArrayLike, decoded: ArrayLike, data_range: float | None = None) -> float:
    """Haar wavelet-based perceptual similarity (piq.haarpsi), mean over all 2-D images.

    Same conventions, parameters and return as :func:`ssim`; images must be >= 16 px.
    """
    ref, dec = _validate(reference, decoded)
    return _image_metric("haarpsi", ref, dec, _data_range(ref, data_range))


def vsi(reference: ArrayLike, decoded: ArrayLike, data_range: float | None = None) -> float:
    """Visual saliency-induced index (piq.vsi), mean over all 2-D images.

    Same conventions, parameters and return as :func:`ssim`. piq's VSI is defined on RGB images,
    so each grey image is replicated into 3 identical channels.
    """
    ref, dec = _validate(reference, decoded)
    return _image_metric("vsi", ref, dec, _data_range(ref, data_range))


def projection_metrics(
    reference: ArrayLike,
    decoded: ArrayLike,
    data_range: float | None = None,
    *,
    perceptual: bool = True,
) -> dict[str, float]:
    """All quality metrics of ``decoded`` versus ``reference``.

    Parameters
    ----------
    reference, decoded : array_like, shape (rows, cols) or (n_views, rows, cols)
    data_range : float > 0, optional
        Default ``reference.max() - reference.min()``.
    perceptual : bool
        Also compute HaarPSI and VSI (slower than the rest).

    Returns
    -------
    dict[str, float]
        Keys "data_range", "mse", "mae", "max_abs_error", "psnr_db", "ssim", and with
        ``perceptual`` also "haarpsi", "vsi"; see the functions of the same names.
    """
    ref, dec = _validate(reference, decoded)
    dr = _data_range(ref, data_range)
    err = _abs_diff(ref, dec)
    out = {"data_range": dr, "mse": float(np.mean(np.square(err)))}
    out |= {"mae": float(np.mean(err)), "max_abs_error": float(np.max(err))}
    out["psnr_db"] = _psnr(out["mse"], dr)
    for name in ("ssim", "haarpsi", "vsi") if perceptual else ("ssim",):
        out[name] = _image_metric(name, ref, dec, dr)
    return out


def bits_per_value(n_bytes: int, n_values: int) -> float:
    """Compressed size in bits per data value: ``8 * n_bytes / n_values``."""
    if n_bytes < 0 or n_values <= 0:
        raise InputError(f"need n_bytes >= 0 and n_values > 0, got {n_bytes} and {n_values}")
    return 8 * n_bytes / n_values


def compression_ratio(n_bytes: int, original_nbytes: int) -> float:
    """``original_nbytes / n_bytes``: ratio versus the input in its own dtype (e.g. 4 B/value
    for float32 data)."""
    if n_bytes <= 0 or original_nbytes < 0:
        raise InputError(
            f"need n_bytes > 0 and original_nbytes >= 0, got {n_bytes} and {original_nbytes}"
        )
    return original_nbytes / n_bytes


def ratio_vs_uint16(n_bytes: int, n_values: int) -> float:
    """``2 * n_values / n_bytes``: ratio versus storing the values as raw uint16 (2 B/value)."""
    return compression_ratio(n_bytes, 2 * n_values)


def masked_ssim(
    reference: ArrayLike, decoded: ArrayLike, mask: ArrayLike, data_range: float
) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03) averaged
    over the pixels of ``mask`` whose whole window lies inside the mask.

    Computed in float64 with SciPy, slice by slice for 3-D input; no clipping (reconstructions
    may be negative).  The same window and constants as piq's SSIM used for projections.

    Parameters
    ----------
    reference, decoded : array_like, shape (ny, nx) or (nz, ny, nx)
    mask : array_like of bool, same shape
        Region to score (e.g. the field of view).
    data_range : float > 0
        Dynamic range L in the data's unit (constants C1 = (K1 L)^2, C2 = (K2 L)^2).

    Returns
    -------
    float
        Mean SSIM over the eroded mask (1 for identical images); NaN if the eroded mask is empty.
    """
    import functools

    from scipy import ndimage

    ref, dec = _validate(reference, decoded)
    region = np.asarray(mask, dtype=bool)
    if region.shape != ref.shape or ref.ndim not in (2, 3):
        raise InputError(f"need 2-D/3-D images and a mask of their shape, got {region.shape}")
    dr = _data_range(ref, data_range)
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    scores = []
    for x, y, m in zip(
        *(np.reshape(a, (-1, *ref.shape[-2:])) for a in (ref, dec, region)), strict=True
    ):
        inner = ndimage.binary_erosion(m, np.ones((11, 11), bool), border_value=0)
        if not inner.any():
            continue
        x, y = x.astype(np.float64), y.astype(np.float64)
        blur = functools.partial(ndimage.gaussian_filter, sigma=1.5, truncate=5 / 1.5)
        mx, my = blur(x), blur(y)
        vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        ssim_map = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        scores.append(ssim_map[inner])
    return float(np.mean(np.concatenate(scores))) if scores else float("nan")


def recon_metrics(
    recon_ref: ArrayLike,
    recon_dec: ArrayLike,
    mask: ArrayLike,
    mu_water_per_mm: float,
    noise_std: float | None = None,
) -> dict[str, float]:
    """Quality of a reconstruction from decoded projections versus the one from the original.

    Both reconstructions must come from the same algorithm and settings, so their difference is
    what the compression added.  Everything is computed inside ``mask`` (the field of view).

    Parameters
    ----------
    recon_ref, recon_dec : array_like, shape (ny, nx) or (nz, ny, nx)
        Attenuation in 1/mm reconstructed from the original and from the decoded projections.
    mask : array_like of bool, same shape
        Pixels to score.
    mu_water_per_mm : float > 0
        Attenuation of water, 1/mm (1 HU = mu_water / 1000).
    noise_std : float, optional
        Standard deviation of the quantum noise already in ``recon_ref``, 1/mm (see
        :func:`ctpress.bench.recon_noise_std` for estimators).

    Returns
    -------
    dict[str, float]
        ``data_range`` (1/mm): max - min of ``recon_ref`` in the mask, the PSNR/SSIM peak;
        ``psnr_db``: ``10 log10(data_range^2 / MSE)`` in the mask (inf if identical);
        ``ssim``: :func:`masked_ssim`; ``rmse_hu``: root-mean-square difference in HU;
        ``error_std_hu``: standard deviation of the difference in HU;
        ``added_noise_ratio``: std of the difference over ``noise_std`` (NaN without it):
        0 is lossless, 1 means compression added as much noise as the scan already had.
    """
    ref, dec = _validate(recon_ref, recon_dec)
    region = np.asarray(mask, dtype=bool)
    if region.shape != ref.shape or not region.any():
        raise InputError(f"mask must have shape {ref.shape} and select at least one pixel")
    if not mu_water_per_mm > 0:
        raise InputError(f"mu_water_per_mm must be positive, got {mu_water_per_mm}")
    inside = ref[region]
    dr = _data_range(inside, None)
    diff = np.subtract(dec[region], inside, dtype=np.float64)
    hu = 1000.0 / mu_water_per_mm
    error_std = float(np.std(diff))
    return {
        "data_range": dr,
        "psnr_db": _psnr(float(np.mean(diff**2)), dr),
        "ssim": masked_ssim(ref, dec, region, dr),
        "rmse_hu": float(np.sqrt(np.mean(diff**2))) * hu,
        "error_std_hu": error_std * hu,
        "added_noise_ratio": error_std / noise_std if noise_std else float("nan"),
    }
