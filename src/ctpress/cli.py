"""Command-line interface of ctpress: compress, decompress, info, codecs, simulate, recon,
compare, bench, demo and train.

Exit codes: 0 success, 2 bad usage or input (one-line message, no traceback),
1 internal error (a bug: the traceback is shown).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import api
from ._version import __version__
from .codecs import list_codec_ids, list_codecs
from .convert import OUTPUT_FORMATS
from .errors import CtpressError, InputError
from .io import FORMATS, OutputExistsError, check_output, results_directory
from .noise import DOMAINS
from .rate import RATE_MODES, option_names
from .scan import Scan

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
#: Signals handled like Ctrl-C (SIGINT): temporary outputs are removed, exit 128 + signal.
_TERMINATING = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_OUT_RULE = (
    "; a directory ctpress made (it holds .ctpress-output) is updated in place, an empty one "
    "is used, any other directory is refused"
)
#: Keyword arguments of api.compress that are not codec settings (they have their own flags).
_COMPRESS_KEYWORDS = frozenset(
    name
    for name, parameter in inspect.signature(api.compress).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit with code 2 and one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"ctpress: error: {message} (see '{self.prog} --help')\n")


def _at_least_one(text: str) -> int:
    """argparse type of counts (views, threads, pixels): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_BYTE_SIZE = re.compile(r"\s*([0-9.eE+]+)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


def _byte_count(text: str) -> int:
    """argparse type of a memory size: bytes, or with a K/M/G/T suffix (binary units)."""
    match = _BYTE_SIZE.fullmatch(text)
    try:
        value = float(match[1]) * 1024 ** " KMGT".index(match[2].upper() or " ")  # type: ignore[index]
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be a size like 64G or 1000000, got {text!r}"
        ) from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return int(value)


def _add_max_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-output-bytes",
        type=_byte_count,
        default=api.DEFAULT_MAX_OUTPUT_BYTES,
        metavar="SIZE",
        help="most memory one decode may take, e.g. 64G (default 32G): a crafted file that "
        "claims more is refused before anything is allocated",
    )


