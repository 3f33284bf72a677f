"""``ctpress convert``: a scan into a standard container coded by a ctpress codec, readable
without any ctpress-specific call.

* Zarr v3 stores (``.zarr``), every chunk a ctpress chunk through the codec's Zarr v3
  codec (:mod:`ctpress.zarr_codecs`), so ``zarr.open(path)`` reads them lazily and
  ``ctpress.read_scan`` reads them back as a Scan (geometry, metadata and aux arrays are
  in the group's attributes and arrays, as :func:`ctpress.write_scan` writes them).
* HDF5 files (``.h5``, ``.hdf5``, ``.nxs``; NXtomo for parallel-beam scans, as
  :func:`ctpress.write_scan` lays them out) whose projections pass through the HDF5
  filter of ``hdf5plugin`` for the codec, so plain ``h5py`` with ``import hdf5plugin``
  reads them (:func:`hdf5_storage` says how each rate control maps onto each filter).
* DICOM-CT-PD series (``output_format="dicom-ctpd"``, a directory) with a compressed
  transfer syntax, so clinical tools and plain pydicom read them: JPEG-LS lossless
  (1.2.840.10008.1.2.4.80) or near-lossless (.81, ``max_error`` E gives NEAR = E),
  HTJ2K lossless (.201).  Each view's frame is coded by the ctpress codec of that name
  (see :mod:`ctpress.io._dicom_ctpd`).
"""

from __future__ import annotations

import functools
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .api import PathLike, check_noise_options, input_scan, make_codec, noise_model
from .codecs import Codec, get_codec
from .codecs._image import ImageCodec
from .container.writer import chunk_views_for
from .errors import InputError
from .io import atomic_path, check_output
from .scan import Scan

if TYPE_CHECKING:
    from .io._dicom_ctpd import Compression
    from .io._hdf5 import Storage

#: What convert writes.
OUTPUT_FORMATS = ("zarr", "hdf5", "dicom-ctpd")
#: The ctpress codecs an HDF5 output codes with (an ``hdf5plugin`` filter each), as the
#: one-line summary its errors give.
HDF5_SUPPORTED = (
    "HDF5 output supports --codec zstd or blosc2 (lossless), sperr (--bpp, --psnr or "
    "--max-error), sz3 (--max-error) and zfp (--lossless, --bpp or --max-error)"
)
#: The codecs an HDF5 output codes with, and the extensions of an HDF5 output.
HDF5_FILTERS = ("zstd", "blosc2", "sperr", "sz3", "zfp")
HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs")
#: (codec, rate control) -> the keyword of its hdf5plugin filter (see :func:`hdf5_storage`).
_LOSSY_FILTER_MODES = {
    ("sperr", "bpp"): "rate",
    ("sperr", "max_error"): "absolute",
    ("sperr", "psnr"): "peak_signal_to_noise_ratio",
    ("sz3", "max_error"): "absolute",
    ("zfp", "bpp"): "rate",
    ("zfp", "max_error"): "accuracy",
}
#: Largest HDF5 chunk convert chooses (a reader decodes a whole chunk to read one view).
HDF5_CHUNK_BYTES = 64 << 20
#: The DICOM transfer syntaxes convert writes, as the one-line summary its errors give.
DICOM_SUPPORTED = (
    "DICOM-CT-PD output supports --codec jpegls or htj2k (default jpegls) lossless, and "
    "--codec jpegls --max-error E (near-lossless, E an integer 0-255)"
)


