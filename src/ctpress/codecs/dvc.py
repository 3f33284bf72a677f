"""Video coding of the view sequence, DVC-style (``--codec dvc``).

A chunk is one group of views (GOP, :attr:`Dvc.preferred_chunk_views` views by default;
``--chunk-views`` sets it), coded in view order in the closed loop of
:mod:`ctpress.learned.video`: the first view (I-frame) as an image by the shipped
``hyperprior`` model; every other view (P-frame) as the residual against a
motion-compensated prediction from the previous *decoded* views (one column shift per block
of 16 columns, ``motion="block"``; the ablations: one shift per view, ``"global"``, or
none, ``"zero"``; then per block a prediction mode: the previous view or the mean of the
last 2-4, smoothed along the columns or not), by the shipped
``dvc`` model of the same rate point: a ``hyperprior``
whose entropy model ``ctpress train dvc`` fine-tuned on such residuals (stream version 1
coded them with the ``hyperprior`` model itself; it still decodes).

Decoding is exact by construction where it predicts (integer motion compensation on the
decoder-side grid, see :mod:`ctpress.learned.video`).  The models' decoders are checked
per view: each view's grid has its CRC-32 in the stream (a mismatch is a
CorruptFileError; the GOP bounds it).  The error-bounded residual layer, the bpp / PSNR
searches (over the rate points and gains, each probe coding the GOP again) and the weights
hashes come from :class:`~ctpress.codecs.learned.LearnedCodec`.  Views of fewer than 8
rows (sinograms) are one image, coded intra.

Stream (little-endian), version 5: ``_SIDES[5]`` = ``4s`` magic ``CTDV``, ``u8`` version,
``u8`` rate point, ``u8`` flags (bit 0 integer data, bit 1 residual layer present), ``u8``
motion (0 zero, 1 block, 2 global), ``f64`` gain, offset, scale, residual step, ``8s``
weights tag of the I model, ``8s`` weights tag of the P model, ``u32`` length of the GOP
stream; one ``u32`` grid check per view; the GOP stream (motion and latents of every
view, :func:`ctpress.learned.video.code_gop`, the P-frames in batches written across
their views); the residual stream.  Version 4 (still decoded) writes every P-frame on its
own; version 3 (still decoded) also has only the four one-reference prediction modes.
Versions 1 and 2
(still decoded) end the side information with the motion's length, then per view a
``_FRAME`` (latent check, grid check, payload length), the motion (zlib of int8), the
views' separate payloads (version 1: one weights tag, of the model of both I- and
P-frames); see docs/format.md.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import CorruptFileError, InputError
from ..frames import image_shape
from ..learned.fixed_point import reconstruct
from ..learned.tables import SymbolReader
from ..learned.video import (
    GOP_VERSION,
    MOTIONS,
    SEARCH_QUARTERS,
    CodedGop,
    add_residual,
    blocks_of,
    code_gop,
    compensate,
    decode_gop,
)
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
    residual_of,
    side_flags,
    weights_tag,
)
from .registry import register_codec

if TYPE_CHECKING:
    from ..learned.models.base import LearnedModel

_MAGIC = b"CTDV"
_VERSION = GOP_VERSION
#: Side information of each stream version (version 1: one model for I- and P-frames;
#: the last field is the length of the motion bytes in versions 1 and 2, of the GOP's
#: stream in versions 3 to 5, which differ only in the prediction modes the GOP's stream
#: may choose and in how it orders the P-frames' symbols,
#: :data:`~ctpress.learned.video.VERSION_MODES`).
_SIDES = {
    1: struct.Struct("<4sBBBBdddd8sI"),
    **{version: struct.Struct("<4sBBBBdddd8s8sI") for version in (2, 3, 4, 5)},
}
#: Per view: versions 3 to 5 its grid check; versions 1 and 2 its latent check, grid
#: check and payload length.
_CHECK = struct.Struct("<I")
_FRAME = struct.Struct("<III")
#: Choices of the prediction's modes (encoder side: "none" stores mode 0 everywhere, the
#: previous view not smoothed).
SMOOTHINGS = ("auto", "none")
#: The zoo methods of the I- and P-frame models.
I_MODEL, P_MODEL = "hyperprior", "dvc"


class DvcSession(ModelSession):
    """Encoder state of one GOP: the closed-loop coding at each operating point."""

    def __init__(
        self, x: np.ndarray, motion: str, smoothing: bool = True, loader: ModelLoader = _load_model
    ) -> None:
        super().__init__("dvc", x, image_shape(x.shape))
        self.motion = motion
        self.smoothing = smoothing
        self.loader = loader
        self._coded: dict[ZooOp, CodedGop] = {}

    def gain_range(self, rate_point: int) -> tuple[float, float]:
        return self.loader(I_MODEL, rate_point)[0].gain_range

    def coded(self, op: ZooOp) -> CodedGop:
        """The GOP coded at ``op``; cached."""
        if op not in self._coded:
            i_model, p_model = self.loader(I_MODEL, op[0])[0], self.loader(P_MODEL, op[0])[0]
            self._coded[op] = code_gop(
                self.unit(), i_model, p_model, op[1], self.motion, self.smoothing
            )
        return self._coded[op]

    def latent_bits(self, op: ZooOp) -> float:
        gop = self.coded(op)
        size = _SIDES[_VERSION].size + len(gop.grid_checks) * _CHECK.size + len(gop.stream)
        return 8.0 * size / self.values.size

    def prediction(self, op: ZooOp) -> np.ndarray:
        return self.grid_values(self.coded(op).decoded)

    def pack(self, op: ZooOp, step: float | None, tail: bytes) -> bytes:
        gop = self.coded(op)
        tags = [weights_tag(self.loader(method, op[0])[1]) for method in (I_MODEL, P_MODEL)]
        side = _SIDES[_VERSION].pack(
            _MAGIC, _VERSION, op[0], side_flags(self.integer, step), MOTIONS.index(self.motion),
            op[1], self.offset, self.scale, step or 0.0, *tags, len(gop.stream),
        )  # fmt: skip
        checks = b"".join(_CHECK.pack(check) for check in gop.grid_checks)
        return side + checks + gop.stream + tail


def _motion_of(data: bytes, n_views: int, n_blocks: int) -> np.ndarray:
    """The motion table (n_views, n_blocks) int8 from its zlib bytes (versions 1 and 2),
    checked."""
    try:
        raw = zlib.decompressobj().decompress(data, n_views * n_blocks + 1)
    except zlib.error as exc:
        raise CorruptFileError(f"dvc motion is damaged ({exc})") from None
    if len(raw) != n_views * n_blocks:
        raise CorruptFileError("dvc motion does not match the chunk's shape")
    moves = np.frombuffer(raw, dtype=np.int8).reshape(n_views, n_blocks)
    if np.any(np.abs(moves.astype(np.int64)) > SEARCH_QUARTERS):
        raise CorruptFileError("dvc motion is out of range")
    return moves


def decode_dvc(
    stream: bytes, shape: tuple[int, ...], work_dtype: str, loader: ModelLoader = _load_model
) -> np.ndarray:
    """Decode a ``dvc`` chunk stream (version 1 to 5) to an array of ``shape`` and
    ``work_dtype``; every length is checked against the stream before anything of that
    size is decoded."""
    if len(stream) < 5 or stream[:4] != _MAGIC or stream[4] not in _SIDES:
        raise CorruptFileError(f"not a dvc stream of version {' or '.join(map(str, _SIDES))}")
    side = _SIDES[stream[4]]
    if len(stream) < side.size:
        raise CorruptFileError("dvc stream is truncated")
    _, version, rate_point, flags, motion, gain, offset, scale, step, *tags, length = (
        side.unpack_from(stream)
    )
    check_side("dvc", flags, gain, offset, scale, step)
    if motion >= len(MOTIONS) or (version == 1 and MOTIONS[motion] == "global"):
        raise CorruptFileError(f"dvc stream has an unknown motion {motion}")
    m, h, w = image_shape(tuple(shape))
    methods = (I_MODEL, I_MODEL) if version == 1 else (I_MODEL, P_MODEL)
    if version == 1:  # one model coded every view
        tags *= 2
    if version >= 3:
        pos = side.size + m * _CHECK.size
        end = pos + length
        if end > len(stream):
            raise CorruptFileError("dvc stream is truncated")
    else:
        pos, end, frames, moves = _legacy_layout(stream, side.size, length, MOTIONS[motion], m, w)
    q = residual_of("dvc", stream[end:], flags, (m, h, w))
    i_model, p_model = (
        checked_model("dvc", f"{method} rate point {rate_point}", loader(method, rate_point),
                      tag, gain)
        for method, tag in zip(methods, tags, strict=True)
    )  # fmt: skip
    if version >= 3:
        checks = struct.unpack_from(f"<{m}I", stream, side.size)
        reader = SymbolReader(stream[pos:end])
        decoded = decode_gop(
            reader, i_model, p_model, gain, MOTIONS[motion], (m, h, w),
            lambda t, grid: check_grid("dvc", grid, checks[t]), version,
        )  # fmt: skip
        reader.finish()
    else:
        decoded = _decode_frames(stream, pos, frames, moves, i_model, p_model, gain, (m, h, w))
    values = decoded_values(decoded, offset, scale, flags, q, step)
    return values.reshape(shape).astype(work_dtype)


def _legacy_layout(
    stream: bytes, pos: int, n_motion: int, motion: str, m: int, w: int
) -> tuple[int, int, list[tuple[int, int, int]], np.ndarray]:
    """Versions 1 and 2: where the views' payloads start and end, their frame table
    (latent check, grid check, length) and the motion (m, blocks)."""
    frames_at, pos = pos, pos + m * _FRAME.size
    if pos + n_motion > len(stream):
        raise CorruptFileError("dvc stream is truncated")
    frames = [_FRAME.unpack_from(stream, frames_at + t * _FRAME.size) for t in range(m)]
    moves = np.zeros((m, blocks_of(w)), dtype=np.int8)
    if motion == "block":
        moves = _motion_of(stream[pos : pos + n_motion], m, blocks_of(w))
    elif motion == "global":
        moves = np.repeat(_motion_of(stream[pos : pos + n_motion], m, 1), blocks_of(w), axis=1)
    elif n_motion:
        raise CorruptFileError("dvc stream has motion bytes without motion")
    pos += n_motion
    end = pos + sum(length for _, _, length in frames)
    if end > len(stream):
        raise CorruptFileError("dvc stream is truncated")
    return pos, end, frames, moves


def _decode_frames(
    stream: bytes,
    pos: int,
    frames: list[tuple[int, int, int]],
    moves: np.ndarray,
    i_model: LearnedModel,
    p_model: LearnedModel,
    gain: float,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Versions 1 and 2: the views from their separate payloads, on the grid (int64)."""
    _, h, w = shape
    decoded = np.empty(shape, dtype=np.int64)
    for t, (latent_check, grid_check, length) in enumerate(frames):
        model = i_model if t == 0 else p_model
        padded = _padded((1, h, w), model.downsampling)
        coded = model.decode(stream[pos : pos + length], padded, gain, latent_check)
        pos += length
        grid, _ = reconstruct(model, coded, (1, h, w))
        check_grid("dvc", grid, grid_check)
        if t == 0:
            decoded[t] = grid[0]
        else:
            decoded[t] = add_residual(compensate(decoded[t - 1], moves[t]), grid[0])
    return decoded


