"""Sparse views: which views are stored, and the two learned restorations (no torch).

``sparse-unet`` stores every k-th view of a chunk (and its last view, so no view is
extrapolated) and restores the rest:

- (a) in the sinogram domain, :func:`synthesise_views`: every detector row's sinogram
  (views x columns) is interpolated linearly between the stored views and a U-Net adds a
  correction to the synthesised views. In a full rotation it also sees the conjugate
  rays (:mod:`.conjugate`): each missing view interpolated from the stored views half a
  turn away, which sample it at other view positions. It runs in integers
  (:class:`~.unet.FixedUNet`), and so do the steps around it, so a decoder synthesises
  the same views on every machine: the stored values are mapped to a linear domain
  exactly (raw counts through an integer table of ``round(2**20 ln c)``; any other data
  as they are), normalised by the stored views' minimum and maximum with correctly
  rounded IEEE operations, interpolated with integer division, and mapped back exactly
  (counts by a search of the same table);
- (b) in the image domain, :func:`restore_images`: a U-Net corrects the filtered
  back-projection of the stored views (FBPConvNet-style), for users who only need the
  reconstruction (``ctpress recon --restore``).

The networks are trained by ``ctpress train sparse-unet``
(:func:`ctpress.learned.train_sparse.train_sparse_unet`) on sinograms and images
simulated from the training volumes at ``k`` in :data:`TRAINED_KEEP_EVERY`.
"""

from __future__ import annotations

import functools
from decimal import Decimal, localcontext

import numpy as np

from ..scan import Geometry
from . import store
from .conjugate import VIEW_UNIT, ConjugateRays, best_conjugate_rays, conjugate_interpolation
from .unet import BATCH_PIXELS, ONE, FixedUNet, UNetConfig, load_unet

#: Manifest methods of the two restorations.
SINOGRAM_METHOD = "sparse-unet-sinogram"
IMAGE_METHOD = "sparse-unet-image"
#: Architectures: (a) sees the interpolated sinogram, the stored views around each view,
#: its position between them, their distance, the conjugate-ray interpolation and its
#: distance to the nearest conjugate sample; (b) the image and k.
SINOGRAM_UNET = UNetConfig(7, (16, 32, 64), output_shift=6)
IMAGE_UNET = UNetConfig(2, (16, 32, 64), output_shift=4)
#: Keep-every values the networks are trained on (others work, untested).
TRAINED_KEEP_EVERY = (2, 4, 8, 16)
#: Largest keep-every value accepted.
MAX_KEEP_EVERY = 64
#: Distance between stored views of which the gap channel is 1.
GAP_UNIT = 16
#: Synthesised values are clipped to this many ranges of the stored views around them.
_CLIP = 2
#: Fraction bits of the log table of raw counts.
LOG_BITS = 20


def stored_views(n_views: int, keep_every: int) -> np.ndarray:
    """Indices of the views a chunk of ``n_views`` stores: every ``keep_every``-th from
    the first, and the last."""
    kept = np.arange(0, n_views, keep_every)
    if kept[-1] != n_views - 1:
        kept = np.append(kept, n_views - 1)
    return kept


