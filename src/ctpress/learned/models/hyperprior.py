"""Mean-scale hyperprior model (Ballé et al. 2018; Minnen et al. 2018), single channel.

``x -> g_a -> y``; ``y -> h_a -> z``; ``z`` is coded with a learned factorized prior; the
hyper-decoder ``h_s(round(z))`` predicts a mean and a scale for every element of ``y``;
``round((y - mean) / (step * gain))`` is coded with the table of the predicted scale;
``g_s(mean + step * gain * q)`` reconstructs.

Two transforms ``g_a`` / ``g_s``:

- ``"wavelet"`` (shipped): a fixed 4-level CDF 9/7 wavelet transform whose subbands are
  folded into 256 channels at 1/16 resolution and scaled to equal image-domain weight.
  The transform is invertible, so the distortion is set by the quantisation step alone
  and training minimises the rate of a learned entropy model: hyperprior plus a
  channel-conditional context (Minnen & Singh 2020) over the wavelet levels: the channels
  of each level are predicted from the hyperprior and the already decoded coarser
  levels (inter-scale dependencies, as in zerotree / EBCOT coders), with Laplace
  densities.  Steps are drawn around the rate point's step in training, so the
  quantisation gain can move between rate points.  Trains in minutes on a CPU.
- ``"cnn"``: learned GDN transforms (analysis float32, synthesis float64) trained on
  ``rate + lam * MSE`` with Gaussian densities; better in principle, but it needs far
  more training than a CPU gives in minutes (after 4 minutes it was about 12 dB below
  JPEG 2000 at 0.4 bits/value on the held-out scans).

At coding time the encoder also picks, per wavelet subband and chunk, a shift of the
scale-table indexes (:meth:`ScaleConditional.index_offset`; one signed byte each in a
payload of its own, range-coded with the previous image's as context in a stream shared
by several images, :meth:`MeanScaleHyperprior.code_into`): it corrects scale predictions
that are biased on data unlike the training data (on held-out cone-beam projections the
finest level's scales were about half the true ones), and rounds each latent to the
nearest integer or one step towards zero by rate-distortion cost
(:data:`RDOQ_LAMBDA`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CorruptFileError
from ..entropy import FactorizedPrior, ScaleConditional
from ..layers import (
    GDN,
    SubpixelUp,
    conv_down,
    pad_to_multiple,
    wavelet_channels,
    wavelet_image,
    wavelet_norms,
    wavelet_subbands,
)
from ..tables import NeighbourCoder, SymbolReader, SymbolWriter, TableCoder
from .base import (
    MISMATCH,
    Coded,
    LearnedModel,
    check_or_fail,
    index_check,
    ste_round,
    to_float64,
)

#: Wavelet levels of the ``"wavelet"`` transform (downsampling 2**4 = 16).
WAVELET_LEVELS = 4
#: Channel ranges of the wavelet levels, coarse to fine (coded in this order).
WAVELET_GROUPS = ((0, 4), (4, 16), (16, 64), (64, 256))
#: Rate-distortion optimised quantisation (encoder side; the decoder does not depend on
#: it): each latent is rounded to the nearest integer or one step towards zero, whichever
#: costs less ``squared error (steps**2) + RDOQ_LAMBDA * bits`` with the bits of its own
#: table.  2 ln 2 / 12 is the slope -dD/dR of a uniform quantiser at high rate; 0.08-0.15
#: measured alike (about 2 % lower BD-rate than a fixed dead zone of 0.15 steps).
RDOQ_LAMBDA = 2 * math.log(2) / 12
#: Table shift byte of a subband coded as all zeros (nothing stored): the encoder zeroes
#: a subband when that adds less squared error than RDOQ_LAMBDA times its bits.  The
#: smallest table still costs about 0.015 bits per zero, a floor that was 10-15 % of the
#: file for sinograms at 0.1 bits/value.
ZERO_BAND = -128
#: Coder of the table shifts in a shared stream (:meth:`MeanScaleHyperprior.code_into`):
#: each with the table of its subband's shift in the previous image.
SHIFT_CODER = NeighbourCoder(-32, 32, first=0, special=ZERO_BAND)

#: Range of the quantisation gains drawn in training (log-uniform).
TRAINING_GAINS = (0.5, 2.0)


def _shift_key(group: int) -> str:
    """The key of a channel group's table shifts in a shared stream."""
    return f"shifts {group}"


