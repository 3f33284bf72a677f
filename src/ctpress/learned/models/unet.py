"""The float (torch) U-Net that ``ctpress train sparse-unet`` trains.

Its integer twin :class:`ctpress.learned.unet.FixedUNet` computes the same network (same
layer names, shapes and layout) in fixed point for coding; this module only trains it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..unet import UNetConfig


class UNet(nn.Module):
    """A small U-Net (see :class:`~ctpress.learned.unet.UNetConfig`): input (B, C, H, W),
    output the correction of input channel 0, (B, 1, H, W), at 2**-output_shift of the
    head's scale (default initialisation: unit-scale activations)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.unet_config = config
        for name, c_in, c_out, stride in config.layers():
            self.add_module(name, nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1))

    def config(self) -> dict[str, object]:
        return self.unet_config.to_dict()

    def _conv(self, name: str, x: Tensor) -> Tensor:
        return F.relu(self.get_submodule(name)(x))

    def forward(self, x: Tensor) -> Tensor:
        levels = len(self.unet_config.widths)
        h = self._conv("inc2", self._conv("inc1", x))
        skips = [h]
        for i in range(1, levels):
            h = self._conv(f"down{i}b", self._conv(f"down{i}a", h))
            skips.append(h)
        for i in range(levels - 1, 0, -1):
            h = self._conv(f"up{i}a", F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = self._conv(f"up{i}b", _cat(h, skips[i - 1]))
        return self.get_submodule("head")(h) * 2.0**-self.unet_config.output_shift


def _cat(a: Tensor, b: Tensor) -> Tensor:
    import torch

    return torch.cat([a, b], dim=1)
