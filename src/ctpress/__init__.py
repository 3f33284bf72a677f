"""ctpress: compression of raw CT projection data."""

from ._version import __version__
from .errors import CorruptFileError, CtpressError, FormatError, InputError, RateControlError
from .scan import Geometry, Scan

__all__ = [
    "CorruptFileError",
    "CtpressError",
    "FormatError",
    "Geometry",
    "InputError",
    "RateControlError",
    "Scan",
    "__version__",
]