def _add_force(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-f", "--force", action="store_true", help=f"replace an existing {what}")


def _add_rate_options(p: argparse.ArgumentParser) -> None:
    """One flag per registered rate mode (``ctpress.rate.RATE_MODES``), and the noise
    model of the noise-bounded mode."""
    group = p.add_mutually_exclusive_group()
    for option, name in option_names().items():
        mode = RATE_MODES[name]
        help_text = mode.help.replace("%", "%%")  # argparse formats help with %
        if mode.needs_value:
            metavar = mode.flag.lstrip("-").split("-")[-1][0].upper()
            unit = f" ({mode.unit})" if mode.unit else ""
            group.add_argument(
                mode.flag, dest=option, type=float, metavar=metavar, help=help_text + unit
            )
        else:
            group.add_argument(
                mode.flag, dest=option, action="store_true", help=f"{help_text} (the default)"
            )
    noise = p.add_argument_group("noise model of --noise-fraction")
    noise.add_argument("--gain", type=float, help="detector gain, variance/mean (default 1)")
    noise.add_argument("--read-noise", type=float, help="read noise std in counts (default 0)")
    noise.add_argument("--dark", type=float, help="dark offset of raw counts (default 0)")
    noise.add_argument(
        "--i0",
        metavar="I0",
        help="unattenuated count of line integrals: a number, or a .npy of one per detector "
        "column (default: the scan's metadata)",
    )
    noise.add_argument(
        "--domain",
        choices=DOMAINS,
        help="what the values are (default: line_integral if the metadata says so)",
    )


def _add_encode_options(p: argparse.ArgumentParser, output: str, chunk: str) -> None:
    """Input, output, codec, rate control, chunking and input options of the commands that
    encode a scan (compress, convert)."""
    formats = ", ".join(FORMATS)
    p.add_argument("input", help=f"projections ({formats})")
    p.add_argument("output", help=output)
    _add_codec_options(p)
    p.add_argument("--data-range", type=float, help="PSNR peak (default: max - min of the scan)")
    p.add_argument(
        "--chunk-views",
        type=_at_least_one,
        help=f"views per {chunk} (default: the codec's preference, else ~1 MiB of input)",
    )
    p.add_argument("--format", help=f"input format, overriding the extension ({formats})")
    p.add_argument("--dataset", help="name of the projections array in an npz, HDF5 or zarr input")
    _add_force(p, output)


def _add_codec_options(p: argparse.ArgumentParser) -> None:
    """``--codec``, the rate-control flags with the noise model, and ``-O`` settings."""
    p.add_argument(
        "--codec",
        default="zstd",
        help=f"codec id: {', '.join(list_codec_ids())} (see 'ctpress codecs')",
    )
    _add_rate_options(p)
    p.add_argument(
        "-O",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="codec setting (e.g. -O width=32 -O segments=4 for siren; see 'ctpress codecs')",
    )
    sparse = p.add_argument_group("sparse views (--codec sparse-unet)")
    sparse.add_argument(
        "--keep-every", type=int, metavar="K", help="store every K-th view (2-64; default 4)"
    )
    sparse.add_argument(
        "--inner", metavar="CODEC", help="codec of the stored views (default jpegls)"
    )


def _codec_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """Codec, rate control, noise model and codec settings, as the API takes them."""
    settings = _codec_options(args.option, getattr(args, "time_budget", None))
    for name in ("keep_every", "inner"):  # flags of codec settings
        value = getattr(args, name, None)
        if value is not None:
            if name in settings:
                raise InputError(f"give {name} once: as --{name.replace('_', '-')} or -O")
            settings[name] = value
    return dict(
        codec=args.codec,
        **{option: getattr(args, option) for option in option_names()},
        gain=args.gain,
        read_noise=args.read_noise,
        dark=args.dark,
        i0=_i0_option(args.i0),
        domain=args.domain,
        **settings,
    )


def _encode_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :func:`ctpress.compress` / :func:`ctpress.convert` that
    :func:`_add_encode_options` parsed."""
    return dict(
        **_codec_keywords(args),
        data_range=args.data_range,
        chunk_views=args.chunk_views,
        input_format=args.format,
        dataset=args.dataset,
        overwrite=args.force,
    )


def _i0_option(text: str | None) -> float | list[float] | None:
    """``--i0``: a number, or the path of a .npy with one value per detector column."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    if not text.endswith(".npy") or not Path(text).is_file():
        raise InputError(f"--i0 takes a number or a .npy file, got {text!r}")
    import numpy as np

    values: list[float] = np.load(text, allow_pickle=False).astype(float).tolist()
    return values


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ctpress`` command."""
    parser = _Parser(prog="ctpress", description="Compress raw CT projection data, honestly.")
    parser.add_argument("--version", action="version", version=f"ctpress {__version__}")
    quiet_help = "no progress bars or chatter"
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    formats = ", ".join(FORMATS)

    p = sub.add_parser("compress", help="compress projections to a .ctpz file")
    _add_encode_options(p, "output .ctpz file", "chunk")
    p.add_argument(
        "--jobs",
        type=_at_least_one,
        help="encoder threads (default: every core; the output is identical)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="encode time budget per chunk, for codecs that fit a model (siren)",
    )

    p = sub.add_parser(
        "convert",
        help="write a Zarr v3 store coded by a ctpress codec (plain zarr reads it), an HDF5 "
        "file through hdf5plugin's filters (plain h5py + hdf5plugin read it), or a JPEG-LS / "
        "HTJ2K compressed DICOM-CT-PD series (plain pydicom reads it)",
    )
    _add_encode_options(
        p, "output .zarr store, .h5/.hdf5/.nxs file or DICOM-CT-PD directory", "Zarr/HDF5 chunk"
    )
    p.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        help="zarr or hdf5 (default: from the output's extension; hdf5 takes codec zstd, "
        "blosc2, sperr, sz3 or zfp) or dicom-ctpd (codec jpegls, the default here, or htj2k; "
        "--lossless, or --max-error E for jpegls)",
    )
    p.set_defaults(codec=None)

    p = sub.add_parser(
        "batch", help="compress many scans in parallel, resumably (summary CSV in OUT_DIR)"
    )
    p.add_argument("inputs", help="input glob, quoted ('scans/**/*.h5'), or one path")
    p.add_argument("out_dir", help="output folder (keeps the inputs' relative paths)")
    _add_codec_options(p)
    p.add_argument(
        "--workers",
        type=_at_least_one,
        help="processes of the local Dask cluster (default: every core), one thread each",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing Dask cluster's scheduler (tcp://host:8786) to run the tasks on; "
        "its workers need this ctpress and must see the inputs and OUT_DIR at the same paths",
    )

    p = sub.add_parser("decompress", help="decode a .ctpz file")
    p.add_argument("input", help="a .ctpz file")
    p.add_argument("output", help=f"output file ({formats})")
    p.add_argument("--views", metavar="START:STOP", help="decode only this view range")
    p.add_argument("--format", help="output format, overriding the extension")
    p.add_argument(
        "--jobs",
        type=_at_least_one,
        help="decoder threads (default: every core; dvc decodes one chunk at a time)",
    )
    _add_force(p, "output (a directory only if ctpress wrote it)")
    _add_max_output(p)

    p = sub.add_parser("info", help="show the header of a .ctpz file and verify checksums")
    p.add_argument("input", help="a .ctpz file")
    p.add_argument("--json", action="store_true", help="print the raw JSON header")
    _add_max_output(p)

    p = sub.add_parser("verify", help="check a .ctpz file for damage (writes nothing)")
    p.add_argument("input", help="a .ctpz file")
    p.add_argument(
        "--decode",
        action="store_true",
        help="also decode every chunk and compare it with the digest stored when it was written",
    )
    _add_max_output(p)

    sub.add_parser("codecs", help="list codecs and the rate controls they support")

    p = sub.add_parser("simulate", help="simulate projections from a real CT volume or phantom")
    p.add_argument("output", help=f"output file ({formats})")
    p.add_argument("--geometry", default="cone", choices=["parallel", "fan", "cone", "helical"])
    p.add_argument("--volume", help="HU volume .npy (z, y, x); default: the embedded volume")
    p.add_argument("--voxel-size", type=float, default=None, help="voxel size of --volume, mm")
    p.add_argument("--phantom", action="store_true", help="use a 3-D Shepp-Logan phantom")
    p.add_argument("--views", type=int, default=360)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--cols", type=int, default=192)
    p.add_argument("--i0", type=float, default=1e5, help="incident photons per pixel (0: none)")
    p.add_argument("--dtype", default="uint16", choices=["uint16", "float32", "counts"])
    p.add_argument("--detector", default="flat", choices=["flat", "cylindrical"])
    p.add_argument("--pitch", type=float, default=1.0, help="helical pitch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", help="output format, e.g. dicom-ctpd for a helical series")
    _add_force(p, "output (a directory only if ctpress wrote it)")

    p = sub.add_parser("recon", help="reconstruct projections (.ctpz or any input format)")
    p.add_argument("input", help=f"projections (.ctpz, {formats})")
    p.add_argument("output", help="reconstruction: .npy or .tif (float32)")
    p.add_argument("--algorithm", default="fbp", choices=["fbp", "fdk", "sirt"])
    p.add_argument("--filter", default="ram-lak", help="ram-lak, shepp-logan, cosine or hann")
    p.add_argument("--cutoff", type=float, default=1.0, help="filter cut-off, fraction of Nyquist")
    p.add_argument(
        "--size", type=_at_least_one, help="image width/height in pixels (default: columns)"
    )
    p.add_argument("--pixel-size", type=float, help="pixel size in mm (default: column pitch)")
    p.add_argument("--hu", action="store_true", help="output Hounsfield units, not 1/mm")
    p.add_argument("--iterations", type=int, default=50, help="SIRT iterations")
    p.add_argument(
        "--restore",
        action="store_true",
        help="a sparse-unet .ctpz: reconstruct its stored views and correct the image with "
        "the image-domain U-Net (restoration b)",
    )
    p.add_argument("--format", help="input format, overriding the extension")
    _add_force(p, "output file")

    p = sub.add_parser("compare", help="quality of DECODED versus ORIGINAL projections")
    p.add_argument("original", help="original projections (.ctpz or any input format)")
    p.add_argument("decoded", help="decoded projections (.ctpz or any input format)")
    p.add_argument("--data-range", type=float, help="PSNR peak (default: max - min of original)")
    p.add_argument("--recon", action="store_true", help="also compare central reconstructions")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("demo", help="compress the default scan with every codec; print a table")
    p.add_argument("--out", default="results/demo", help=f"directory for the results{_OUT_RULE}")
    p.add_argument("--codecs", default="all", help="comma-separated codec ids, or 'all'")
    p.add_argument("--jobs", type=_at_least_one, default=1, help="parallel worker processes")
    _add_force(p, "file at --out")
    p.add_argument("--no-recon", action="store_true", help="skip the reconstruction domain")

    p = sub.add_parser("bench", help="measure codecs at a sweep of rates; CSV, JSON and report")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=f"scans ({formats})")
    p.add_argument("--codecs", default="all", help="comma-separated codec ids, or 'all'")
    p.add_argument(
        "--rates",
        default="default",
        help="'default' or a list like lossless,max_error=4,bpp=2,psnr=60 (unsupported: skipped)",
    )
    p.add_argument("--out", required=True, help=f"directory for results and index.html{_OUT_RULE}")
    p.add_argument("--recon", action="store_true", help="also compare reconstructions")
    p.add_argument("--jobs", type=_at_least_one, default=1, help="parallel worker processes")
    _add_force(p, "file at --out")
    p.add_argument("--resume", action="store_true", help="reuse matching results found in --out")
    p.add_argument("--no-perceptual", action="store_true", help="skip HaarPSI and VSI")
    p.add_argument("--format", help=f"input format, overriding the extension ({formats})")
    g = p.add_argument_group(
        "geometry of bare arrays", "for --recon on inputs that store no geometry (e.g. .npy)"
    )
    g.add_argument("--geometry", choices=["parallel", "fan", "cone"], help="beam geometry")
    angles = g.add_mutually_exclusive_group()
    angles.add_argument(
        "--angles",
        metavar="START:STOP[:STEP]",
        help="view angles in degrees, STOP excluded (e.g. 0:180:2); without STEP, the views "
        "evenly spaced",
    )
    angles.add_argument(
        "--angles-file",
        type=Path,
        metavar="FILE",
        help="view angles in degrees: text (one per view) or .npy",
    )
    g.add_argument(
        "--source-isocenter-mm", type=float, metavar="MM", help="fan/cone: source to rotation axis"
    )
    g.add_argument(
        "--source-detector-mm", type=float, metavar="MM", help="fan/cone: source to detector"
    )
    g.add_argument(
        "--detector-spacing-mm",
        metavar="PITCH|ROW,COL",
        default="1",
        help="detector pitch in mm at the detector (default 1)",
    )
    g.add_argument(
        "--detector-shape", choices=["flat", "cylindrical"], default="flat", help="fan/cone"
    )

    p = sub.add_parser(
        "train",
        help="train a learned codec's rate point (CPU, or GPU if present); for siren: "
        "meta-learn the initialisation of one architecture; for convlstm: the inter-view "
        "predictor; for sparse-unet: both restorations (the image one to OUT-image.safetensors); "
        "for dvc: the P-frame residual model of a rate point",
    )
    p.add_argument(
        "method", choices=["hyperprior", "vqvae", "siren", "convlstm", "sparse-unet", "dvc"]
    )
    p.add_argument("--data", nargs="+", type=Path, help="data root(s), directories or .npy files")
    p.add_argument("--out", type=Path, required=True, help="output weights (.safetensors)")
    p.add_argument("--rate-point", type=int, default=0, help="index of the rate point to train")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--minutes", type=float, help="time budget (turned into a step count)")
    length.add_argument("--steps", type=int, help="number of optimiser steps (reproducible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="cache of simulated noise-free projections")
    p.add_argument(
        "--only",
        choices=["sinogram", "image"],
        help="sparse-unet: train only this restoration (it gets the whole time budget)",
    )
    _add_force(p, "weights file at --out")
    for subparser in sub.choices.values():  # -q also after the command name
        subparser.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help
        )
    return parser


def _cmd_compress(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    n_bytes = api.compress(
        args.input, args.output, jobs=args.jobs, progress=not args.quiet, **_encode_keywords(args)
    )
    if not args.quiet:
        with api.open(args.output) as f:
            n_values = f.shape[0] * f.shape[1] * f.shape[2]
            raw = n_values * f.dtype.itemsize
        print(
            f"{args.output}: {n_bytes} bytes, {8 * n_bytes / n_values:.3f} bits/value, "
            f"ratio {raw / n_bytes:.2f}:1 vs {f.dtype.name}, {time.perf_counter() - t0:.2f} s"
        )


def _cmd_convert(args: argparse.Namespace) -> None:
    from .convert import convert

    t0 = time.perf_counter()
    written = convert(
        args.input, args.output, output_format=args.output_format, **_encode_keywords(args)
    )
    if not args.quiet:
        what = {
            "dicom-ctpd": f"DICOM-CT-PD series, codec {args.codec or 'jpegls'}",
            "hdf5": f"HDF5 file, hdf5plugin filter of {args.codec or 'zstd'}",
            "zarr": f"Zarr v3 store, codec ctpress.{args.codec or 'zstd'}",
        }[written]
        print(f"{args.output}: {what}, {time.perf_counter() - t0:.2f} s")


def _cmd_batch(args: argparse.Namespace) -> int:
    from .batch import SUMMARY, batch

    records = batch(
        args.inputs,
        args.out_dir,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=not args.quiet,
        **_codec_keywords(args),
    )
    failed = [r for r in records if r.status == "error"]
    if not args.quiet:
        counts = {s: sum(r.status == s for r in records) for s in ("done", "skipped", "error")}
        print(
            f"{args.out_dir}: {counts['done']} compressed, {counts['skipped']} already done, "
            f"{counts['error']} failed; summary in {Path(args.out_dir) / SUMMARY}"
        )
    for record in failed:
        print(f"ctpress: error: {record.error}", file=sys.stderr)
    return 2 if failed else 0


def _codec_options(pairs: list[str], time_budget: float | None) -> dict[str, Any]:
    """``KEY=VALUE`` codec settings (values parsed as JSON when they are JSON)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"codec option {pair!r} is not KEY=VALUE")
        if key in _COMPRESS_KEYWORDS:
            raise InputError(
                f"-O {key}: {key} is not a codec setting; use its own option "
                "(see 'ctpress compress --help')"
            )
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    if time_budget is not None:
        options["time_budget"] = time_budget
    return options


