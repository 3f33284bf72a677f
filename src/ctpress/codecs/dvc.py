"""Video coding of the view sequence, DVC-style (``--codec dvc``).

A chunk is one group of views (GOP, :attr:`Dvc.preferred_chunk_views` views by default;
``--chunk-views`` sets it), coded in view order with the shipped ``hyperprior`` model:

- the first view (I-frame) as an image;
- every other view (P-frame) as the residual against a motion-compensated prediction from
  the previous *decoded* view (closed loop): the residual, shifted by half the range, goes
  through the same model.  Motion is one column displacement per block of
  :data:`BLOCK_COLUMNS` detector columns (all rows), in quarter pixels within
  +-:data:`SEARCH_QUARTERS`, searched by the encoder against the decoded reference
  (``motion="block"``), or none (``motion="zero"``, the ablation).  A projection is a
  superposition: structures at different depths move at different speeds, which one
  displacement per block follows only coarsely (see ``benchmarks/study_view_prediction.py``).

Decoding is exact by construction where it predicts: the reference views are integers on
the decoder-side grid (2**-20 of the chunk's range), and motion compensation interpolates
them with integer weights (quarter pixels, rounding by shifts), so encoder and decoder
compute the same prediction on every machine.  The model's decoder is checked per view:
each view's grid has its CRC-32 in the stream (a mismatch is a CorruptFileError; the GOP
bounds it).  The error-bounded residual layer, the bpp / PSNR searches (over the model's
rate points and gains, each probe coding the GOP again) and the weights hash come from
:class:`~ctpress.codecs.learned.LearnedCodec`.  Views of fewer than 8 rows (sinograms)
are one image, coded intra.

Stream (little-endian): ``_SIDE`` = ``4s`` magic ``CTDV``, ``u8`` version 1, ``u8`` rate
point, ``u8`` flags (bit 0 integer data, bit 1 residual layer present), ``u8`` motion (0
zero, 1 block), ``f64`` gain, offset, scale, residual step, ``8s`` weights tag, ``u32``
motion bytes; then one ``_FRAME`` per view (``u32`` latent check, ``u32`` grid check,
``u32`` payload length); the motion (zlib of int8, views x blocks, the first view's row
zero); the views' payloads; the residual stream.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import CorruptFileError, InputError
from ..frames import image_shape
from ..learned import fixed_point
from .learned import (
    LearnedCodec,
    ModelLoader,
    ModelSession,
    ZooOp,
    _load_model,
    _padded,
    check_grid,
    check_side,
    checked_model,
    decoded_values,
    reconstruct,
    residual_of,
    side_flags,
    weights_tag,
)
from .registry import register_codec

if TYPE_CHECKING:
    from ..learned.models.base import Coded, LearnedModel

_MAGIC = b"CTDV"
_VERSION = 1
_SIDE = struct.Struct("<4sBBBBdddd8sI")
_FRAME = struct.Struct("<III")
MOTIONS = ("zero", "block")
#: Detector columns per motion block, and the search range in quarter pixels.
BLOCK_COLUMNS = 16
SEARCH_QUARTERS = 8
#: Half the chunk's range on the grid: the offset of a P-frame's residual image.
_HALF = 1 << (fixed_point.GRID_BITS - 1)
#: Bounds of a decoded view on the grid (a residual adds to its prediction).
_GRID_LIMIT = 2**30


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


def search_motion(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per block, the shift of ``reference`` (int64 grid) nearest ``target`` (float, grid
    units) in squared error; ties go to the smaller shift (int8)."""
    cols = reference.shape[-1]
    n_blocks = -(-cols // BLOCK_COLUMNS)
    pad = n_blocks * BLOCK_COLUMNS - cols
    candidates = sorted(range(-SEARCH_QUARTERS, SEARCH_QUARTERS + 1), key=abs)
    errors = np.empty((len(candidates), n_blocks))
    for k, s in enumerate(candidates):
        diff = target - compensate(reference, np.full(n_blocks, s))
        per_column = np.pad(np.sum(diff * diff, axis=0), (0, pad))
        errors[k] = per_column.reshape(n_blocks, BLOCK_COLUMNS).sum(axis=1)
    return np.asarray(candidates, dtype=np.int8)[np.argmin(errors, axis=0)]


def _code_image(model: LearnedModel, image: np.ndarray, gain: float) -> tuple[Coded, np.ndarray]:
    """One normalised image (H, W) coded: its latents and the decoder's grid (int64)."""
    import torch

    from ..learned.layers import pad_to_multiple

    x = pad_to_multiple(torch.from_numpy(image[None, None]), model.downsampling)
    coded = model.code(model.analyse(x), gain)
    grid, _ = reconstruct(model, coded, (1, *image.shape))
    return coded, grid[0].astype(np.int64)


class DvcSession(ModelSession):
    """Encoder state of one GOP: the closed-loop coding at each operating point."""

    def __init__(self, x: np.ndarray, motion: str, loader: ModelLoader = _load_model) -> None:
        super().__init__("dvc", x, image_shape(x.shape))
        self.motion = motion
        self.loader = loader
        self._models: dict[int, tuple[LearnedModel, str]] = {}
        self._coded: dict[ZooOp, tuple[list[tuple[bytes, int, int]], np.ndarray, bytes]] = {}

    def model(self, rate_point: int) -> tuple[LearnedModel, str]:
        if rate_point not in self._models:
            self._models[rate_point] = self.loader("hyperprior", rate_point)
        return self._models[rate_point]

    def gain_range(self, rate_point: int) -> tuple[float, float]:
        return self.model(rate_point)[0].gain_range

    def coded(self, op: ZooOp) -> tuple[list[tuple[bytes, int, int]], np.ndarray, bytes]:
        """(per view: payload, latent check, grid check), the decoded grid (m, H, W)
        int64, the motion bytes; cached."""
        if op not in self._coded:
            self._coded[op] = self._code(op)
        return self._coded[op]

    def _code(self, op: ZooOp) -> tuple[list[tuple[bytes, int, int]], np.ndarray, bytes]:
        model, _ = self.model(op[0])
        unit = self.unit()
        decoded = np.empty(unit.shape, dtype=np.int64)
        frames = []
        moves = np.zeros((len(unit), -(-unit.shape[2] // BLOCK_COLUMNS)), dtype=np.int8)
        scale = 2.0**fixed_point.GRID_BITS
        for t, view in enumerate(unit):
            if t == 0:
                coded, grid = _code_image(model, view, op[1])
                decoded[t] = grid
            else:
                if self.motion == "block":
                    moves[t] = search_motion(view * scale, decoded[t - 1])
                prediction = compensate(decoded[t - 1], moves[t])
                coded, grid = _code_image(model, view - prediction / scale + 0.5, op[1])
                decoded[t] = np.clip(prediction + grid - _HALF, -_GRID_LIMIT, _GRID_LIMIT)
            frames.append((coded.payload, coded.check, fixed_point.grid_check(grid)))
        motion = zlib.compress(moves.tobytes(), 9) if self.motion == "block" else b""
        return frames, decoded, motion

    def latent_bits(self, op: ZooOp) -> float:
        frames, _, motion = self.coded(op)
        size = _SIDE.size + len(frames) * _FRAME.size + len(motion)
        return 8.0 * (size + sum(len(f[0]) for f in frames)) / self.values.size

    def prediction(self, op: ZooOp) -> np.ndarray:
        return self.grid_values(self.coded(op)[1])

    def pack(self, op: ZooOp, step: float | None, tail: bytes) -> bytes:
        frames, _, motion = self.coded(op)
        side = _SIDE.pack(
            _MAGIC, _VERSION, op[0], side_flags(self.integer, step), MOTIONS.index(self.motion),
            op[1], self.offset, self.scale, step or 0.0, weights_tag(self.model(op[0])[1]),
            len(motion),
        )  # fmt: skip
        table = b"".join(_FRAME.pack(check, grid, len(payload)) for payload, check, grid in frames)
        return side + table + motion + b"".join(f[0] for f in frames) + tail


def decode_dvc(
    stream: bytes, shape: tuple[int, ...], work_dtype: str, loader: ModelLoader = _load_model
) -> np.ndarray:
    """Decode a ``dvc`` chunk stream to an array of ``shape`` and ``work_dtype``; every
    length is checked against the stream before anything of that size is decoded."""
    if len(stream) < _SIDE.size:
        raise CorruptFileError("dvc stream is truncated")
    (magic, version, rate_point, flags, motion, gain, offset, scale, step, sha8,
     n_motion) = _SIDE.unpack_from(stream)  # fmt: skip
    if magic != _MAGIC or version != _VERSION:
        raise CorruptFileError(f"not a version-{_VERSION} dvc stream")
    check_side("dvc", flags, gain, offset, scale, step)
    if motion >= len(MOTIONS):
        raise CorruptFileError(f"dvc stream has an unknown motion {motion}")
    m, h, w = image_shape(tuple(shape))
    n_blocks = -(-w // BLOCK_COLUMNS)
    pos = _SIDE.size + m * _FRAME.size
    if pos + n_motion > len(stream):
        raise CorruptFileError("dvc stream is truncated")
    frames = [_FRAME.unpack_from(stream, _SIDE.size + t * _FRAME.size) for t in range(m)]
    moves = np.zeros((m, n_blocks), dtype=np.int8)
    if MOTIONS[motion] == "block":
        try:
            raw = zlib.decompressobj().decompress(stream[pos : pos + n_motion], m * n_blocks + 1)
        except zlib.error as exc:
            raise CorruptFileError(f"dvc motion is damaged ({exc})") from None
        if len(raw) != m * n_blocks:
            raise CorruptFileError("dvc motion does not match the chunk's shape")
        moves = np.frombuffer(raw, dtype=np.int8).reshape(m, n_blocks)
        if np.any(np.abs(moves.astype(np.int64)) > SEARCH_QUARTERS):
            raise CorruptFileError("dvc motion is out of range")
    elif n_motion:
        raise CorruptFileError("dvc stream has motion bytes without motion")
    pos += n_motion
    end = pos + sum(length for _, _, length in frames)
    if end > len(stream):
        raise CorruptFileError("dvc stream is truncated")
    what = f"hyperprior rate point {rate_point}"
    model = checked_model("dvc", what, loader("hyperprior", rate_point), sha8, gain)
    q = residual_of("dvc", stream[end:], flags, (m, h, w))
    padded = _padded((1, h, w), model.downsampling)
    decoded = np.empty((m, h, w), dtype=np.int64)
    for t, (latent_check, grid_check, length) in enumerate(frames):
        coded = model.decode(stream[pos : pos + length], padded, gain, latent_check)
        pos += length
        grid, _ = reconstruct(model, coded, (1, h, w))
        check_grid("dvc", grid, grid_check)
        if t == 0:
            decoded[t] = grid[0]
        else:
            prediction = compensate(decoded[t - 1], moves[t])
            decoded[t] = np.clip(prediction + grid[0] - _HALF, -_GRID_LIMIT, _GRID_LIMIT)
    values = decoded_values(decoded, offset, scale, flags, q, step)
    return values.reshape(shape).astype(work_dtype)


@register_codec
class Dvc(LearnedCodec):
    """Closed-loop video coding of the views: hyperprior I-frame and motion-compensated
    P-frame residuals, one GOP per chunk (see the module docstring).

    Parameters
    ----------
    motion : {"block", "zero"}
        Motion compensation of the P-frames: a column shift per block of 16 columns, or
        none.
    rate_point, mode, value, data_range
        As for ``hyperprior``.
    """

    codec_id = "dvc"
    method = "hyperprior"
    description = "closed-loop video coding of the views: hyperprior I + motion-compensated P"
    #: One GOP: the views of a chunk (``--chunk-views`` sets the GOP length).
    preferred_chunk_views: ClassVar[int | None] = 16

    def __init__(self, *, motion: str = "block", rate_point: int | None = None, **rate: Any):
        super().__init__(rate_point=rate_point, **rate)
        if motion not in MOTIONS:
            raise InputError(f"dvc motion must be one of {', '.join(MOTIONS)}, not {motion!r}")
        self.motion = motion

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "motion": self.motion}

    def _session(self, x: np.ndarray) -> ModelSession:
        return DvcSession(x, self.motion)

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        return decode_dvc(stream, shape, work_dtype)
