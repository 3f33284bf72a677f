"""Learned mean-scale hyperprior codec (``--codec hyperprior``), see :mod:`ctpress.learned`."""

from __future__ import annotations

from ..learned.codec import LearnedCodec
from .registry import register_codec


@register_codec
class Hyperprior(LearnedCodec):
    """Mean-scale hyperprior per projection (Ballé et al. 2018, Minnen et al. 2018), with
    shipped rate points (lambda) and a quantisation gain between them; ``max_error`` and
    ``lossless`` add the error-bounded residual layer."""

    codec_id = "hyperprior"
    method = "hyperprior"
    description = "learned mean-scale hyperprior (2-D, per projection) + error-bounded residual"
