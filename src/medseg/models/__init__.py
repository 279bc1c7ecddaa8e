"""The model zoo: importing this package registers every model in :mod:`medseg.models.registry`."""

from medseg.models.attention_unet import AttentionUNet
from medseg.models.cenet import CENet
from medseg.models.conresnet import ConResNet
from medseg.models.densevoxelnet import DenseVoxelNet
from medseg.models.fcn3d import FCN3D
from medseg.models.highresnet import HighResNet
from medseg.models.hrnet import HRNet
from medseg.models.m2snet import M2SNet, MSNet
from medseg.models.mask_rcnn import MaskRCNN
from medseg.models.miniseg import MiniSeg
from medseg.models.r2unet import R2UNet
from medseg.models.registry import (
    Reference,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
    unregister_model,
)
from medseg.models.residual_unet import ResidualUNet
from medseg.models.skipdensenet import SkipDenseNet3D
from medseg.models.unet import UNet, UNetDecoder, UNetEncoder
from medseg.models.unet_v2 import EncoderUNet, UNetV2
from medseg.models.unetpp import UNetPlusPlus
from medseg.models.unetr import UNETR
from medseg.models.unext import UNeXt
from medseg.models.vnet import VNet

__all__ = [
    "AttentionUNet", "ConResNet", "EncoderUNet", "HRNet", "M2SNet", "MSNet", "MaskRCNN", "R2UNet", "UNeXt",
    "UNet",
    "CENet", "DenseVoxelNet", "FCN3D", "HighResNet", "MiniSeg", "ResidualUNet", "SkipDenseNet3D", "UNETR",
    "UNetDecoder", "UNetEncoder", "UNetPlusPlus", "UNetV2", "VNet",
    "Reference", "count_parameters", "create_model", "list_models", "model_info", "register_model",
    "unregister_model",
]
