"""The Python API: ``compress``, ``decompress`` and ``open`` (mirrors the CLI)."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, overload

import numpy as np

from .codecs import Codec, get_codec_class
from .container import (
    DEFAULT_MAX_OUTPUT_BYTES,
    CtpzFile,
    container_overhead,
    default_chunk_views,
    encode_ctpz,
    write_ctpz,
)
from .errors import CtpressError, InputError, RateControlError
from .io import atomic_path, check_output, read_scan, write_scan
from .scan import Scan, as_scan

PathLike = str | os.PathLike[str]


def resolve_rate(
    codec_id: str,
    *,
    lossless: bool = False,
    max_error: float | None = None,
    bpp: float | None = None,
    psnr: float | None = None,
) -> tuple[str, float | None]:
    """Pick the one rate control asked for: ``(mode, value)``.

    With none given, ``lossless`` where the codec supports it; otherwise an error that
    tells the user which controls the codec takes.
    """
    asked = [
        (mode, value)
        for mode, value in (
            ("lossless", lossless or None),
            ("max_error", max_error),
            ("bpp", bpp),
            ("psnr", psnr),
        )
        if value is not None
    ]
    if len(asked) > 1:
        names = ", ".join(m for m, _ in asked)
        raise InputError(f"choose one rate control, got {names}")
    modes = get_codec_class(codec_id).rate_modes()
    if not asked:
        if "lossless" in modes:
            return "lossless", None
        raise InputError(
            f"codec {codec_id!r} has no lossless mode; give one of: "
            + ", ".join(f"--{m.replace('_', '-')}" for m in modes)
        )
    mode, value = asked[0]
    if mode == "psnr" and not float(value) > 0:
        raise InputError(f"psnr must be > 0 dB, got {value}")
    return mode, (None if mode == "lossless" else float(value))


def make_codec(
    scan: Scan,
    codec: str | Codec = "zstd",
    *,
    lossless: bool = False,
    max_error: float | None = None,
    bpp: float | None = None,
    psnr: float | None = None,
    data_range: float | None = None,
    **codec_options: Any,
) -> tuple[Codec, dict[str, Any]]:
    """Build the codec for ``scan`` and the rate-control record stored in the header.

    PSNR targets use ``data_range`` (default: max - min of the whole scan) so that every
    chunk aims at the same MSE.
    """
    if isinstance(codec, Codec):
        return codec, {"mode": codec.mode, "value": codec.value, "data_range": codec.data_range}
    mode, value = resolve_rate(codec, lossless=lossless, max_error=max_error, bpp=bpp, psnr=psnr)
    if mode == "psnr" and data_range is None:
        data_range = float(scan.projections.max()) - float(scan.projections.min()) or 1.0
    cls = get_codec_class(codec)
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "mode", "value"}
    unknown = sorted(set(codec_options) - allowed)
    if unknown:
        raise InputError(
            f"codec {cls.codec_id!r} has no setting {', '.join(map(repr, unknown))}; its "
            f"settings are {', '.join(sorted(allowed - {'data_range'})) or 'none'}"
        )
    with _blame_settings(cls.codec_id, codec_options):
        instance = cls(mode=mode, value=value, data_range=data_range, **codec_options)
    return instance, {"mode": mode, "value": value, "data_range": data_range}


@contextmanager
def _blame_settings(codec_id: str, options: dict[str, Any]) -> Iterator[None]:
    """Turn a TypeError, ValueError or OverflowError raised while a codec is built with user
    settings into an InputError naming them (the codecs check their settings themselves;
    this is the net for what a check misses); without settings it is a bug and propagates
    unchanged.  Errors while encoding are not blamed on the settings: they are bugs."""
    try:
        yield
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, CtpressError) or not options:
            raise
        settings = ", ".join(f"{key}={value!r}" for key, value in options.items())
        noun = "setting" if len(options) == 1 else "settings"
        raise InputError(
            f"codec {codec_id!r} cannot use the {noun} {settings} ({type(exc).__name__}: "
            f"{exc}); give a valid value"
        ) from exc


@overload
def compress(data: Scan | np.ndarray | PathLike, output: None = None, **kwargs: Any) -> bytes: ...


@overload
def compress(data: Scan | np.ndarray | PathLike, output: PathLike, **kwargs: Any) -> int: ...


def compress(
    data: Scan | np.ndarray | PathLike,
    output: PathLike | None = None,
    *,
    codec: str | Codec = "zstd",
    lossless: bool = False,
    max_error: float | None = None,
    bpp: float | None = None,
    psnr: float | None = None,
    data_range: float | None = None,
    chunk_views: int | None = None,
    jobs: int = 1,
    progress: bool = False,
    input_format: str | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
    **codec_options: Any,
) -> bytes | int:
    """Compress projections to a ``.ctpz`` file (or bytes).

    Parameters
    ----------
    data : Scan, ndarray of shape (n_views, rows, cols) or (n_views, cols), or path
        What to compress.  A path is read with :func:`ctpress.io.read_scan`.
    output : path or None
        Where to write the ``.ctpz`` (atomically).  None: return the bytes instead.  It must
        not be the input; an existing file is replaced only with ``overwrite``.
    codec : str or Codec
        Codec id (see ``ctpress codecs``) or a configured codec instance.
    lossless, max_error, bpp, psnr
        One rate control: bit-exact; max abs error in data units; bits per value of the
        whole file (header included, within 10 %); PSNR in dB versus ``data_range``.
    data_range : float, optional
        Peak for the PSNR target (default: max - min of the scan).
    chunk_views : int, optional
        Views per independently decodable chunk (default: about 1 MiB of input).
    jobs : int
        Threads encoding chunks in parallel (the output bytes do not depend on it).
    progress : bool
        Show a progress bar.
    input_format : str, optional
        Format of ``data`` when it is a path (default: from its extension).
    dataset : str, optional
        Name of the projections array when ``data`` is an npz, HDF5 or zarr path.
    overwrite : bool
        Replace an existing ``output``.
    **codec_options
        Codec-specific settings (e.g. ``level`` for zstd).

    Returns
    -------
    bytes or int
        The file's bytes when ``output`` is None, else the number of bytes written.
    """
    inputs: list[PathLike] = [data] if isinstance(data, str | os.PathLike) else []
    if dataset is not None and not inputs:
        raise InputError("dataset names an array inside an input file; data is not a path")
    if jobs < 1:
        raise InputError(f"jobs must be >= 1, got {jobs}")
    if chunk_views is not None and chunk_views < 1:
        raise InputError(f"chunk_views must be >= 1, got {chunk_views}")
    if output is not None:
        if Path(output).suffix != ".ctpz":
            raise InputError(f"{output}: compressed output must end in .ctpz")
        check_output(output, overwrite=overwrite, inputs=inputs)
    scan = (
        read_scan(data, input_format, dataset)
        if isinstance(data, str | os.PathLike)
        else as_scan(data)
    )
    codec_obj, rate = make_codec(
        scan,
        codec,
        lossless=lossless,
        max_error=max_error,
        bpp=bpp,
        psnr=psnr,
        data_range=data_range,
        **codec_options,
    )
    chunk_views = chunk_views or default_chunk_views(
        scan.shape, scan.dtype.itemsize, codec_obj.preferred_chunk_bytes
    )
    if codec_obj.mode == "bpp":
        codec_obj = _budget_for_overhead(scan, codec_obj, chunk_views, rate)
    kwargs: dict[str, Any] = dict(chunk_views=chunk_views, rate=rate, jobs=jobs, progress=progress)
    try:
        if output is None:
            return encode_ctpz(scan, codec_obj, **kwargs)
        with (
            atomic_path(output, overwrite=overwrite, inputs=inputs) as tmp,
            tmp.open("wb") as fh,
        ):
            return write_ctpz(fh, scan, codec_obj, **kwargs)
    except RateControlError as exc:
        if codec_obj.mode != "bpp":
            raise
        asked = float(rate["value"])
        assert codec_obj.value is not None
        raise RateControlError(
            f"{exc} (asked: {asked:g} bits/value for the whole file, of which "
            f"{codec_obj.value:.3g} for the coded data after the container's own "
            f"{asked - codec_obj.value:.2g})"
        ) from None


def _budget_for_overhead(scan: Scan, codec: Codec, chunk_views: int, rate: dict[str, Any]) -> Codec:
    """Lower the per-chunk bpp target by the container's own bytes (compressed header,
    index, chunk framing, footer, aux payloads), so the *file* lands on the requested
    bits per value.  The overhead is measured on the real header and index."""
    assert codec.value is not None
    n_values = int(np.prod(scan.shape))
    n_chunks = -(-scan.shape[0] // chunk_views)
    # stream bytes per chunk, for the size of the length fields (an upper bound)
    chunk_bytes = math.ceil(codec.value * n_values / 8 / n_chunks)
    overhead = container_overhead(scan, codec, chunk_views, rate, chunk_bytes)
    budgeted = codec
    for _ in range(3):  # the header stores the lowered target: settle its length
        chunk_bpp = codec.value - 8.0 * overhead / n_values
        if chunk_bpp <= 0:
            raise InputError(
                f"{codec.value:g} bits/value is below the container's own overhead "
                f"({8.0 * overhead / n_values:.3g} bits/value, {overhead} bytes, for this "
                "scan); ask for more"
            )
        budgeted = codec.with_rate(codec.rate.with_value(chunk_bpp))
        actual = container_overhead(scan, budgeted, chunk_views, rate, chunk_bytes)
        if actual <= overhead:
            break
        overhead = actual
    return budgeted


def decompress(
    source: PathLike | bytes,
    output: PathLike | None = None,
    *,
    views: tuple[int, int] | None = None,
    output_format: str | None = None,
    overwrite: bool = False,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> Scan:
    """Decode a ``.ctpz`` file (path or bytes) to a :class:`Scan`.

    ``views=(start, stop)`` decodes only that view range.  With ``output``, the scan is
    also written (format from the extension or ``output_format``), atomically; the output
    must not be the input, and an existing one is replaced only with ``overwrite`` (a
    directory only if ctpress wrote it).  ``max_output_bytes`` caps the memory the decoded
    data may take (InputError beyond it; see :class:`~ctpress.container.CtpzFile`).
    """
    if output is not None:
        check_output(output, overwrite=overwrite, inputs=[source])
    with CtpzFile(source, max_output_bytes=max_output_bytes) as f:
        start, stop = views if views is not None else (0, f.shape[0])
        scan = f.read_scan(start, stop)
    if output is not None:
        write_scan(scan, output, format=output_format, overwrite=overwrite)
    return scan


def open(path: PathLike | bytes, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> CtpzFile:
    """Open a ``.ctpz`` file: header, geometry and lazy view-range access
    (``max_output_bytes``: the most memory one read may take).

    Example
    -------
    >>> with ctpress.open("scan.ctpz") as f:  # doctest: +SKIP
    ...     views = f[100:110]              # decodes only the chunks covering 100:110
    """
    return CtpzFile(path, max_output_bytes=max_output_bytes)