def view_positions(n_views: int, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every view of a chunk: the stored views before and after it (``a <= t <= b``,
    equal for a stored view) and its offset ``t - a``; int64 arrays of shape (n_views,)."""
    t = np.arange(n_views)
    after_index = np.searchsorted(kept, t)
    b = kept[after_index]
    a = np.where(b == t, t, kept[np.maximum(after_index - 1, 0)])
    return a, b, t - a


# ---------------------------------------------------------------- exact value domain
@functools.cache
def _log_table(top: int) -> np.ndarray:
    """``round(2**LOG_BITS * ln(max(c, 1)))`` for ``c = 0..top``, int64, the same on every
    machine: computed in float64 (error < 1e-9 of a unit), and with :mod:`decimal` where
    the value is within 1e-6 of a rounding midpoint."""
    c = np.maximum(np.arange(top + 1, dtype=np.float64), 1.0)
    scaled = np.log(c) * 2.0**LOG_BITS
    table = np.floor(scaled + 0.5).astype(np.int64)
    for i in np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6):
        with localcontext() as ctx:
            ctx.prec = 40
            exact = Decimal(max(int(i), 1)).ln() * (1 << LOG_BITS)
        table[i] = int(exact.to_integral_value(rounding="ROUND_HALF_UP"))
    return table


def to_linear(values: np.ndarray, counts: bool) -> np.ndarray:
    """Stored values -> a domain linear in attenuation, float64 holding exact values:
    raw counts -> ``-round(2**20 ln c)``; anything else as it is."""
    if not counts:
        return values.astype(np.float64)
    top = int(values.max(initial=0))
    return -_log_table(top)[values.astype(np.int64)].astype(np.float64)


def from_linear(linear: np.ndarray, counts: bool, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`to_linear` for synthesised values (float64), as ``dtype``: counts
    are the integer whose table entry is nearest; integers are rounded; all clipped to
    the dtype's range."""
    if counts:
        info = np.iinfo(dtype)
        table = _log_table(int(info.max))
        target = -np.rint(linear)
        i = np.clip(np.searchsorted(table, target), 1, len(table) - 1)
        nearer_below = (target - table[i - 1]) < (table[i] - target)
        return np.where(nearer_below, i - 1, i).astype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(linear), info.min, info.max).astype(dtype)
    return linear.astype(dtype)


