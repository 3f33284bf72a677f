"""Registry of codecs by ``codec_id`` (numcodecs style)."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .base import Codec

_REGISTRY: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Register a codec class under its ``codec_id`` (usable as a class decorator)."""
    _REGISTRY[cls.codec_id] = cls
    return cls


def list_codecs() -> list[type[Codec]]:
    """Registered codec classes, sorted by id."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_codec_class(codec_id: str) -> type[Codec]:
    """The codec class registered as ``codec_id``; InputError listing the ids otherwise."""
    if not isinstance(codec_id, str) or codec_id not in _REGISTRY:
        raise InputError(f"unknown codec {codec_id!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[codec_id]


def get_codec(config: dict[str, Any] | str, **settings: Any) -> Codec:
    """Build a codec from a config dict (``{"id": ..., ...}``) or an id plus settings."""
    if isinstance(config, str):
        return get_codec_class(config)(**settings)
    if not isinstance(config, dict) or "id" not in config:
        raise InputError(f"a codec config is an object with an 'id', got {config!r:.80}")
    return get_codec_class(config["id"]).from_config(config)
