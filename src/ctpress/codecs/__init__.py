"""Codecs: one interface (:class:`Codec`), one registry, one module per method."""

# importing a codec module registers it
from ..rate import RATE_MODES, RateControl
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
from .base import Codec, Knob
from .context import ChunkContext
from .registry import get_codec, get_codec_class, list_codecs, register_codec

__all__ = [
    "RATE_MODES",
    "ChunkContext",
    "Codec",
    "Knob",
    "RateControl",
    "get_codec",
    "get_codec_class",
    "list_codecs",
    "register_codec",
]