@register_codec
class Dvc(LearnedCodec):
    """Closed-loop video coding of the views: hyperprior I-frame and motion-compensated
    P-frame residuals, one GOP per chunk (see the module docstring).

    Parameters
    ----------
    motion : {"block", "global", "zero"}
        Motion compensation of the P-frames: a column shift per block of 16 columns, one
        for the whole view, or none.
    smoothing : {"auto", "none"}
        The prediction modes (means of several references, smoothing along the columns):
        per block as the encoder picks, or never, the previous view alone (an ablation:
        with ``motion="zero"``, plain frame differences).
    rate_point, mode, value, data_range
        As for ``hyperprior``.
    """

    codec_id = "dvc"
    method = "hyperprior"
    description = (
        "closed-loop video coding of the views: hyperprior I + motion-compensated P "
        "(residual model trained on them)"
    )
    #: One GOP: the views of a chunk (``--chunk-views`` sets the GOP length).
    preferred_chunk_views: ClassVar[int | None] = 64
    #: A GOP decodes in small steps (batches of views, then the predictions view by view):
    #: two at once in threads contend for the GIL (stream version 5, default scan, wall
    #: time: 0.44-0.45 s against 0.36-0.37 s one after the other at 0.5 bits/value, 0.52-0.57
    #: s against 0.49-0.50 s at 4).
    parallel_decode: ClassVar[bool] = False
    #: Encoding too, view by view, in torch on one thread (default scan, bpp 1, wall
    #: time: 20.8-22.5 s with two chunks at once in threads, 9.8-10.8 s one after the
    #: other).
    parallel_encode: ClassVar[bool] = False

    def __init__(
        self,
        *,
        motion: str = "block",
        smoothing: str = "auto",
        rate_point: int | None = None,
        **rate: Any,
    ):
        super().__init__(rate_point=rate_point, **rate)
        if motion not in MOTIONS:
            raise InputError(f"dvc motion must be one of {', '.join(MOTIONS)}, not {motion!r}")
        if smoothing not in SMOOTHINGS:
            raise InputError(
                f"dvc smoothing must be one of {', '.join(SMOOTHINGS)}, not {smoothing!r}"
            )
        self.motion = motion
        self.smoothing = smoothing

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "motion": self.motion, "smoothing": self.smoothing}

    def _session(self, x: np.ndarray) -> ModelSession:
        return DvcSession(x, self.motion, self.smoothing == "auto")

    def _decode_stream(self, stream: bytes, shape: tuple[int, ...], work_dtype: str) -> np.ndarray:
        return decode_dvc(stream, shape, work_dtype)
