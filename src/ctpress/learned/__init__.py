"""Learned codecs: engine (entropy coding, training, shipped weights) and models.

Layers, CompressAI-style:

- :mod:`~ctpress.learned.entropy`: integer-table entropy models (factorized prior,
  Gaussian/Laplace scale conditional) coded with constriction's range coder;
- :mod:`~ctpress.learned.layers`: GDN, sub-pixel upsampling, the CDF 9/7 wavelet;
- :mod:`~ctpress.learned.models`: whole models (``forward``-style ``training_loss`` for
  training; ``analyse`` / ``code`` / ``decode`` / ``synthesise`` for real bitstreams):
  :class:`~ctpress.learned.models.hyperprior.MeanScaleHyperprior`,
  :class:`~ctpress.learned.models.vqvae.VQVAE`;
- :mod:`~ctpress.learned.residual`: the error-bounded residual layer (max error, lossless)
  usable on top of any learned model;
- :mod:`~ctpress.learned.codec`: the models as :class:`~ctpress.codecs.Codec` classes
  (chunk framing, normalisation, rate search, determinism guards);
- :mod:`~ctpress.learned.zoo`: named rate points, safetensors weights + manifest;
- :mod:`~ctpress.learned.data` and :mod:`~ctpress.learned.train`: training data from
  real CT volumes and projections, and ``ctpress train``.

Determinism contract: a decoder uses only integers from the stream and the weights file
to pick probability tables; decoder-side float computations run in float64 on the CPU
and are guarded by CRC-32s in the stream (table indexes, reconstruction on a 2**-20
grid), so a file decodes identically on every machine or fails with CorruptFileError;
a stream records the SHA-256 prefix of the weights it was made with and is refused by a
ctpress whose weights differ.
"""
