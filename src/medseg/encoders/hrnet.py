"""HRNet backbones (Wang et al. 2020, TPAMI, "Deep High-Resolution Representation Learning for Visual
Recognition"), 2D and 3D.

Stem: two 3x3 stride-2 convs (64) with BN-ReLU (1/4); stage 1: bottleneck units (``layer1``); stages 2-4:
:class:`~medseg.blocks.hrnet.HighResolutionModule` s of basic units over 2, 3, 4 branches of widths C, 2C,
4C, 8C, with a :class:`~medseg.blocks.hrnet.TransitionLayer` before each. The configurations are those of
the official segmentation code (HRNet/HRNet-Semantic-Segmentation ``experiments/cityscapes/*.yaml``) and
timm (``hrnet_w18_small``, ``hrnet_w18_small_v2``, ``hrnet_w18``, ``hrnet_w32``, ``hrnet_w48``).

State-dict keys are the official / timm ones (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1``,
``transition1``, ``stage2``, ...): a weight file of either loads with ``encoder_weights``; the heads of
those files (timm's ``incre_modules``/``downsamp_modules``/``final_layer``, the segmentation
``last_layer``) are dropped. The encoder returns the four branches, finest first (1/4, 1/8, 1/16, 1/32).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.hrnet import (
    FUSE_UPSAMPLINGS,
    HighResolutionModule,
    TransitionLayer,
    block_expansion,
    residual_branch,
)
from medseg.encoders.base import Encoder, register_encoder
from medseg.encoders.resnet import kaiming_init
from medseg.errors import MedsegError, check_choice


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``modules`` HRNet modules of ``block`` units, ``blocks[i]`` units and base width
    ``channels[i]`` on branch i."""

    modules: int
    blocks: tuple[int, ...]
    channels: tuple[int, ...]
    block: str = "basic"


@dataclass(frozen=True)
class HRNetSpec:
    """An HRNet topology: the stem width, stage 1 (one branch) and the multi-branch stages 2..."""

    stem_width: int
    stage1: StageSpec
    stages: tuple[StageSpec, ...]

    def with_width(self, width: int) -> HRNetSpec:
        """The same topology with branch widths ``width * 2**i`` in stages 2... (W18, W32, W48 differ only
        so)."""
        if width < 1:
            raise MedsegError(f"HRNet width must be >= 1, got {width}")
        return replace(self, stages=tuple(
            replace(s, channels=tuple(width * 2**i for i in range(len(s.channels)))) for s in self.stages))


def _standard(width: int) -> HRNetSpec:
    """W18/W32/W48: stage 1 four bottlenecks of 64, stages 2-4 with 1, 4, 3 modules of 4 units a branch."""
    return HRNetSpec(64, StageSpec(1, (4,), (64,), "bottleneck"), (
        StageSpec(1, (4, 4), (width, 2 * width)),
        StageSpec(4, (4, 4, 4), (width, 2 * width, 4 * width)),
        StageSpec(3, (4, 4, 4, 4), (width, 2 * width, 4 * width, 8 * width)),
    ))


CONFIGS: dict[str, HRNetSpec] = {
    "hrnet_w18_small": HRNetSpec(64, StageSpec(1, (1,), (32,), "bottleneck"), (
        StageSpec(1, (2, 2), (16, 32)),
        StageSpec(1, (2, 2, 2), (16, 32, 64)),
        StageSpec(1, (2, 2, 2, 2), (16, 32, 64, 128)),
    )),
    "hrnet_w18_small_v2": HRNetSpec(64, StageSpec(1, (2,), (64,), "bottleneck"), (
        StageSpec(1, (2, 2), (18, 36)),
        StageSpec(3, (2, 2, 2), (18, 36, 72)),
        StageSpec(2, (2, 2, 2, 2), (18, 36, 72, 144)),
    )),
    "hrnet_w18": _standard(18),
    "hrnet_w32": _standard(32),
    "hrnet_w48": _standard(48),
}
"""The configurations (W18-Small-v1 is ``hrnet_w18_small``), from the official experiment files."""

HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "last_layer.", "classifier.")
"""Keys of the classification (timm, HRNet-Image-Classification) and segmentation heads of weight files."""


