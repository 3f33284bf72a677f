"""DICOM-CT-PD projection series (TCIA "LDCT-and-Projection-data"): one view per file.

Format facts: ``docs/dicom-ct-pd.md`` (shared docs).  A series is a directory of DICOM
files (SOP class Raw Data Storage, uint16 pixels) whose geometry lives in private
elements of creator ``CtProjectionData-MayoClinc-v1``.

Mappings chosen here
--------------------
* **Order**: views are sorted by (InstanceNumber, time stamp (7033,1067)), never by file
  name; two files with the same key are refused.
* **Orientation**: a file's pixel array is (Rows, Columns).  It is transposed when
  (Rows, Columns) equals (channels (7029,1011), detector rows (7029,1010)), the vendor
  layout (also chosen when both counts are equal), and kept when it equals (rows,
  channels); ``projections[v]`` is always (det_rows, det_cols).  No flips are applied.
* **Angles**: DICOM-CT-PD puts the focal centre at ``(-rho sin phi, rho cos phi)``; the
  projector convention puts the source at ``(R sin a, -R cos a)``, hence
  ``a = phi + pi`` (not unwrapped across rotations); new files get
  ``phi = (a - pi) mod 2 pi``.
* **Detector offset**: the 1-based central element (column, row) of (7031,1033) gives
  ``offset = ((n + 1) / 2 - central) * pitch`` per axis (position of the array centre
  relative to the central ray, as :class:`~ctpress.scan.Geometry` defines it).
* **Values**: the stored uint16 are kept as the projections; ``rescale_slope`` /
  ``rescale_intercept`` in the metadata give the line integral ``stored * slope +
  intercept``.

Every file's bytes except the pixel value are kept in ``aux["dicom_headers"]`` (uint8,
prefixes and suffixes concatenated) indexed by ``aux["dicom_header_index"]`` (int64
rows ``(start, prefix_len, suffix_len)``), so :func:`write_ctpd` can rewrite the series
byte-identical except for the pixel data.

Compressed transfer syntaxes
----------------------------
Files may also hold their one frame compressed (:data:`COMPRESSED_SYNTAXES`: JPEG-LS
lossless and near-lossless, HTJ2K lossless and lossy).  The reader decodes the frame
through the ctpress codec of the same name (its size checked against Rows x Columns
first) and keeps the headers of the file re-encoded as explicit VR little endian with
the decoded pixels (the Lossy Image Compression tags stay), so writing such a scan back
gives uncompressed files.  The writer compresses when given a :class:`Compression`: each
view's (Rows, Columns) image is one encapsulated frame (one fragment, a basic offset
table), and a lossy syntax sets Lossy Image Compression (0028,2110) ``01``, its ratio
(0028,2112: uncompressed over stored bytes of the frame) and method (0028,2114).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import add_private_dict_entries
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    HTJ2K,
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    JPEGLSNearLossless,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from ..errors import CorruptFileError, FormatError, InputError
from ..scan import Geometry, Scan
from . import _lazy
from ._atomic import atomic_path
from ._image_frames import decode_image
from ._lazy import LazyViews

__all__ = [
    "COMPRESSED_SYNTAXES",
    "CREATOR",
    "LOSSY_METHODS",
    "PRIVATE_TAGS",
    "Compression",
    "read_ctpd",
    "write_ctpd",
    "write_fresh",
    "write_into",
]

CREATOR = "CtProjectionData-MayoClinc-v1"
RAW_DATA_STORAGE = UID("1.2.840.10008.5.1.4.1.1.66")
_PIXEL_DATA = 0x7FE00010
#: The last two bytes of a JPEG-LS (EOI) and a JPEG 2000 (EOC) codestream.
_END_OF_IMAGE = b"\xff\xd9"
#: Compressed transfer syntax -> the ctpress codec that codes its frames.
COMPRESSED_SYNTAXES: dict[UID, str] = {
    JPEGLSLossless: "jpegls",
    JPEGLSNearLossless: "jpegls",
    HTJ2KLossless: "htj2k",
    HTJ2KLosslessRPCL: "htj2k",
    HTJ2K: "htj2k",
}
#: Lossy transfer syntax -> Lossy Image Compression Method (0028,2114).
LOSSY_METHODS: dict[UID, str] = {JPEGLSNearLossless: "ISO_14495_1", HTJ2K: "ISO_15444_15"}
_MAX_NAME_BYTES = 255

#: DICOM-CT-PD dictionary keyword -> (tag, VR, VM).
PRIVATE_TAGS: dict[str, tuple[int, str, str]] = {
    "NumberofDetectorRows": (0x70291010, "US", "1"),
    "NumberofDetectorColumns": (0x70291011, "US", "1"),
    "DetectorElementTransverseSpacing": (0x70291002, "FL", "1"),
    "DetectorElementAxialSpacing": (0x70291006, "FL", "1"),
    "DetectorShape": (0x7029100B, "CS", "1"),
    "DetectorFocalCenterAngularPosition": (0x70311001, "FL", "1"),
    "DetectorFocalCenterAxialPosition": (0x70311002, "FL", "1"),
    "DetectorFocalCenterRadialDistance": (0x70311003, "FL", "1"),
    "ConstantRadialDistance": (0x70311031, "FL", "1"),
    "DetectorCentralElement": (0x70311033, "FL", "2"),
    "SourceAngularPositionShift": (0x7033100B, "FL", "1"),
    "SourceAxialPositionShift": (0x7033100C, "FL", "1"),
    "SourceRadialDistanceShift": (0x7033100D, "FL", "1"),
    "FlyingFocalSpotMode": (0x7033100E, "CS", "1"),
    "NumberofSourceAngularSteps": (0x70331013, "US", "1"),
    "NumberofSpectra": (0x70331061, "US", "1"),
    "SpectrumIndex": (0x70331063, "US", "1"),
    "PhotonStatistics": (0x70331065, "FL", "1-n"),
    "TimeStamp": (0x70331067, "FL", "1"),
    "TypeofProjectionData": (0x70371009, "CS", "1"),
    "TypeofProjectionGeometry": (0x7037100A, "CS", "1"),
    "BeamHardeningCorrectionFlag": (0x70391003, "CS", "1"),
    "GainCorrectionFlag": (0x70391004, "CS", "1"),
    "DarkFieldCorrectionFlag": (0x70391005, "CS", "1"),
    "FlatFieldCorrectionFlag": (0x70391006, "CS", "1"),
    "BadPixelCorrectionFlag": (0x70391007, "CS", "1"),
    "ScatterCorrectionFlag": (0x70391008, "CS", "1"),
    "LogFlag": (0x70391009, "CS", "1"),
    "WaterAttenuationCoefficient": (0x70411001, "DS", "1"),
}
_CORRECTIONS = [k for k in PRIVATE_TAGS if k.endswith("Flag")]
_REQUIRED_PUBLIC = ("SeriesInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated")
_REQUIRED_PRIVATE = (
    "NumberofDetectorRows",
    "NumberofDetectorColumns",
    "DetectorElementTransverseSpacing",
    "DetectorElementAxialSpacing",
    "DetectorShape",
    "DetectorFocalCenterAngularPosition",
    "DetectorFocalCenterAxialPosition",
    "DetectorFocalCenterRadialDistance",
    "ConstantRadialDistance",
    "DetectorCentralElement",
)
#: Private values every view of a series must share.
_SERIES_PRIVATE = (
    *_REQUIRED_PRIVATE[:5],
    "DetectorFocalCenterRadialDistance",
    "ConstantRadialDistance",
)
#: Per-view values: aux array name -> private keyword (absent shifts read as 0).
_PER_VIEW_AUX = {
    "ffs_angular_shift_rad": "SourceAngularPositionShift",
    "ffs_axial_shift_mm": "SourceAxialPositionShift",
    "ffs_radial_shift_mm": "SourceRadialDistanceShift",
    "time_stamp": "TimeStamp",
    "photon_statistics": "PhotonStatistics",
}
#: Metadata key -> private keyword of series-wide optional values.
_SERIES_META = {
    "mu_water_per_mm": "WaterAttenuationCoefficient",
    "ffs_mode": "FlyingFocalSpotMode",
    "scan_type": "TypeofProjectionData",
    "beam_geometry": "TypeofProjectionGeometry",
    "source_angular_steps": "NumberofSourceAngularSteps",
}

add_private_dict_entries(
    CREATOR, {tag: (vr, vm, name, "") for name, (tag, vr, vm) in PRIVATE_TAGS.items()}
)


def _tag_name(keyword: str) -> str:
    tag = PRIVATE_TAGS[keyword][0]
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


def _private(ds: Dataset, keyword: str, path: Path, required: bool = True) -> Any:
    """Value of a private element: float/int/str, or a float64 array for multi-valued FL.

    Elements an explicit-VR file stores as UN are unpacked by their dictionary VR.
    """
    tag, vr, vm = PRIVATE_TAGS[keyword]
    try:
        value = ds.private_block(tag >> 16, CREATOR)[tag & 0xFF].value
    except KeyError:
        if not required:
            return None
        raise FormatError(
            f"{path}: not a DICOM-CT-PD projection: missing private tag {_tag_name(keyword)} "
            f"of creator {CREATOR!r}"
        ) from None
    if isinstance(value, bytes):
        value = (
            value.decode("ascii").strip(" \0")
            if vr in ("CS", "DS")
            else np.frombuffer(value, "<f4" if vr == "FL" else "<u2")
        )
    if vr == "DS":
        return float(value)
    if vr == "CS":
        return str(value).strip()
    arr = np.atleast_1d(np.asarray(value, dtype=np.float32 if vr == "FL" else np.int64))
    if vm == "1":
        return float(arr[0]) if vr == "FL" else int(arr[0])
    return arr.astype(np.float64)


def _public(ds: Dataset, keyword: str, path: Path) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        raise FormatError(f"{path}: not a DICOM-CT-PD projection: missing tag {keyword}")
    return value


def _parse(path: Path, keep_pixels: bool = True) -> dict[str, Any]:
    """Everything read from one file: header bytes, pixels (None unless ``keep_pixels``;
    ``pixel_offset`` says where they start), series-wide and per-view values."""
    data = path.read_bytes()
    try:
        ds = pydicom.dcmread(BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise FormatError(f"{path}: not a readable DICOM file ({exc})") from exc
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, *COMPRESSED_SYNTAXES):
        raise FormatError(
            f"{path}: transfer syntax {syntax} is not supported; DICOM-CT-PD files are "
            "little endian, uncompressed or JPEG-LS / HTJ2K compressed"
        )
    public = {k: _public(ds, k, path) for k in _REQUIRED_PUBLIC}
    if public["BitsAllocated"] != 16 or ds.get("PixelRepresentation", 0) != 0:
        raise FormatError(
            f"{path}: pixels must be unsigned 16 bit (BitsAllocated, PixelRepresentation)"
        )
    if syntax in COMPRESSED_SYNTAXES:
        data = _decompressed(path, ds, COMPRESSED_SYNTAXES[syntax])
        ds = pydicom.dcmread(BytesIO(data))
    private = {k: _private(ds, k, path) for k in _REQUIRED_PRIVATE}
    shape = (int(public["Rows"]), int(public["Columns"]))
    det = (private["NumberofDetectorRows"], private["NumberofDetectorColumns"])
    if shape not in (det, det[::-1]):
        raise FormatError(
            f"{path}: Rows x Columns {shape} match neither {_tag_name('NumberofDetectorRows')} "
            f"nor {_tag_name('NumberofDetectorColumns')} {det}"
        )
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if not isinstance(elem, RawDataElement):
        raise FormatError(f"{path}: not a DICOM-CT-PD projection: missing tag PixelData")
    start, length = elem.value_tell, elem.length
    if length != shape[0] * shape[1] * 2 or start + length > len(data):
        raise FormatError(f"{path}: PixelData holds {length} bytes, expected {shape} uint16")
    central = private["DetectorCentralElement"]
    if central.shape != (2,):
        raise FormatError(f"{path}: {_tag_name('DetectorCentralElement')} needs 2 values")
    series = {
        **{k: private[k] for k in _SERIES_PRIVATE},
        "DetectorCentralElement": tuple(central),
        "Rows x Columns": shape,
        "RescaleSlope": float(ds.get("RescaleSlope", 1.0)),
        "RescaleIntercept": float(ds.get("RescaleIntercept", 0.0)),
        **{k: _private(ds, k, path, False) for k in (*_SERIES_META.values(), *_CORRECTIONS)},
    }
    views = {name: _private(ds, k, path, False) for name, k in _PER_VIEW_AUX.items()}
    return {
        "path": path,
        "uid": str(public["SeriesInstanceUID"]),
        "key": (int(public["InstanceNumber"]), views["time_stamp"] or 0.0),
        "series": series,
        "angle": private["DetectorFocalCenterAngularPosition"],
        "z": private["DetectorFocalCenterAxialPosition"],
        "views": views,
        "pixels": (
            np.frombuffer(data, "<u2", shape[0] * shape[1], start).reshape(shape)
            if keep_pixels
            else None
        ),
        "pixel_offset": None if syntax in COMPRESSED_SYNTAXES else start,
        "prefix": data[:start],
        "suffix": data[start + length :],
    }


def _decompressed(path: Path, ds: Dataset, codec_id: str) -> bytes:
    """The bytes of ``ds`` (a file of a compressed transfer syntax) as explicit VR little
    endian, its one frame decoded by ``codec_id``."""
    shape = (int(ds.Rows), int(ds.Columns))
    if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise FormatError(f"{path}: a DICOM-CT-PD file holds one frame of one sample per pixel")
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=1))
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise CorruptFileError(f"{path}: encapsulated pixel data is damaged ({exc})") from None
    if len(frames) != 1:
        raise CorruptFileError(f"{path}: encapsulated pixel data holds {len(frames)} frames, not 1")
    frame = frames[0][:-1] if frames[0].endswith(b"\xff\xd9\0") else frames[0]  # even padding
    if not frame.endswith(_END_OF_IMAGE):  # OpenJPH decodes a truncated frame without a word
        raise CorruptFileError(
            f"{path}: the {codec_id} frame ends without its end-of-image marker (truncated)"
        )
    try:
        pixels = decode_image(codec_id, frame, shape, "uint16")
    except CorruptFileError as exc:
        raise CorruptFileError(f"{path}: {exc}") from None
    del ds.PixelData
    ds.add_new(_PIXEL_DATA, "OW", np.ascontiguousarray(pixels, "<u2").tobytes())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise InputError(
            f"{directory}: a DICOM-CT-PD series is a directory of one-view files; "
            "pass the directory"
        )
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    dcm = [p for p in files if p.suffix.lower() == ".dcm"]
    if not (dcm or files):
        raise InputError(f"{directory}: no DICOM files in the directory")
    return dcm or files


def _check_one_series(directory: Path, parsed: list[dict[str, Any]]) -> None:
    by_uid: dict[str, list[Path]] = {}
    for p in parsed:
        by_uid.setdefault(p["uid"], []).append(p["path"])
    if len(by_uid) > 1:
        listing = "; ".join(
            f"{uid} ({len(paths)} files, e.g. {paths[0].name})" for uid, paths in by_uid.items()
        )
        raise InputError(
            f"{directory}: files of {len(by_uid)} series (SeriesInstanceUID): {listing}; "
            "put one series per directory"
        )


def _label(key: str) -> str:
    return _tag_name(key) if key in PRIVATE_TAGS else key


def _check_consistent(parsed: list[dict[str, Any]]) -> None:
    first = parsed[0]
    for p in parsed[1:]:
        for key, value in p["series"].items():
            if value != first["series"][key]:
                raise InputError(
                    f"{p['path']}: {_label(key)} is {value} but {first['path'].name} has "
                    f"{first['series'][key]}; all views of a series must agree"
                )
    for a, b in pairwise(parsed):
        if a["key"] == b["key"]:
            raise InputError(
                f"{a['path']} and {b['path'].name} have the same InstanceNumber and "
                f"{_tag_name('TimeStamp')} {a['key']}; cannot order the views"
            )


def _per_view(parsed: list[dict[str, Any]], name: str) -> np.ndarray | None:
    """Stack one per-view value over the views; None if no view has it."""
    values = [p["views"][name] for p in parsed]
    missing = [p["path"] for p, v in zip(parsed, values, strict=True) if v is None]
    if len(missing) == len(parsed):
        return None
    label = _tag_name(_PER_VIEW_AUX[name])
    if missing:
        raise InputError(f"{missing[0]}: no {label}, but other views of the series have it")
    if len({np.shape(v) for v in values}) > 1:
        raise InputError(f"{parsed[0]['path'].parent}: {label} differs in length between views")
    return np.asarray(values, dtype=np.float32)


def read_ctpd(directory: str | Path) -> Scan:
    """Read a DICOM-CT-PD series (a directory of one-projection files).

    Parameters
    ----------
    directory : str or Path
        Directory holding the ``.dcm`` files of exactly one series (if it has no
        ``.dcm`` file, every non-hidden file is read).

    Returns
    -------
    Scan
        uint16 projections (n_views, det_rows, det_cols) in acquisition order; geometry
        (``helical`` for a HELICAL scan, else ``cone``/``fan``); metadata (units,
        rescale, water attenuation, flying focal spot mode, scan type, angular steps,
        file names); aux arrays with the per-view flying-focal-spot shifts, time stamps,
        photon statistics and the raw header bytes (see the module docstring).

    Raises
    ------
    FormatError
        A file is not DICOM-CT-PD (the message names the file and the missing tag).
    InputError
        Mixed series, views that disagree on the detector or geometry, or no files.
    """
    directory = Path(directory)
    files = _files(directory)
    lazy = _lazy.wanted((sum(path.stat().st_size for path in files),), np.dtype(np.uint8))
    parsed = [_parse(path, keep_pixels=not lazy) for path in files]
    _check_one_series(directory, parsed)
    parsed.sort(key=lambda p: p["key"])
    _check_consistent(parsed)
    series = parsed[0]["series"]
    n_rows, n_cols = series["NumberofDetectorRows"], series["NumberofDetectorColumns"]
    transposed = series["Rows x Columns"] == (n_cols, n_rows)
    row_pitch = series["DetectorElementAxialSpacing"]
    col_pitch = series["DetectorElementTransverseSpacing"]
    central_col, central_row = series["DetectorCentralElement"]
    helical = series["TypeofProjectionData"] == "HELICAL"
    geometry = Geometry(
        kind="helical" if helical else ("cone" if n_rows > 1 else "fan"),
        angles_rad=tuple(p["angle"] + math.pi for p in parsed),
        source_isocenter_mm=series["DetectorFocalCenterRadialDistance"],
        source_detector_mm=series["ConstantRadialDistance"],
        detector_spacing_mm=(row_pitch, col_pitch),
        detector_shape=series["DetectorShape"].lower(),
        detector_offset_mm=(
            ((n_rows + 1) / 2 - central_row) * row_pitch,
            ((n_cols + 1) / 2 - central_col) * col_pitch,
        ),
        z_mm=tuple(p["z"] for p in parsed),
    )
    metadata: dict[str, Any] = {
        "units": "line_integral",
        "rescale_slope": series["RescaleSlope"],
        "rescale_intercept": series["RescaleIntercept"],
        "origin": "dicom-ctpd",
        **{k: series[kw] for k, kw in _SERIES_META.items() if series[kw] is not None},
        "corrections": {k: series[k] for k in _CORRECTIONS if series[k] is not None},
        "dicom_series_uid": parsed[0]["uid"],
        "dicom_transposed": transposed,
        "dicom_filenames": [p["path"].name for p in parsed],
    }
    aux: dict[str, np.ndarray] = {}
    for name in _PER_VIEW_AUX:
        values = _per_view(parsed, name)
        if values is not None:
            aux[name] = values
        elif name.startswith("ffs_"):
            aux[name] = np.zeros(len(parsed), np.float32)
    lengths = np.array([[len(p["prefix"]), len(p["suffix"])] for p in parsed], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths.sum(axis=1))[:-1]]).astype(np.int64)
    aux["dicom_headers"] = np.frombuffer(
        b"".join(p["prefix"] + p["suffix"] for p in parsed), np.uint8
    ).copy()
    aux["dicom_header_index"] = np.column_stack([starts, lengths])
    if lazy:
        locations = [(p["path"], p["pixel_offset"]) for p in parsed]
        stack = _lazy_views(directory, locations, (n_rows, n_cols), transposed)
        return Scan(stack, geometry=geometry, metadata=metadata, aux=aux)
    views = np.stack([p["pixels"].T if transposed else p["pixels"] for p in parsed])
    return Scan(views, geometry=geometry, metadata=metadata, aux=aux)


def _lazy_views(
    directory: Path,
    locations: list[tuple[Path, int | None]],
    detector: tuple[int, int],
    transposed: bool,
) -> LazyViews:
    """The series' views read file by file: view ``v``'s uint16 pixels start at byte
    ``locations[v][1]`` of file ``locations[v][0]`` (already parsed and checked), or, for
    a file of a compressed transfer syntax (offset None), come from decoding its frame
    again; ``detector`` is (det_rows, det_cols), stored (det_cols, det_rows) if
    ``transposed``."""
    stored = detector[::-1] if transposed else detector

    def read(start: int, stop: int) -> np.ndarray:
        views = np.empty((stop - start, *detector), np.uint16)
        for view, (path, offset) in zip(views, locations[start:stop], strict=True):
            if offset is None:
                pixels = _parse(path, keep_pixels=True)["pixels"].reshape(-1)
            else:
                pixels = np.fromfile(path, "<u2", stored[0] * stored[1], offset=offset)
            if pixels.size != stored[0] * stored[1]:
                raise FormatError(f"{path}: PixelData was cut short since the series was read")
            view[...] = pixels.reshape(stored).T if transposed else pixels.reshape(stored)
        return views

    return LazyViews(read, (len(locations), *detector), np.uint16, str(directory))


def _is_safe_filename(name: object) -> bool:
    """Whether ``name`` is a plain file name: 1-255 bytes, no path separator, NUL or leading
    dot (hidden files are not read back, and the output marker starts with one)."""
    if not isinstance(name, str) or not name or name.startswith(".") or "\0" in name:
        return False
    try:
        encoded = os.fsencode(name)
    except UnicodeError:
        return False
    return len(encoded) <= _MAX_NAME_BYTES and Path(name).name == name and "\\" not in name


def _filenames(scan: Scan) -> list[str]:
    """File names of the views: metadata ``dicom_filenames`` (checked: they may come from a
    crafted file) or ``000001.dcm``, ``000002.dcm``, ..."""
    names = scan.metadata.get("dicom_filenames")
    if names is None:
        return [f"{i + 1:06d}.dcm" for i in range(scan.shape[0])]
    if not isinstance(names, list) or len(names) != scan.shape[0]:
        raise InputError(
            f"metadata dicom_filenames must list one file name per view ({scan.shape[0]})"
        )
    for name in names:
        if not _is_safe_filename(name):
            raise InputError(
                f"metadata dicom_filenames holds an unsafe file name {name!r:.80} (a file name "
                "is 1-255 bytes without '/', '\\', NUL or a leading '.'); the scan's metadata "
                "is damaged: write another format, or drop metadata['dicom_filenames'] in "
                "Python for generated names"
            )
    if len(set(names)) != len(names):
        raise InputError("metadata dicom_filenames holds duplicate file names")
    return names


@dataclass(frozen=True)
class Compression:
    """How the writer compresses each view: a transfer syntax of
    :data:`COMPRESSED_SYNTAXES` and the function that codes one (Rows, Columns) uint16
    image as the bare codestream of that syntax."""

    transfer_syntax: UID
    encode: Callable[[np.ndarray], bytes]


def _view_image(scan: Scan, view: int) -> np.ndarray:
    """The (Rows, Columns) uint16 image of one view, as its file stores it."""
    pixels = scan.projections[view]
    if scan.metadata.get("dicom_transposed", True):
        pixels = pixels.T
    return np.ascontiguousarray(pixels, dtype="<u2")


def _set_compressed_pixels(ds: Dataset, image: np.ndarray, compression: Compression) -> None:
    """Put ``image`` into ``ds`` as one encapsulated frame of ``compression``'s syntax, with
    the Lossy Image Compression tags where that syntax is lossy."""
    frame = compression.encode(image)
    ds.file_meta.TransferSyntaxUID = compression.transfer_syntax
    if _PIXEL_DATA in ds:
        del ds[_PIXEL_DATA]
    ds.add_new(_PIXEL_DATA, "OB", encapsulate([frame]))
    ds[_PIXEL_DATA].is_undefined_length = True
    method = LOSSY_METHODS.get(compression.transfer_syntax)
    if method is not None:
        ds.LossyImageCompression = "01"
        stored = len(frame) + len(frame) % 2  # fragments are padded to even length
        ds.LossyImageCompressionRatio = DSfloat(image.nbytes / stored, auto_format=True)
        ds.LossyImageCompressionMethod = method


def _write_back(scan: Scan, directory: Path, compression: Compression | None) -> None:
    blob, index = scan.aux["dicom_headers"], scan.aux.get("dicom_header_index")
    n, rows, cols = scan.shape
    if index is None or index.shape != (n, 3) or blob.dtype != np.uint8 or blob.ndim != 1:
        raise InputError(
            f"aux dicom_header_index (shape {None if index is None else index.shape}) does not "
            f"describe the scan's {n} views; write the full scan (or drop aux dicom_headers)"
        )
    raw = blob.tobytes()
    for view, name in enumerate(_filenames(scan)):
        start, n_prefix, n_suffix = (int(v) for v in index[view])
        if min(start, n_prefix, n_suffix) < 0 or start + n_prefix + n_suffix > len(raw):
            raise InputError(f"aux dicom_header_index row {view} lies outside dicom_headers")
        prefix = raw[start : start + n_prefix]
        stored = int.from_bytes(prefix[-4:], "little")
        if stored != rows * cols * 2:
            raise InputError(
                f"view {view} ({name}): the stored header holds {stored} pixel bytes but the "
                f"scan's views are {rows} x {cols} uint16 ({rows * cols * 2} bytes)"
            )
        suffix = raw[start + n_prefix : start + n_prefix + n_suffix]
        image = _view_image(scan, view)
        if compression is None:
            (directory / name).write_bytes(prefix + image.tobytes() + suffix)
            continue
        ds = pydicom.dcmread(BytesIO(prefix + image.tobytes() + suffix))
        _set_compressed_pixels(ds, image, compression)
        ds.save_as(directory / name, enforce_file_format=True)


def _uid(seed: int | None, *parts: object) -> UID:
    return generate_uid(entropy_srcs=None if seed is None else [str(seed), *map(str, parts)])


def _add(ds: Dataset, keyword: str, value: Any) -> None:
    tag, vr, _ = PRIVATE_TAGS[keyword]
    block = ds.private_block(tag >> 16, CREATOR, create=True)
    if vr == "FL":
        value = [float(v) for v in np.atleast_1d(value)]
        value = value[0] if len(value) == 1 else value
    elif vr == "DS":
        value = DSfloat(value, auto_format=True)
    block.add_new(tag & 0xFF, vr, value)


def write_fresh(
    scan: Scan,
    directory: Path,
    *,
    implicit_vr: bool = False,
    seed: int | None = None,
    compression: Compression | None = None,
) -> list[Path]:
    """Build new DICOM-CT-PD files for ``scan`` into ``directory`` (created if missing).

    Geometry, metadata and the aux arrays named like :func:`read_ctpd`'s produce the
    tags (``phi = (a - pi) mod 2 pi``; pixels stored as channels x rows unless metadata
    ``dicom_transposed`` is False).  ``seed`` makes the UIDs reproducible;
    ``compression`` codes the pixels (``implicit_vr`` then does not apply).

    Returns
    -------
    list of Path
        The written files, in acquisition order.
    """
    geometry, meta, aux = scan.geometry, scan.metadata, scan.aux
    if geometry is None or geometry.kind == "parallel":
        raise InputError("DICOM-CT-PD needs a fan, cone or helical geometry with distances")
    assert geometry.source_isocenter_mm is not None and geometry.source_detector_mm is not None
    n, rows, cols = scan.shape
    transposed = meta.get("dicom_transposed", True)
    phi = np.mod(geometry.angles() - math.pi, 2 * math.pi)  # in [0, 2 pi) like real series
    z = geometry.z_mm or (0.0,) * n
    row_pitch, col_pitch = geometry.detector_spacing_mm
    row_off, col_off = geometry.detector_offset_mm
    study = _uid(seed, "study")
    series = meta.get("dicom_series_uid") or _uid(seed, "series")
    corrections = meta.get("corrections", {})
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for view, name in enumerate(_filenames(scan)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
        )
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = RAW_DATA_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = _uid(seed, "sop", view)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "ANONYMOUS", view + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = (cols, rows) if transposed else (rows, cols)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept = DSfloat(meta.get("rescale_intercept", 0.0), auto_format=True)
        ds.RescaleSlope = DSfloat(meta.get("rescale_slope", 1.0), auto_format=True)
        _add(ds, "NumberofDetectorRows", rows)
        _add(ds, "NumberofDetectorColumns", cols)
        _add(ds, "DetectorElementTransverseSpacing", col_pitch)
        _add(ds, "DetectorElementAxialSpacing", row_pitch)
        _add(ds, "DetectorShape", geometry.detector_shape.upper())
        _add(ds, "DetectorFocalCenterAngularPosition", phi[view])
        _add(ds, "DetectorFocalCenterAxialPosition", z[view])
        _add(ds, "DetectorFocalCenterRadialDistance", geometry.source_isocenter_mm)
        _add(ds, "ConstantRadialDistance", geometry.source_detector_mm)
        _add(
            ds,
            "DetectorCentralElement",
            [(cols + 1) / 2 - col_off / col_pitch, (rows + 1) / 2 - row_off / row_pitch],
        )
        for name_aux, keyword in _PER_VIEW_AUX.items():
            if name_aux in aux:
                _add(ds, keyword, aux[name_aux][view])
        _add(ds, "FlyingFocalSpotMode", meta.get("ffs_mode", "FFSNONE"))
        if "source_angular_steps" in meta:
            _add(ds, "NumberofSourceAngularSteps", meta["source_angular_steps"])
        _add(ds, "NumberofSpectra", 1)
        _add(ds, "SpectrumIndex", 1)
        default_type = "HELICAL" if geometry.kind == "helical" else "AXIAL"
        _add(ds, "TypeofProjectionData", meta.get("scan_type", default_type))
        _add(ds, "TypeofProjectionGeometry", meta.get("beam_geometry", "FANBEAM"))
        for keyword in _CORRECTIONS:
            if keyword in corrections:
                _add(ds, keyword, corrections[keyword])
        if "mu_water_per_mm" in meta:
            _add(ds, "WaterAttenuationCoefficient", meta["mu_water_per_mm"])
        if compression is None:
            ds.PixelData = _view_image(scan, view).tobytes()
            ds["PixelData"].VR = "OW"
        else:
            _set_compressed_pixels(ds, _view_image(scan, view), compression)
        path = directory / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_into(scan: Scan, directory: Path, compression: Compression | None = None) -> None:
    """:func:`write_ctpd` without the atomic replace: ``directory`` must not exist yet."""
    if scan.dtype != np.uint16:
        raise InputError(
            f"DICOM-CT-PD stores uint16 values, got {scan.dtype}; quantise the projections "
            "(value = stored * rescale_slope + rescale_intercept) first"
        )
    if "dicom_headers" in scan.aux:
        directory.mkdir()
        _write_back(scan, directory, compression)
    else:
        write_fresh(scan, directory, compression=compression)


def write_ctpd(
    scan: Scan,
    directory: str | Path,
    *,
    overwrite: bool = False,
    compression: Compression | None = None,
) -> None:
    """Write ``scan`` as a DICOM-CT-PD series directory, atomically.

    A scan read by :func:`read_ctpd` (it carries ``aux["dicom_headers"]``) is written
    back as the original files, byte-identical except for the pixel data values (the
    stored headers are used verbatim: edits to its geometry or metadata are not
    applied).  Any other scan gets freshly built files (see :func:`write_fresh`).  With
    ``compression`` the pixel data is compressed (and the stored headers are re-encoded
    in its transfer syntax).

    Parameters
    ----------
    scan : Scan
        uint16 projections (n_views, det_rows, det_cols).
    directory : str or Path
        Output directory.
    overwrite : bool
        Replace an existing output directory (only one ctpress wrote: see
        :func:`~ctpress.io.check_output`).
    compression : Compression, optional
        Transfer syntax and frame encoder (default: uncompressed).

    Raises
    ------
    InputError
        Projections not uint16, a view count or detector size that does not match the
        stored headers, unsafe file names, no usable geometry, or an existing output.
    """
    with atomic_path(directory, overwrite=overwrite) as tmp:
        write_into(scan, tmp, compression)
