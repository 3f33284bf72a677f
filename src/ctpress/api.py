"""The Python API: ``compress``, ``decompress`` and ``open`` (mirrors the CLI)."""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from .codecs import Codec, get_codec, get_codec_class
from .codecs.context import ChunkContext
from .container import (
    DEFAULT_MAX_OUTPUT_BYTES,
    CtpzFile,
    default_jobs,
    encode_chunk,
    encode_ctpz,
    write_ctpz,
)
from .errors import CtpressError, InputError
from .io import atomic_path, check_output, format_from_path, read_scan, write_scan
from .io._lazy import wanted as lazy_wanted
from .noise import NoiseModel, estimate_noise_model
from .rate import RATE_MODES, RateControl, option_names
from .scan import Scan, as_scan

PathLike = str | os.PathLike[str]


def resolve_rate(
    codec_id: str,
    *,
    data_range: float | None = None,
    noise: NoiseModel | None = None,
    **options: Any,
) -> RateControl:
    """The one rate control asked for among ``options`` (keywords named like the modes:
    ``lossless``, ``max_error``, ``bpp``, ``psnr``, ``noise_fraction``;
    :meth:`RateControl.from_options`), with ``data_range`` and, for the noise-bounded
    mode, ``noise``.

    With none given, ``lossless`` where the codec supports it; otherwise an error that
    tells the user which controls the codec takes.
    """
    modes = get_codec_class(codec_id).rate_modes()
    asked = any(value is not None and value is not False for value in options.values())
    if not asked and "lossless" not in modes:
        raise InputError(
            f"codec {codec_id!r} has no lossless mode; give one of: "
            + ", ".join(RATE_MODES[m].flag for m in modes if m in RATE_MODES)
        )
    return RateControl.from_options(data_range=data_range, noise=noise, **options)


def make_codec(
    scan: Scan,
    codec: str | Codec = "zstd",
    *,
    data_range: float | None = None,
    noise: NoiseModel | dict[str, Any] | None = None,
    **options: Any,
) -> Codec:
    """Build the codec for ``scan``; its ``rate`` is the file's rate control.

    ``options`` holds the rate control (keywords named like the modes: ``lossless``,
    ``max_error``, ``bpp``, ``psnr``, ``noise_fraction``) and the codec's settings.  PSNR
    targets use ``data_range`` (default: max - min of the whole scan, from a block-wise
    first pass, :meth:`Scan.value_range`) so that every chunk aims at the same MSE.  The
    noise-bounded mode uses ``noise`` (default: :func:`noise_model` of the scan).
    """
    if isinstance(codec, Codec):
        return codec
    keywords = option_names()
    rate_options = {k: options.pop(k) for k in list(options) if k in keywords}
    codec_options = options
    model = None
    if rate_options.get("noise_fraction") is not None:
        model = noise_model(scan) if noise is None else _as_noise_model(noise)
    rate = resolve_rate(codec, data_range=data_range, noise=model, **rate_options)
    if rate.mode == "psnr" and data_range is None:
        lo, hi = scan.value_range()  # a block-wise first pass over the scan
        rate = rate.with_data_range(hi - lo or 1.0)
    cls = get_codec_class(codec)
    allowed = set(cls.settings()) - {"mode", "value", "data_range", "noise"}
    unknown = sorted(set(codec_options) - allowed)
    if unknown:
        raise InputError(
            f"codec {cls.codec_id!r} has no setting {', '.join(map(repr, unknown))}; its "
            f"settings are {', '.join(sorted(allowed)) or 'none'}"
        )
    with _blame_settings(cls.codec_id, codec_options):
        return cls(
            mode=rate.mode,
            value=rate.value,
            data_range=rate.data_range,
            noise=rate.noise,
            **codec_options,
        )


