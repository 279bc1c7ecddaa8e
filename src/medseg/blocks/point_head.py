"""PointRend's point head (Kirillov et al., CVPR 2020, Sec. 3.3; detectron2 ``StandardPointHead``).

A multi-layer perceptron over points, written as 1x1 ``Conv1d`` layers on ``[B, C, N]`` point features:
the fine-grained features of the points concatenated with the coarse prediction's logits at the same
points, ``layers`` x (1x1 conv to ``channels`` + ReLU), then a 1x1 predictor to the classes. With
``every_layer`` the coarse logits are concatenated again to the input of every following layer (the
instance-segmentation head of the paper); without, only at the input.

Parameters with 256 fine channels and the defaults (3 x 256): 207,123 for 19 classes (217,212 with
``every_layer``), 198,402 for 2 classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medseg.errors import MedsegError


class PointRendHead(nn.Module):
    """The point MLP: ``(fine [B, F, N], coarse [B, K, N]) -> point logits [B, K, N]``.

    Args:
        fine_channels: channels F of the fine-grained point features.
        num_classes: classes K (the coarse logits' channels and the output's).
        channels: width of the hidden layers (256).
        layers: number of hidden layers (3).
        every_layer: concatenate the coarse logits to every layer's input, not only the first.

    Initialisation as detectron2: hidden layers He (fan-out, "c2_msra_fill"), zero biases; the predictor
    normal with std 0.001 and a zero bias, so training starts from near-zero point logits.
    """

    def __init__(self, fine_channels: int, num_classes: int, channels: int = 256, layers: int = 3,
                 every_layer: bool = False) -> None:
        super().__init__()
        if min(fine_channels, num_classes, channels) < 1 or layers < 0:
            raise MedsegError(f"PointRendHead: fine_channels, num_classes and channels must be >= 1 and "
                              f"layers >= 0, got {fine_channels}, {num_classes}, {channels}, {layers}")
        self.every_layer = every_layer
        self.fcs = nn.ModuleList()
        width = fine_channels + num_classes
        for _ in range(layers):
            fc = nn.Conv1d(width, channels, 1)
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
            self.fcs.append(fc)
            width = channels + (num_classes if every_layer else 0)
        self.predictor = nn.Conv1d(width, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, fine: Tensor, coarse: Tensor) -> Tensor:
        x = torch.cat([fine, coarse], dim=1)
        for fc in self.fcs:
            x = torch.relu(fc(x))
            if self.every_layer:
                x = torch.cat([x, coarse], dim=1)
        return self.predictor(x)
