"""How a chunk (n_views, rows, cols) is cut into 2-D frames (numpy only).

Projections with at least :data:`MIN_FRAME_ROWS` rows are one frame each; flatter chunks
(sinogram-like, e.g. rows = 1) become a single (n_views * rows, cols) mosaic, which keeps
the view-to-view correlation that a 1-row image would lose.  The image codecs and the
learned models (codecs and training) share the rule, so it lives below both.
"""

from __future__ import annotations

import numpy as np

MIN_FRAME_ROWS = 8


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Shape (m, H, W) of :func:`to_images` of a chunk of ``shape`` (n, rows, cols)."""
    n, rows, cols = shape
    return (n, rows, cols) if rows >= MIN_FRAME_ROWS else (1, n * rows, cols)


def to_images(x: np.ndarray) -> np.ndarray:
    """(n, rows, cols) chunk -> (m, H, W) images (a view of ``x``; a mosaic when rows < 8)."""
    return x.reshape(image_shape(x.shape))
