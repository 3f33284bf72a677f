"""Closed-loop, motion-compensated coding of a group of views (GOP) with zoo models.

The loop of ``--codec dvc`` (:mod:`ctpress.codecs.dvc`, which frames its output) and the
source of the training data of its P-frame model (``ctpress train dvc``): the model is
trained on exactly the residual images this loop gives it.

The views of a GOP, normalised to [0, 1] by the chunk's offset and scale, are coded in
order: the first (I-frame) as an image by the I model; every other view (P-frame) as the
residual against a motion-compensated prediction from the previous *decoded* view, shifted
by half the range, by the P model. Motion is one column displacement per block of
:data:`BLOCK_COLUMNS` detector columns (all rows), in quarter pixels within
+-:data:`SEARCH_QUARTERS`, searched against the decoded reference (``"block"``), one
displacement for the whole view (``"global"``), or none (``"zero"``). A projection is a
superposition: structures at different depths move at different speeds, which one
displacement per block follows only coarsely (see
``benchmarks/study_view_prediction.py``).

The prediction is exact by construction: decoded views are integers on the decoder-side
grid (2**-20 of the chunk's range) and motion compensation interpolates them with integer
weights (quarter pixels, rounding by shifts), so encoder and decoder compute the same
prediction on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .fixed_point import GRID_BITS, GRID_LIMIT, grid_check, reconstruct

if TYPE_CHECKING:
    from .models.base import Coded, LearnedModel

#: Motion models of the P-frames.
MOTIONS = ("zero", "block", "global")
#: Detector columns per motion block, and the search range in quarter pixels.
BLOCK_COLUMNS = 16
SEARCH_QUARTERS = 8
#: Half the chunk's range on the grid: the offset of a P-frame's residual image.
HALF = 1 << (GRID_BITS - 1)


def compensate(reference: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """``reference`` (rows, cols) int64 grid, each block of :data:`BLOCK_COLUMNS` columns
    shifted by its ``moves`` (quarter pixels, int) with linear interpolation in integers
    (edges repeated): the prediction encoder and decoder compute alike."""
    cols = reference.shape[-1]
    shift = np.repeat(moves.astype(np.int64), BLOCK_COLUMNS)[:cols]
    position = 4 * np.arange(cols, dtype=np.int64) - shift
    left = position // 4
    frac = position - 4 * left
    a = reference[:, np.clip(left, 0, cols - 1)]
    b = reference[:, np.clip(left + 1, 0, cols - 1)]
    return (a * (4 - frac) + b * frac + 2) // 4


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


def code_image(model: LearnedModel, image: np.ndarray, gain: float) -> tuple[Coded, np.ndarray]:
    """One normalised image (H, W) coded: its latents and the decoder's grid (int64)."""
    import torch

    from .layers import pad_to_multiple

    x = pad_to_multiple(torch.from_numpy(image[None, None]), model.downsampling)
    coded = model.code(model.analyse(x), gain)
    grid, _ = reconstruct(model, coded, (1, *image.shape))
    return coded, grid[0].astype(np.int64)


@dataclass
class CodedGop:
    """A GOP coded by :func:`code_gop`.

    Attributes
    ----------
    coded : list of Coded
        Per view, the model's latents (the I-frame's, then the P-frames' residuals').
    grid_checks : list of int
        Per view, the CRC-32 of the model's output grid (what the decoder checks).
    decoded : ndarray (m, H, W) int64
        The decoded views on the grid.
    moves : ndarray (m, blocks) int8
        Motion per view and block, in quarter pixels (the first view's row zero).
    p_images : list of ndarray (H, W) float64
        The residual images the P model coded (its training data).
    """

    coded: list[Coded]
    grid_checks: list[int]
    decoded: np.ndarray
    moves: np.ndarray
    p_images: list[np.ndarray]


def code_gop(
    unit: np.ndarray, i_model: LearnedModel, p_model: LearnedModel, gain: float, motion: str
) -> CodedGop:
    """Code the views ``unit`` (m, H, W), normalised to [0, 1], at quantisation ``gain``
    in the closed loop (see the module docstring)."""
    scale = 2.0**GRID_BITS
    decoded = np.empty(unit.shape, dtype=np.int64)
    moves = np.zeros((len(unit), blocks_of(unit.shape[2])), dtype=np.int8)
    coded_views, checks, p_images = [], [], []
    for t, view in enumerate(unit):
        if t == 0:
            coded, grid = code_image(i_model, view, gain)
            decoded[t] = grid
        else:
            if motion != "zero":
                moves[t] = search_motion(view * scale, decoded[t - 1], motion == "block")
            prediction = compensate(decoded[t - 1], moves[t])
            image = view - prediction / scale + 0.5
            coded, grid = code_image(p_model, image, gain)
            decoded[t] = add_residual(prediction, grid)
            p_images.append(image)
        coded_views.append(coded)
        checks.append(grid_check(grid))
    return CodedGop(coded_views, checks, decoded, moves, p_images)
