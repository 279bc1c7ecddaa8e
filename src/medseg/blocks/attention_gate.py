"""Additive attention gates of Attention U-Net (Oktay et al. 2018), 2D and 3D."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.errors import MedsegError


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, "Attention U-Net", Fig. 2, Eq. 1-2).

    With the skip features ``x`` and the coarser gating signal ``g``:
    ``q = psi(ReLU(theta(x) + phi(g)))`` (Eq. 1), ``alpha = sigmoid(q)`` (Eq. 2), and the output
    ``W(x * alpha)``. ``theta`` is a bias-free conv with kernel = stride = ``sub_sample`` (the skip is
    brought to the gate's grid), ``phi`` a 1x1 conv of ``g`` resampled to theta's size, ``psi`` a 1x1
    conv to one channel; ``alpha`` is resampled back to the size of ``x``. ``W`` is the output 1x1
    conv + norm of the official implementation (``GridAttentionBlockND``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the skip ``x``.
        gating_channels: channels of the gating signal ``g``.
        inter_channels: channels of theta/phi (default ``in_channels // 2``, at least 1).
        sub_sample: down-sampling factor of theta (kernel size and stride).
        norm: normalisation after the output conv ``W``.
        mode: interpolation used to resample phi(g) and alpha (``linear`` or ``nearest``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, gating_channels: int,
                 inter_channels: int | None = None, sub_sample: int = 2, norm: str | None = "batch",
                 mode: str = "linear") -> None:
        super().__init__()
        if sub_sample < 1:
            raise MedsegError(f"sub_sample must be >= 1, got {sub_sample}")
        inter = inter_channels if inter_channels is not None else max(in_channels // 2, 1)
        self.mode = mode
        self.theta = layers.conv(spatial_dims, in_channels, inter, sub_sample, stride=sub_sample, padding=0,
                                 bias=False)
        self.phi = layers.conv(spatial_dims, gating_channels, inter, 1)
        self.psi = layers.conv(spatial_dims, inter, 1, 1)
        self.output = ConvNormAct(spatial_dims, in_channels, in_channels, 1, norm=norm, act=None, bias=True)

    def coefficients(self, x: Tensor, g: Tensor) -> Tensor:
        """Attention coefficients ``alpha`` in (0, 1), shape ``[B, 1, *x.spatial]`` (Eq. 1-2)."""
        theta_x = self.theta(x)
        phi_g = layers.resize_to(self.phi(g), theta_x.shape[2:], self.mode)
        alpha = torch.sigmoid(self.psi(F.relu(theta_x + phi_g)))
        return layers.resize_to(alpha, x.shape[2:], self.mode)

    def forward_with_coefficients(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """The gated skip ``W(x * alpha)`` and the coefficients ``alpha`` (for visualisation)."""
        alpha = self.coefficients(x, g)
        return self.output(x * alpha), alpha

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        return self.forward_with_coefficients(x, g)[0]


class MultiAttentionGate(nn.Module):
    """``num_gates`` parallel attention gates fused by a 1x1 conv-norm-ReLU.

    The skip-gating block of the official Attention U-Net code (``MultiAttentionBlock``): each gate
    sees the same ``(x, g)``; their outputs are concatenated and fused back to ``in_channels``. With
    ``num_gates=1`` it is the single-gate block (one gate, then the 1x1 fusion). The coefficients
    of all gates are returned concatenated along the channel axis.
    """

    def __init__(self, spatial_dims: int, in_channels: int, gating_channels: int, num_gates: int = 2,
                 inter_channels: int | None = None, sub_sample: int = 2, norm: str | None = "batch",
                 mode: str = "linear") -> None:
        super().__init__()
        if num_gates < 1:
            raise MedsegError(f"num_gates must be >= 1, got {num_gates}")
        self.gates = nn.ModuleList(
            AttentionGate(spatial_dims, in_channels, gating_channels, inter_channels, sub_sample, norm, mode)
            for _ in range(num_gates))
        self.combine = ConvNormAct(spatial_dims, in_channels * num_gates, in_channels, 1, norm=norm,
                                   act="relu", bias=True)

    def forward_with_coefficients(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """The fused gated skip and the coefficients ``[B, num_gates, *x.spatial]``."""
        outputs: list[Tensor] = []
        alphas: list[Tensor] = []
        for gate in self.gates:
            out, alpha = gate.forward_with_coefficients(x, g)
            outputs.append(out)
            alphas.append(alpha)
        return self.combine(torch.cat(outputs, dim=1)), torch.cat(alphas, dim=1)

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        return self.forward_with_coefficients(x, g)[0]
