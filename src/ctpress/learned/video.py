"""Closed-loop, motion-compensated coding of a group of views (GOP) with zoo models.

The loop of ``--codec dvc`` (:mod:`ctpress.codecs.dvc`, which frames its output) and the
source of the training data of its P-frame model (``ctpress train dvc``): the model is
trained on exactly the residual images this loop gives it.

The views of a GOP, normalised to [0, 1] by the chunk's offset and scale, are coded in
order: the first (I-frame) as an image by the I model; every other view (P-frame) as the
residual against a motion-compensated prediction from the previous *decoded* views, shifted
by half the range, by the P model. Motion is one column displacement per block of
:data:`BLOCK_COLUMNS` detector columns (all rows), in quarter pixels within
+-:data:`SEARCH_QUARTERS`, searched against the decoded reference (``"block"``), one
displacement for the whole view (``"global"``), or none (``"zero"``). A projection is a
superposition: structures at different depths move at different speeds, which one
displacement per block follows only coarsely (see
``benchmarks/study_view_prediction.py``).

Per block the encoder picks a prediction mode (:data:`PREDICTION_MODES`): the previous
decoded view compensated by the block's shift, or the mean of the last 2, 3 or 4 decoded
views each compensated by the shifts summed over the views between, smoothed along the
columns or not (binomial kernels). The noise of every view is new, so a single reference
passes its own noise into the prediction; the means and the smoothing average it.

Everything a GOP stores but its per-view checks goes into one range-coded stream
(:class:`~ctpress.learned.tables.SymbolWriter`), view by view: its motion (each block's
shift with the table of the block's shift in the previous view, :data:`MOTION_CODER`),
its prediction modes (likewise, :data:`MODE_CODERS`) and its latents
(:meth:`~ctpress.learned.models.hyperprior.MeanScaleHyperprior.code_into`). A view costs
no framing of its own: on the 16 x 192 views of the default scan, separate payloads per
view spent about 60 bytes each on lengths, table-shift bytes and the range coder's final
words (a third of the file at 0.5 bits/value). The P-frames go in batches
(:data:`BATCH_VIEWS`), each written call by call across its views: a view's symbols do not
depend on the decoded pixels, so the decoder reads a batch's hyper-latents, and then each
channel group's symbols, in one step (2-2.5x faster decoding on the default scan than
view by view, stream version 4, whose small steps were mostly Python's overhead).

The prediction is exact by construction: decoded views are integers on the decoder-side
grid (2**-20 of the chunk's range) and motion compensation interpolates them with integer
weights (quarter pixels, rounding by shifts), so encoder and decoder compute the same
prediction on every machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._torch_threads import one_torch_thread
from .fixed_point import GRID_BITS, GRID_LIMIT, grid_check, reconstruct
from .tables import NeighbourCoder, SymbolReader, SymbolWriter

if TYPE_CHECKING:
    from torch import Tensor

    from .models.base import LearnedModel
    from .models.hyperprior import MeanScaleHyperprior

#: Motion models of the P-frames.
MOTIONS = ("zero", "block", "global")
#: Detector columns per motion block, and the search range in quarter pixels.
BLOCK_COLUMNS = 16
SEARCH_QUARTERS = 8
#: Coder of the motion in a GOP's stream: each block's shift with the table of the shift
#: the block had in the previous view.
MOTION_CODER = NeighbourCoder(-SEARCH_QUARTERS, SEARCH_QUARTERS, first=0)
#: Smoothing kernels along the detector columns: binomial (integer taps, their sum a power
#: of two), the first none.  The noise of every view is new, so a reference passes its own
#: noise into the prediction; smoothing it along the columns averages that noise where the
#: structure allows.
PREDICTION_FILTERS = ((1,), (1, 6, 1), (1, 2, 1), (1, 4, 6, 4, 1))
#: Prediction modes, one chosen per motion block by the encoder (the nearest to the view):
#: (references, kernel): the rounded mean of the last ``references`` decoded views (fewer
#: at the start of a GOP), each motion-compensated by the block's shifts summed over the
#: views between, smoothed by ``kernel``.  More references average more noise (the noise
#: of every view is new): against the first four modes alone, -5 to -7 % BD-rate at
#: 0.2-0.9 bits/value, -0.9 to -1.3 % over 0.5-4 on the simulated scans of ``bench_dvc``
#: and -4.2 % on Savu.  Stream version 3 knows only the first four (one reference,
#: :data:`PREDICTION_FILTERS`).
PREDICTION_MODES = (
    *((1, kernel) for kernel in PREDICTION_FILTERS),
    *((references, kernel) for references in (2, 3, 4) for kernel in ((1,), (1, 2, 1))),
)
#: Modes a stream of each version uses (versions 1 and 2 are the per-view payloads of
#: :mod:`ctpress.codecs.dvc`); version 5 differs from 4 only in its P-frame batches
#: (:func:`views_per_batch`).
VERSION_MODES = {3: len(PREDICTION_FILTERS), 4: len(PREDICTION_MODES), 5: len(PREDICTION_MODES)}
#: The version :func:`code_gop` writes.
GOP_VERSION = 5
#: Most P-frames, and most of their model's input values, in one batch of a GOP's stream
#: (version 5): their calls are written across the views
#: (:meth:`~ctpress.learned.tables.SymbolWriter.begin_image`), so the decoder runs the
#: entropy model and the range decoder once per batch and group, not once per view
#: (bounds the decoder's memory to a batch's latents and parameters).
BATCH_VIEWS = 16
BATCH_VALUES = 1 << 18
#: Coder of the modes in a GOP's stream, per number of modes: each block's with the table
#: of the block's mode in the previous view.
MODE_CODERS = {n: NeighbourCoder(0, n - 1, first=0) for n in VERSION_MODES.values()}
#: Quantisation gain of each view relative to the GOP's (a quality cascade, as low-delay
#: video coders cascade their quantiser): the I-frame and every :data:`ANCHOR_PERIOD`-th
#: P-frame finer, the others coarser; the finer views lift the prediction of the views
#: after them (-9 % BD-rate against one gain for all, 0.2-0.8 bits/value, default scan).
I_GAIN, ANCHOR_GAIN, OTHER_GAIN = 0.6, 0.7, 1.15
ANCHOR_PERIOD = 4
#: Half the chunk's range on the grid: the offset of a P-frame's residual image.
HALF = 1 << (GRID_BITS - 1)


def compensate(reference: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """``reference`` (rows, cols) int64 grid, each block of :data:`BLOCK_COLUMNS` columns
    shifted by its ``moves`` (quarter pixels, int) with linear interpolation in integers
    (edges repeated): the prediction encoder and decoder compute alike."""
    cols = reference.shape[-1]
    shift = np.repeat(moves.astype(np.int64), BLOCK_COLUMNS)[:cols]
    position = 4 * np.arange(cols, dtype=np.int64) - shift
    left = position >> 2
    frac = position - 4 * left
    a = reference[:, np.minimum(np.maximum(left, 0), cols - 1)]
    b = reference[:, np.minimum(np.maximum(left + 1, 0), cols - 1)]
    return (a * (4 - frac) + b * frac + 2) >> 2


def smoothed(prediction: np.ndarray, kernel: tuple[int, ...]) -> np.ndarray:
    """``prediction`` (rows, cols) int64 filtered along the columns by the integer
    ``kernel`` (odd length, sum a power of two), edges repeated, rounded by a shift
    (``prediction`` itself for a one-tap kernel: callers never write into it)."""
    if len(kernel) == 1:
        return prediction
    half, total = len(kernel) // 2, sum(kernel)
    first, last = prediction[:, :1], prediction[:, -1:]
    edged = np.concatenate([first.repeat(half, 1), prediction, last.repeat(half, 1)], axis=1)
    cols = prediction.shape[-1]
    out = np.full(prediction.shape, total // 2, dtype=np.int64)
    for start, tap in enumerate(kernel):
        out += tap * edged[:, start : start + cols]
    return out >> (total.bit_length() - 1)


def references(decoded: np.ndarray, t: int, moves: np.ndarray, count: int) -> list[np.ndarray]:
    """The last ``count`` decoded views before view ``t`` (fewer if the GOP has fewer),
    nearest first, each motion-compensated to view ``t`` by its blocks' shifts
    (``moves``, (m, blocks)) summed over the views between."""
    shift = np.zeros(moves.shape[1], dtype=np.int64)
    out = []
    for back in range(1, min(count, t) + 1):
        shift = shift + moves[t - back + 1].astype(np.int64)
        out.append(compensate(decoded[t - back], shift))
    return out


def mode_predictions(
    refs: list[np.ndarray], modes: Iterable[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Each mode of ``modes`` (of :data:`PREDICTION_MODES`) with its prediction from the
    compensated references ``refs`` (nearest first; int64): their rounded mean (computed
    once per number of references), smoothed."""
    means: dict[int, np.ndarray] = {}
    for mode in modes:
        count, kernel = PREDICTION_MODES[mode]
        used = min(count, len(refs))
        if used not in means:
            total = refs[0] if used == 1 else np.sum(refs[:used], axis=0)
            means[used] = (total + used // 2) // used
        yield mode, smoothed(means[used], kernel)


def predicted(refs: list[np.ndarray], modes: np.ndarray) -> np.ndarray:
    """The prediction (rows, cols) int64 with each block's mode (``modes``, one per
    block) from the compensated references ``refs``."""
    cols = refs[0].shape[-1]
    per_column = np.repeat(modes.astype(np.int64), BLOCK_COLUMNS)[:cols]
    out = np.empty_like(refs[0])
    for mode, prediction in mode_predictions(refs, np.unique(per_column).tolist()):
        chosen = per_column == mode
        out[:, chosen] = prediction[:, chosen]
    return out


def search_modes(target: np.ndarray, refs: list[np.ndarray], n_modes: int) -> np.ndarray:
    """Per block, the mode of the first ``n_modes`` of :data:`PREDICTION_MODES` whose
    prediction is nearest ``target`` (float, grid units) in squared error; ties to the
    lower mode (int8)."""
    cols = refs[0].shape[-1]
    pad = blocks_of(cols) * BLOCK_COLUMNS - cols
    errors = np.empty((n_modes, blocks_of(cols)))
    for mode, prediction in mode_predictions(refs, range(n_modes)):
        diff = target - prediction
        per_column = np.pad(np.sum(diff * diff, axis=0), (0, pad))
        errors[mode] = per_column.reshape(-1, BLOCK_COLUMNS).sum(axis=1)
    return np.argmin(errors, axis=0).astype(np.int8)


def search_motion(target: np.ndarray, reference: np.ndarray, per_block: bool = True) -> np.ndarray:
    """Per block, the shift of ``reference`` (int64 grid) nearest ``target`` (float, grid
    units) in squared error, or with ``per_block`` False the one shift of every block
    nearest over the whole view; ties go to the smaller shift (int8, one per block)."""
    cols = reference.shape[-1]
    n_blocks = blocks_of(cols)
    pad = n_blocks * BLOCK_COLUMNS - cols
    candidates = sorted(range(-SEARCH_QUARTERS, SEARCH_QUARTERS + 1), key=abs)
    errors = np.empty((len(candidates), n_blocks))
    for k, s in enumerate(candidates):
        diff = target - compensate(reference, np.full(n_blocks, s))
        per_column = np.pad(np.sum(diff * diff, axis=0), (0, pad))
        errors[k] = per_column.reshape(n_blocks, BLOCK_COLUMNS).sum(axis=1)
    shifts = np.asarray(candidates, dtype=np.int8)
    if not per_block:
        return np.full(n_blocks, shifts[np.argmin(errors.sum(axis=1))], dtype=np.int8)
    return shifts[np.argmin(errors, axis=0)]


def blocks_of(cols: int) -> int:
    """Motion blocks across ``cols`` detector columns."""
    return -(-cols // BLOCK_COLUMNS)


def add_residual(prediction: np.ndarray, residual_grid: np.ndarray) -> np.ndarray:
    """A decoded P-frame (int64 grid): its prediction plus the P model's reconstruction
    of the residual image (which carries :data:`HALF`), bounded."""
    return np.clip(prediction + residual_grid - HALF, -GRID_LIMIT, GRID_LIMIT)


def views_per_batch(version: int, values_per_view: int) -> int:
    """P-frames per batch of a GOP's stream of ``version`` whose model codes
    ``values_per_view`` values per view (:data:`BATCH_VIEWS`; versions 3 and 4: one)."""
    if version < 5:
        return 1
    return min(BATCH_VIEWS, max(1, BATCH_VALUES // values_per_view))


def gop_batches(m: int, per_batch: int) -> list[range]:
    """The batches of a GOP of ``m`` views: the I-frame alone, then the P-frames
    ``per_batch`` at a time."""
    p_frames = [range(t, min(m, t + per_batch)) for t in range(1, m, per_batch)]
    return [range(1), *p_frames] if m else []


def view_gain(gain: float, t: int, gain_range: tuple[float, float]) -> float:
    """The quantisation gain of view ``t`` of a GOP coded at ``gain``, within the
    ``gain_range`` of its model (see :data:`I_GAIN`)."""
    factor = I_GAIN if t == 0 else ANCHOR_GAIN if t % ANCHOR_PERIOD == 0 else OTHER_GAIN
    return min(max(gain * factor, gain_range[0]), gain_range[1])


def code_image(
    model: MeanScaleHyperprior, image: np.ndarray, gain: float, writer: SymbolWriter
) -> np.ndarray:
    """One normalised image (H, W) coded into ``writer``: the decoder's grid (int64)."""
    import torch

    from .layers import pad_to_multiple

    x = pad_to_multiple(torch.from_numpy(image[None, None]), model.downsampling)
    coded = model.code_into(model.analyse(x), gain, writer)
    grid, _ = reconstruct(model, coded, (1, *image.shape))
    return grid[0].astype(np.int64)


@dataclass
class CodedGop:
    """A GOP coded by :func:`code_gop`.

    Attributes
    ----------
    stream : bytes
        The GOP's one range-coded stream (:class:`~ctpress.learned.tables.SymbolWriter`):
        the I-frame's latents, then per batch of P-frames (:func:`gop_batches`), across
        its views, their motion (unless the motion is ``"zero"``), their prediction modes
        and their residuals' latents.
    grid_checks : list of int
        Per view, the CRC-32 of the model's output grid (what the decoder checks).
    i_bits, p_bits : int
        The stream's bits of the I-frame and of the P-frames (whole 32-bit words, the
        final ones counted with the P-frames; they sum to the stream's bits).
    decoded : ndarray (m, H, W) int64
        The decoded views on the grid.
    moves : ndarray (m, blocks) int8
        Motion per view and block, in quarter pixels (the first view's row zero).
    modes : ndarray (m, blocks) int8
        Prediction mode per view and block (:data:`PREDICTION_MODES`; the first view's
        row zero).
    p_images : list of ndarray (H, W) float64
        The residual images the P model coded (its training data).
    """

    stream: bytes
    grid_checks: list[int]
    i_bits: int
    p_bits: int
    decoded: np.ndarray
    moves: np.ndarray
    modes: np.ndarray
    p_images: list[np.ndarray]


def _motion_slots(moves: np.ndarray, motion: str) -> np.ndarray:
    """The motion values a view stores: one per block, one for the view, or none."""
    return {"block": moves, "global": moves[:1], "zero": moves[:0]}[motion]


def gop_model(model: LearnedModel) -> MeanScaleHyperprior:
    """``model`` as the hyperprior that codes into a GOP's stream (TypeError if not)."""
    from .models.hyperprior import MeanScaleHyperprior

    if not isinstance(model, MeanScaleHyperprior):
        raise TypeError(f"a GOP is coded by hyperprior models, not {type(model).__name__}")
    return model


@one_torch_thread()  # many small operations: faster on one thread
def code_gop(
    unit: np.ndarray,
    i_model: LearnedModel,
    p_model: LearnedModel,
    gain: float,
    motion: str,
    smoothing: bool = True,
) -> CodedGop:
    """Code the views ``unit`` (m, H, W), normalised to [0, 1], at quantisation ``gain``
    (each view at its :func:`view_gain`) in the closed loop (see the module docstring)
    into one stream of :data:`GOP_VERSION` (every mode of :data:`PREDICTION_MODES`);
    without ``smoothing`` every block's mode is 0 (the previous view, not smoothed)."""
    i_coder, p_coder = gop_model(i_model), gop_model(p_model)
    scale = 2.0**GRID_BITS
    n_modes = VERSION_MODES[GOP_VERSION]
    depth = max(count for count, _ in PREDICTION_MODES)
    writer = SymbolWriter()
    m, h, w = unit.shape
    per_batch = views_per_batch(GOP_VERSION, int(np.prod(_padded(p_coder, h, w))))
    batch_ends = {views[-1] for views in gop_batches(m, per_batch)}
    decoded = np.empty(unit.shape, dtype=np.int64)
    moves = np.zeros((m, blocks_of(w)), dtype=np.int8)
    modes = np.zeros_like(moves)
    checks, p_images = [], []
    i_bits = 0
    for t, view in enumerate(unit):
        writer.begin_image()
        if t == 0:
            grid = code_image(i_coder, view, view_gain(gain, t, i_coder.gain_range), writer)
            decoded[t] = grid
        else:
            if motion != "zero":
                moves[t] = search_motion(view * scale, decoded[t - 1], motion == "block")
                writer.put_neighbours(MOTION_CODER, "motion", _motion_slots(moves[t], motion))
            refs = references(decoded, t, moves, depth if smoothing else 1)
            if smoothing:
                modes[t] = search_modes(view * scale, refs, n_modes)
            writer.put_neighbours(MODE_CODERS[n_modes], "modes", modes[t])
            prediction = predicted(refs, modes[t])
            image = view - prediction / scale + 0.5
            grid = code_image(p_coder, image, view_gain(gain, t, p_coder.gain_range), writer)
            decoded[t] = add_residual(prediction, grid)
            p_images.append(image)
        checks.append(grid_check(grid))
        if t in batch_ends:
            writer.flush()
        if t == 0:
            i_bits = writer.bits()
    stream = writer.finish()
    return CodedGop(stream, checks, i_bits, 8 * len(stream) - i_bits, decoded, moves, modes,
                    p_images)  # fmt: skip


@one_torch_thread()  # many small operations: faster on one thread
def decode_gop(
    reader: SymbolReader,
    i_model: LearnedModel,
    p_model: LearnedModel,
    gain: float,
    motion: str,
    shape: tuple[int, int, int],
    check_view: Callable[[int, np.ndarray], None],
    version: int = GOP_VERSION,
) -> np.ndarray:
    """Inverse of :func:`code_gop` for views of ``shape`` (m, H, W) in a stream of
    ``version`` (3 and up, :data:`VERSION_MODES`): the decoded grid (int64);
    ``check_view(t, grid)`` sees each model output (the table choice is not checked apart:
    a wrong one changes the output).

    A view's symbols do not depend on the decoded pixels, so the stream is read a batch
    of views at a time (:func:`gop_batches`), their latents synthesised together
    (:func:`views_per_synthesis`), and the predictions then added in view order."""
    m, h, w = shape
    moves = np.zeros((m, blocks_of(w)), dtype=np.int64)
    modes = np.zeros_like(moves)
    i_coder, p_coder = gop_model(i_model), gop_model(p_model)
    values_per_view = int(np.prod(_padded(p_coder, h, w)))
    per_call = views_per_synthesis(p_coder, values_per_view)
    per_batch = views_per_batch(version, values_per_view)
    mode_coder = MODE_CODERS[VERSION_MODES[version]]
    decoded = np.empty(shape, dtype=np.int64)
    for views in gop_batches(m, per_batch):
        model = i_coder if views.start == 0 else p_coder
        if views.start and motion != "zero":
            slots = _motion_slots(moves[0], motion).size
            for t in views:
                moves[t] = reader.take_neighbours(MOTION_CODER, "motion", slots)
        if views.start:
            for t in views:
                modes[t] = reader.take_neighbours(mode_coder, "modes", modes.shape[1])
        gains = np.array([view_gain(gain, t, model.gain_range) for t in views])
        latent = model.decode_from(reader, (len(views), *_padded(model, h, w)[1:]), gains).latent
        for first in range(views.start, views.stop, per_call):
            some = latent[first - views.start : first - views.start + per_call]
            decoded[first : first + len(some)] = _synthesised(model, some, (h, w))
    for t in range(m):
        check_view(t, decoded[t])
        if t:
            depth = max(PREDICTION_MODES[mode][0] for mode in np.unique(modes[t]).tolist())
            prediction = predicted(references(decoded, t, moves, depth), modes[t])
            decoded[t] = add_residual(prediction, decoded[t])
    return decoded


def _padded(model: MeanScaleHyperprior, h: int, w: int) -> tuple[int, int, int]:
    """The shape (1, H, W) ``model`` codes an (h, w) view at: padded to its downsampling."""
    d = model.downsampling
    return 1, -(-h // d) * d, -(-w // d) * d


#: Most latent values one synthesis call of :func:`decode_gop` takes (bounds its memory).
SYNTHESIS_VALUES = 1 << 20


def views_per_synthesis(model: MeanScaleHyperprior, values_per_view: int) -> int:
    """Views whose latents ``model`` synthesises in one call: a wavelet synthesis is
    elementwise arithmetic, so a view's output is the same whatever views share its call
    (up to :data:`SYNTHESIS_VALUES` values); a learned one runs view by view, as the
    encoder ran it."""
    if model.transform != "wavelet":
        return 1
    return max(1, SYNTHESIS_VALUES // values_per_view)


def _synthesised(model: MeanScaleHyperprior, latent: Tensor, size: tuple[int, int]) -> np.ndarray:
    """The output grids (n, H, W) of ``model`` for the latents of ``n`` views."""
    from .models.base import Coded

    grid, _ = reconstruct(model, Coded(b"", latent, 0), (len(latent), *size))
    return grid
