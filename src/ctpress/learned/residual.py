"""Error-bounded residual layer, usable on top of any learned codec.

The residual ``original - reconstruction`` (both on the data's grid) is quantised with a
uniform step (``2E`` for a max error ``E`` on float data, the odd integer
``2 floor(E) + 1`` on integer data, 1 for lossless) and entropy-coded:

- each symbol ``v`` is zig-zag mapped to ``u >= 0`` and split into a token (``u`` itself
  below 16, else the exponent and the two bits below the leading one) and raw low bits;
- tokens are range-coded with the table of a discretised Laplace law chosen per 16x16
  block (the block's scale index is picked by the encoder from the block's mean
  magnitude and sent, delta-coded with a histogram stored in the stream);
- raw bits are stored as they are, bit plane after bit plane.

All tables are integers: the Laplace tables live in ``weights/residual_tables.safetensors``
(built once by :func:`build_residual_tables`, pinned by its SHA-256), the histograms are
sent.  So the residual decodes identically everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import safetensors.numpy

from ..errors import CorruptFileError
from .tables import TableCoder, count_table, pack_varints, quantise_pmf, unpack_varints

#: Side of the square blocks that share a scale index.
BLOCK = 16
#: Largest exponent of a zig-zag value (values below 2**(MAX_EXPONENT + 1)).
MAX_EXPONENT = 40
_DIRECT = 16  # tokens 0..15 are the values themselves
N_TOKENS = _DIRECT + 4 * (MAX_EXPONENT - 3)
#: Mean magnitudes |v| of the Laplace tables (log-spaced).
N_SCALES = 48
TABLES_FILE = "residual_tables.safetensors"
#: SHA-256 of the shipped tables: changing them changes the format.
TABLES_SHA256 = "d129a54156752e14c0cd271d328ab2e95118e8fd63fcfbe48eea42a2b89e22ed"


# ---------------------------------------------------------------- quantisation
def residual_step(bound: float, integer: bool) -> float:
    """Quantisation step that keeps every error within ``bound`` (0: lossless)."""
    if integer:
        return float(2 * math.floor(bound) + 1)
    return 2.0 * bound


def quantise(x: np.ndarray, recon: np.ndarray, step: float, integer: bool) -> np.ndarray:
    """Symbols ``round((x - recon) / step)`` (int64); on integer data ``x`` and ``recon``
    are integers and ``step`` is odd, so the error is at most ``(step - 1) / 2``."""
    if integer:
        r = x.astype(np.int64) - recon.astype(np.int64)
        k = int(step)
        return np.sign(r) * ((np.abs(r) + k // 2) // k)
    return np.floor((x.astype(np.float64) - recon) / step + 0.5).astype(np.int64)


def dequantise(recon: np.ndarray, q: np.ndarray, step: float) -> np.ndarray:
    """``recon + q * step`` in float64 (exact on integer data)."""
    return recon + q.astype(np.float64) * step


# -------------------------------------------------------------------- tokens
def _zigzag(v: np.ndarray) -> np.ndarray:
    return np.where(v >= 0, 2 * v, -2 * v - 1).astype(np.uint64)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    s = u.astype(np.int64)
    odd = (s & 1).astype(bool)
    s >>= 1  # even 2k -> k; odd 2k + 1 -> -(k + 1)
    np.negative(s, out=s, where=odd)
    s[odd] -= 1
    return s


def tokenize(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split zig-zag values into (token, number of raw bits, raw bits)."""
    u = u.astype(np.uint64)
    if u.size and int(u.max()) >> (MAX_EXPONENT + 1):
        raise ValueError("residual too large for the residual coder")
    exponent = np.zeros(u.shape, dtype=np.int64)
    big = u >= _DIRECT
    exponent[big] = np.floor(np.log2(u[big].astype(np.float64))).astype(np.int64)
    # log2 of a float may be off by one near powers of two: fix exactly
    shifted = u >> exponent.astype(np.uint64)
    exponent[big & (shifted >= 2)] += 1
    exponent[big & (shifted == 0)] -= 1
    nbits = np.where(big, exponent - 2, 0)
    mant = (u >> np.maximum(nbits, 0).astype(np.uint64)) & np.uint64(3)
    token = np.where(big, _DIRECT + 4 * (exponent - 4) + mant.astype(np.int64), u.astype(np.int64))
    raw = u & ((np.uint64(1) << nbits.astype(np.uint64)) - np.uint64(1))
    return token, nbits, raw


