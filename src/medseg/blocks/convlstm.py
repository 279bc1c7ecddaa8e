"""Convolutional LSTM (Shi et al. 2015, Eq. 3) over a sequence of feature maps, one- or bidirectional."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medseg import layers


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: the input, forget and output gates and the candidate from one conv of
    ``[x_t, h_{t-1}]`` (Shi et al. 2015, Eq. 3 without the peephole terms, as most implementations);
    ``c_t = f * c_{t-1} + i * tanh(g)``, ``h_t = o * tanh(c_t)``. The forget-gate bias starts at 1."""

    def __init__(self, spatial_dims: int, in_channels: int, hidden_channels: int,
                 kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = layers.conv(spatial_dims, in_channels + hidden_channels, 4 * hidden_channels,
                                 kernel_size)
        with torch.no_grad():
            self.gates.bias.zero_()
            self.gates.bias[hidden_channels:2 * hidden_channels].fill_(1.0)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, o, g = torch.chunk(self.gates(torch.cat([x, h], dim=1)), 4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def initial_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zeros = x.new_zeros([x.shape[0], self.hidden_channels] + list(x.shape[2:]))
        return zeros, zeros


class ConvLSTM(nn.Module):
    """A ConvLSTM layer over a sequence ``[B, T, C, *spatial]`` -> hidden states ``[B, T, H', *spatial]``.

    ``bidirectional`` runs a second cell from the last element to the first and concatenates both hidden
    states per step (``2 * hidden_channels`` channels), so that every slice sees both neighbours.
    """

    def __init__(self, spatial_dims: int, in_channels: int, hidden_channels: int, kernel_size: int = 3,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.forward_cell = ConvLSTMCell(spatial_dims, in_channels, hidden_channels, kernel_size)
        self.backward_cell = (ConvLSTMCell(spatial_dims, in_channels, hidden_channels, kernel_size)
                              if bidirectional else None)
        self.out_channels = hidden_channels * (2 if bidirectional else 1)

    @staticmethod
    def _run(cell: ConvLSTMCell, steps: list[Tensor]) -> list[Tensor]:
        state = cell.initial_state(steps[0])
        outputs: list[Tensor] = []
        for x in steps:
            state = cell(x, state)
            outputs.append(state[0])
        return outputs

    def forward(self, sequence: Tensor) -> Tensor:
        steps = list(sequence.unbind(1))
        outputs = self._run(self.forward_cell, steps)
        if self.backward_cell is not None:
            backward = self._run(self.backward_cell, steps[::-1])[::-1]
            outputs = [torch.cat([f, b], dim=1) for f, b in zip(outputs, backward, strict=True)]
        return torch.stack(outputs, dim=1)