def _parse_views(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise CtpressError(f"--views takes START:STOP (e.g. 0:100), got {text!r}") from None
    return start, stop


def _cmd_decompress(args: argparse.Namespace) -> None:
    scan = api.decompress(
        args.input,
        args.output,
        views=_parse_views(args.views),
        output_format=args.format,
        overwrite=args.force,
        max_output_bytes=args.max_output_bytes,
        jobs=args.jobs,
    )
    if not args.quiet:
        print(f"{args.output}: {scan.user_array().shape} {scan.dtype}")


def _cmd_info(args: argparse.Namespace) -> None:
    with api.open(args.input, max_output_bytes=args.max_output_bytes) as f:
        f.verify()
        if args.json:
            print(json.dumps(f.header, indent=2))
            return
        h = f.header
        n_values = f.shape[0] * f.shape[1] * f.shape[2]
        geometry = h.get("geometry")
        print(f"file:        {args.input} ({f.file_size} bytes, checksums OK)")
        print(f"format:      ctpz v{h['format_version']}, written by {h['library']}")
        print(f"projections: {f.shape} {f.dtype.name} (views, rows, cols)")
        print(f"codec:       {json.dumps(h['codec'])}")
        rate = f.rate_control
        data_range = "" if rate.data_range is None else f" (data range {rate.data_range:g})"
        print(f"rate:        {rate}{data_range}")
        if rate.noise is not None:
            print(f"noise model: {rate.noise.describe()}")
        print(
            f"size:        {8 * f.file_size / n_values:.3f} bits/value, ratio "
            f"{n_values * f.dtype.itemsize / f.file_size:.2f}:1 vs {f.dtype.name}"
        )
        print(f"chunks:      {len(f.chunks)} of {h['chunk_views']} views")
        stored = f.stored_views()
        if not stored.all():
            print(
                f"views:       {int(stored.sum())} stored, {int((~stored).sum())} synthesised "
                f"on decoding (stored: {_first_indices(stored)})"
            )
        print(f"geometry:    {geometry['kind'] if geometry else 'none'}")
        print(f"metadata:    {json.dumps(h.get('metadata', {}))}")
        if h.get("aux"):
            aux = ", ".join(f"{name} {spec['shape']}" for name, spec in h["aux"].items())
            print(f"aux arrays:  {aux}")


def _first_indices(mask: Any, shown: int = 8) -> str:
    """The True indices of a boolean mask as ``0, 4, 8, ... (n more)``."""
    import numpy as np

    index = np.flatnonzero(mask)
    text = ", ".join(str(i) for i in index[:shown])
    return text + (f", ... ({len(index) - shown} more)" if len(index) > shown else "")


def _cmd_verify(args: argparse.Namespace) -> None:
    with api.open(args.input, max_output_bytes=args.max_output_bytes) as f:
        summary = f.verify(decode=args.decode)
    print(f"{args.input}: OK ({summary})")


def _cmd_codecs(args: argparse.Namespace) -> None:
    print(f"{'codec':10s} {'rate controls':34s} description")
    classes = list_codecs()
    for cls in classes:
        print(f"{cls.codec_id:10s} {', '.join(cls.rate_modes()):34s} {cls.description}")
    floats = [cls.codec_id for cls in classes if "float32" in cls.exact_dtypes]
    print(f"lossless on float data: {', '.join(floats)}")


def _cmd_simulate(args: argparse.Namespace) -> None:
    import numpy as np

    from .io import write_scan
    from .sim import simulate_scan

    check_output(args.output, overwrite=args.force, inputs=[args.volume] if args.volume else [])
    volume: np.ndarray | str | None = "shepp_logan" if args.phantom else None
    if args.volume:
        volume = np.load(args.volume)
    t0 = time.perf_counter()
    scan = simulate_scan(
        volume,
        geometry_kind=args.geometry,
        n_views=args.views,
        det_rows=args.rows,
        det_cols=args.cols,
        voxel_size_mm=args.voxel_size,
        i0=args.i0 or None,
        dtype=args.dtype,
        seed=args.seed,
        detector_shape=args.detector,
        helical_pitch=args.pitch,
    )
    write_scan(scan, args.output, format=args.format, overwrite=args.force)
    if not args.quiet:
        print(
            f"{args.output}: {scan.shape} {scan.dtype} {args.geometry}, "
            f"{time.perf_counter() - t0:.1f} s"
        )


def _read_any(path: str, fmt: str | None = None) -> Scan:
    """A scan from a .ctpz file (decoded) or any readable projection format."""
    if Path(path).suffix == ".ctpz":
        return api.decompress(path)
    from .io import read_scan

    return read_scan(path, format=fmt)


def _cmd_recon(args: argparse.Namespace) -> None:
    import numpy as np

    from .recon import mu_to_hu, reconstruct

    if Path(args.output).suffix not in (".npy", ".tif", ".tiff"):
        raise CtpressError(f"{args.output}: the reconstruction is written as .npy or .tif")
    check_output(args.output, overwrite=args.force, inputs=[args.input])
    if args.restore:  # only the header here: the stored views are read by --restore
        if Path(args.input).suffix != ".ctpz":
            raise InputError("--restore reads a .ctpz file written with --codec sparse-unet")
        with api.open(args.input) as f:
            shape, geometry, metadata = f.shape, f.geometry, f.metadata
    else:
        scan = _read_any(args.input, args.format)
        shape, geometry, metadata = scan.shape, scan.geometry, scan.metadata
    options: dict[str, object] = {"filter": args.filter, "cutoff": args.cutoff}
    if args.algorithm == "sirt":
        options = {"n_iter": args.iterations}
    cols = shape[2]
    size = args.size or cols
    kind = geometry.kind if geometry else None
    if kind == "cone":
        options.update(volume_shape=(shape[1], size, size), voxel_size_mm=args.pixel_size)
    elif args.algorithm == "sirt":
        options.update(shape=(size, size), voxel_size_mm=args.pixel_size)
    else:
        options.update(image_shape=(size, size), pixel_size_mm=args.pixel_size)
    t0 = time.perf_counter()
    if args.restore:
        from .restore import reconstruct_restored

        volume = reconstruct_restored(args.input, args.algorithm, **options)
    else:
        volume = np.asarray(reconstruct(scan, args.algorithm, **options), dtype=np.float32)
    if args.hu:
        volume = mu_to_hu(volume, float(metadata.get("mu_water_per_mm", 0.0192)))
    from .io import atomic_path

    with atomic_path(args.output, overwrite=args.force, inputs=[args.input]) as tmp:
        if Path(args.output).suffix == ".npy":
            with tmp.open("wb") as fh:
                np.save(fh, volume)
        else:
            import tifffile

            tifffile.imwrite(tmp, volume)
    if not args.quiet:
        unit = "HU" if args.hu else "1/mm"
        print(f"{args.output}: {volume.shape} float32 in {unit}, {time.perf_counter() - t0:.1f} s")


def _cmd_compare(args: argparse.Namespace) -> None:
    from . import metrics

    original, decoded = _read_any(args.original), _read_any(args.decoded)
    result: dict[str, object] = {
        "projection": metrics.projection_metrics(original.array(), decoded.array(), args.data_range)
    }
    if args.recon:
        from .bench import prepare_recon

        reference = prepare_recon(original)
        result["recon"] = metrics.recon_metrics(
            reference.volume,
            reference.reconstruct(decoded),
            reference.mask,
            reference.mu_water_per_mm,
            reference.noise_std,
        )
        result["recon_settings"] = reference.describe()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    for domain in ("projection", "recon"):
        values = result.get(domain)
        if isinstance(values, dict):
            print(f"{domain} domain:")
            for key, value in values.items():
                print(f"  {key:18s} {value:.6g}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    codecs = None if args.codecs == "all" else args.codecs.split(",")
    run_demo(
        Path(args.out),
        codecs,
        recon=not args.no_recon,
        jobs=args.jobs,
        progress=not args.quiet,
        overwrite=args.force,
    )


def _cmd_bench(args: argparse.Namespace) -> None:
    from .bench import format_table, load_results, parse_rates, run_bench, write_results
    from .io import read_scan
    from .report import write_report

    codecs = list_codec_ids() if args.codecs == "all" else args.codecs.split(",")
    rates = parse_rates(args.rates)
    scans = {}
    for path in args.inputs:
        name = Path(path).stem
        if name in scans:
            raise CtpressError(f"two inputs are named {name!r}; rename one")
        scans[name] = _with_bench_geometry(read_scan(path, format=args.format), path, args)
    out = results_directory(args.out, overwrite=args.force)  # before any measurement
    resume = load_results(out) if args.resume and (out / "results.json").exists() else None
    result = run_bench(
        scans,
        codecs,
        rates,
        recon=args.recon,
        jobs=args.jobs,
        perceptual=not args.no_perceptual,
        resume=resume,
        progress=not args.quiet,
    )
    result.settings["inputs"] = [str(p) for p in args.inputs]
    write_results(result, out)
    index = write_report(result, out)
    if not args.quiet:
        print(format_table(result.records))
    print(f"report: {index}")


def _with_bench_geometry(scan: Scan, path: str, args: argparse.Namespace) -> Scan:
    """``scan`` with the geometry given by ``ctpress bench --geometry ...`` (inputs that
    store none); InputError for inconsistent options."""
    import numpy as np

    from .scan import Geometry

    given = [args.angles, args.angles_file, args.source_isocenter_mm, args.source_detector_mm]
    if args.geometry is None:
        if any(v is not None for v in given):
            raise InputError("--angles and the distances describe a --geometry; give it too")
        return scan
    if scan.geometry is not None:
        raise InputError(f"{path} stores its own geometry; --geometry is for bare arrays")
    n_views = scan.shape[0]
    given_degrees: Any
    if args.angles is not None:
        given_degrees = _angle_range(args.angles, n_views)
    elif args.angles_file is not None:
        file = args.angles_file
        try:
            given_degrees = np.load(file) if file.suffix == ".npy" else np.loadtxt(file, ndmin=1)
        except ValueError as exc:
            raise InputError(f"bad --angles-file {file}: {exc}") from None
    else:
        raise InputError("--geometry needs --angles START:STOP[:STEP] or --angles-file")
    degrees = np.asarray(given_degrees, dtype=np.float64).ravel()
    if len(degrees) != n_views or not np.isfinite(degrees).all():
        raise InputError(
            f"--angles/--angles-file give {len(degrees)} finite angles where {path} has "
            f"{n_views} views"
        )
    try:
        spacing = [float(v) for v in args.detector_spacing_mm.split(",")]
    except ValueError:
        raise InputError(f"bad --detector-spacing-mm {args.detector_spacing_mm!r}") from None
    if len(spacing) not in (1, 2):
        raise InputError("--detector-spacing-mm takes one pitch or ROW,COL")
    fields: dict[str, object] = {}
    if args.geometry != "parallel":
        if args.source_isocenter_mm is None or args.source_detector_mm is None:
            raise InputError(
                f"--geometry {args.geometry} needs --source-isocenter-mm and --source-detector-mm"
            )
        fields = dict(
            source_isocenter_mm=args.source_isocenter_mm,
            source_detector_mm=args.source_detector_mm,
            detector_shape=args.detector_shape,
        )
    geometry = Geometry(
        kind=args.geometry,
        angles_rad=tuple(np.deg2rad(degrees)),
        detector_spacing_mm=(spacing[0], spacing[-1]),
        **fields,  # type: ignore[arg-type]
    )
    return Scan(scan.projections, geometry, scan.metadata)


def _angle_range(text: str, n_views: int) -> list[float]:
    """``START:STOP[:STEP]`` degrees, STOP excluded; without STEP ``n_views`` even steps."""
    import math

    try:
        parts = [float(v) for v in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or not all(map(math.isfinite, parts)):
        raise InputError(f"bad --angles {text!r}: use START:STOP[:STEP] in degrees, e.g. 0:180:2")
    start, stop = parts[:2]
    step = parts[2] if len(parts) == 3 else (stop - start) / n_views
    if step == 0 or (stop - start) / step <= 0:
        raise InputError(f"bad --angles {text!r}: STEP must go from START towards STOP")
    count = math.ceil((stop - start) / step - 1e-9)
    if count != n_views:
        raise InputError(
            f"--angles {text} gives {count} angles where the input has {n_views} views"
        )
    return [start + step * k for k in range(count)]


def _cmd_train(args: argparse.Namespace) -> None:
    from .learned.data import default_data_dir
    from .learned.fitting import main_command
    from .learned.train import train

    data = args.data or [
        default_data_dir() or Path(__file__).parent / "data" / "default_volume.npz"
    ]
    if args.only and args.method != "sparse-unet":
        raise InputError("--only applies to ctpress train sparse-unet")
    if args.only != "image":
        check_output(args.out, overwrite=args.force, inputs=data)  # before any training
    if args.method == "sparse-unet" and args.only != "sinogram":
        from .learned.train_sparse import image_weights_path

        check_output(image_weights_path(args.out), overwrite=args.force, inputs=data)
    train(
        args.method, args.rate_point, data, args.out, steps=args.steps, minutes=args.minutes,
        seed=args.seed, cache=args.cache, only=args.only, command=main_command(),
        log=not args.quiet,
    )  # fmt: skip


class _Terminated(BaseException):
    """Raised in the main thread on SIGTERM or SIGHUP, so that temporary outputs are removed
    on the way out (as for Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated(signum)


_COMMANDS = {
    "train": _cmd_train,
    "compress": _cmd_compress,
    "convert": _cmd_convert,
    "batch": _cmd_batch,
    "decompress": _cmd_decompress,
    "info": _cmd_info,
    "verify": _cmd_verify,
    "codecs": _cmd_codecs,
    "simulate": _cmd_simulate,
    "recon": _cmd_recon,
    "compare": _cmd_compare,
    "demo": _cmd_demo,
    "bench": _cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctpress`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    handled = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _terminate) for sig in _TERMINATING} if handled else {}
    try:
        status = _COMMANDS[args.command](args)
    except OutputExistsError as exc:
        print(f"ctpress: error: {exc.path} exists; pass --force to replace it", file=sys.stderr)
        return EXIT_USAGE
    except CtpressError as exc:
        print(f"ctpress: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"ctpress: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ctpress: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except _Terminated as exc:
        print(f"ctpress: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK if status is None else status


if __name__ == "__main__":
    sys.exit(main())
