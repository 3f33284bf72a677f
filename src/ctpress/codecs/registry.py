"""Registry of codecs by ``codec_id`` (numcodecs style), loading codec modules lazily.

The built-in codecs are a table of ids and the modules that define them; a module is
imported the first time one of its codecs is asked for, so listing the ids, or using a
classical codec, never imports torch.  Codecs of other packages register themselves with
:func:`register_codec` when their module is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from .base import Codec

#: Built-in codec id -> the module whose import registers it.
BUILTIN_CODECS: dict[str, str] = {
    "blosc2": "ctpress.codecs.blosc",
    "convlstm": "ctpress.codecs.convlstm",
    "dvc": "ctpress.codecs.dvc",
    "htj2k": "ctpress.codecs.jpeg2000",
    "hyperprior": "ctpress.codecs.hyperprior",
    "jpeg2000": "ctpress.codecs.jpeg2000",
    "jpegls": "ctpress.codecs.jpegls",
    "jpegxl": "ctpress.codecs.jpegxl",
    "siren": "ctpress.codecs.siren",
    "sparse-unet": "ctpress.codecs.sparse_unet",
    "sperr": "ctpress.codecs.sperr",
    "sz3": "ctpress.codecs.sz3",
    "vqvae": "ctpress.codecs.vqvae",
    "zfp": "ctpress.codecs.zfp",
    "zstd": "ctpress.codecs.generic",
}

_REGISTRY: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Register a codec class under its ``codec_id`` (usable as a class decorator)."""
    _REGISTRY[cls.codec_id] = cls
    return cls


def list_codec_ids() -> list[str]:
    """Ids of the built-in and the registered codecs, sorted (imports no codec module)."""
    return sorted(BUILTIN_CODECS.keys() | _REGISTRY.keys())


def list_codecs() -> list[type[Codec]]:
    """Every codec class, sorted by id (imports every built-in codec module)."""
    return [get_codec_class(codec_id) for codec_id in list_codec_ids()]


def get_codec_class(codec_id: str) -> type[Codec]:
    """The codec class registered as ``codec_id``, importing its module on first use;
    InputError listing the ids otherwise."""
    if not isinstance(codec_id, str) or codec_id not in BUILTIN_CODECS.keys() | _REGISTRY.keys():
        raise InputError(f"unknown codec {codec_id!r}; available: {', '.join(list_codec_ids())}")
    if codec_id not in _REGISTRY:
        importlib.import_module(BUILTIN_CODECS[codec_id])
    return _REGISTRY[codec_id]


def get_codec(config: dict[str, Any] | str, **settings: Any) -> Codec:
    """Build a codec from a config dict (``{"id": ..., ...}``) or an id plus settings."""
    if isinstance(config, str):
        return get_codec_class(config)(**settings)
    if not isinstance(config, dict) or "id" not in config:
        raise InputError(f"a codec config is an object with an 'id', got {config!r:.80}")
    return get_codec_class(config["id"]).from_config(config)
