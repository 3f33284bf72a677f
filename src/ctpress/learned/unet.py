"""A small U-Net in fixed point: the restoration networks of sparse-view coding (no torch).

Both restorations of ``sparse-unet`` are the same small U-Net
(:class:`ctpress.learned.models.unet.UNet` trains it): 3x3 convolutions with ReLU, two
per level, stride-2 convolutions down, nearest-neighbour upsampling plus a convolution up,
skip connections by concatenation, and a 3x3 head that outputs a correction of input
channel 0.  :class:`FixedUNet` evaluates it in integers so that a decoder synthesises
the same views on every machine, thread count and instruction set, by construction:

- weights are quantised to 2**-:data:`~ctpress.learned.fixed_point.WEIGHT_BITS`,
  activations are integers in units of 2**-:data:`~ctpress.learned.fixed_point.ACTIVATION_BITS`;
- each convolution is nine float64 GEMMs (one per tap) on those integers, summed; every
  partial sum is an integer below 2**53 (checked on every layer with the measured input
  and the weights), so no floating-point operation rounds, whatever BLAS does;
- every rescaling is ``floor((acc + 2**15) / 2**16)`` of an exact integer (and the output's,
  ``floor(head / 2**output_shift + 1/2)``), exact in float64.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import CorruptFileError
from .fixed_point import ACTIVATION_BITS, EXACT_FLOAT_LIMIT, WEIGHT_BITS, quantise

#: The fixed-point unit of activations (1.0).
ONE = 1 << ACTIVATION_BITS
#: Pixels (batch x height x width) of one pass of :meth:`FixedUNet.__call__` at full resolution.
BATCH_PIXELS = 1 << 18


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net: input channels, the width of each level (the first at
    full resolution; each next one at half the resolution of the previous) and the output's
    scale, 2**-output_shift of the head's (so that a network of unit-scale activations
    outputs the small corrections it learns)."""

    in_channels: int
    widths: tuple[int, ...]
    output_shift: int = 0

    @property
    def multiple(self) -> int:
        """Height and width of an input must be multiples of this."""
        return 1 << (len(self.widths) - 1)

    def layers(self) -> list[tuple[str, int, int, int]]:
        """(name, in channels, out channels, stride) of every convolution, in order."""
        w = self.widths
        layers = [("inc1", self.in_channels, w[0], 1), ("inc2", w[0], w[0], 1)]
        for i in range(1, len(w)):
            layers += [(f"down{i}a", w[i - 1], w[i], 2), (f"down{i}b", w[i], w[i], 1)]
        for i in range(len(w) - 1, 0, -1):
            layers += [(f"up{i}a", w[i], w[i - 1], 1), (f"up{i}b", 2 * w[i - 1], w[i - 1], 1)]
        layers.append(("head", w[0], 1, 1))
        return layers

    def to_dict(self) -> dict[str, object]:
        return {
            "in_channels": self.in_channels,
            "widths": list(self.widths),
            "output_shift": self.output_shift,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> UNetConfig:
        widths, shift = data["widths"], data.get("output_shift", 0)
        if not isinstance(widths, list) or not widths or not isinstance(shift, int):
            raise ValueError(f"bad U-Net config {data!r}")
        return cls(int(data["in_channels"]), tuple(int(v) for v in widths), shift)  # type: ignore[call-overload]


@dataclass(frozen=True)
class FixedConv3x3:
    """3x3 convolution, zero padding 1, stride 1 or 2, on float64 integer activations
    (channels, batch, H, W), tap by tap (nine GEMMs summed, where
    :class:`~ctpress.learned.fixed_point.FixedConv2d` would copy the input nine times);
    ``weight`` (9, out, in) integers of 2**-WEIGHT_BITS (tap-major),
    ``bias`` (out,) of 2**-ACTIVATION_BITS."""

    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    stride: int
    #: max over outputs of the sum of |weights| (the accumulator bound per unit of input).
    gain: int

    def __call__(self, a: np.ndarray) -> np.ndarray:
        c, n, h, w = a.shape
        s = self.stride
        ho, wo = -(-h // s), -(-w // s)
        largest = float(np.abs(a).max(initial=0))
        if largest * self.gain >= EXACT_FLOAT_LIMIT:
            raise ValueError("U-Net activations too large for exact float64 arithmetic")
        padded = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
        acc = np.zeros((self.weight.shape[1], n * ho * wo))
        for tap in range(9):
            dy, dx = divmod(tap, 3)
            view = padded[:, :, dy : dy + s * ho : s, dx : dx + s * wo : s]
            acc += self.weight[tap] @ view.reshape(c, -1)
        out = np.floor((acc + (1 << (WEIGHT_BITS - 1))) * 2.0**-WEIGHT_BITS)
        out += self.bias[:, None]
        return out.reshape(-1, n, ho, wo)


@dataclass(frozen=True)
class FixedUNet:
    """The integer U-Net of a weights file (see the module docstring)."""

    config: UNetConfig
    convs: dict[str, FixedConv3x3] = field(repr=False)
    weights_id: bytes = b""

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, np.ndarray], config: UNetConfig, weights_id: bytes = b""
    ) -> FixedUNet:
        """The integer network of float tensors named ``{layer}.weight`` (out, in, 3, 3)
        and ``{layer}.bias`` (out,) (CorruptFileError when they do not fit ``config``)."""
        convs = {}
        for name, c_in, c_out, stride in config.layers():
            try:
                weight = np.asarray(tensors[f"{name}.weight"], dtype=np.float64)
                bias = np.asarray(tensors[f"{name}.bias"], dtype=np.float64)
            except KeyError as exc:
                raise CorruptFileError(f"U-Net weights lack {exc}") from None
            if weight.shape != (c_out, c_in, 3, 3) or bias.shape != (c_out,):
                raise CorruptFileError(f"U-Net layer {name} has shape {weight.shape}")
            q = quantise(weight, WEIGHT_BITS)
            gain = int(np.abs(q).reshape(c_out, -1).sum(axis=1).max())
            taps = q.transpose(2, 3, 0, 1).reshape(9, c_out, c_in).astype(np.float64)
            b = quantise(bias, ACTIVATION_BITS).astype(np.float64)
            convs[name] = FixedConv3x3(taps, b, stride, gain)
        return cls(config, convs, weights_id)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Integer inputs (batch, in_channels, H, W) in units of 2**-ACTIVATION_BITS (H and
        W multiples of ``config.multiple``) -> integer corrections (batch, H, W), float64."""
        n, c, h, w = x.shape
        m = self.config.multiple
        if c != self.config.in_channels or h % m or w % m:
            raise ValueError(f"U-Net input {x.shape} does not fit {self.config}")
        per_pass = max(1, BATCH_PIXELS // (h * w))
        parts = [self._forward(x[i : i + per_pass]) for i in range(0, n, per_pass)]
        return np.concatenate(parts)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        convs = self.convs
        levels = len(self.config.widths)
        h = np.ascontiguousarray(x.transpose(1, 0, 2, 3), dtype=np.float64)

        def conv(name: str, a: np.ndarray) -> np.ndarray:
            return np.maximum(convs[name](a), 0.0)

        h = conv("inc2", conv("inc1", h))
        skips = [h]
        for i in range(1, levels):
            h = conv(f"down{i}b", conv(f"down{i}a", h))
            skips.append(h)
        for i in range(levels - 1, 0, -1):
            up = h.repeat(2, axis=2).repeat(2, axis=3)
            h = conv(f"up{i}a", up)
            h = conv(f"up{i}b", np.concatenate([h, skips[i - 1]]))
        head = convs["head"](h)[0]
        return np.floor(head * 2.0**-self.config.output_shift + 0.5)  # exact: a power of two


def load_unet(data: bytes, weights_id: bytes) -> FixedUNet:
    """The integer U-Net of a float32 safetensors file's bytes (its header's ``config``;
    CorruptFileError when the file is not one)."""
    import safetensors.numpy

    try:
        size = int.from_bytes(data[:8], "little")
        metadata = dict(json.loads(data[8 : 8 + size]).get("__metadata__", {}))
        config = UNetConfig.from_dict(json.loads(metadata["config"]))
        tensors = safetensors.numpy.load(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptFileError(f"U-Net weights are damaged: {exc}") from None
    return FixedUNet.from_tensors(tensors, config, weights_id)
