"""SIREN: sinusoidal-activation MLPs over projection coordinates (Sitzmann et al. 2020).

A :class:`SirenStack` holds ``segments`` independent SIRENs of the same architecture (the
study's *cascade*: the view axis is split into contiguous segments, one network each),
evaluated together with batched matrix products.  A network maps the normalised
coordinates (view, detector row, detector column) in [-1, 1]^3 of one segment to one
value (the normalised projection value)::

    h_1 = sin(omega0 * (W_1 gamma(c) + b_1)),  h_k = sin(omega0 * (W_k h_{k-1} + b_k)),
    y = W_out h_depth + b_out

``gamma`` is the identity (``encoding="none"``) or ``c`` with ``sin/cos(2**k pi c)``
appended for ``k < frequencies`` (``encoding="fourier"``, Mildenhall et al. 2020).
Initialisation follows the SIREN paper: first layer U(-1/fan_in, 1/fan_in), later layers
U(-sqrt(6/fan_in)/omega0, +sqrt(6/fan_in)/omega0).

Parameters are (segments, fan_out, fan_in) weight and (segments, fan_out) bias tensors
named ``w0, b0, w1, b1, ...`` (the last pair is the output layer); :meth:`tensors` gives
them in the stream order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

#: Coordinates per point: (view, row, column).
N_COORDS = 3
ENCODINGS = ("none", "fourier")


@dataclass(frozen=True)
class SirenArch:
    """Architecture of one SIREN of a stack.

    Attributes
    ----------
    width : int
        Units of each hidden layer.
    depth : int
        Number of hidden (sine) layers.
    omega0 : float
        Frequency factor of the sine activations.
    encoding : {"none", "fourier"}
        Positional encoding of the coordinates.
    frequencies : int
        Octaves of the Fourier encoding (ignored for ``"none"``).
    """

    width: int = 32
    depth: int = 3
    omega0: float = 30.0
    encoding: str = "none"
    frequencies: int = 4

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.width < 1 or self.depth < 1 or self.frequencies < 0 or not self.omega0 > 0:
            raise ValueError(f"invalid SIREN architecture {self}")

    @property
    def in_features(self) -> int:
        """Inputs of the first layer (after the positional encoding)."""
        if self.encoding == "fourier":
            return N_COORDS * (1 + 2 * self.frequencies)
        return N_COORDS

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(fan_out, fan_in) of every layer, the output layer last."""
        sizes = [self.in_features] + [self.width] * self.depth
        return [(sizes[i + 1], sizes[i]) for i in range(self.depth)] + [(1, self.width)]

    @property
    def n_params(self) -> int:
        """Parameters of one SIREN."""
        return sum(o * i + o for o, i in self.layer_shapes())

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def encode_coordinates(coords: Tensor, arch: SirenArch) -> Tensor:
    """Positional encoding ``gamma`` of coordinates (..., 3) -> (..., in_features)."""
    if arch.encoding == "none":
        return coords
    bands = [coords]
    for k in range(arch.frequencies):
        angle = coords * (math.pi * 2.0**k)
        bands += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(bands, dim=-1)


class SirenStack(nn.Module):
    """``segments`` SIRENs of architecture ``arch`` (see the module docstring)."""

    def __init__(self, arch: SirenArch, segments: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.arch = arch
        self.segments = segments
        gen = torch.Generator().manual_seed(seed)
        for k, (fan_out, fan_in) in enumerate(arch.layer_shapes()):
            bound = 1.0 / fan_in if k == 0 else math.sqrt(6.0 / fan_in) / arch.omega0
            w = (torch.rand(segments, fan_out, fan_in, generator=gen) * 2 - 1) * bound
            b = (torch.rand(segments, fan_out, generator=gen) * 2 - 1) / math.sqrt(fan_in)
            self.register_parameter(f"w{k}", nn.Parameter(w))
            self.register_parameter(f"b{k}", nn.Parameter(b))

    def tensors(self) -> list[Tensor]:
        """Parameters in stream order ``w0, b0, w1, b1, ...``."""
        return [getattr(self, f"{kind}{k}") for k in range(self.arch.depth + 1) for kind in "wb"]

    def forward(self, coords: Tensor, params: list[Tensor] | None = None) -> Tensor:
        """Values at ``coords`` (segments, n, 3) -> (segments, n).

        ``params`` replaces the stack's own parameters (same shapes and order as
        :meth:`tensors`), e.g. quantised ones or float64 copies for decoding.
        """
        params = self.tensors() if params is None else params
        h = encode_coordinates(coords, self.arch)
        n_layers = self.arch.depth + 1
        for k in range(n_layers):
            w, b = params[2 * k], params[2 * k + 1]
            h = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
            if k < n_layers - 1:
                h = torch.sin(self.arch.omega0 * h)
        return h[..., 0]