def noise_model(
    scan: Scan,
    *,
    gain: float | None = None,
    read_noise: float | None = None,
    dark: float | None = None,
    i0: float | Sequence[float] | np.ndarray | None = None,
    domain: str | None = None,
) -> NoiseModel:
    """The quantum-noise model of ``scan`` for the noise-bounded mode.

    ``domain`` ("counts" or "line_integral") defaults to "line_integral" where the scan's
    metadata says its units are line integrals, else "counts"; ``i0`` (a number or one
    per detector column) to the metadata's ``i0``; ``gain`` (default 1) and
    ``read_noise`` in counts; ``dark`` the offset of raw counts (default: the mean of the
    scan's ``dark`` frames, else 0).  Without ``gain`` and ``read_noise`` both are
    estimated from the data (:func:`ctpress.noise.estimate_noise_model`) along the
    detector columns and along the views, keeping the smaller of each (a detector that
    blurs columns reads low along them; the smaller sigma is the safe side of the bound);
    where the data cannot be fitted, the ideal Poisson counter (gain 1, no read noise).
    The header states which.  The estimate reads :func:`noise_sample` of the scan, not
    all of it.
    """
    metadata = scan.metadata
    if domain is None:
        domain = "line_integral" if metadata.get("units") == "line_integral" else "counts"
    if domain == "line_integral":
        slope, intercept = (
            metadata.get("rescale_slope", 1.0),
            metadata.get("rescale_intercept", 0.0),
        )
        if (slope, intercept) != (1.0, 0.0):
            raise InputError(
                f"the noise-bounded mode needs line integrals in their own units; this scan "
                f"stores them rescaled (rescale_slope {slope}, rescale_intercept {intercept})"
            )
        if i0 is None:
            i0 = metadata.get("i0")
    i0_value = None if i0 is None else _i0_value(i0)
    if dark is None and domain == "counts" and "dark" in scan.aux:
        dark = float(np.mean(scan.aux["dark"]))
    if gain is None and read_noise is None:
        estimated = _estimated_noise(noise_sample(scan), domain, dark or 0.0, i0_value)
        if estimated is not None:
            return estimated
    user = gain is not None or read_noise is not None
    return NoiseModel(
        domain=domain,
        gain=1.0 if gain is None else gain,
        read_noise=0.0 if read_noise is None else read_noise,
        dark=0.0 if dark is None else dark,
        i0=i0_value,
        source="user" if user else "ideal Poisson",
    )


#: Most bytes of projections the noise model is estimated from.
NOISE_SAMPLE_BYTES = 64 << 20


