"""Codecs: one interface (:class:`Codec`), one registry, one module per method."""

from . import generic, jpeg2000, jpegls, jpegxl, sperr, sz3, zfp  # noqa: F401  (register)
from . import hyperprior, vqvae  # noqa: F401  (register the learned codecs)
from .base import RATE_MODES, Codec, Knob
from .registry import get_codec, get_codec_class, list_codecs, register_codec

__all__ = [
    "RATE_MODES",
    "Codec",
    "Knob",
    "get_codec",
    "get_codec_class",
    "list_codecs",
    "register_codec",
]
