"""The float (torch) ConvLSTM view predictor that ``ctpress train convlstm`` trains.

Its integer twin for coding is :class:`ctpress.learned.predictor.ViewPredictor`, which
computes the same network (same inputs, clipping and layout of the weights) in fixed
point; this module only trains it and measures the gap.
"""

from __future__ import annotations

import json
import math
from typing import cast

import safetensors.torch
import torch
from torch import Tensor, nn

from ..predictor import CELL_LIMIT, INPUT_CHANNELS, INPUT_LIMIT


class ConvLSTMPredictor(nn.Module):
    """One ConvLSTM layer along the view axis: 3x3 convolution of the inputs, 1x1 of the
    hidden state, gates (input, forget, cell, output) biased by a learned vector times the
    chunk's conditioning scalar; a 1x1 head on (hidden, inputs) gives the normalised
    correction of the current view and log2 of the Laplace scale of its error."""

    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_conv = nn.Conv2d(INPUT_CHANNELS, 4 * hidden, 3, padding=1)
        self.hidden_conv = nn.Conv2d(hidden, 4 * hidden, 1, bias=False)
        self.condition = nn.Parameter(torch.zeros(4 * hidden))
        self.head = nn.Conv2d(hidden + INPUT_CHANNELS, 2, 1)
        with torch.no_grad():
            cast(Tensor, self.input_conv.bias)[hidden : 2 * hidden].fill_(1.0)  # forget gate open
            self.head.weight.mul_(0.1)
            cast(Tensor, self.head.bias).zero_()

    def config(self) -> dict[str, int]:
        return {"hidden": self.hidden}

    def forward(self, inputs: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
        """``inputs`` (B, T, 3, rows, cols) from :func:`ctpress.learned.predictor.float_inputs`,
        ``condition`` (B,) -> normalised corrections and log2 scales, both (B, T, rows, cols)
        (step ``t`` predicts view ``t + 1``)."""
        b, steps, _, rows, cols = inputs.shape
        h = inputs.new_zeros(b, self.hidden, rows, cols)
        c = torch.zeros_like(h)
        bias = (self.condition[None, :] * condition[:, None])[:, :, None, None]
        corrections, log_scales = [], []
        for t in range(steps):
            x = inputs[:, t]
            gates = self.input_conv(x) + self.hidden_conv(h) + bias
            i, f, g, o = gates.chunk(4, dim=1)
            c = (torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)).clamp(
                -CELL_LIMIT, CELL_LIMIT
            )
            h = torch.sigmoid(o) * torch.tanh(c)
            head = self.head(torch.cat([h, x], dim=1))
            corrections.append(head[:, 0].clamp(-INPUT_LIMIT, INPUT_LIMIT))
            log_scales.append(head[:, 1])
        return torch.stack(corrections, 1), torch.stack(log_scales, 1)


def laplace_bits(
    error: Tensor, log2_scale: Tensor, diff_shift: Tensor, floor_data_units: float = 0.5
) -> Tensor:
    """Laplace code length in bits per value, ``|e| / b / ln 2 + log2(2 b)`` up to the
    constant of the data unit, of normalised errors with predicted ``log2 b``; ``b`` is
    kept at least ``floor_data_units`` data units (``diff_shift`` (B, 1, 1, 1): the
    chunks' difference shifts)."""
    floor = math.log2(floor_data_units) - diff_shift
    log2_b = torch.maximum(log2_scale, floor)
    return error.abs() * torch.exp2(-log2_b) / math.log(2) + log2_b + 1


def load_view_predictor(data: bytes) -> ConvLSTMPredictor:
    """The float model of a convlstm weights file's bytes (safetensors, see
    :func:`ctpress.learned.train.save_view_predictor`)."""

    size = int.from_bytes(data[:8], "little")
    config = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["config"])
    model = ConvLSTMPredictor(**config)
    model.load_state_dict(safetensors.torch.load(data))
    return model.eval()
