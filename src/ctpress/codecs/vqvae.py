"""Learned VQ-VAE codec (``--codec vqvae``), see :mod:`ctpress.codecs.learned`."""

from __future__ import annotations

from .learned import LearnedCodec
from .registry import register_codec


@register_codec
class VqVae(LearnedCodec):
    """VQ-VAE per projection (single level or VQ-VAE-2 top/bottom) whose code indices are
    range-coded with a learned prior; rates above the richest rate point and ``max_error``
    / ``lossless`` use the error-bounded residual layer."""

    codec_id = "vqvae"
    method = "vqvae"
    description = "learned VQ-VAE / VQ-VAE-2 (per projection) + error-bounded residual"
