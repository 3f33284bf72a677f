"""Named rate points of the learned codecs: shipped safetensors weights + manifest.

``weights/manifest.json`` (see :mod:`~ctpress.learned.store`) lists, per method, its rate
points in increasing rate, each with its file, SHA-256, model configuration, training
command, data, seed and measured held-out quality.  Weights are loaded with safetensors
only (never pickle); a file whose SHA-256 differs from the manifest is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ..errors import CorruptFileError, InputError
from .models.base import LearnedModel
from .models.hyperprior import MeanScaleHyperprior
from .models.vqvae import VQVAE
from .store import ENV_DIR as ENV_DIR  # the zoo's public names, kept where callers use them
from .store import MANIFEST as MANIFEST
from .store import (
    WeightsMismatchError,
    install_entry,
    manifest,
    read_entry,
    register_cache,
    weights_dir,
)
from .store import clear_cache as clear_cache

#: Model class of each method (``dvc``: the P-frame residual model of ``--codec dvc``, a
#: hyperprior fine-tuned by ``ctpress train dvc``).
MODELS: dict[str, type[LearnedModel]] = {
    MeanScaleHyperprior.method: MeanScaleHyperprior,
    VQVAE.method: VQVAE,
    "dvc": MeanScaleHyperprior,
}


def rate_points(method: str) -> list[dict[str, Any]]:
    """Manifest entries of ``method``'s rate points, in increasing rate."""
    if method not in MODELS:
        raise InputError(f"unknown learned method {method!r}; choose one of {sorted(MODELS)}")
    return list(manifest()["methods"].get(method, []))


def build_model(method: str, config: dict[str, Any]) -> LearnedModel:
    """A fresh (untrained) model of ``method`` with architecture ``config``."""
    return MODELS[method](**config)


def save_weights(model: LearnedModel, path: Path, metadata: dict[str, Any]) -> str:
    """Write ``model``'s state (tables included) as safetensors; returns the SHA-256.

    The file's metadata holds ``method``, ``config`` (JSON) and ``metadata`` (JSON:
    training provenance), so a weights file rebuilds its model on its own.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {
        "method": model.method,
        "config": json.dumps(model.config()),
        "metadata": json.dumps(metadata),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(path), metadata=header)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_weights(data: bytes) -> tuple[LearnedModel, dict[str, Any]]:
    """Model and provenance metadata from the bytes of a safetensors weights file."""
    header = _safetensors_metadata(data)
    method = header.get("method")
    if method not in MODELS:
        raise CorruptFileError(f"weights file names an unknown method {method!r}")
    model = build_model(method, json.loads(header["config"]))
    state = safetensors.torch.load(data)
    for name, tensor in state.items():  # integer tables have data-dependent shapes
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if leaf in module._buffers:
            module._buffers[leaf] = torch.empty_like(tensor)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, json.loads(header.get("metadata", "{}"))


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise CorruptFileError("weights file is truncated")
    n = int.from_bytes(data[:8], "little")
    try:
        return dict(json.loads(data[8 : 8 + n]).get("__metadata__", {}))
    except ValueError as exc:
        raise CorruptFileError(f"weights file header is damaged: {exc}") from None


def load_model(method: str, rate_point: int) -> tuple[LearnedModel, str]:
    """The model of ``method`` at ``rate_point`` and its weights' SHA-256 (cached)."""
    return _load_model(str(weights_dir()), method, rate_point)


@functools.cache
def _load_model(directory: str, method: str, rate_point: int) -> tuple[LearnedModel, str]:
    entries = rate_points(method)
    if not 0 <= rate_point < len(entries):
        have = f"rate points 0..{len(entries) - 1}" if entries else "none"
        raise WeightsMismatchError(
            f"{method} rate point {rate_point} is not installed (this ctpress has {have}): "
            "install the ctpress version that wrote the file"
        )
    data, digest = read_entry(directory, entries[rate_point])
    model, _ = load_weights(data)
    return model, digest


register_cache(_load_model.cache_clear)


def install(path: Path, held_out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy a trained weights file into :func:`weights_dir` and record it in the manifest.

    The method, rate point and provenance (training command, data, seed, steps, held-out
    quality) come from the file's own metadata (written by :func:`ctpress.learned.train.train`);
    ``held_out`` replaces the held-out quality measured at training time (e.g. measured
    again with the encoder of this version).
    """
    data = path.read_bytes()
    metadata = json.loads(_safetensors_metadata(data).get("metadata", "{}"))
    method, rate_point = metadata["method"], int(metadata["rate_point"])
    record = {
        "rate_point": rate_point,
        **{k: v for k, v in metadata.items() if k not in ("method", "rate_point", "history")},
    }
    if held_out is not None:
        record["held_out"] = held_out
    name = f"{method}-rp{rate_point}.safetensors"
    return install_entry(method, rate_point, name, data, record)