def convert(
    data: Scan | np.ndarray | PathLike,
    output: PathLike,
    *,
    output_format: str | None = None,
    codec: str | Codec | None = None,
    chunk_views: int | None = None,
    input_format: str | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> str:
    """Write ``data`` to the Zarr v3 store ``output`` (``.zarr``) coded by ``codec``, to an
    HDF5 file (``.h5``, ``.hdf5``, ``.nxs``) through the codec's ``hdf5plugin`` filter, or
    to a compressed DICOM-CT-PD series.

    Parameters
    ----------
    data : Scan, ndarray of shape (n_views, rows, cols) or (n_views, cols), or path
        What to convert (a path is read with :func:`ctpress.read_scan`).
    output : path
        The store or series directory to write, atomically; an existing one is replaced
        only with ``overwrite`` (and only if ctpress wrote it).
    output_format : str, optional
        ``zarr``, ``hdf5`` or ``dicom-ctpd`` (default: from the output's extension).
    codec : str or Codec, optional
        Codec id or a configured codec (default ``zstd``); for ``hdf5``, one of
        :data:`HDF5_SUPPORTED`; for ``dicom-ctpd``, ``jpegls``
        (the default) or ``htj2k``, with only ``lossless`` or (jpegls) an integer
        ``max_error`` up to 255 as rate control, on uint16 projections.
    chunk_views : int, optional
        Views per Zarr or HDF5 chunk (default: the codec's preference, as
        :func:`ctpress.compress` chooses, at most :data:`HDF5_CHUNK_BYTES` in HDF5; codecs
        with context across views code within a chunk only).
    input_format, dataset, overwrite
        As for :func:`ctpress.compress`.
    **options
        The rate control and noise model keywords of :func:`ctpress.compress`
        (``lossless``, ``max_error``, ``bpp``, ``psnr``, ``noise_fraction``,
        ``data_range``, ``noise``, ``gain``, ``read_noise``, ``dark``, ``i0``, ``domain``)
        and codec settings.  A ``bpp`` target applies to each chunk's stream (Zarr's
        metadata is the store's own); PSNR targets use the scan's data range.

    Returns
    -------
    str
        The format written (a key of :data:`OUTPUT_FORMATS`).
    """
    output_format = _output_format(output, output_format)
    inputs: list[PathLike] = [data] if isinstance(data, str | os.PathLike) else []
    if dataset is not None and not inputs:
        raise InputError("dataset names an array inside an input file; data is not a path")
    if chunk_views is not None and chunk_views < 1:
        raise InputError(f"chunk_views must be >= 1, got {chunk_views}")
    if output_format == "dicom-ctpd":
        compression = dicom_compression(codec or "jpegls", chunk_views=chunk_views, **options)
        check_output(output, overwrite=overwrite, inputs=inputs)
        scan = input_scan(data, input_format, dataset)
        from .io._dicom_ctpd import write_into

        with atomic_path(output, overwrite=overwrite, inputs=inputs) as tmp:
            write_into(scan, tmp, compression)
        return output_format
    names = ("gain", "read_noise", "dark", "i0", "domain")
    shortcuts: dict[str, Any] = {name: options.pop(name) for name in names if name in options}
    check_noise_options(shortcuts, options.get("noise_fraction"), options.get("noise"))
    check_output(output, overwrite=overwrite, inputs=inputs)
    scan = input_scan(data, input_format, dataset)
    if any(value is not None for value in shortcuts.values()):
        options["noise"] = noise_model(scan, **shortcuts)
    codec_id = codec.codec_id if isinstance(codec, Codec) else codec or "zstd"
    if output_format == "hdf5" and codec_id not in HDF5_FILTERS:
        raise InputError(f"{HDF5_SUPPORTED}; got codec {codec_id!r}")
    codec_obj = make_codec(scan, codec or "zstd", **options)
    views = chunk_views_for(scan, codec_obj, chunk_views)
    if output_format == "hdf5":
        if chunk_views is None:
            view_bytes = scan.dtype.itemsize * scan.shape[1] * scan.shape[2]
            views = max(1, min(views, HDF5_CHUNK_BYTES // max(1, view_bytes)))
        storage = hdf5_storage(scan, codec_obj, views)
        from .io._hdf5 import write_hdf5

        with atomic_path(output, overwrite=overwrite, inputs=inputs) as tmp:
            write_hdf5(scan, tmp, None, storage)
        return output_format
    from .io._zarr import write_zarr
    from .zarr_codecs import zarr_codec

    with atomic_path(output, overwrite=overwrite, inputs=inputs) as tmp:
        write_zarr(scan, tmp, None, serializer=zarr_codec(codec_obj), chunk_views=views)
    return output_format


def _output_format(output: PathLike, output_format: str | None) -> str:
    """The format to write: ``output_format`` if given, else from the output's extension."""
    if output_format not in (None, *OUTPUT_FORMATS):
        raise InputError(
            f"convert writes {', '.join(OUTPUT_FORMATS)}, not output format {output_format!r}"
        )
    suffix = Path(output).suffix.lower()
    by_suffix = "zarr" if suffix == ".zarr" else "hdf5" if suffix in HDF5_SUFFIXES else None
    if output_format is None and by_suffix is None:
        raise InputError(
            f"{output}: convert writes Zarr v3 stores (.zarr), HDF5 files "
            f"({', '.join(HDF5_SUFFIXES)}) or, with output format dicom-ctpd, DICOM-CT-PD "
            "series; for a .ctpz file use compress"
        )
    if output_format in ("zarr", "hdf5") and by_suffix != output_format:
        raise InputError(f"{output}: a {output_format} output needs the extension of one")
    return output_format or str(by_suffix)


def hdf5_storage(scan: Scan, codec: Codec, chunk_views: int) -> Storage:
    """The HDF5 storage of ``scan`` coded by ``codec`` (one of :data:`HDF5_FILTERS`, its
    rate control already resolved): the ``hdf5plugin`` filter with the codec's settings
    and rate control mapped onto the filter's own, and the dtype the filter codes.

    ============  =================================================================
    codec         rate control -> filter
    ============  =================================================================
    zstd          lossless -> ``Zstd(clevel=level)`` (level 1-22), the scan's dtype
    blosc2        lossless -> ``Blosc2("zstd", level, BITSHUFFLE)``, the scan's dtype
    sperr         bpp B -> ``Sperr(rate=B)``; max_error E -> ``Sperr(absolute=E)``;
                  psnr P -> ``Sperr(peak_signal_to_noise_ratio=P + 0.3)`` (the bias
                  ctpress's sperr codec asks too: SPERR lands up to ~0.3 dB low), which
                  SPERR aims at, without a guarantee, on each chunk's own range, at most
                  the scan's (the chunks' padding is filled with the scan's minimum)
    sz3           max_error E -> ``SZ3(absolute=E)`` (the filter's other modes do not
                  work in hdf5plugin 7.1.0: ``norm2`` ignores its bound, and
                  ``peak_signal_to_noise_ratio`` stores without loss)
    zfp           lossless -> ``Zfp(reversible=True)`` on int32 (int64) for integer scans;
                  bpp B -> ``Zfp(rate=B)``; max_error E -> ``Zfp(accuracy=E)``
    ============  =================================================================

    Lossy filters code floats: float32 for float32 scans and integers of up to 16 bits,
    float64 otherwise; the file then holds the decoded floats.

    Raises
    ------
    InputError
        A rate control the filter has no mode for (the message lists what is supported).
    """
    import hdf5plugin

    from .io._hdf5 import Storage

    mode, value, name = codec.rate.mode, codec.rate.value, codec.codec_id
    dtype = scan.dtype
    # floats that hold every value: float32 for integers of up to 16 bits and floats of up
    # to 32, else float64
    small = dtype.itemsize <= (2 if dtype.kind in "iub" else 4)
    float_dtype = "<f4" if small else "<f8"
    fill: float | None = None
    settings = codec.get_config()
    flt: Any = None
    stored: str | None = None
    if mode == "lossless" and name == "zstd":
        flt = hdf5plugin.Zstd(clevel=min(22, max(1, settings["level"])))
    elif mode == "lossless" and name == "blosc2":
        flt = hdf5plugin.Blosc2(
            cname="zstd", clevel=settings["level"], filters=hdf5plugin.Blosc2.BITSHUFFLE
        )
    elif mode == "lossless" and name == "zfp":
        if dtype.kind == "u" and dtype.itemsize == 8:
            raise InputError("zfp's reversible mode codes integers of up to 63 bits")
        wide = "<i8" if dtype.itemsize >= 4 and dtype.str not in ("<i4", "|i4") else "<i4"
        stored = float_dtype if dtype.kind == "f" else wide
        flt = hdf5plugin.Zfp(reversible=True)
    elif (name, mode) in _LOSSY_FILTER_MODES:
        assert value is not None
        n_views, rows, cols = scan.shape
        chunk = (min(chunk_views, n_views), *((rows,) if scan.original_ndim == 3 else ()), cols)
        if name == "sperr" and sum(n > 1 for n in chunk) < 2:
            raise InputError(
                f"SPERR's HDF5 filter fails on chunks with fewer than two axes longer than 1 "
                f"(these are {chunk}); give more views per chunk (--chunk-views)"
            )
        stored = float_dtype
        if mode == "psnr":  # SPERR's range is the chunk's; padding must not widen it
            fill = scan.value_range()[0]
        keyword = _LOSSY_FILTER_MODES[name, mode]
        if keyword == "peak_signal_to_noise_ratio":
            from .codecs.sperr import PSNR_BIAS_DB

            value += PSNR_BIAS_DB  # SPERR lands a little below the PSNR it is asked
        filters = {"sperr": hdf5plugin.Sperr, "sz3": hdf5plugin.SZ3, "zfp": hdf5plugin.Zfp}
        flt = filters[name](**{keyword: value})
    else:
        raise InputError(f"{HDF5_SUPPORTED}; got {name} with {mode}")
    filter_options = dict(flt)
    if fill is not None:
        filter_options["fillvalue"] = fill
    return Storage(dtype=stored, chunk_views=chunk_views, filter_options=filter_options)


def dicom_compression(
    codec: str | Codec,
    *,
    lossless: bool | None = None,
    max_error: float | None = None,
    **others: Any,
) -> Compression:
    """The transfer syntax and frame encoder of a DICOM-CT-PD output for ``codec`` and the
    rate options: lossless JPEG-LS (.80) or HTJ2K (.201), or JPEG-LS near-lossless (.81)
    with NEAR = ``max_error``.  ``others`` (any other rate control, noise model, chunking
    or codec setting) must all be unset.

    Raises
    ------
    InputError
        Any other combination (the message says what is supported).
    """
    from pydicom.uid import HTJ2KLossless, JPEGLSLossless, JPEGLSNearLossless

    from .io._dicom_ctpd import Compression

    given = sorted(
        name for name, value in others.items() if value is not None and value is not False
    )
    if given:
        raise InputError(f"{DICOM_SUPPORTED}; {', '.join(given)} do not apply")
    if codec not in ("jpegls", "htj2k"):
        raise InputError(f"{DICOM_SUPPORTED}; got codec {codec!r}")
    if lossless and max_error is not None:
        raise InputError(f"{DICOM_SUPPORTED}; give lossless or max_error, not both")
    image_codec = get_codec(codec)
    assert isinstance(image_codec, ImageCodec)
    if max_error is None or max_error == 0:
        syntax = JPEGLSLossless if codec == "jpegls" else HTJ2KLossless
        return Compression(syntax, image_codec.encode_image)
    if codec != "jpegls":
        raise InputError(f"{DICOM_SUPPORTED}; got max_error with codec {codec!r}")
    if (
        isinstance(max_error, bool)
        or not isinstance(max_error, numbers.Real)
        or not 0 < max_error <= 255
        or max_error != int(max_error)
    ):
        raise InputError(f"{DICOM_SUPPORTED}; got max_error {max_error!r}")
    return Compression(
        JPEGLSNearLossless, functools.partial(image_codec.encode_image, knob=float(max_error))
    )
