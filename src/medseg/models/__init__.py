"""The model zoo: importing this package registers every model in :mod:`medseg.models.registry`."""

from medseg.models.attention_unet import AttentionUNet
from medseg.models.bpr import BoundaryPatchRefiner
from medseg.models.cenet import CENet
from medseg.models.conresnet import ConResNet
from medseg.models.convlstm_unet import ConvLSTMUNet
from medseg.models.deeplabv1 import DeepLabV1
from medseg.models.deeplabv2 import DeepLabV2
from medseg.models.deeplabv3 import DeepLabV3, DeepLabV3Plus
from medseg.models.dense_unet import DenseUNet
from medseg.models.densevoxelnet import DenseVoxelNet
from medseg.models.enet import ENet
from medseg.models.erfnet import ERFNet
from medseg.models.fast_scnn import FastSCNN
from medseg.models.fcdensenet import FCDenseNet
from medseg.models.fcn import FCN
from medseg.models.fcn3d import FCN3D
from medseg.models.h_denseunet import HDenseUNet
from medseg.models.highresnet import HighResNet
from medseg.models.hrnet import HRNet
from medseg.models.m2snet import M2SNet, MSNet
from medseg.models.mask_rcnn import MaskRCNN
from medseg.models.miniseg import MiniSeg
from medseg.models.multiresunet import MultiResUNet
from medseg.models.nonlocal_unet import NonLocalUNet
from medseg.models.pan import PAN
from medseg.models.pspnet import PSPNet
from medseg.models.r2unet import R2UNet
from medseg.models.refinenet import RefineNet
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
from medseg.models.segnet import SegNet
from medseg.models.skipdensenet import SkipDenseNet3D
from medseg.models.unet import UNet, UNetDecoder, UNetEncoder
from medseg.models.unet_v2 import EncoderUNet, UNetV2
from medseg.models.unetpp import UNetPlusPlus
from medseg.models.unetr import UNETR
from medseg.models.unext import UNeXt
from medseg.models.vnet import VNet

__all__ = [  # one name a line, so that modules added side by side merge
    "AttentionUNet",
    "CENet",
    "BoundaryPatchRefiner",
    "ConResNet",
    "ConvLSTMUNet",
    "DeepLabV1",
    "DeepLabV2",
    "DeepLabV3",
    "DeepLabV3Plus",
    "DenseUNet",
    "DenseVoxelNet",
    "ENet",
    "ERFNet",
    "FastSCNN",
    "FCDenseNet",
    "FCN",
    "FCN3D",
    "HDenseUNet",
    "HighResNet",
    "HRNet",
    "M2SNet",
    "MSNet",
    "MaskRCNN",
    "MiniSeg",
    "MultiResUNet",
    "NonLocalUNet",
    "PAN",
    "PSPNet",
    "R2UNet",
    "RefineNet",
    "Reference",
    "count_parameters",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "unregister_model",
    "ResidualUNet",
    "SegNet",
    "SkipDenseNet3D",
    "UNet",
    "UNetDecoder",
    "UNetEncoder",
    "EncoderUNet",
    "UNetV2",
    "UNetPlusPlus",
    "UNETR",
    "UNeXt",
    "VNet",
]