@dataclass
class HyperAnalysis:
    """Encoder analysis of a batch of images: everything that does not depend on the
    quantisation gain, so that a rate search codes the latents again without redoing it.

    Attributes
    ----------
    y : Tensor
        Latents (n, m, h, w), float64.
    z_int : ndarray (n, z, h', w') int64
        The integer hyper-latents.
    params : Tensor
        Hyper-decoder output (n, 2m, h, w): means and log-scales, float64, computed from
        the integer hyper-latents exactly as the decoder does.
    """

    y: Tensor
    z_int: np.ndarray
    params: Tensor


class MeanScaleHyperprior(LearnedModel):
    """Single-channel mean-scale hyperprior.

    Parameters
    ----------
    transform : {"wavelet", "cnn"}
        Analysis/synthesis transforms (see the module docstring).
    step : float
        ``"wavelet"``: quantisation step at gain 1, in units of the normalised image
        (``"cnn"``: 1, the transforms learn the scale).
    lam : float
        ``"cnn"`` only: loss = bits/pixel + lam * MSE (images normalised to [0, 1]).
    n : int
        ``"cnn"`` only: channels of the analysis transform.
    m : int
        ``"cnn"`` only: channels of the latent ``y`` (``"wavelet"``: 256).
    hyper : int
        Channels of the hyper transforms and of the context networks.
    z : int
        Channels of the hyper-latent ``z`` (downsampled 64x).
    synthesis : tuple of int
        ``"cnn"`` only: channels after each of the first three x2 upsamplings of ``g_s``.
    """

    method = "hyperprior"
    downsampling = 16
    #: Gains used when coding; training draws them in :data:`TRAINING_GAINS` (the model
    #: extrapolates gracefully to the coarser steps, which reach lower rates).
    gain_range = (0.5, 8.0)
    band_norms: Tensor

    def __init__(
        self,
        transform: str = "wavelet",
        step: float = 0.02,
        lam: float = 1e4,
        n: int = 48,
        m: int = 56,
        hyper: int = 48,
        z: int = 32,
        synthesis: tuple[int, int, int] = (40, 32, 16),
    ) -> None:
        super().__init__()
        if transform not in ("wavelet", "cnn"):
            raise ValueError(f"transform must be 'wavelet' or 'cnn', got {transform!r}")
        self.transform = transform
        self.lam, self.n, self.hyper, self.z = float(lam), n, hyper, z
        self.synthesis_channels = tuple(int(c) for c in synthesis)
        if transform == "wavelet":
            self.step, self.m = float(step), 4**WAVELET_LEVELS
            self.groups: tuple[tuple[int, int], ...] = WAVELET_GROUPS
            self.subbands = wavelet_subbands(WAVELET_LEVELS)
            self.training_scale, self.training_flips = self.downsampling, False
            self.register_buffer("band_norms", wavelet_norms(WAVELET_LEVELS))
            first: nn.Module = nn.Conv2d(self.m, hyper, 1)
            self.conditional = ScaleConditional("laplace")
        else:
            self.step, self.m = 1.0, m
            self.groups = ((0, m),)
            self.subbands = self.groups
            s0, s1, s2 = self.synthesis_channels
            self.g_a = nn.Sequential(
                conv_down(1, n, 5), GDN(n), conv_down(n, n), GDN(n), conv_down(n, n), GDN(n),
                conv_down(n, m),
            )  # fmt: skip
            self.g_s = nn.Sequential(
                SubpixelUp(m, s0), GDN(s0, inverse=True), SubpixelUp(s0, s1),
                GDN(s1, inverse=True), SubpixelUp(s1, s2), GDN(s2, inverse=True),
                SubpixelUp(s2, 1),
            )  # fmt: skip
            first = nn.Conv2d(m, hyper, 3, padding=1)
            self.conditional = ScaleConditional("gaussian")
        m = self.m
        self.h_a = nn.Sequential(
            first, nn.LeakyReLU(), nn.Conv2d(hyper, hyper, 3, padding=1), nn.LeakyReLU(),
            conv_down(hyper, hyper), nn.LeakyReLU(), conv_down(hyper, z),
        )  # fmt: skip
        self.h_s = nn.Sequential(
            SubpixelUp(z, hyper), nn.LeakyReLU(), SubpixelUp(hyper, hyper), nn.LeakyReLU(),
            nn.Conv2d(hyper, 2 * m, 1),
        )  # fmt: skip
        # context of group g: decoded coarser channels (values, magnitudes) + its log-scales
        self.context = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(2 * a + (b - a), hyper, 1),
                nn.LeakyReLU(),
                nn.Conv2d(hyper, hyper, 3, padding=1),
                nn.LeakyReLU(),
                nn.Conv2d(hyper, 2 * (b - a), 1),
            )
            for a, b in self.groups[1:]
        )
        for net in [self.h_s, *self.context]:
            last = cast(nn.Conv2d, net[-1])
            nn.init.zeros_(last.weight)  # start from the biases (see initialise)
            nn.init.zeros_(cast(Tensor, last.bias))
        self.prior = FactorizedPrior(z)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"transform": self.transform, "hyper": self.hyper, "z": self.z}
        if self.transform == "wavelet":
            return config | {"step": self.step}
        return config | {
            "lam": self.lam,
            "n": self.n,
            "m": self.m,
            "synthesis": list(self.synthesis_channels),
        }

    # ---------------------------------------------------------------- transforms
    def _analysis(self, x: Tensor) -> Tensor:
        if self.transform == "cnn":
            return self.g_a(x - 0.5)
        norms = self.band_norms.to(x.dtype)[None, :, None, None]
        return wavelet_channels(x - 0.5, WAVELET_LEVELS) * norms

    def _synthesis(self, y: Tensor, float64: bool) -> Tensor:
        if self.transform == "cnn":
            g_s = self.float64("g_s", self.g_s) if float64 else self.g_s
            return g_s(y) + 0.5
        norms = self.band_norms.to(y.dtype)[None, :, None, None]
        return wavelet_image(y / norms, WAVELET_LEVELS) + 0.5

    def _group_params(
        self, g: int, params: Tensor, y_hat: Tensor, float64: bool
    ) -> tuple[Tensor, Tensor]:
        """Mean and scale of group ``g`` from the hyper parameters ``params`` (n, 2m, h, w)
        and the decoded coarser channels ``y_hat`` (n, a, h, w)."""
        a, b = self.groups[g]
        mean, log_scale = params[:, a:b], params[:, self.m + a : self.m + b]
        if g > 0:
            net = self.context[g - 1]
            if float64:
                net = self.float64(f"context{g}", net)
            ctx = torch.asinh(y_hat / self.step)  # log-compressed, in quantisation steps
            correction = net(torch.cat([ctx, ctx.abs(), log_scale], dim=1))
            mean = mean + correction[:, : b - a]
            log_scale = log_scale + correction[:, b - a :]
        return mean, torch.exp(log_scale.clamp(-30.0, 30.0))

    # ------------------------------------------------------------------ training
    def training_view(self, image: np.ndarray) -> np.ndarray:
        if self.transform == "cnn":
            return image[None]
        x = pad_to_multiple(torch.from_numpy(image).double()[None, None], self.downsampling)
        with torch.no_grad():
            return self._analysis(x)[0].float().numpy()

    @torch.no_grad()
    def initialise(self, sample: Tensor) -> None:
        """Start the hyper-synthesis at each channel's mean and mean absolute deviation
        (wavelet channels differ by orders of magnitude; learning that takes long)."""
        if self.transform != "wavelet":
            return
        mean = sample.mean(dim=(0, 2, 3))
        spread = (sample - mean[None, :, None, None]).abs().mean(dim=(0, 2, 3))
        bias = cast(Tensor, cast(nn.Conv2d, self.h_s[-1]).bias)
        bias[: self.m] = mean
        bias[self.m :] = torch.log(spread.clamp_min(1e-6))

    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        if self.transform == "wavelet":  # batches of wavelet channels (training_view)
            y, pixels = x, x.numel() / self.m * self.downsampling**2
            lo, hi = (math.log(g) for g in TRAINING_GAINS)  # a random gain per image
            gain = torch.exp(torch.empty(y.shape[0], 1, 1, 1, device=y.device).uniform_(lo, hi))
        else:
            y, pixels = self._analysis(x), x.numel()
            gain = torch.ones(1, device=y.device)
        step = self.step * gain
        z = self.h_a(y)
        bits = -torch.log2(self.prior(z + torch.empty_like(z).uniform_(-0.5, 0.5))).sum()
        params = self.h_s(ste_round(z))[..., : y.shape[-2], : y.shape[-1]]
        y_hat = y[:, :0]
        for g, (a, b) in enumerate(self.groups):
            mean, scale = self._group_params(g, params, y_hat, float64=False)
            u = (y[:, a:b] - mean) / step
            noisy = u + torch.empty_like(u).uniform_(-0.5, 0.5)
            bits = bits - torch.log2(self.conditional(noisy, 0 * u, scale / step)).sum()
            y_hat = torch.cat([y_hat, mean + ste_round(u) * step], dim=1)
        bpp = bits / pixels
        if self.transform == "wavelet":  # the distortion is set by the step alone
            return bpp, {"bpp": float(bpp.detach())}
        mse = F.mse_loss(self._synthesis(y_hat, float64=False), x)
        return bpp + self.lam * mse, {"bpp": float(bpp.detach()), "mse": float(mse.detach())}

    def update(self, data: Tensor | None = None) -> None:
        self.prior.update()
        self.conditional.update()
        self.clear_inference_cache()

    # -------------------------------------------------------------------- coding
    def analyse(self, x: Tensor) -> HyperAnalysis:
        with torch.no_grad():
            if self.transform == "wavelet":  # the exact transform, in float64
                y = self._analysis(x.double())
                z_int = torch.round(self.h_a(y.float())).to(torch.int64).numpy()
            else:
                y = self._analysis(x.float())
                z_int = torch.round(self.h_a(y)).to(torch.int64).numpy()
        params = self._hyper_decode(z_int, (y.shape[-2], y.shape[-1]))
        return HyperAnalysis(to_float64(y), z_int, params)

    def _hyper_decode(self, z_int: np.ndarray, size: tuple[int, int]) -> Tensor:
        h_s = self.float64("h_s", self.h_s)
        with torch.no_grad():
            return h_s(torch.from_numpy(z_int).double())[..., : size[0], : size[1]]

    def code(self, analysis: HyperAnalysis, gain: float) -> Coded:
        """Payload: the u32 lengths of its parts, then the parts: the hyper-latents, one
        int8 table shift per subband (:data:`ZERO_BAND`: all zeros, not coded), and the
        range-coded symbols of each group."""
        parts = [self.prior.compress(analysis.z_int)]
        shifts: list[int] = []

        def put(coder: TableCoder, values: np.ndarray, rows: np.ndarray) -> None:
            parts.append(coder.encode(values, rows))

        y_hat, check = self._code_groups(analysis, gain, lambda g, s: shifts.extend(s), put)
        parts.insert(1, np.asarray(shifts, dtype=np.int8).tobytes())
        head = struct.pack(f"<{len(parts)}I", *(len(p) for p in parts))
        return Coded(head + b"".join(parts), y_hat, check)

    def code_into(self, analysis: HyperAnalysis, gain: float, writer: SymbolWriter) -> Coded:
        """:meth:`code` into a stream shared with other images (payload empty): the
        hyper-latents, then per group its subbands' table shifts (each with the table of
        the shift its subband had in the writer's previous image, :data:`SHIFT_CODER`;
        the stream's first image: the table of no previous shift) and its symbols."""

        def put_shifts(g: int, shifts: list[int]) -> None:
            writer.put_neighbours(SHIFT_CODER, _shift_key(g), np.asarray(shifts))

        z_int = analysis.z_int
        writer.put(self.prior.coder(), z_int.ravel(), self.prior.rows(z_int.shape))
        y_hat, check = self._code_groups(
            analysis, gain, put_shifts, writer.put, lambda g: writer.previous(_shift_key(g))
        )
        return Coded(b"", y_hat, check)

    def _code_groups(
        self,
        analysis: HyperAnalysis,
        gain: float,
        put_shifts: Callable[[int, list[int]], None],
        put: Callable[[TableCoder, np.ndarray, np.ndarray], None],
        previous_shifts: Callable[[int], np.ndarray | None] = lambda g: None,
    ) -> tuple[Tensor, int]:
        """Quantise the latents group by group, handing each group's table shifts and
        symbols to ``put_shifts`` and ``put``; the dequantised latents and their check.
        With ``previous_shifts(g)`` (a group's shifts in the previous image of a shared
        stream), each shift is chosen counting its cost in :data:`SHIFT_CODER` bits."""
        y, params = analysis.y, analysis.params
        step = self.step * gain
        y_hat = y[:, :0]
        indexes = []

        def quantise(u: Tensor, index: np.ndarray) -> Tensor:
            """RD-optimised rounding of ``u`` (in steps) coded with tables ``index``: to
            the nearest integer or one step towards zero, whichever costs less squared
            error + RDOQ_LAMBDA * bits."""
            nearest = torch.round(u)
            smaller = nearest - torch.sign(nearest)
            bits = self.conditional.coder().bits(
                torch.stack([nearest, smaller]).numpy(), np.stack([index, index])
            )
            saving = (u - nearest) ** 2 - (u - smaller) ** 2
            saving += RDOQ_LAMBDA * torch.from_numpy(bits[0] - bits[1])
            return torch.where(saving > 0, smaller, nearest)

        with torch.no_grad():
            for g, (a, b) in enumerate(self.groups):
                mean, scale = self._group_params(g, params, y_hat, float64=True)
                index = self.conditional.indexes(scale, step)
                u = (y[:, a:b] - mean) / step
                q = quantise(u, index)
                symbols = q.numpy()
                coded = np.ones(b - a, dtype=bool)
                shifts = []
                before = previous_shifts(g)
                for k, (lo, hi) in enumerate(self._subbands(g)):
                    band = symbols[:, lo:hi]
                    last = None if before is None else int(before[k])
                    stored = None if last is None else partial(SHIFT_CODER.bits, previous=last)
                    shift, bits = self.conditional.index_offset(
                        index[:, lo:hi], band, start=0 if last in (None, ZERO_BAND) else last,
                        shift_bits=stored,
                    )  # fmt: skip
                    index[:, lo:hi] = self._shifted(index[:, lo:hi], shift)
                    added_error = float((u[:, lo:hi] ** 2 - (u[:, lo:hi] - q[:, lo:hi]) ** 2).sum())
                    if added_error <= RDOQ_LAMBDA * bits:  # cheaper as zeros, not coded
                        shift, coded[lo:hi] = ZERO_BAND, False
                        q[:, lo:hi] = 0
                    shifts.append(shift)
                put_shifts(g, shifts)
                indexes.append(index[:, coded].ravel())
                put(self.conditional.coder(), q.numpy()[:, coded].ravel(), indexes[-1])
                y_hat = torch.cat([y_hat, q * step + mean], dim=1)
        return y_hat, index_check(np.concatenate(indexes))

    def _subbands(self, g: int) -> list[tuple[int, int]]:
        """Channel ranges, relative to group ``g``, that share one table shift: the
        wavelet subbands (level and orientation) of the group, or the whole group."""
        a, b = self.groups[g]
        return [(lo - a, hi - a) for lo, hi in self.subbands if a <= lo < b]

    def _shifted(self, index: np.ndarray, shift: int | np.ndarray) -> np.ndarray:
        top = self.conditional.scale_table.numel() - 1
        return np.minimum(np.maximum(index + shift, 0), top)  # np.clip's checks cost more

    def decode(self, payload: bytes, shape: tuple[int, int, int], gain: float, check: int) -> Coded:
        n, h, w = shape
        count = 2 + len(self.groups)
        if len(payload) < 4 * count:
            raise CorruptFileError("hyperprior payload is truncated")
        lengths = struct.unpack_from(f"<{count}I", payload)
        if 4 * count + sum(lengths) != len(payload) or lengths[1] != len(self.subbands):
            raise CorruptFileError("hyperprior payload length does not match its parts")
        ends = np.cumsum([4 * count, *lengths])
        parts = [payload[ends[i] : ends[i + 1]] for i in range(count)]
        z_int = self.prior.decompress(parts[0], (n, self.z, *self._z_size(h, w)))
        shifts = np.frombuffer(parts[1], dtype=np.int8).astype(np.int64)
        bands = np.cumsum([0, *(len(self._subbands(g)) for g in range(len(self.groups)))])

        def take(g: int, coder: TableCoder, rows: np.ndarray) -> np.ndarray:
            return coder.decode(parts[g + 2], rows)

        y_hat, indexes = self._decode_groups(
            z_int, (h, w), np.full(n, gain), lambda g: shifts[None, bands[g] : bands[g + 1]], take
        )
        check_or_fail(check, indexes)
        return Coded(payload, y_hat, check)

    def decode_from(
        self, reader: SymbolReader, shape: tuple[int, int, int], gains: np.ndarray
    ) -> Coded:
        """Inverse of :meth:`code_into` for the ``n`` images of ``shape`` (n, H, W), coded
        at ``gains`` (n,) into one batch of the writer (:meth:`SymbolWriter.begin_image`;
        one image: no batch); the check is the decoder's (compare it with the encoder's)."""
        n, h, w = shape
        prior = self.prior
        z_shape = (n, self.z, *self._z_size(h, w))
        z_int = reader.take(prior.coder(), prior.rows(z_shape)).reshape(z_shape)

        def shifts_of(g: int) -> np.ndarray:
            count = len(self._subbands(g))
            return np.stack([reader.take_neighbours(SHIFT_CODER, _shift_key(g), count)
                             for _ in range(n)])  # fmt: skip

        def take(g: int, coder: TableCoder, rows: np.ndarray) -> np.ndarray:
            return reader.take(coder, rows)

        y_hat, indexes = self._decode_groups(z_int, (h, w), gains, shifts_of, take)
        return Coded(b"", y_hat, index_check(indexes))

    @staticmethod
    def _z_size(h: int, w: int) -> tuple[int, int]:
        return -(-(h // 16) // 4), -(-(w // 16) // 4)

    def _decode_groups(
        self,
        z_int: np.ndarray,
        size: tuple[int, int],
        gains: np.ndarray,
        shifts_of: Callable[[int], np.ndarray],
        take: Callable[[int, TableCoder, np.ndarray], np.ndarray],
    ) -> tuple[Tensor, np.ndarray]:
        """The latents of ``n`` images from their hyper-latents, quantisation ``gains``
        (n,) and, per group ``g``, its subbands' table shifts (``shifts_of(g)``: (n,
        subbands), or (1, subbands) shared) and the symbols of all the images
        (``take(g, coder, rows)``); with the table indexes the encoder's check covers
        (image by image within each group)."""
        params = self._hyper_decode(z_int, (size[0] // 16, size[1] // 16))
        steps = torch.from_numpy(self.step * np.asarray(gains, dtype=np.float64))
        step = steps[:, None, None, None]
        y_hat = params[:, :0]
        indexes = []
        try:
            with torch.no_grad():
                for g in range(len(self.groups)):
                    mean, scale = self._group_params(g, params, y_hat, float64=True)
                    index = self.conditional.indexes(scale, step)
                    widths = [hi - lo for lo, hi in self._subbands(g)]
                    shifts = np.repeat(shifts_of(g), widths, axis=1)  # per channel
                    coded = np.broadcast_to(shifts != ZERO_BAND, index.shape[:2])
                    index = self._shifted(index, shifts[:, :, None, None])
                    indexes.append(index[coded].ravel())
                    q = np.zeros(index.shape, dtype=np.int64)
                    q[coded] = take(g, self.conditional.coder(), indexes[-1]).reshape(
                        q[coded].shape
                    )
                    q_t = torch.from_numpy(q).double()
                    y_hat = torch.cat([y_hat, q_t * step + mean], dim=1)
        except CorruptFileError:  # damaged bytes, not the tables
            raise
        except Exception:  # the chunk's checksum passed: the tables differ from the encoder's
            raise CorruptFileError(MISMATCH) from None
        return y_hat, np.concatenate(indexes)

    def synthesise(self, latent: Tensor) -> Tensor:
        with torch.no_grad():
            return self._synthesis(latent, float64=True)