def hrnet_spec(config: str | HRNetSpec) -> HRNetSpec:
    """The :class:`HRNetSpec` of a configuration name (``hrnet_w48`` or ``w48``, any case) or a spec."""
    if isinstance(config, HRNetSpec):
        return config
    key = str(config).lower()
    key = key if key.startswith("hrnet_") else f"hrnet_{key}"
    if key not in CONFIGS:
        raise MedsegError(f"unknown HRNet config {config!r}; choose one of {', '.join(CONFIGS)}")
    return CONFIGS[key]


class HRNetEncoder(Encoder):
    """The HRNet trunk, returning its branches finest first (1/4, 1/8, 1/16, 1/32 for four stages).

    Args:
        in_channels: image channels.
        spatial_dims: 2 or 3 (3D: the same topology with cubic kernels).
        config: a name of :data:`CONFIGS` (``hrnet_w48`` default) or an :class:`HRNetSpec`.
        width: replaces the branch widths by ``width, 2 width, ...`` (the topology stays).
        stem_width: replaces the width of the stem (64).
        stage1_channels: replaces the base width of stage 1's bottlenecks (64; 32 in W18-Small-v1).
        multi_scale_output: False fuses only the finest branch in the last module (HRNetV1); the encoder
            then returns that branch alone.
        fuse_upsample: ``nearest`` (the paper, timm) or ``linear`` (the official segmentation code).
        mask_channels: extra input channels after the ``in_channels`` image channels (BPR's coarse mask,
            Tang et al. 2021): they get their own 3x3 stride-2 conv (``conv_mask``, no bias) whose output
            is added to ``conv1``'s before ``bn1``; the input then has ``in_channels + mask_channels``
            channels. Weight files need not have ``conv_mask`` (it is a new layer).

    Any input size works (the stride-2 convs round up and the fuse layers match sizes); multiples of 32
    keep the branches exactly aligned.
    """

    first_conv = "conv1.weight"

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2, config: str | HRNetSpec = "hrnet_w48",
                 width: int | None = None, stem_width: int | None = None, stage1_channels: int | None = None,
                 multi_scale_output: bool = True, fuse_upsample: str = "nearest", mask_channels: int = 0
                 ) -> None:
        super().__init__()
        if mask_channels < 0:
            raise MedsegError(f"HRNet mask_channels must be >= 0, got {mask_channels}")
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        check_choice("fuse_upsample", fuse_upsample, FUSE_UPSAMPLINGS)
        spec = hrnet_spec(config)
        if width is not None:
            spec = spec.with_width(int(width))
        if stem_width is not None:
            spec = replace(spec, stem_width=int(stem_width))
        if stage1_channels is not None:
            spec = replace(spec, stage1=replace(spec.stage1, channels=(int(stage1_channels),)))
        if spec.stem_width < 1 or min(spec.stage1.channels) < 1:
            raise MedsegError("HRNet stem_width and stage1_channels must be >= 1")
        self.spec = spec
        self.multi_scale_output = multi_scale_output
        stem = spec.stem_width
        self.conv1 = layers.conv(spatial_dims, in_channels, stem, 3, 2, padding=1, bias=False)
        self.image_channels = in_channels
        self.conv_mask = (layers.conv(spatial_dims, mask_channels, stem, 3, 2, padding=1, bias=False)
                          if mask_channels else None)
        if mask_channels:
            self.new_layers = ("conv_mask.",)
        self.bn1 = layers.norm("batch", spatial_dims, stem)
        self.conv2 = layers.conv(spatial_dims, stem, stem, 3, 2, padding=1, bias=False)
        self.bn2 = layers.norm("batch", spatial_dims, stem)
        self.relu = nn.ReLU(inplace=True)
        s1 = spec.stage1
        self.layer1 = residual_branch(spatial_dims, s1.block, stem, s1.channels[0], s1.blocks[0])
        widths = [s1.channels[0] * block_expansion(s1.block)]
        for index, stage in enumerate(spec.stages, start=1):
            if len(stage.blocks) != len(stage.channels) or len(stage.channels) < len(widths):
                raise MedsegError(f"HRNet stage {index + 1}: {len(stage.channels)} widths and "
                                  f"{len(stage.blocks)} block counts after {len(widths)} branches")
            if stage.modules < 1:
                raise MedsegError(f"HRNet stage {index + 1} needs at least one module")
            expansion = block_expansion(stage.block)
            targets = [c * expansion for c in stage.channels]
            self.add_module(f"transition{index}", TransitionLayer(spatial_dims, widths, targets))
            modules = []
            for m in range(stage.modules):
                last = index == len(spec.stages) and m == stage.modules - 1
                module = HighResolutionModule(
                    spatial_dims, targets, stage.channels, stage.blocks, stage.block,
                    outputs=None if multi_scale_output or not last else 1, upsample=fuse_upsample)
                modules.append(module)
                targets = module.out_channels
            self.add_module(f"stage{index + 1}", nn.Sequential(*modules))
            widths = targets
        self.num_stages = len(spec.stages)
        self.channels = list(widths)
        self.reductions = [4 * 2**i for i in range(len(widths))]
        kaiming_init(self)

    def stem(self, x: Tensor) -> Tensor:
        """The two stride-2 3x3 conv-BN-ReLU layers (1/4 of the input); with ``mask_channels`` the mask
        conv's output is added to the first conv's before its BN (BPR's ``HRNetRefine``)."""
        if self.conv_mask is None:
            y = self.conv1(x)
        else:
            y = self.conv1(x[:, :self.image_channels]) + self.conv_mask(x[:, self.image_channels:])
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(y)))))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [self.layer1(self.stem(x))]
        for index in range(1, self.num_stages + 1):
            features = getattr(self, f"transition{index}")(features)
            for module in getattr(self, f"stage{index + 1}"):
                features = module(features)
        return features

    def convert_state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        """Drop the heads of timm / official weight files; without ``multi_scale_output`` also the coarse
        outputs of the last module's fuse layer (this encoder does not compute them)."""
        drop: tuple[str, ...] = HEAD_PREFIXES
        if not self.multi_scale_output:
            stage = f"stage{self.num_stages + 1}"
            last = len(getattr(self, stage)) - 1
            branches = len(self.spec.stages[-1].channels)
            drop += tuple(f"{stage}.{last}.fuse_layers.{j}." for j in range(1, branches))
        return {k: v for k, v in state.items() if not k.startswith(drop)}


