"""ctpress: compression of raw CT projection data, with honest measurements.

Quick use::

    import ctpress
    data = ctpress.compress(projections, codec="jpegls", max_error=2)   # bytes
    scan = ctpress.decompress(data)                                     # Scan
    with ctpress.open("scan.ctpz") as f:
        views = f[100:110]                                              # lazy view range
"""

import os as _os

# torch's OpenMP threads spin-wait by default; on a busy 2-core machine that made the
# simulator 5x slower.  Set before torch is first imported; a user's setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import codecs, metrics
from ._version import __version__
from .api import compress, decompress, open
from .batch import batch
from .codecs import Codec, get_codec, list_codec_ids, list_codecs, register_codec
from .container import CtpzFile
from .convert import convert
from .errors import CorruptFileError, CtpressError, FormatError, InputError, RateControlError
from .io import read_scan, write_scan
from .scan import Geometry, Scan

__all__ = [
    "Codec",
    "CorruptFileError",
    "CtpressError",
    "CtpzFile",
    "FormatError",
    "Geometry",
    "InputError",
    "RateControlError",
    "Scan",
    "__version__",
    "batch",
    "codecs",
    "compress",
    "convert",
    "decompress",
    "get_codec",
    "list_codec_ids",
    "list_codecs",
    "metrics",
    "open",
    "read_scan",
    "register_codec",
    "write_scan",
]
