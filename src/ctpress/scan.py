"""The scan data model: projections plus the geometry and metadata that describe them.

A :class:`Scan` is what every reader returns, every writer takes, and what the
``.ctpz`` container stores.  Geometry and metadata are plain JSON-serialisable values
so that they survive compress/decompress exactly (floats round-trip through JSON
``repr`` without loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from .errors import InputError

GeometryKind = Literal["parallel", "fan", "cone", "helical"]
DetectorShape = Literal["flat", "cylindrical"]

GEOMETRY_KINDS: tuple[str, ...] = ("parallel", "fan", "cone", "helical")
DETECTOR_SHAPES: tuple[str, ...] = ("flat", "cylindrical")

#: Data types a scan's projections may have.
SUPPORTED_DTYPES: tuple[str, ...] = (
    "uint8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "float32",
    "float64",
)


@dataclass(frozen=True)
class Geometry:
    """Acquisition geometry of a projection stack.

    Parameters
    ----------
    kind : {"parallel", "fan", "cone", "helical"}
        Beam geometry.  ``fan`` is a single detector row (or a stack of independent
        rows); ``cone`` is circular cone beam; ``helical`` adds per-view source z.
    angles_rad : tuple of float, shape (n_views,)
        Source (or, for parallel beam, projection) angle of every view, in radians.
    source_isocenter_mm, source_detector_mm : float or None
        Source-to-isocentre and source-to-detector distances in mm (None for parallel).
    detector_spacing_mm : (float, float)
        Detector pitch (row, column) in mm, at the detector.
    detector_shape : {"flat", "cylindrical"}
        Flat panel, or cylindrical arc centred on the source (clinical scanners).
    detector_offset_mm : (float, float)
        Shift (row, column) of the detector centre from the central ray, in mm.
    z_mm : tuple of float or None, shape (n_views,)
        Source axial position per view in mm (helical only).
    """

    kind: GeometryKind = "parallel"
    angles_rad: tuple[float, ...] = ()
    source_isocenter_mm: float | None = None
    source_detector_mm: float | None = None
    detector_spacing_mm: tuple[float, float] = (1.0, 1.0)
    detector_shape: DetectorShape = "flat"
    detector_offset_mm: tuple[float, float] = (0.0, 0.0)
    z_mm: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Normalise array-likes to tuples of Python floats (hashable, JSON-exact).
        object.__setattr__(self, "angles_rad", tuple(float(a) for a in self.angles_rad))
        object.__setattr__(
            self, "detector_spacing_mm", tuple(float(v) for v in self.detector_spacing_mm)
        )
        object.__setattr__(
            self, "detector_offset_mm", tuple(float(v) for v in self.detector_offset_mm)
        )
        if self.z_mm is not None:
            object.__setattr__(self, "z_mm", tuple(float(z) for z in self.z_mm))
        for name in ("source_isocenter_mm", "source_detector_mm"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))
        self._validate()

    def _validate(self) -> None:
        if self.kind not in GEOMETRY_KINDS:
            raise InputError(f"geometry kind must be one of {GEOMETRY_KINDS}, got {self.kind!r}")
        if self.detector_shape not in DETECTOR_SHAPES:
            raise InputError(
                f"detector_shape must be one of {DETECTOR_SHAPES}, got {self.detector_shape!r}"
            )
        if len(self.detector_spacing_mm) != 2 or len(self.detector_offset_mm) != 2:
            raise InputError("detector_spacing_mm and detector_offset_mm take (row, column) pairs")
        if any(not math.isfinite(a) for a in self.angles_rad):
            raise InputError("geometry angles_rad contains NaN or inf")
        if any(not (s > 0 and math.isfinite(s)) for s in self.detector_spacing_mm):
            raise InputError(
                f"detector_spacing_mm must be positive, got {self.detector_spacing_mm}"
            )
        if self.kind != "parallel":
            sid, sdd = self.source_isocenter_mm, self.source_detector_mm
            if sid is None or sdd is None:
                raise InputError(
                    f"{self.kind} geometry needs source_isocenter_mm and source_detector_mm"
                )
            if not (0 < sid < sdd):
                raise InputError(
                    f"need 0 < source_isocenter_mm < source_detector_mm, got {sid} and {sdd}"
                )
        if self.kind == "helical":
            if self.z_mm is None or len(self.z_mm) != len(self.angles_rad):
                raise InputError("helical geometry needs z_mm with one value per view")
        elif self.z_mm is not None and len(self.z_mm) != len(self.angles_rad):
            raise InputError("z_mm must have one value per view")

    @property
    def n_views(self) -> int:
        """Number of views described (length of ``angles_rad``)."""
        return len(self.angles_rad)

    @property
    def magnification(self) -> float:
        """Source-detector over source-isocentre distance (1 for parallel beam)."""
        if self.kind == "parallel":
            return 1.0
        assert self.source_detector_mm is not None and self.source_isocenter_mm is not None
        return self.source_detector_mm / self.source_isocenter_mm

    def angles(self) -> np.ndarray:
        """View angles as a float64 array of shape (n_views,), radians."""
        return np.asarray(self.angles_rad, dtype=np.float64)

    def select_views(self, start: int, stop: int) -> Geometry:
        """Geometry of views ``start:stop`` (per-view arrays sliced, the rest kept)."""
        z = None if self.z_mm is None else self.z_mm[start:stop]
        return replace(self, angles_rad=self.angles_rad[start:stop], z_mm=z)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (exact round trip through :meth:`from_dict`)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Rebuild a geometry from :meth:`to_dict` output (InputError if it is not one:
        unknown fields, or values of the wrong JSON type)."""
        if not isinstance(data, dict):
            raise InputError(f"geometry must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(_GEOMETRY_FIELD_TYPES)
        if unknown:
            raise InputError(f"unknown geometry field(s): {sorted(unknown)}")
        for key, value in data.items():
            check, expected = _GEOMETRY_FIELD_TYPES[key]
            if not check(value):
                raise InputError(
                    f"geometry field {key!r} must be {expected}, got {type(value).__name__}"
                )
        kwargs = dict(data)
        for key in ("detector_spacing_mm", "detector_offset_mm"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    @classmethod
    def parallel(cls, n_views: int, arc_rad: float = math.pi, **kwargs: Any) -> Geometry:
        """Parallel-beam geometry with ``n_views`` equally spaced angles over ``arc_rad``."""
        angles = np.arange(n_views) * (arc_rad / n_views)
        return cls(kind="parallel", angles_rad=tuple(angles), **kwargs)

    @classmethod
    def circular(
        cls,
        kind: Literal["fan", "cone"],
        n_views: int,
        source_isocenter_mm: float,
        source_detector_mm: float,
        arc_rad: float = 2 * math.pi,
        **kwargs: Any,
    ) -> Geometry:
        """Fan- or cone-beam circular orbit with ``n_views`` equally spaced source angles."""
        angles = np.arange(n_views) * (arc_rad / n_views)
        return cls(
            kind=kind,
            angles_rad=tuple(angles),
            source_isocenter_mm=source_isocenter_mm,
            source_detector_mm=source_detector_mm,
            **kwargs,
        )


def _is_number(value: Any) -> bool:
    """A JSON number that converts to a float (bools are not numbers here)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, float) or (isinstance(value, int) and abs(value) < 1 << 1024)


def _is_number_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_number(v) for v in value)


#: JSON type of each field of :meth:`Geometry.to_dict`: a check and how to name it.
_GEOMETRY_FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: isinstance(v, str), "a string"),
    "angles_rad": (_is_number_list, "a list of numbers"),
    "source_isocenter_mm": (lambda v: v is None or _is_number(v), "a number or null"),
    "source_detector_mm": (lambda v: v is None or _is_number(v), "a number or null"),
    "detector_spacing_mm": (_is_number_list, "a list of numbers"),
    "detector_shape": (lambda v: isinstance(v, str), "a string"),
    "detector_offset_mm": (_is_number_list, "a list of numbers"),
    "z_mm": (lambda v: v is None or _is_number_list(v), "a list of numbers or null"),
}


#: Well-known metadata keys (free metadata may hold any other JSON value too).
#: ``units``: "line_integral" (dimensionless -log(I/I0)), "counts" (raw detector
#: counts) or "unknown"; ``i0``: incident photons per detector pixel; ``rescale_slope``
#: / ``rescale_intercept``: value = stored * slope + intercept; ``origin``: provenance.
WELL_KNOWN_METADATA: tuple[str, ...] = (
    "units",
    "i0",
    "rescale_slope",
    "rescale_intercept",
    "mu_water_per_mm",
    "origin",
)


@runtime_checkable
class ViewStack(Protocol):
    """Projections of shape (n_views, det_rows, det_cols) read on demand, view by view:
    ``stack[a:b]`` (or ``stack[i]``) returns a NumPy array of only those views, and
    ``np.asarray(stack)`` reads the whole stack (only where a caller needs it all).
    :class:`ctpress.io.LazyViews` is the one the readers make."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype: ...
    @property
    def ndim(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def __len__(self) -> int: ...
    def __getitem__(self, key: int | slice) -> np.ndarray: ...
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray: ...


#: What :attr:`Scan.projections` holds: an array (in memory or memory-mapped), or a
#: :class:`ViewStack` read view by view.
Projections = np.ndarray | ViewStack


def _is_view_stack(data: object) -> bool:
    """Whether ``data`` is an ndarray or a :class:`ViewStack` of a NumPy dtype (an h5py
    dataset, a Zarr array, a :class:`ctpress.io.LazyViews`), kept as it is."""
    return isinstance(data, ViewStack) and isinstance(data.dtype, np.dtype)


def is_lazy(projections: Projections) -> bool:
    """Whether ``projections`` is a :class:`ViewStack` read on demand (not an ndarray)."""
    return not isinstance(projections, np.ndarray)


@dataclass
class Scan:
    """A stack of CT projections with its geometry and metadata.

    Parameters
    ----------
    projections : ndarray or ViewStack, shape (n_views, det_rows, det_cols)
        Detector images in acquisition order: line integrals (float) or raw counts
        (integer).  A 2-D sinogram (n_views, det_cols) is accepted and kept with
        ``det_rows = 1``; :attr:`original_ndim` remembers it.  A :class:`ViewStack`
        (a large HDF5, Zarr or TIFF input) is kept as it is and read view by view:
        compressing it holds a few chunks in memory, never the scan; code that needs the
        whole array calls :meth:`array`.
    geometry : Geometry or None
        How the views were acquired; None when unknown (a bare ``.npy``).
    metadata : dict
        Free JSON-serialisable metadata (see :data:`WELL_KNOWN_METADATA`).
    aux : dict of str to ndarray
        Auxiliary arrays stored losslessly alongside, e.g. ``dark`` and ``flat`` frames
        of shape (n_frames, det_rows, det_cols).
    """

    projections: Projections
    geometry: Geometry | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    aux: dict[str, np.ndarray] = field(default_factory=dict)
    original_ndim: int = 3
    #: (projections, their (min, max)) once a pass over a lazily read stack has found it
    _range: tuple[Projections, tuple[float, float]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        arr = self.projections
        if not _is_view_stack(arr):  # a list, a scalar, an array-like
            arr = np.asarray(arr)
        if isinstance(arr, np.ndarray) and arr.ndim == 2:
            arr = arr[:, None, :]
            self.original_ndim = 2
        self.projections = arr
        found = validate_projections(arr)
        if found is not None and is_lazy(arr):  # kept: a lazily read file does not change
            self._range = (arr, found)
        if self.geometry is not None and self.geometry.n_views not in (0, arr.shape[0]):
            raise InputError(
                f"geometry has {self.geometry.n_views} view angles but the projections have "
                f"{arr.shape[0]} views"
            )
        for name, value in self.aux.items():
            if not isinstance(value, np.ndarray):
                raise InputError(f"aux array {name!r} must be a NumPy array")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_views, det_rows, det_cols)."""
        n, r, c = self.projections.shape
        return (n, r, c)

    @property
    def dtype(self) -> np.dtype:
        """Data type of the projections."""
        return self.projections.dtype

    def array(self) -> np.ndarray:
        """The projections as an array, shape (n_views, det_rows, det_cols): read whole
        from a :class:`ViewStack` (only where the caller needs every view at once)."""
        return np.asarray(self.projections)

    def user_array(self) -> np.ndarray:
        """Projections in the shape the user gave: (views, cols) for 2-D input (read whole
        from a :class:`ViewStack`)."""
        if self.original_ndim == 2:
            return self.array()[:, 0, :]
        return self.array()

    def value_range(self) -> tuple[float, float]:
        """(min, max) of the projections, from a block-wise pass (:func:`value_range`);
        for a :class:`ViewStack` the pass is made once (float data: while validating)."""
        if self._range is not None and self._range[0] is self.projections:
            return self._range[1]
        found = value_range(self.projections)
        if is_lazy(self.projections):
            self._range = (self.projections, found)
        return found


#: Bytes of views read at a time by a block-wise pass (NaN/inf check, value range) over a
#: memory-mapped or lazily read scan.
_CHECK_BLOCK_BYTES = 16 << 20


def view_blocks(
    projections: Projections, block_bytes: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_view, views)`` over ``projections`` (shape (n_views, ...)) in blocks of
    about ``block_bytes`` (default :data:`_CHECK_BLOCK_BYTES`) of whole views: a
    memory-mapped or :class:`ViewStack` scan is never read whole."""
    n_views = projections.shape[0]
    view_bytes = projections.nbytes // max(1, n_views)
    step = max(1, (block_bytes or _CHECK_BLOCK_BYTES) // max(1, view_bytes))
    for first in range(0, n_views, step):
        yield first, np.asarray(projections[first : first + step])


def value_statistics(projections: Projections) -> tuple[int, float, float]:
    """(number of NaN/inf values, min, max) of ``projections`` from one block-wise pass
    (:func:`view_blocks`); min and max are NaN where a NaN is present."""
    bad, lo, hi = 0, math.inf, -math.inf
    for _, block in view_blocks(projections):
        if block.dtype.kind == "f":
            bad += int(block.size - np.count_nonzero(np.isfinite(block)))
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return bad, lo, hi


def value_range(projections: Projections) -> tuple[float, float]:
    """(min, max) of ``projections`` as floats, from a block-wise pass
    (:func:`value_statistics`): the scan-wide statistic of PSNR targets and chunk
    contexts."""
    _, lo, hi = value_statistics(projections)
    return lo, hi


def validate_projections(arr: Projections) -> tuple[float, float] | None:
    """Raise :class:`InputError` unless ``arr`` is a usable (n_views, rows, cols) stack.

    Float data are looked through for NaN/inf in blocks of views
    (:func:`value_statistics`); the (min, max) that pass found is returned (None for
    integer data, which is not read), so that a lazily read scan is not read twice.
    """
    if arr.ndim != 3:
        raise InputError(
            f"projections must have shape (views, rows, cols) or (views, cols), got {arr.ndim}-D "
            f"array of shape {arr.shape}"
        )
    if arr.size == 0:
        raise InputError(f"projections are empty (shape {arr.shape})")
    if arr.dtype.name not in SUPPORTED_DTYPES:
        raise InputError(f"unsupported dtype {arr.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
    if arr.dtype.kind != "f":
        return None
    bad, lo, hi = value_statistics(arr)
    if bad:
        raise InputError(
            f"projections contain {bad} NaN/inf value(s); clean or mask them before compressing"
        )
    return lo, hi


def as_scan(data: Scan | Projections) -> Scan:
    """Wrap a bare array (or :class:`ViewStack`) as a :class:`Scan` with no geometry;
    pass a Scan through."""
    if isinstance(data, Scan):
        return data
    return Scan(data)
