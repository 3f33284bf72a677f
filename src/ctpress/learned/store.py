"""Where the shipped weights live: the weights directory and its manifest (no torch).

``weights/manifest.json`` lists, per method, its entries (file, SHA-256, configuration,
provenance).  :mod:`~ctpress.learned.zoo` (the models' rate points) and
:mod:`~ctpress.learned.inr` (SIREN's meta-learned initialisations) both read it through
this module, which imports neither.  ``CTPRESS_WEIGHTS_DIR`` points to another directory
with the same layout (own training runs, tests).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, FormatError, InputError

MANIFEST = "manifest.json"
ENV_DIR = "CTPRESS_WEIGHTS_DIR"


class WeightsMismatchError(FormatError):
    """A stream was made with weights that this installation does not have."""


#: Caches of loaded weights, emptied by :func:`clear_cache` (see :func:`register_cache`).
_CACHES: list[Callable[[], None]] = []


def weights_dir() -> Path:
    """Directory of the weights in use (``$CTPRESS_WEIGHTS_DIR`` or the packaged one)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    return Path(str(resources.files("ctpress.learned").joinpath("weights")))


def manifest() -> dict[str, Any]:
    """The manifest of :func:`weights_dir` (``{"methods": {method: [entry, ...]}}``)."""
    return read_manifest(str(weights_dir()))


@functools.cache
def read_manifest(directory: str) -> dict[str, Any]:
    """The manifest of ``directory`` (cached; an empty one when there is none)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return {"format": 1, "methods": {}}
    return json.loads(path.read_text())


def entries(directory: str, method: str) -> list[dict[str, Any]]:
    """Manifest entries of ``method`` in ``directory``, in the manifest's order."""
    return list(read_manifest(directory)["methods"].get(method, []))


def read_entry(directory: str, entry: dict[str, Any]) -> tuple[bytes, str]:
    """(bytes, SHA-256) of the file of a manifest entry, refused (CorruptFileError) when
    its SHA-256 differs from the manifest's."""
    data = (Path(directory) / entry["file"]).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise CorruptFileError(
            f"weights {entry['file']} have SHA-256 {digest}, but the manifest says "
            f"{entry['sha256']}: the installation is damaged; reinstall ctpress"
        )
    return data, digest


def install_entry(
    method: str, index: int, name: str, data: bytes, record: dict[str, Any]
) -> dict[str, Any]:
    """Write ``data`` as ``name`` into :func:`weights_dir` and record it as entry ``index``
    of ``method`` in the manifest (``record`` plus ``file`` and ``sha256``; replacing an
    existing entry or appending the next one); returns the manifest entry."""
    directory = weights_dir()
    (directory / name).write_bytes(data)
    manifest_path = directory / MANIFEST
    content: dict[str, Any] = (
        json.loads(manifest_path.read_text())
        if manifest_path.is_file()
        else {"format": 1, "methods": {}}
    )
    entries = content["methods"].setdefault(method, [])
    entry = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), **record}
    if index < len(entries):
        entries[index] = entry
    elif index == len(entries):
        entries.append(entry)
    else:
        raise InputError(f"install entry {len(entries)} of {method} first")
    manifest_path.write_text(json.dumps(content, indent=1) + "\n")
    clear_cache()
    return entry


def register_cache(clear: Callable[[], None]) -> None:
    """Have :func:`clear_cache` call ``clear`` (a cache of things read from the weights)."""
    _CACHES.append(clear)


def clear_cache() -> None:
    """Forget the manifest and everything loaded from the weights (after changing
    :func:`weights_dir` or installing weights)."""
    read_manifest.cache_clear()
    for clear in _CACHES:
        clear()