# ---------------------------------------------------------------- (a) sinogram domain
def sinogram_inputs(
    kept_linear: np.ndarray,
    kept: np.ndarray,
    n_views: int,
    normalisation: tuple[float, float] | None = None,
    rays: ConjugateRays | None = None,
) -> tuple[np.ndarray, float, float]:
    """Integer U-Net inputs (rows, 7, n_views, cols) of a chunk whose stored views
    ``kept_linear`` (len(kept), rows, cols; :func:`to_linear`) are ``kept``: the
    normalised, linearly interpolated sinogram of every row, the stored views before and
    after each view (repeated over the gap), the offset of each view between them
    (fraction of the gap), the gap (in :data:`GAP_UNIT`), the conjugate-ray
    interpolation (:func:`~.conjugate.conjugate_interpolation` with ``rays``; the linear
    interpolation where there is none) and the distance to the nearest conjugate sample
    (fraction of the gap, at most 1; 1 where there is none), all in units of 2**-16; and
    the normalisation ``(lo, span)``: the stored views' minimum and range, unless given."""
    if normalisation is None:
        lo = float(kept_linear.min())
        span = float(kept_linear.max()) - lo or 1.0
    else:
        lo, span = normalisation  # the whole chunk's (rows in groups), or a training crop's
    s = np.floor((kept_linear - lo) / span * ONE + 0.5).astype(np.int64)  # IEEE-exact ops
    a, b, offset = view_positions(n_views, kept)
    gap = b - a
    sa, sb = s[np.searchsorted(kept, a)], s[np.searchsorted(kept, b)]
    w, o = np.maximum(gap, 1)[:, None, None], offset[:, None, None]
    interpolated = (sa * (w - o) + sb * o + w // 2) // w  # exact integer division
    fraction = np.where(gap > 0, (offset * ONE) // np.maximum(gap, 1), 0)
    gap_channel = gap * ONE // GAP_UNIT
    rows, cols = kept_linear.shape[1:]
    x = np.empty((rows, SINOGRAM_UNET.in_channels, n_views, cols), dtype=np.float64)
    x[:, 0] = interpolated.transpose(1, 0, 2)
    x[:, 1] = sa.transpose(1, 0, 2)
    x[:, 2] = sb.transpose(1, 0, 2)
    x[:, 3] = fraction[None, :, None]
    x[:, 4] = gap_channel[None, :, None]
    x[:, 5] = x[:, 0]
    x[:, 6] = ONE
    if rays is not None:
        conjugate, distance = conjugate_interpolation(s, kept, n_views, rays)
        valid = distance >= 0  # (n_views, cols)
        x[:, 5] = np.where(valid[None], conjugate.transpose(1, 0, 2), x[:, 0])
        near = np.minimum(distance * ONE // (np.maximum(gap, 1)[:, None] * VIEW_UNIT), ONE)
        x[:, 6] = np.where(valid, near, ONE)[None]
    return x, lo, span


def padded(x: np.ndarray, multiple: int) -> np.ndarray:
    """``x`` (..., H, W) edge-padded at the end to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(0, -h % multiple), (0, -w % multiple)]
    return np.pad(x, pad, mode="edge")


def synthesise_views(
    kept_values: np.ndarray,
    kept: np.ndarray,
    n_views: int,
    counts: bool,
    network: FixedUNet | None = None,
    rays: ConjugateRays | None = None,
) -> np.ndarray:
    """Restoration (a): the full chunk (n_views, rows, cols) from its stored views
    ``kept_values`` (len(kept), rows, cols) at indices ``kept``, in their dtype; stored
    views are returned as they are.  ``network`` None: the shipped sinogram U-Net;
    ``rays``: the chunk's conjugate rays (:func:`choose_conjugate_rays`), if any;
    :func:`interpolate_views` is the same without a network."""
    network = sinogram_unet() if network is None else network
    return synthesise(kept_values, kept, n_views, counts, network, rays)


def interpolate_views(
    kept_values: np.ndarray, kept: np.ndarray, n_views: int, counts: bool
) -> np.ndarray:
    """Linear interpolation between the stored views (the baseline of restoration (a)),
    in the same exact domain."""
    return synthesise(kept_values, kept, n_views, counts, None, None)


def synthesise(
    kept_values: np.ndarray,
    kept: np.ndarray,
    n_views: int,
    counts: bool,
    network: FixedUNet | None,
    rays: ConjugateRays | None,
) -> np.ndarray:
    """The full chunk: ``network``'s synthesis, or without one linear interpolation;
    detector rows in groups of about BATCH_PIXELS values (so the U-Net's
    inputs and activations take a bounded memory whatever the chunk's size)."""
    linear = to_linear(kept_values, counts)
    lo = float(linear.min())
    span = float(linear.max()) - lo or 1.0
    rows, cols = kept_values.shape[1:]
    out = np.empty((n_views, rows, cols), dtype=kept_values.dtype)
    group = max(1, BATCH_PIXELS // (n_views * cols))
    for r0 in range(0, rows, group):
        part = linear[:, r0 : r0 + group]
        x = sinogram_inputs(part, kept, n_views, (lo, span), rays)[0]
        s = x[:, 0]
        if network is not None:  # earlier networks take the first channels
            x = x[:, : network.config.in_channels]
            s = s + network(padded(x, network.config.multiple))[:, :n_views, :cols]
        s = np.clip(s, -_CLIP * ONE, (1 + _CLIP) * ONE)
        values = lo + s.transpose(1, 0, 2) * (span / ONE)
        out[:, r0 : r0 + group] = from_linear(values, counts, kept_values.dtype)
    out[kept] = kept_values
    return out


#: Detector rows the encoder tries the conjugate-ray tables on.
_PROBE_ROWS = 4
#: A conjugate-ray table is kept when its interpolation error is within this many times
#: that of linear interpolation.
_CONJUGATE_SLACK = 1.5


def choose_conjugate_rays(
    values: np.ndarray,
    kept: np.ndarray,
    counts: bool,
    geometry: Geometry | None,
    angles: np.ndarray | None,
) -> ConjugateRays | None:
    """The encoder's conjugate-ray table of a chunk ``values`` (n_views, rows, cols): of
    the two fan-angle conventions, the one whose conjugate interpolation of the views
    that are not stored is closer to them (on a few rows), if it is within
    :data:`_CONJUGATE_SLACK` times the error of linear interpolation (on noisy data the two
    are about level, and the U-Net uses both; the wrong convention, or cone-beam rows far
    from the mid-plane, are many times worse); None otherwise (or without conjugate rays)."""
    n_views, rows, cols = values.shape
    probe = values[:, np.unique(np.linspace(0, rows - 1, min(rows, _PROBE_ROWS)).astype(int))]
    linear = to_linear(probe, counts)
    lo = float(linear[kept].min())
    span = float(linear[kept].max()) - lo or 1.0
    missing = np.ones(n_views, dtype=bool)
    missing[kept] = False
    truth = ((linear - lo) / span * ONE).transpose(1, 0, 2)[:, missing]

    def score(rays: ConjugateRays) -> tuple[float, float]:
        x = sinogram_inputs(linear[kept], kept, n_views, (lo, span), rays)[0][:, :, missing]
        linear_error = float(np.abs(x[:, 0] - truth).mean())  # the same for every table
        return float(np.abs(x[:, 5] - truth).mean()), _CONJUGATE_SLACK * linear_error

    return best_conjugate_rays(geometry, angles, cols, score)


# ---------------------------------------------------------------- (b) image domain
def restore_images(
    images: np.ndarray, keep_every: int, unit: float, network: FixedUNet | None = None
) -> np.ndarray:
    """Restoration (b): the U-Net's correction of the FBP of the stored views ``images``
    (slices, ny, nx) in any unit; ``unit`` is the unit's water value (mu of water in
    1/mm for attenuation), which the network sees as 1.  Returns float32 of the same
    shape and unit."""
    network = image_unet() if network is None else network
    ny, nx = images.shape[1:]
    x = np.empty((images.shape[0], 2, ny, nx), dtype=np.float64)
    x[:, 0] = np.clip(np.floor(images / unit * ONE + 0.5), -8 * ONE, 8 * ONE)
    x[:, 1] = keep_every * ONE // GAP_UNIT
    correction = network(padded(x, network.config.multiple))[:, :ny, :nx]
    return ((x[:, 0] + correction) * (unit / ONE)).astype(np.float32)


# ---------------------------------------------------------------- shipped weights
def sinogram_unet() -> FixedUNet:
    """The shipped sinogram-domain U-Net (manifest entry :data:`SINOGRAM_METHOD`)."""
    return _load(str(store.weights_dir()), SINOGRAM_METHOD, 0)


def sinogram_unet_with_id(weights_id: bytes) -> FixedUNet:
    """The installed sinogram U-Net whose weights' SHA-256 starts with ``weights_id`` (a
    stream's): the shipped one, or an earlier one kept so that older files decode
    (:class:`~.store.WeightsMismatchError` if none)."""
    directory = str(store.weights_dir())
    for index, entry in enumerate(store.entries(directory, SINOGRAM_METHOD)):
        if bytes.fromhex(entry["sha256"])[:8] == weights_id:
            return _load(directory, SINOGRAM_METHOD, index)
    raise store.WeightsMismatchError(
        "this sparse-unet chunk was made with other U-Net weights than this ctpress ships; "
        "decode it with the ctpress version that wrote it"
    )


def image_unet() -> FixedUNet:
    """The shipped image-domain U-Net (manifest entry :data:`IMAGE_METHOD`)."""
    return _load(str(store.weights_dir()), IMAGE_METHOD, 0)


@functools.cache
def _load(directory: str, method: str, index: int) -> FixedUNet:
    entries = store.entries(directory, method)
    if len(entries) <= index:
        raise store.WeightsMismatchError(f"the {method} weights are not installed")
    data, digest = store.read_entry(directory, entries[index])
    return load_unet(data, bytes.fromhex(digest)[:8])


store.register_cache(_load.cache_clear)