_PAPER = ("Wang et al. 2020, Deep High-Resolution Representation Learning for Visual Recognition (TPAMI); "
          "Sun et al. 2019, CVPR")


def _register(name: str, params: int | None, doc: str) -> None:
    def build(in_channels: int = 3, spatial_dims: int = 2, **options: Any) -> HRNetEncoder:
        return HRNetEncoder(in_channels, spatial_dims, **{"config": name, **options})

    build.__name__ = name
    build.__doc__ = doc
    register_encoder(name, paper=_PAPER, dims=(2, 3), params=params, timm_name=name)(build)


# Reference counts: the spec's HRNetV2 totals (19 classes) less the V2 head (1x1 conv 15C -> 15C with bias,
# BN, 1x1 conv 15C -> 19 with bias): W48 65,859,379 - 534,259; W18 9,641,119 - 78,859; W18-Small-v1
# 1,540,819 - 62,899; W18-Small-v2 3,939,579 - 78,859. W32 has no reference in the spec.
_register("hrnet_w18_small", 1_477_920, "HRNet-W18-Small-v1: widths 16/32/64/128, 1 module per stage.")
_register("hrnet_w18_small_v2", 3_860_720, "HRNet-W18-Small-v2: widths 18/36/72/144, modules 1/3/2.")
_register("hrnet_w18", 9_562_260, "HRNet-W18: widths 18/36/72/144, modules 1/4/3, 4 units a branch.")
_register("hrnet_w32", None, "HRNet-W32: widths 32/64/128/256, modules 1/4/3, 4 units a branch.")
_register("hrnet_w48", 65_325_120, "HRNet-W48: widths 48/96/192/384, modules 1/4/3, 4 units a branch.")