def noise_sample(scan: Scan) -> np.ndarray:
    """The views the noise model is estimated from: the whole scan up to
    :data:`NOISE_SAMPLE_BYTES`, else a run of consecutive views (at least 8) from its
    middle, shape (k, det_rows, det_cols): a large or lazily read scan is not read whole."""
    n_views = scan.shape[0]
    view_bytes = scan.projections.nbytes // n_views
    keep = max(8, NOISE_SAMPLE_BYTES // max(1, view_bytes))
    if keep >= n_views:
        return scan.array()
    first = (n_views - keep) // 2
    return np.asarray(scan.projections[first : first + keep])


def _estimated_noise(
    projections: np.ndarray, domain: str, dark: float, i0: float | tuple[float, ...] | None
) -> NoiseModel | None:
    """The smaller of the noise models estimated along the columns and along the views,
    or None where neither can be fitted (or line integrals lack ``i0``)."""
    if domain == "line_integral" and i0 is None:
        return None
    fits = []
    for axis in (-1, 0):
        if projections.shape[axis] < 8:
            continue
        try:
            fits.append(estimate_noise_model(projections, domain, dark=dark, i0=i0, axis=axis))
        except InputError:
            continue
    if not fits:
        return None
    return NoiseModel(
        domain=domain,
        gain=min(f.gain for f in fits),
        read_noise=min(f.read_noise for f in fits),
        dark=dark,
        i0=i0,
        source="estimated from the data (smaller of columns and views)",
    )


def _i0_value(i0: float | Sequence[float] | np.ndarray) -> float | tuple[float, ...]:
    """A scalar ``i0`` as a float, per-column values as a tuple."""
    values = np.asarray(i0, dtype=np.float64)
    if values.ndim == 0:
        return float(values)
    if values.ndim != 1:
        raise InputError(
            f"i0 must be a number or one value per detector column, got {values.shape}"
        )
    return tuple(values.tolist())


def _as_noise_model(noise: NoiseModel | dict[str, Any]) -> NoiseModel:
    if isinstance(noise, NoiseModel):
        return noise
    if isinstance(noise, dict):
        return NoiseModel.from_dict(noise)
    raise InputError(f"noise must be a NoiseModel or a dict, got {noise!r:.80}")


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
    noise_fraction: float | None = None,
    data_range: float | None = None,
    noise: NoiseModel | dict[str, Any] | None = None,
    gain: float | None = None,
    read_noise: float | None = None,
    dark: float | None = None,
    i0: float | Sequence[float] | np.ndarray | None = None,
    domain: str | None = None,
    chunk_views: int | None = None,
    jobs: int | None = None,
    progress: bool = False,
    input_format: str | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
    executor: Executor | None = None,
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
    lossless, max_error, bpp, psnr, noise_fraction
        One rate control (:data:`ctpress.rate.RATE_MODES`): bit-exact; max abs error in
        data units; bits per value of the whole file (header included, within 10 %);
        PSNR in dB versus ``data_range``; every value's error at most ``noise_fraction``
        times its quantum-noise standard deviation (zeros and saturated values exact).
    data_range : float, optional
        Peak for the PSNR target (default: max - min of the scan).
    noise : NoiseModel or dict, optional
        Noise model of ``noise_fraction`` (stated in the header).  Default: built from
        ``gain``, ``read_noise``, ``dark``, ``i0`` and ``domain`` by :func:`noise_model`.
    gain, read_noise, dark, i0, domain
        Shortcuts for the noise model: detector gain and read noise (counts), dark
        offset, unattenuated count of line integrals (a number or one per detector
        column), "counts" or "line_integral" (default: from the scan's metadata units).
    chunk_views : int, optional
        Views per independently decodable chunk (default: the codec's preferred views
        per chunk, else about its preferred input bytes, 1 MiB by default).
    jobs : int, optional
        Threads encoding chunks in parallel (default: every core; one chunk at a time for
        codecs that do not gain from threads, :attr:`~ctpress.codecs.Codec.parallel_encode`;
        the output bytes do not depend on it).
    progress : bool
        Show a progress bar.
    input_format : str, optional
        Format of ``data`` when it is a path (default: from its extension).
    dataset : str, optional
        Name of the projections array when ``data`` is an npz, HDF5 or zarr path.
    overwrite : bool
        Replace an existing ``output``.
    executor : concurrent.futures.Executor, optional
        Encode the chunks as tasks of this executor instead of ``jobs`` threads (a Dask
        cluster's ``client.get_executor()``, a ``ProcessPoolExecutor``); the output bytes
        are the same.  When ``data`` is a path each task reads its own chunk from it, so
        the workers must see that path; an array or Scan is sent along with each task.
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
    jobs = default_jobs(jobs)
    if chunk_views is not None and chunk_views < 1:
        raise InputError(f"chunk_views must be >= 1, got {chunk_views}")
    shortcuts = dict(gain=gain, read_noise=read_noise, dark=dark, i0=i0, domain=domain)
    check_noise_options(shortcuts, noise_fraction, noise)
    if output is not None:
        if Path(output).suffix != ".ctpz":
            raise InputError(f"{output}: compressed output must end in .ctpz")
        check_output(output, overwrite=overwrite, inputs=inputs)
    scan = input_scan(data, input_format, dataset)
    if any(value is not None for value in shortcuts.values()):
        noise = noise_model(scan, **shortcuts)  # type: ignore[arg-type]
    codec_obj = make_codec(
        scan,
        codec,
        lossless=lossless,
        max_error=max_error,
        bpp=bpp,
        psnr=psnr,
        noise_fraction=noise_fraction,
        data_range=data_range,
        noise=noise,
        **codec_options,
    )
    kwargs: dict[str, Any] = dict(chunk_views=chunk_views, jobs=jobs, progress=progress)
    if executor is not None:
        source = ScanSource.of(inputs[0], input_format, dataset) if inputs else scan
        view_bytes = scan.dtype.itemsize * scan.shape[1] * scan.shape[2]
        kwargs["encode_chunks"] = functools.partial(_encode_on, executor, source, view_bytes)
    if output is None:
        return encode_ctpz(scan, codec_obj, **kwargs)
    with (
        atomic_path(output, overwrite=overwrite, inputs=inputs) as tmp,
        tmp.open("wb") as fh,
    ):
        return write_ctpz(fh, scan, codec_obj, **kwargs)


#: Input bytes per task of ``compress(executor=...)`` (whole chunks, at least one).
TASK_BYTES = 16 << 20


@dataclass(frozen=True)
class ScanSource:
    """A scan file a worker process reads its chunks from (as :func:`read_scan` reads it)."""

    path: str
    input_format: str | None = None
    dataset: str | None = None
    #: (size, modification time in ns) of the path: a changed file is read again.
    stamp: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, path: PathLike, input_format: str | None, dataset: str | None) -> ScanSource:
        """The source of ``path`` as it is now."""
        info = os.stat(path)
        return cls(str(path), input_format, dataset, (info.st_size, info.st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _open_source(source: ScanSource) -> Scan:
    """The scan of ``source``, read once per process (lazily: memory-mapped or view by
    view, so a chunk task reads its chunk)."""
    return read_scan(source.path, source.input_format, source.dataset)


@functools.lru_cache(maxsize=4)
def _codec_of(config_json: str) -> Codec:
    """The codec of a JSON config, built once per process (learned weights load once)."""
    return get_codec(json.loads(config_json))


def task_sizes(chunk_views: Sequence[int], view_bytes: int) -> list[int]:
    """How many consecutive chunks (of ``chunk_views[i]`` views of ``view_bytes``) each
    task of ``compress(executor=...)`` encodes: whole chunks, about :data:`TASK_BYTES`."""
    sizes: list[int] = []
    views = 0
    for n_views in chunk_views:
        if not sizes or views * view_bytes >= TASK_BYTES:
            sizes.append(0)
            views = 0
        sizes[-1] += 1
        views += n_views
    return sizes


def encode_source_chunks(
    source: ScanSource | Scan, config_json: str, contexts: list[ChunkContext]
) -> list[tuple[bytes, bytes]]:
    """A chunk task: chunks of ``source`` encoded by the codec of ``config_json``."""
    scan = _open_source(source) if isinstance(source, ScanSource) else source
    codec = _codec_of(config_json)
    return [encode_chunk(scan, codec, context) for context in contexts]


def _encode_on(
    executor: Executor,
    source: ScanSource | Scan,
    view_bytes: int,
    codec: Codec,
    contexts: list[ChunkContext],
) -> Iterator[tuple[bytes, bytes]]:
    """The :data:`~ctpress.container.writer.ChunkEncoder` running tasks of whole chunks,
    about :data:`TASK_BYTES` of input each, on ``executor``."""
    config_json = json.dumps(codec.get_config(), sort_keys=True)
    sizes = task_sizes([c.n_views or 1 for c in contexts], view_bytes)
    starts = itertools.accumulate(sizes, initial=0)
    groups = [contexts[start : start + size] for start, size in zip(starts, sizes, strict=False)]
    task = functools.partial(encode_source_chunks, source, config_json)
    return itertools.chain.from_iterable(executor.map(task, groups))


def check_noise_options(
    shortcuts: dict[str, Any], noise_fraction: float | None, noise: object
) -> None:
    """The noise-model shortcuts describe ``noise_fraction``'s model, instead of ``noise``."""
    given = [name for name, value in shortcuts.items() if value is not None]
    if given and noise_fraction is None:
        raise InputError(f"{', '.join(given)} describe the noise of noise_fraction; give it")
    if given and noise is not None:
        raise InputError(f"give either noise or {', '.join(given)}, not both")


def input_scan(
    data: Scan | np.ndarray | PathLike, input_format: str | None, dataset: str | None
) -> Scan:
    """The scan to compress: read from a path, or wrapped from an array."""
    if isinstance(data, str | os.PathLike):
        return read_scan(data, input_format, dataset)
    return as_scan(data)


def decompress(
    source: PathLike | bytes,
    output: PathLike | None = None,
    *,
    views: tuple[int, int] | None = None,
    output_format: str | None = None,
    overwrite: bool = False,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    jobs: int | None = None,
) -> Scan:
    """Decode a ``.ctpz`` file (path or bytes) to a :class:`Scan`.

    ``views=(start, stop)`` decodes only that view range.  With ``output``, the scan is
    also written (format from the extension or ``output_format``), atomically; the output
    must not be the input, and an existing one is replaced only with ``overwrite`` (a
    directory only if ctpress wrote it).  ``max_output_bytes`` caps the memory the decoded
    data may take (InputError beyond it; see :class:`~ctpress.container.CtpzFile`);
    ``jobs`` threads decode chunks in parallel (default: every core; one chunk at a time
    where the codec's decoder does not gain from threads,
    :attr:`~ctpress.codecs.Codec.parallel_decode`).  A large scan (over
    :data:`ctpress.io._lazy.LAZY_BYTES`) written to ``.npy`` or to a format of
    :data:`STREAMING_WRITERS` is decoded chunk by chunk into the output, never whole, and
    the Scan returned reads the output.
    """
    if output is not None:
        check_output(output, overwrite=overwrite, inputs=[source])
    with CtpzFile(source, max_output_bytes=max_output_bytes, jobs=jobs) as f:
        start, stop = views if views is not None else (0, f.shape[0])
        fmt = None if output is None else format_from_path(output, output_format)
        if output is not None and fmt == "npy":
            return _decompress_to_npy(f, start, stop, output, overwrite, source)
        if (
            output is not None
            and fmt in STREAMING_WRITERS
            and lazy_wanted((stop - start, *f.shape[1:]), f.dtype)
        ):
            # a large scan goes to a block-wise writer a few chunks at a time; the result
            # is the written output, read back (lazily, being large)
            write_scan(f.lazy_scan(start, stop), output, format=fmt, overwrite=overwrite)
            return read_scan(output, format=fmt)
        scan = f.read_scan(start, stop)
    if output is not None:
        write_scan(scan, output, format=output_format, overwrite=overwrite)
    return scan


#: Output formats whose writers take a scan a block of views at a time.
STREAMING_WRITERS = ("zarr", "hdf5", "dicom-ctpd", "tiff", "npz")


def _decompress_to_npy(
    f: CtpzFile, start: int, stop: int, output: PathLike, overwrite: bool, source: object
) -> Scan:
    """Decode views ``start:stop`` straight into a memory-mapped ``.npy`` (chunk by chunk:
    memory holds a few chunks, not the scan); the returned Scan's projections map the
    written file read-only."""
    two_d = int(f.header.get("original_ndim", 3)) == 2
    shape = (stop - start, f.shape[2]) if two_d else (stop - start, *f.shape[1:])
    inputs = [source] if isinstance(source, str | os.PathLike) else []
    with atomic_path(output, overwrite=overwrite, inputs=inputs) as tmp:
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=f.dtype, shape=shape)
        scan = f.read_scan(start, stop, target[:, None, :] if two_d else target)
        target.flush()
        del target
    mapped = np.load(output, mmap_mode="r", allow_pickle=False)
    result = Scan(mapped, scan.geometry, scan.metadata, scan.aux)
    result.original_ndim = scan.original_ndim
    return result


def open(
    path: PathLike | bytes,
    *,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    jobs: int | None = None,
) -> CtpzFile:
    """Open a ``.ctpz`` file: header, geometry and lazy view-range access
    (``max_output_bytes``: the most memory one read may take; ``jobs``: threads decoding
    chunks in parallel, default every core).

    Example
    -------
    >>> with ctpress.open("scan.ctpz") as f:  # doctest: +SKIP
    ...     views = f[100:110]              # decodes only the chunks covering 100:110
    """
    return CtpzFile(path, max_output_bytes=max_output_bytes, jobs=jobs)
