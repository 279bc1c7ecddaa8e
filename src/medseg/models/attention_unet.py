"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas").

A U-Net whose skips pass through additive attention gates (Fig. 1-2) gated by the coarser decoder
level, with deep supervision fused by a 1x1 conv as in the official 3D CT code
(ozan-oktay/Attention-Gated-Networks, ``unet_CT_{multi,single}_att_dsv_3D`` and ``unet_CT_dsv_3D``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.attention_gate import MultiAttentionGate
from medseg.blocks.conv import ConvNormAct, DoubleConv
from medseg.blocks.heads import DeepSupervisionHeads, SegmentationHead
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.models.unet import level_widths
from medseg.outputs import SegOutput

GATES_PER_SKIP = {"multi": 2, "single": 1, "none": 0}
OFFICIAL_CT_FEATURES = (16, 32, 64, 128, 256)
OFFICIAL_CODE = "ozan-oktay/Attention-Gated-Networks models/networks/"


class AttentionDecoderLevel(nn.Module):
    """One decoder level: gate the skip with the coarser signal, up-sample, concatenate, two convs.

    The skip ``x`` passes through ``num_gates`` attention gates gated by ``g`` (no gate when 0); the
    coarser decoder output is resized to the skip's size (trilinear/bilinear, ``UnetUp3_CT``) and
    ``[skip, up]`` goes through two 3x3 conv-norm-ReLU layers.
    """

    def __init__(self, spatial_dims: int, skip_channels: int, below_channels: int, gating_channels: int,
                 num_gates: int, norm: str | None = "batch", mode: str = "linear") -> None:
        super().__init__()
        self.mode = mode
        self.gate = (MultiAttentionGate(spatial_dims, skip_channels, gating_channels, num_gates,
                                        inter_channels=skip_channels, norm=norm, mode=mode)
                     if num_gates > 0 else None)
        self.conv = DoubleConv(spatial_dims, skip_channels + below_channels, skip_channels, norm=norm,
                               bias=True)

    def forward(self, skip: Tensor, below: Tensor, gating: Tensor) -> tuple[Tensor, Tensor | None]:
        alpha: Tensor | None = None
        if self.gate is not None:
            skip, alpha = self.gate.forward_with_coefficients(skip, gating)
        up = layers.resize_to(below, skip.shape[2:], self.mode)
        return self.conv(torch.cat([skip, up], dim=1)), alpha


class AttentionUNet(SegmentationModel):
    """Attention U-Net (Oktay et al. 2018), 2D and 3D.

    Encoder: two 3x3 conv-norm-ReLU per level and 2x max-pooling. The deepest skip is gated by a 1x1
    conv-norm-ReLU of the centre features, every other skip but the finest by the decoder output of
    the level below (as in the official code, the finest skip is not gated). With deep supervision a
    1x1 head on every decoder level gives logits resized to the input, and a 1x1 conv fuses their
    concatenation into the final logits (the heads' maps are the auxiliary outputs in train mode).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        features: width of the finest level, doubled per level (16 gives the official CT code's
            ``feature_scale=4`` widths 16-256), or the widths of all levels, finest to centre.
        depth: number of down-samplings when ``features`` is an int (inputs must be multiples of
            ``2 ** depth``).
        gate: ``"single"`` (one gate per skip, the paper's Fig. 2, default), ``"multi"`` (two gates and
            a 1x1 fusion, ``MultiAttentionBlock``) or ``"none"`` (the matching U-Net).
        deep_supervision: fuse the 1x1 heads of all decoder levels (default True, as in the official
            CT code); otherwise one 1x1 head on the finest level.
        norm: normalisation of every conv block and gate (default batch norm).
        upsample_mode: interpolation of the decoder and of the gates (``linear`` or ``nearest``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 features: int | Sequence[int] = 16, depth: int = 4, gate: str = "single",
                 deep_supervision: bool = True, norm: str | None = "batch",
                 upsample_mode: str = "linear") -> None:
        super().__init__()
        if gate not in GATES_PER_SKIP:
            raise MedsegError(f"gate must be one of {', '.join(GATES_PER_SKIP)}, got {gate!r}")
        widths = (level_widths(features, depth) if isinstance(features, int)
                  else [int(f) for f in features])
        if len(widths) < 2:
            raise MedsegError(f"features needs at least two levels, got {widths}")
        num_gates = GATES_PER_SKIP[gate]
        self.spatial_dims = spatial_dims
        self.input_multiple = 2 ** (len(widths) - 1)
        self.deep_supervision = deep_supervision

        self.encoder = nn.ModuleList(
            DoubleConv(spatial_dims, c_in, c_out, norm=norm, bias=True)
            for c_in, c_out in zip((in_channels, *widths[:-1]), widths, strict=True))
        self.pool = layers.max_pool(spatial_dims, 2)
        self.gating = (ConvNormAct(spatial_dims, widths[-1], widths[-1], 1, norm=norm, bias=True)
                       if num_gates > 0 else None)
        # decoder levels from the coarsest skip to the finest; the finest skip (level 0) is not gated
        self.decoder = nn.ModuleList(
            AttentionDecoderLevel(spatial_dims, widths[i], widths[i + 1], widths[i + 1],
                                  num_gates if i > 0 else 0, norm, upsample_mode)
            for i in reversed(range(len(widths) - 1)))
        if deep_supervision:
            self.heads = DeepSupervisionHeads(spatial_dims, widths[:-1], num_classes)
            self.fuse = layers.conv(spatial_dims, num_classes * (len(widths) - 1), num_classes, 1)
        else:
            self.head = SegmentationHead(spatial_dims, widths[0], num_classes)

    def _decode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Decoder outputs and the attention coefficients of the gated levels, coarsest first."""
        skips: list[Tensor] = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        below = skips[-1]
        gating = self.gating(below) if self.gating is not None else below
        outputs: list[Tensor] = []
        alphas: list[Tensor] = []
        for i, level in enumerate(self.decoder):
            below, alpha = level(skips[-2 - i], below, gating)
            gating = below
            outputs.append(below)
            if alpha is not None:
                alphas.append(alpha)
        return outputs, alphas

    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """The gates' coefficients for ``x`` (``[B, gates, *skip.spatial]``), coarsest skip first."""
        self.check_input(x)
        return self._decode(x)[1]

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        outputs = self._decode(x)[0]
        if not self.deep_supervision:
            return self.head(outputs[-1])
        maps = self.heads(outputs[::-1], output_size=x.shape[2:])
        logits = self.fuse(torch.cat(maps, dim=1))
        if self.training:
            return SegOutput(logits, aux=maps)
        return logits


def _ct_reference(gate: str, params: int, code: str) -> Reference:
    options = {"in_channels": 1, "num_classes": 4, "spatial_dims": 3, "features": OFFICIAL_CT_FEATURES,
               "gate": gate, "deep_supervision": True}
    return Reference(options=options, params=params, source=f"{OFFICIAL_CODE}{code} (feature_scale=4)")


@register_model(
    "attention_unet",
    paper="Oktay et al. 2018, Attention U-Net: Learning Where to Look for the Pancreas (MIDL)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=16,
    references=[
        _ct_reference("multi", 6_473_322, "unet_CT_multi_att_dsv_3D.py"),
        _ct_reference("single", 6_214_151, "unet_CT_single_att_dsv_3D.py"),
        _ct_reference("none", 5_888_004, "unet_CT_dsv_3D.py"),
    ],
    small_options={"features": 4},
)
def build_attention_unet(*, in_channels: int, num_classes: int, spatial_dims: int,
                         **options: Any) -> AttentionUNet:
    """Build :class:`AttentionUNet` (see its docstring for the options)."""
    return AttentionUNet(spatial_dims, in_channels, num_classes, **options)
