"""Decoding of compressed image frames inside files ctpress reads (DICOM pixel data),
provided by the codecs layer.

The io layer sits below the codecs (``tests/test_layers.py``), yet the DICOM-CT-PD
reader must decode JPEG-LS and HTJ2K frames with the codecs' safeguards (the frame's
size checked before anything is decoded, OpenJPH in a worker process).
:mod:`ctpress.codecs` installs its decoder here on import, which ``import ctpress`` does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: (codec id, one bare codestream, (rows, cols), dtype) -> the decoded image; raises
#: CorruptFileError on a damaged frame.
ImageDecoder = Callable[[str, bytes, tuple[int, int], str], np.ndarray]
_DECODER: list[ImageDecoder] = []


def install_image_decoder(decoder: ImageDecoder) -> None:
    """Make ``decoder`` the one :func:`decode_image` uses."""
    _DECODER[:] = [decoder]


def decode_image(codec_id: str, data: bytes, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """One frame coded by the ctpress codec ``codec_id``, as a ``shape`` array of ``dtype``."""
    if not _DECODER:
        raise RuntimeError("no image decoder installed: import ctpress first")
    return _DECODER[0](codec_id, data, shape, dtype)
