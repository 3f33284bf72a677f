"""Learned mean-scale hyperprior codec (``--codec hyperprior``), see :mod:`.learned`."""

from __future__ import annotations

from .learned import LearnedCodec
from .registry import register_codec


@register_codec
class Hyperprior(LearnedCodec):
    """Mean-scale hyperprior per projection (Ballé et al. 2018, Minnen et al. 2018) over a
    CDF 9/7 wavelet transform, with a learned channel-conditional context across wavelet
    levels; shipped rate points (quantisation steps) and a quantisation gain between them;
    ``max_error`` and ``lossless`` add the error-bounded residual layer."""

    codec_id = "hyperprior"
    method = "hyperprior"
    description = "learned mean-scale hyperprior on CDF 9/7 wavelets (per projection) + residual"
