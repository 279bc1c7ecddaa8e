"""The model zoo: importing this package registers every model in :mod:`medseg.models.registry`."""

from medseg.models.attention_unet import AttentionUNet
from medseg.models.bpr import BoundaryPatchRefiner
from medseg.models.conresnet import ConResNet
from medseg.models.hrnet import HRNet
from medseg.models.m2snet import M2SNet, MSNet
from medseg.models.mask_rcnn import MaskRCNN
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
from medseg.models.unet import UNet, UNetDecoder, UNetEncoder
from medseg.models.unet_v2 import EncoderUNet, UNetV2
from medseg.models.unetpp import UNetPlusPlus
from medseg.models.unext import UNeXt
from medseg.models.vnet import VNet

__all__ = [
    "AttentionUNet", "BoundaryPatchRefiner", "ConResNet", "EncoderUNet", "HRNet", "M2SNet", "MSNet",
    "MaskRCNN", "R2UNet", "UNeXt", "UNet",
    "UNetDecoder", "UNetEncoder", "UNetPlusPlus", "UNetV2", "VNet",
    "Reference", "count_parameters", "create_model", "list_models", "model_info", "register_model",
    "unregister_model",
]
