"""The interface of a learned image model (training path and coding path).

A model sees single-channel images normalised to about [0, 1], shape (n, 1, H, W) with H
and W multiples of :attr:`LearnedModel.downsampling` (the codec pads and crops).

- Training: :meth:`LearnedModel.training_loss` (differentiable, float32, any device).
- Coding, on the CPU, CompressAI-shaped: :meth:`LearnedModel.compress` (image -> strings
  and the decoder-side reconstruction) and :meth:`LearnedModel.decompress` (strings ->
  the same reconstruction, bit for bit).  They are made of :meth:`analyse` (encoder
  only, float32) -> :meth:`code` (latents -> bytes) and, at both ends, :meth:`decode`
  (bytes -> latents) -> :meth:`synthesise` (latents -> image); a rate search calls
  :meth:`analyse` once and :meth:`code` per quantisation gain.  Everything the decoder
  computes to choose probability tables or to reconstruct runs in float64 on integers
  decoded from the stream, and the tables are integers stored with the weights (see
  :mod:`ctpress.learned.entropy`).
"""

from __future__ import annotations

import copy
import zlib
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import CorruptFileError


@dataclass
class Coded:
    """Latents of one batch of images, as bytes and as the decoder sees them.

    Attributes
    ----------
    payload : bytes
        Entropy-coded latents.
    latent : Any
        What :meth:`LearnedModel.synthesise` takes (float64 tensors on the CPU).
    check : int
        CRC-32 of the integers that the decoder derives from floats to choose its
        probability tables (0 when the tables do not depend on decoded values).
    """

    payload: bytes
    latent: Any
    check: int


@dataclass(frozen=True)
class Strings:
    """What :meth:`LearnedModel.decompress` needs besides the image shape.

    Attributes
    ----------
    payload : bytes
        Entropy-coded latents.
    gain : float
        Quantisation gain they were coded with.
    check : int
        CRC-32 of the decoder-side table choice (see :class:`Coded`).
    """

    payload: bytes
    gain: float
    check: int


class LearnedModel(nn.Module):
    """Base class of the learned image models (see the module docstring)."""

    #: Zoo method name ("hyperprior", "vqvae").
    method: ClassVar[str]
    #: Image sides must be multiples of this (total downsampling of the latents).
    downsampling: int = 16
    #: Range of the quantisation gain the model tolerates at coding time (1 = trained).
    gain_range: ClassVar[tuple[float, float]] = (1.0, 1.0)

    def __init__(self) -> None:
        super().__init__()
        self.__dict__["_inference"] = {}

    #: Training patches are cut from :meth:`training_view` with sides ``patch / training_scale``.
    training_scale: int = 1
    #: Whether training patches may be flipped.
    training_flips: bool = True

    def training_view(self, image: np.ndarray) -> np.ndarray:
        """What training patches are cut from, for one normalised image (H, W) float32:
        by default the image itself as (1, H, W).  Models with a fixed transform return
        its output, so training need not recompute it."""
        return image[None]

    def initialise(self, sample: Tensor) -> None:
        """Data-dependent initialisation from a training batch (default: none)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serialisable): rebuilds the architecture."""

    @abstractmethod
    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Loss of a batch ``x`` (n, C, h, w) cut from :meth:`training_view` and
        monitoring values (bpp, mse)."""

    @abstractmethod
    def update(self, data: Tensor | None = None) -> None:
        """Freeze the learned entropy models into integer tables (after training).

        ``data`` (n, 1, H, W) is a sample of training images for models whose prior is
        counted from data.
        """

    @abstractmethod
    def analyse(self, x: Tensor) -> Any:
        """Encoder transform of normalised, padded images ``x`` (n, 1, H, W)."""

    @abstractmethod
    def code(self, analysis: Any, gain: float) -> Coded:
        """Quantise and entropy-code the result of :meth:`analyse`."""

    @abstractmethod
    def decode(self, payload: bytes, shape: tuple[int, int, int], gain: float, check: int) -> Coded:
        """Inverse of :meth:`code` for images of padded ``shape`` (n, H, W).

        Raises CorruptFileError when the decoder-side table choice does not match the
        encoder's (``check``), i.e. exact decoding or a loud failure.
        """

    @abstractmethod
    def synthesise(self, latent: Any) -> Tensor:
        """Decoder transform: float64 images (n, 1, H, W), normalised units."""

    def compress(self, x: Tensor, gain: float = 1.0) -> tuple[Strings, Tensor]:
        """Code normalised, padded images ``x`` (n, 1, H, W) at quantisation ``gain``.

        Returns the strings and the decoder-side reconstruction (float64 (n, 1, H, W)):
        exactly what :meth:`decompress` of those strings returns, so a closed-loop coder
        knows what its decoder will see.
        """
        coded = self.code(self.analyse(x), gain)
        return Strings(coded.payload, gain, coded.check), self.synthesise(coded.latent)

    def decompress(self, strings: Strings, shape: tuple[int, int, int]) -> Tensor:
        """Reconstruction (float64 (n, 1, H, W)) of :meth:`compress`'s ``strings`` for
        padded images of ``shape`` (n, H, W); CorruptFileError on a table mismatch."""
        coded = self.decode(strings.payload, shape, strings.gain, strings.check)
        return self.synthesise(coded.latent)

    def float64(self, name: str, module: nn.Module) -> nn.Module:
        """A float64 copy of ``module`` (cached) for the decoder-side computations."""
        cache: dict[str, nn.Module] = self.__dict__["_inference"]
        if name not in cache:
            cache[name] = copy.deepcopy(module).double().eval()
        return cache[name]

    def clear_inference_cache(self) -> None:
        """Drop the float64 copies (call after changing parameters)."""
        self.__dict__["_inference"].clear()


def index_check(indexes: np.ndarray) -> int:
    """CRC-32 of an integer index map (the guard of decoder-side table selection)."""
    return zlib.crc32(np.ascontiguousarray(indexes, dtype="<i2").tobytes())


#: Message of a decoder whose table choice differs from the encoder's.
MISMATCH = (
    "entropy model mismatch: the probability tables chosen by this decoder differ from the "
    "encoder's (different weights or non-reproducible arithmetic)"
)


def check_or_fail(expected: int, indexes: np.ndarray) -> int:
    """Return the CRC of ``indexes``; CorruptFileError if it differs from ``expected``."""
    crc = index_check(indexes)
    if crc != expected:
        raise CorruptFileError(MISMATCH)
    return crc


def to_float64(x: Tensor) -> Tensor:
    """CPU float64 copy of a tensor."""
    return x.detach().to("cpu", torch.float64)


def ste_round(x: Tensor) -> Tensor:
    """Rounding with a straight-through gradient (training)."""
    return x + (torch.round(x) - x).detach()
