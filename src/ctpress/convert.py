"""``ctpress convert``: a scan into a standard container coded by a ctpress codec, readable
without any ctpress-specific call.

* Zarr v3 stores (``.zarr``), every chunk a ctpress chunk through the codec's Zarr v3
  codec (:mod:`ctpress.zarr_codecs`), so ``zarr.open(path)`` reads them lazily and
  ``ctpress.read_scan`` reads them back as a Scan (geometry, metadata and aux arrays are
  in the group's attributes and arrays, as :func:`ctpress.write_scan` writes them).
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

#: What convert writes.
OUTPUT_FORMATS = ("zarr", "dicom-ctpd")
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
) -> None:
    """Write ``data`` to the Zarr v3 store ``output`` (``.zarr``) coded by ``codec``, or
    to a compressed DICOM-CT-PD series.

    Parameters
    ----------
    data : Scan, ndarray of shape (n_views, rows, cols) or (n_views, cols), or path
        What to convert (a path is read with :func:`ctpress.read_scan`).
    output : path
        The store or series directory to write, atomically; an existing one is replaced
        only with ``overwrite`` (and only if ctpress wrote it).
    output_format : str, optional
        ``zarr`` or ``dicom-ctpd`` (default: ``zarr`` for a ``.zarr`` output).
    codec : str or Codec, optional
        Codec id or a configured codec (default ``zstd``); for ``dicom-ctpd``, ``jpegls``
        (the default) or ``htj2k``, with only ``lossless`` or (jpegls) an integer
        ``max_error`` up to 255 as rate control, on uint16 projections.
    chunk_views : int, optional
        Views per Zarr chunk (default: the codec's preference, as :func:`ctpress.compress`
        chooses; codecs with context across views code within a chunk only).
    input_format, dataset, overwrite
        As for :func:`ctpress.compress`.
    **options
        The rate control and noise model keywords of :func:`ctpress.compress`
        (``lossless``, ``max_error``, ``bpp``, ``psnr``, ``noise_fraction``,
        ``data_range``, ``noise``, ``gain``, ``read_noise``, ``dark``, ``i0``, ``domain``)
        and codec settings.  A ``bpp`` target applies to each chunk's stream (Zarr's
        metadata is the store's own); PSNR targets use the scan's data range.
    """
    if output_format not in (None, *OUTPUT_FORMATS):
        raise InputError(
            f"convert writes {' or '.join(OUTPUT_FORMATS)}, not output format {output_format!r}"
        )
    if output_format != "dicom-ctpd" and Path(output).suffix != ".zarr":
        raise InputError(
            f"{output}: convert writes Zarr v3 stores (.zarr) or, with output format "
            "dicom-ctpd, DICOM-CT-PD series; for a .ctpz file use compress"
        )
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
        return
    names = ("gain", "read_noise", "dark", "i0", "domain")
    shortcuts: dict[str, Any] = {name: options.pop(name) for name in names if name in options}
    check_noise_options(shortcuts, options.get("noise_fraction"), options.get("noise"))
    check_output(output, overwrite=overwrite, inputs=inputs)
    scan = input_scan(data, input_format, dataset)
    if any(value is not None for value in shortcuts.values()):
        options["noise"] = noise_model(scan, **shortcuts)
    codec_obj = make_codec(scan, codec or "zstd", **options)
    views = chunk_views_for(scan, codec_obj, chunk_views)
    from .io._zarr import write_zarr
    from .zarr_codecs import zarr_codec

    with atomic_path(output, overwrite=overwrite, inputs=inputs) as tmp:
        write_zarr(scan, tmp, None, serializer=zarr_codec(codec_obj), chunk_views=views)


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
