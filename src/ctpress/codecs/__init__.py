"""Codecs: one interface (:class:`Codec`), one registry, one module per method.

Codec modules are imported on first use (:func:`get_codec_class`), not here, so that
``import ctpress`` and the classical codecs stay free of torch.
"""

import importlib
from types import ModuleType

import numpy as np

from ..io._image_frames import install_image_decoder
from ..rate import RATE_MODES, RateControl
from .base import Codec, Knob
from .context import ChunkContext
from .registry import (
    BUILTIN_CODECS,
    get_codec,
    get_codec_class,
    list_codec_ids,
    list_codecs,
    register_codec,
)

__all__ = [
    "RATE_MODES",
    "ChunkContext",
    "Codec",
    "Knob",
    "RateControl",
    "get_codec",
    "get_codec_class",
    "list_codec_ids",
    "list_codecs",
    "register_codec",
]


def _decode_image(codec_id: str, data: bytes, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """One bare codestream of the image codec ``codec_id`` (a DICOM frame), checked and
    decoded as :meth:`~ctpress.codecs._image.ImageCodec.decode_image` does."""
    from ._image import ImageCodec

    codec = get_codec(codec_id)
    assert isinstance(codec, ImageCodec), codec_id
    return codec.decode_image(data, shape, dtype)


install_image_decoder(_decode_image)


def __getattr__(name: str) -> ModuleType:
    """A built-in codec module as an attribute (``ctpress.codecs.siren``), imported now."""
    module = f"{__name__}.{name}"
    if module in BUILTIN_CODECS.values():
        return importlib.import_module(module)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
