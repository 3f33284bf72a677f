"""The learned engine: models, entropy models, layers, residual layer, training, zoo.

The codecs built on it live in :mod:`ctpress.codecs` (:mod:`ctpress.codecs.learned`: the
base of "learned reconstruction + residual"; ``hyperprior``, ``vqvae``, ``siren``); this
package imports no codec.  Layers, CompressAI-style, lowest first:

- :mod:`~ctpress.learned.tables` (numpy only): integer frequency tables and the range
  coder; :mod:`~ctpress.learned.fixed_point` (numpy only): the decoder-side output grid
  and integer networks whose predictions every machine computes alike;
- :mod:`~ctpress.learned.entropy`: integer-table entropy models (factorized prior,
  Gaussian/Laplace scale conditional) coded with constriction's range coder;
- :mod:`~ctpress.learned.layers`: GDN, sub-pixel upsampling, the CDF 9/7 wavelet;
- :mod:`~ctpress.learned.models`: whole models (``training_loss`` for training;
  ``compress`` -> (strings, decoder-side reconstruction) and ``decompress`` for real
  bitstreams, made of ``analyse`` / ``code`` / ``decode`` / ``synthesise``):
  :class:`~ctpress.learned.models.hyperprior.MeanScaleHyperprior`,
  :class:`~ctpress.learned.models.vqvae.VQVAE`;
- :mod:`~ctpress.learned.residual` (numpy only): the error-bounded residual layer (max
  error, lossless) usable on top of any learned model;
- :mod:`~ctpress.learned.inr`: SIREN fitting, weight quantisation and evaluation;
- :mod:`~ctpress.learned.unet` (numpy only): the integer U-Net; :mod:`~ctpress.learned.sparse`
  (numpy only): sparse-view selection and the two restorations built on it;
- :mod:`~ctpress.learned.store` (the weights directory and manifest) below
  :mod:`~ctpress.learned.zoo` (named rate points, safetensors weights) and ``inr``;
- :mod:`~ctpress.learned.data` and :mod:`~ctpress.learned.train` (with
  :mod:`~ctpress.learned.train_sparse`): training data from real CT volumes and
  projections, and ``ctpress train``.

Determinism contract: a decoder uses only integers from the stream and the weights file
to pick probability tables; decoder-side float computations run in float64 on the CPU
and are guarded by CRC-32s in the stream (table indexes, reconstruction on a 2**-20
grid), so a file decodes identically on every machine or fails with CorruptFileError;
a stream records the SHA-256 prefix of the weights it was made with and is refused by a
ctpress whose weights differ.
"""
