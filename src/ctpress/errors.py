"""Exceptions raised by ctpress.

Every error a user can cause (bad input, impossible request, damaged file) is a
:class:`CtpressError`; the CLI prints its message on one line and exits with code 2.
Anything else is a bug and exits with code 1.
"""

from __future__ import annotations


class CtpressError(Exception):
    """Base class of user-facing errors (bad input, bad request, bad file)."""


class InputError(CtpressError, ValueError):
    """The input data or an argument is invalid (NaN values, wrong shape, unknown codec, ...)."""


class FormatError(CtpressError):
    """A file is not in the expected format, or is of a newer/unsupported version."""


class CorruptFileError(FormatError):
    """A compressed file failed its checksum or is truncated."""


class RateControlError(CtpressError):
    """A rate/quality request cannot be met by the chosen codec on this data."""
