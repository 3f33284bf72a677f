"""Codecs: one interface (:class:`Codec`), one registry, one module per method."""

# importing a codec module registers it
from . import (  # noqa: F401
    generic,
    hyperprior,
    jpeg2000,
    jpegls,
    jpegxl,
    siren,
    sperr,
    sz3,
    vqvae,
    zfp,
)
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
