"""A recurrent slice-sequence U-Net: a 2D U-Net per slice with a ConvLSTM across neighbouring slices.

The RNN-based segmenters of the medical surveys (seed 004, Sec. 2.5: CNN features of an image sequence or
of the slices of a volume, with an LSTM modelling the dependence between slices; e.g. Chen et al. 2016,
Poudel et al. 2016, Li et al. 2019 for the pancreas): every slice of a 3D volume goes through the same 2D
U-Net encoder (:class:`~medseg.models.unet.UNetEncoder`); at the bottleneck a ConvLSTM
(:class:`~medseg.blocks.convlstm.ConvLSTM`, optionally bidirectional) runs along the slice axis, so each
slice's deepest feature sees its neighbours; a 1x1 conv brings the hidden state back to the bottleneck
width and the 2D decoder (:class:`~medseg.models.unet.UNetDecoder`, with each slice's own skips) predicts
every slice (``output="all"``: logits ``[B, K, D, H, W]``, the zoo's contract) or only the centre slice
(``output="centre"``: ``[B, K, H, W]``, for 2.5D training on slabs of 2n+1 slices). 3D input, 2D convs;
the slices run along the first spatial axis, any number of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from medseg import layers
from medseg.blocks.convlstm import ConvLSTM
from medseg.blocks.heads import SegmentationHead
from medseg.errors import InputSizeError, MedsegError, check_choice
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model
from medseg.models.slices import slices_to_volume, volume_to_slices
from medseg.models.unet import UNetDecoder, UNetEncoder

OUTPUTS = ("all", "centre")


class ConvLSTMUNet(SegmentationModel):
    """2D U-Net per slice + ConvLSTM across slices at the bottleneck (3D input).

    Args:
        spatial_dims: must be 3 (a volume ``[B, C, D, H, W]``; the D slices form the sequence).
        in_channels: image channels.
        num_classes: output channels.
        features: width of the first U-Net level, doubled per level (32), or the level widths.
        depth: down-samplings of the 2D U-Net (4); H and W must be multiples of ``2 ** depth``.
        hidden_channels: ConvLSTM width per direction (default: the bottleneck width).
        bidirectional: a forward and a backward ConvLSTM, concatenated (True).
        kernel_size: the ConvLSTM's conv kernel (3).
        output: ``all`` (every slice) or ``centre`` (the centre slice ``D // 2`` only).
        norm, act: normalisation and activation of the U-Net convs.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 features: int | Sequence[int] = 32, depth: int = 4, hidden_channels: int | None = None,
                 bidirectional: bool = True, kernel_size: int = 3, output: str = "all",
                 norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()
        if spatial_dims != 3:
            raise MedsegError(f"convlstm_unet takes 3D volumes (slices along the first axis, 2D convs): "
                              f"spatial_dims must be 3, got {spatial_dims!r}")
        self.spatial_dims = 3
        self.output = check_choice("output", output, OUTPUTS)
        self.encoder = UNetEncoder(2, in_channels, features, depth, norm=norm, act=act)
        widths = self.encoder.channels
        self.input_multiple = self.encoder.reductions[-1]
        self.lstm = ConvLSTM(2, widths[-1], hidden_channels or widths[-1], kernel_size, bidirectional)
        self.project = layers.conv(2, self.lstm.out_channels, widths[-1], 1)
        self.decoder = UNetDecoder(2, widths, norm=norm, act=act)
        self.head = SegmentationHead(2, widths[0], num_classes)

    def check_input(self, x: Tensor) -> None:
        """A ``[B, C, D, H, W]`` volume with H and W multiples of ``2 ** depth`` (any D)."""
        if x.dim() != 5:
            raise InputSizeError(f"ConvLSTMUNet expects a [B, C, D, H, W] volume, got shape {tuple(x.shape)}")
        for extent in x.shape[3:]:
            if not self.valid_size(int(extent)):
                lower, upper = self.nearest_valid_sizes(int(extent))
                raise InputSizeError(
                    f"ConvLSTMUNet: slice size {tuple(x.shape[3:])} does not work; H and W must be "
                    f"{self.size_rule()} (nearest for {extent}: {lower} or {upper})")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        batch, depth = x.shape[0], x.shape[2]
        features = self.encoder(volume_to_slices(x))  # [B*D, C_l, h_l, w_l] per level
        bottom = slices_to_volume(features[-1], batch).transpose(1, 2)  # [B, D, C, h, w]
        context = self.lstm(bottom).flatten(0, 1)  # [B*D, H', h, w]
        features[-1] = self.project(context)
        if self.output == "centre":
            centre = depth // 2
            features = [f.unflatten(0, (batch, depth))[:, centre] for f in features]
            return self.head(self.decoder(features)[0])
        return slices_to_volume(self.head(self.decoder(features)[0]), batch)


@register_model(
    "convlstm_unet",
    paper="U-Net per slice with a bidirectional ConvLSTM across slices (Shi et al. 2015 ConvLSTM; the RNN "
          "slice-sequence segmenters of the surveys, e.g. Chen et al. 2016, Li et al. 2019)",
    dims=(3,),
    default_loss="dice_ce",
    input_multiple=16,
    small_options={"features": 4, "depth": 2},
)
def build_convlstm_unet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any
                        ) -> ConvLSTMUNet:
    """Build :class:`ConvLSTMUNet` (see its docstring for the options)."""
    return ConvLSTMUNet(spatial_dims, in_channels, num_classes, **options)