def _token_bits(token: np.ndarray) -> np.ndarray:
    return np.where(token < _DIRECT, 0, (token - _DIRECT) // 4 + 2)


def detokenize(token: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`tokenize`: zig-zag values (uint64)."""
    big = token >= _DIRECT
    nbits = _token_bits(token)
    mant = (token - _DIRECT) % 4
    head = ((4 + mant) << np.maximum(nbits, 0)).astype(np.uint64)
    return np.where(big, head | raw.astype(np.uint64), token.astype(np.uint64))


def pack_bits(raw: np.ndarray, nbits: np.ndarray) -> bytes:
    """Raw bits, bit plane by bit plane (plane j holds bit j of every value with more
    than j bits, in order)."""
    planes = []
    for j in range(int(nbits.max(initial=0))):
        sel = nbits > j
        planes.append(((raw[sel] >> np.uint64(j)) & np.uint64(1)).astype(np.uint8))
    if not planes:
        return b""
    return np.packbits(np.concatenate(planes)).tobytes()


def unpack_bits(data: bytes, nbits: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bits` given the bit counts."""
    total = int(nbits.sum())
    if (total + 7) // 8 != len(data):
        raise CorruptFileError("residual raw bits have the wrong length")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    raw = np.zeros(nbits.shape, dtype=np.uint64)
    pos = 0
    for j in range(int(nbits.max(initial=0))):  # widened plane by plane (8 bytes a bit)
        sel = np.flatnonzero(nbits > j)
        raw[sel] |= bits[pos : pos + sel.size].astype(np.uint64) << np.uint64(j)
        pos += sel.size
    return raw


# -------------------------------------------------------------------- tables
def residual_scales() -> np.ndarray:
    """Mean magnitudes |v| of the :data:`N_SCALES` Laplace tables (0.01 to 30000)."""
    return np.exp(np.linspace(math.log(0.01), math.log(3e4), N_SCALES))


def build_residual_tables() -> dict[str, np.ndarray]:
    """Integer token tables of discretised Laplace laws (run once; the result ships).

    Returns
    -------
    dict
        ``freqs`` (N_SCALES, N_TOKENS) int32, each row summing to 2**20, and
        ``scales`` (N_SCALES,) float64.
    """
    scales = residual_scales()
    u = np.arange(1 << 20, dtype=np.uint64)
    token, _, _ = tokenize(u)
    v = np.abs(_unzigzag(u)).astype(np.float64)
    pmf = np.zeros((N_SCALES, N_TOKENS))
    for i, b in enumerate(scales):
        # discrete Laplace with E|v| = b: P(v) ~ theta^|v|, E|v| = 2 theta / (1 - theta^2)
        theta = (math.sqrt(1 + b * b) - 1) / b
        p = np.exp(v * math.log(theta))
        pmf[i] = np.bincount(token, weights=p, minlength=N_TOKENS)
    freqs = quantise_pmf(pmf).astype(np.int32)
    return {"freqs": freqs, "scales": scales}


def write_residual_tables(path: Path) -> str:
    """Write :func:`build_residual_tables` to ``path``; returns its SHA-256."""
    safetensors.numpy.save_file(build_residual_tables(), str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.cache
def _tables() -> tuple[TableCoder, np.ndarray]:
    data = resources.files("ctpress.learned").joinpath("weights", TABLES_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TABLES_SHA256:
        raise CorruptFileError(
            f"residual tables {TABLES_FILE} have SHA-256 {digest[:16]}..., expected "
            f"{TABLES_SHA256[:16]}...: reinstall ctpress"
        )
    tensors = safetensors.numpy.load(data)
    freqs = tensors["freqs"]
    scales = tensors["scales"]
    coder = TableCoder(
        freqs.ravel(), np.zeros(len(freqs), np.int64), np.full(len(freqs), N_TOKENS), escapes=False
    )
    bounds = np.sqrt(scales[:-1] * scales[1:])
    return coder, bounds


# ---------------------------------------------------------------- stream
def _block_count(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(blocks, blocks per image row, blocks per image) of a residual of ``shape``."""
    n, h, w = shape
    bh, bw = -(-h // BLOCK), -(-w // BLOCK)
    return n * bh * bw, bw, bh * bw


def _block_ids(shape: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    n, h, w = shape
    n_blocks, bw, per_image = _block_count(shape)
    rows = (np.arange(h) // BLOCK)[:, None] * bw + (np.arange(w) // BLOCK)[None, :]
    ids = np.arange(n)[:, None, None] * per_image + rows[None]
    return ids, n_blocks


def scale_index(mean_magnitude: np.ndarray) -> np.ndarray:
    """Index of the Laplace table whose mean magnitude |v| is nearest (in log) to each
    ``mean_magnitude`` (int64, same shape)."""
    _, bounds = _tables()
    return np.searchsorted(bounds, np.asarray(mean_magnitude, dtype=np.float64))


def _code_tokens(q: np.ndarray, rows: np.ndarray) -> tuple[bytes, bytes]:
    """(range-coded tokens, raw bits) of integer symbols ``q`` with tables ``rows``."""
    coder, _ = _tables()
    token, nbits, raw = tokenize(_zigzag(q.astype(np.int64).ravel()))
    return coder.encode(token, np.asarray(rows, dtype=np.int64).ravel()), pack_bits(raw, nbits)


def _decode_tokens(token_bytes: bytes, raw_bytes: bytes, rows: np.ndarray) -> np.ndarray:
    coder, _ = _tables()
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= coder.rows):
        raise CorruptFileError("symbol table indexes are out of range")
    token = coder.decode(token_bytes, rows.ravel())
    raw = unpack_bits(raw_bytes, _token_bits(token))
    return _unzigzag(detokenize(token, raw)).reshape(rows.shape)


def encode_symbols(q: np.ndarray, rows: np.ndarray) -> bytes:
    """Entropy-code integer symbols ``q`` (any shape), symbol ``i`` with the Laplace table
    ``rows[i]`` (same shape; see :func:`scale_index`).  The caller stores ``rows`` (or
    what it is derived from) and the symbol count."""
    token_bytes, raw_bytes = _code_tokens(q, rows)
    return struct.pack("<I", len(token_bytes)) + token_bytes + raw_bytes


def decode_symbols(data: bytes, rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_symbols`: int64 symbols, shape of ``rows``."""
    if len(data) < 4:
        raise CorruptFileError("symbol stream is truncated")
    (n_token,) = struct.unpack_from("<I", data)
    if 4 + n_token > len(data):
        raise CorruptFileError("symbol stream is truncated")
    return _decode_tokens(data[4 : 4 + n_token], data[4 + n_token :], rows)


def encode_residual(q: np.ndarray) -> bytes:
    """Entropy-code integer residual symbols ``q`` of shape (n, h, w): one Laplace table
    per 16x16 block, chosen from the block's mean magnitude and delta-coded."""
    ids, n_blocks = _block_ids(q.shape)
    magnitude = np.bincount(
        ids.ravel(), weights=np.abs(q).ravel().astype(np.float64), minlength=n_blocks
    )
    count = np.bincount(ids.ravel(), minlength=n_blocks)
    index = scale_index(magnitude / np.maximum(count, 1))
    delta = np.diff(index, prepend=0)
    dmin = int(delta.min())
    hist = np.bincount(delta - dmin)
    table = count_table(hist)
    index_coder = TableCoder(table, np.array([dmin]), np.array([table.size]), escapes=False)
    index_bytes = (
        pack_varints(np.array([2 * abs(dmin) + (dmin < 0), len(hist)], dtype=np.uint64))
        + pack_varints(hist.astype(np.uint64))
        + index_coder.encode(delta, np.zeros(delta.size, np.int64))
    )
    token_bytes, raw_bytes = _code_tokens(q, index[ids])
    return (
        struct.pack("<II", len(index_bytes), len(token_bytes))
        + index_bytes
        + token_bytes
        + raw_bytes
    )


def decode_residual(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`encode_residual`: int64 symbols of ``shape``."""
    if len(data) < 8:
        raise CorruptFileError("residual stream is truncated")
    n_index, n_token = struct.unpack_from("<II", data)
    pos = 8
    if pos + n_index + n_token > len(data):
        raise CorruptFileError("residual stream is truncated")
    index_part = data[pos : pos + n_index]
    head, used = unpack_varints(index_part, 2)
    zz, n_hist = int(head[0]), int(head[1])
    dmin = -(zz >> 1) if zz & 1 else zz >> 1
    # table index deltas lie in -(N_SCALES - 1) .. N_SCALES - 1, one per block
    if not (1 <= n_hist <= 2 * N_SCALES - 1 and 1 - N_SCALES <= dmin <= N_SCALES - 1):
        raise CorruptFileError("residual block table header is damaged")
    hist, used2 = unpack_varints(index_part[used:], n_hist)
    n_blocks = _block_count(shape)[0]
    if sum(int(h) for h in hist) != n_blocks:  # checked before anything of shape's size
        raise CorruptFileError("residual block table does not match the chunk's blocks")
    table = count_table(hist)
    index_coder = TableCoder(table, np.array([dmin]), np.array([table.size]), escapes=False)
    delta = index_coder.decode(index_part[used + used2 :], np.zeros(n_blocks, np.int64))
    index = np.cumsum(delta)
    pos += n_index
    rows = index[_block_ids(shape)[0]]
    return _decode_tokens(data[pos : pos + n_token], data[pos + n_token :], rows)
