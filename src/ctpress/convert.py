"""``ctpress convert``: a scan into a standard container coded by a ctpress codec, readable
without any ctpress-specific call.

Today: Zarr v3 stores (``.zarr``), every chunk a ctpress chunk through the codec's Zarr
v3 codec (:mod:`ctpress.zarr_codecs`), so ``zarr.open(path)`` reads them lazily and
``ctpress.read_scan`` reads them back as a Scan (geometry, metadata and aux arrays are in
the group's attributes and arrays, as :func:`ctpress.write_scan` writes them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .api import PathLike, check_noise_options, input_scan, make_codec, noise_model
from .codecs import Codec
from .container.writer import chunk_views_for
from .errors import InputError
from .io import atomic_path, check_output
from .scan import Scan


def convert(
    data: Scan | np.ndarray | PathLike,
    output: PathLike,
    *,
    codec: str | Codec = "zstd",
    chunk_views: int | None = None,
    input_format: str | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> None:
    """Write ``data`` to the Zarr v3 store ``output`` (``.zarr``), coded by ``codec``.

    Parameters
    ----------
    data : Scan, ndarray of shape (n_views, rows, cols) or (n_views, cols), or path
        What to convert (a path is read with :func:`ctpress.read_scan`).
    output : path
        The store to write, atomically; an existing one is replaced only with
        ``overwrite`` (and only if ctpress wrote it).
    codec : str or Codec
        Codec id or a configured codec.
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
    from .zarr_codecs import zarr_codec

    if Path(output).suffix != ".zarr":
        raise InputError(
            f"{output}: convert writes Zarr v3 stores (.zarr); for a .ctpz file use compress"
        )
    inputs: list[PathLike] = [data] if isinstance(data, str | os.PathLike) else []
    if dataset is not None and not inputs:
        raise InputError("dataset names an array inside an input file; data is not a path")
    if chunk_views is not None and chunk_views < 1:
        raise InputError(f"chunk_views must be >= 1, got {chunk_views}")
    names = ("gain", "read_noise", "dark", "i0", "domain")
    shortcuts: dict[str, Any] = {name: options.pop(name) for name in names if name in options}
    check_noise_options(shortcuts, options.get("noise_fraction"), options.get("noise"))
    check_output(output, overwrite=overwrite, inputs=inputs)
    scan = input_scan(data, input_format, dataset)
    if any(value is not None for value in shortcuts.values()):
        options["noise"] = noise_model(scan, **shortcuts)
    codec_obj = make_codec(scan, codec, **options)
    views = chunk_views_for(scan, codec_obj, chunk_views)
    from .io._zarr import write_zarr

    with atomic_path(output, overwrite=overwrite, inputs=inputs) as tmp:
        write_zarr(scan, tmp, None, serializer=zarr_codec(codec_obj), chunk_views=views)
