"""VQ-VAE (van den Oord et al. 2017) and its two-level form (VQ-VAE-2, Razavi et al. 2019).

One level: ``x -> encoder -> nearest codebook vectors (downsampled by factor) -> decoder``.
Two levels: a bottom latent at ``factor`` and a top latent at ``2 * factor``; the bottom
quantiser sees the encoder features together with the decoded top, and the decoder takes
both.  Code indices are range-coded with a learned unigram prior per level (counted on
training data by :meth:`VQVAE.update`, stored as integer tables with the weights).  The
rate of a level is at most ``log2(codebook) / factor**2`` bits per pixel.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CorruptFileError
from ..layers import SubpixelUp, conv_down
from ..tables import TableCoder, quantise_pmf
from .base import Coded, LearnedModel


class ResBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser with an EMA-updated codebook and dead-code restarts.

    Parameters
    ----------
    codebook : int
        Number of code vectors K.
    dim : int
        Dimension of a code vector (channels of the latent).
    decay : float
        EMA decay of the codebook statistics.
    """

    embedding: Tensor
    cluster_size: Tensor
    embed_sum: Tensor
    prior_freqs: Tensor

    def __init__(self, codebook: int, dim: int, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("embedding", torch.randn(codebook, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(codebook))
        self.register_buffer("embed_sum", self.embedding.clone())
        self.register_buffer("prior_freqs", torch.zeros(0, dtype=torch.int32))
        self._coder: TableCoder | None = None

    @property
    def codebook(self) -> int:
        """Number of code vectors."""
        return int(self.embedding.shape[0])

    def indexes(self, z: Tensor) -> Tensor:
        """Index of the nearest code vector of each position of ``z`` (n, D, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        dist = (
            flat.pow(2).sum(1, keepdim=True)
            - 2 * flat @ self.embedding.t()
            + self.embedding.pow(2).sum(1)[None]
        )
        return dist.argmin(1).reshape(z.shape[0], *z.shape[2:])

    def lookup(self, indexes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Code vectors of ``indexes`` (n, h, w) as (n, D, h, w)."""
        return self.embedding.to(dtype)[indexes].permute(0, 3, 1, 2)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantised ``z`` (straight-through), its indexes and the commitment loss."""
        idx = self.indexes(z.detach())
        q = self.lookup(idx)
        if self.training:
            self._ema_update(z.detach(), idx)
        commitment = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), idx, commitment

    @torch.no_grad()
    def _ema_update(self, z: Tensor, idx: Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        onehot = F.one_hot(idx.reshape(-1), self.codebook).to(flat.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + 1e-5) / (n + self.codebook * 1e-5) * n
        self.embedding.copy_(self.embed_sum / size[:, None])
        dead = self.cluster_size < 1e-2
        if dead.any():  # restart unused codes on random encoder outputs
            pick = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
            self.embedding[dead] = flat[pick]
            self.embed_sum[dead] = flat[pick]
            self.cluster_size[dead] = 1.0

    def set_prior(self, counts: np.ndarray) -> None:
        """Store the unigram prior (integer table) from index counts."""
        self.prior_freqs = torch.from_numpy(quantise_pmf(counts[None] + 0.5)[0].astype(np.int32))
        self._coder = None

    def coder(self) -> TableCoder:
        """Range coder of the indexes with the stored prior."""
        if self._coder is None:
            if self.prior_freqs.numel() != self.codebook:
                raise RuntimeError("VQ prior is missing: call update()")
            self._coder = TableCoder(
                self.prior_freqs.numpy(), np.zeros(1), np.array([self.codebook]), escapes=False
            )
        return self._coder


class VQVAE(LearnedModel):
    """One- or two-level VQ-VAE for single-channel images.

    Parameters
    ----------
    levels : {1, 2}
        Single level, or bottom + top (VQ-VAE-2).
    factor : int
        Downsampling of the (bottom) latent, a power of two; the top one is ``2 * factor``.
    codebook : int
        Code vectors per level.
    dim : int
        Dimension of the code vectors.
    channels : int
        Width of the encoder/decoder at the latent resolution (halved at each x2 towards
        full resolution, at least 16).
    beta : float
        Weight of the commitment loss.
    """

    method = "vqvae"

    def __init__(
        self,
        levels: int = 1,
        factor: int = 8,
        codebook: int = 512,
        dim: int = 16,
        channels: int = 64,
        beta: float = 0.25,
    ) -> None:
        super().__init__()
        if levels not in (1, 2) or factor < 2 or factor & (factor - 1):
            raise ValueError(f"bad VQ-VAE shape: levels={levels}, factor={factor}")
        self.levels, self.factor, self.codebook = levels, factor, codebook
        self.dim, self.channels, self.beta = dim, channels, float(beta)
        self.downsampling = factor * (2 if levels == 2 else 1)
        steps = int(math.log2(factor))
        widths = [max(16, channels >> (steps - i)) for i in range(steps + 1)]  # full .. latent
        down: list[nn.Module] = [conv_down(1, widths[1], 5)]
        for i in range(1, steps):
            down += [nn.ReLU(), conv_down(widths[i], widths[i + 1])]
        self.encoder = nn.Sequential(*down, ResBlock(channels), nn.ReLU())
        self.to_latent = nn.Conv2d(channels * (2 if levels == 2 else 1), dim, 1)
        self.quantizer = VectorQuantizer(codebook, dim)
        up: list[nn.Module] = [
            nn.Conv2d(dim * levels, channels, 3, padding=1),
            ResBlock(channels),
            nn.ReLU(),
        ]
        for i in range(steps, 0, -1):
            up.append(SubpixelUp(widths[i], widths[i - 1] if i > 1 else 1))
            if i > 1:
                up.append(nn.ReLU())
        self.decoder = nn.Sequential(*up)
        if levels == 2:
            self.top_encoder = nn.Sequential(
                conv_down(channels, channels), nn.ReLU(), ResBlock(channels), nn.ReLU(),
                nn.Conv2d(channels, dim, 1),
            )  # fmt: skip
            self.top_quantizer = VectorQuantizer(codebook, dim)
            self.top_decoder = nn.Sequential(
                nn.Conv2d(dim, channels, 3, padding=1), ResBlock(channels), nn.ReLU(),
                SubpixelUp(channels, channels),
            )  # fmt: skip
            self.top_upsample = SubpixelUp(dim, dim)

    def config(self) -> dict[str, Any]:
        return {
            "levels": self.levels,
            "factor": self.factor,
            "codebook": self.codebook,
            "dim": self.dim,
            "channels": self.channels,
            "beta": self.beta,
        }

    def _quantizers(self) -> list[VectorQuantizer]:
        return [self.quantizer] + ([self.top_quantizer] if self.levels == 2 else [])

    # ------------------------------------------------------------------ training
    def _encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Quantised latents (bottom, top), their indexes and the commitment loss."""
        h = self.encoder(x - 0.5)
        if self.levels == 1:
            q, idx, commit = self.quantizer(self.to_latent(h))
            return [q], [idx], commit
        q_top, idx_top, commit_top = self.top_quantizer(self.top_encoder(h))
        top_features = self.top_decoder(q_top)[..., : h.shape[-2], : h.shape[-1]]
        q, idx, commit = self.quantizer(self.to_latent(torch.cat([h, top_features], 1)))
        return [q, q_top], [idx, idx_top], commit + commit_top

    def _decode(self, latents: list[Tensor], float64: bool = False) -> Tensor:
        def module(name: str) -> nn.Module:
            mod = getattr(self, name)
            return self.float64(name, mod) if float64 else mod

        if self.levels == 1:
            return module("decoder")(latents[0]) + 0.5
        h, w = latents[0].shape[-2:]
        up = module("top_upsample")(latents[1])[..., :h, :w]
        return module("decoder")(torch.cat([latents[0], up], 1)) + 0.5

    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        latents, _, commit = self._encode(x)
        x_hat = self._decode(latents)
        mse = F.mse_loss(x_hat, x)
        bpp = sum(math.log2(self.codebook) / (self.factor * 2**k) ** 2 for k in range(self.levels))
        return mse + self.beta * commit, {"bpp": bpp, "mse": float(mse.detach())}

    @torch.no_grad()
    def update(self, data: Tensor | None = None) -> None:
        if data is None:
            raise ValueError("VQVAE.update needs training images to count its prior")
        counts = [np.zeros(self.codebook) for _ in range(self.levels)]
        for start in range(0, data.shape[0], 64):
            _, indexes, _ = self._encode(data[start : start + 64])
            for level, idx in enumerate(indexes):
                counts[level] += np.bincount(idx.cpu().numpy().ravel(), minlength=self.codebook)
        for quantizer, count in zip(self._quantizers(), counts, strict=True):
            quantizer.set_prior(count)
        self.clear_inference_cache()

    # -------------------------------------------------------------------- coding
    def analyse(self, x: Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            _, indexes, _ = self._encode(x.float())
        return [idx.numpy().astype(np.int64) for idx in indexes]

    def code(self, analysis: list[np.ndarray], gain: float) -> Coded:
        parts = [q.coder().encode(idx.ravel(), np.zeros(idx.size, np.int64))
                 for q, idx in zip(self._quantizers(), analysis, strict=True)]  # fmt: skip
        payload = struct.pack("<I", len(parts[0])) + b"".join(parts)
        return Coded(payload, self._latents(analysis), 0)

    def _latents(self, indexes: list[np.ndarray]) -> list[Tensor]:
        return [q.lookup(torch.from_numpy(idx), torch.float64)
                for q, idx in zip(self._quantizers(), indexes, strict=True)]  # fmt: skip

    def decode(self, payload: bytes, shape: tuple[int, int, int], gain: float, check: int) -> Coded:
        n, h, w = shape
        if len(payload) < 4:
            raise CorruptFileError("VQ-VAE payload is truncated")
        (n_bottom,) = struct.unpack_from("<I", payload)
        if 4 + n_bottom > len(payload):
            raise CorruptFileError("VQ-VAE payload is truncated")
        shapes = [(n, h // self.factor, w // self.factor)]
        blocks = [payload[4 : 4 + n_bottom]]
        if self.levels == 2:
            shapes.append((n, h // (2 * self.factor), w // (2 * self.factor)))
            blocks.append(payload[4 + n_bottom :])
        elif 4 + n_bottom != len(payload):
            raise CorruptFileError("VQ-VAE payload has trailing bytes")
        indexes = [
            q.coder().decode(block, np.zeros(int(np.prod(s)), np.int64)).reshape(s)
            for q, block, s in zip(self._quantizers(), blocks, shapes, strict=True)
        ]
        return Coded(payload, self._latents(indexes), 0)

    def synthesise(self, latent: list[Tensor]) -> Tensor:
        with torch.no_grad():
            return self._decode(latent, float64=True)
