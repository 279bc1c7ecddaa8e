"""The model zoo: importing this package registers every model."""

from medseg.models import conresnet, m2snet, unet_v2, unext  # noqa: F401  (register)
from medseg.models.attention_unet import AttentionUNet
from medseg.models.r2unet import R2UNet
from medseg.models.unet import UNet, UNetDecoder, UNetEncoder
from medseg.models.unetpp import UNetPlusPlus
from medseg.models.vnet import VNet

__all__ = ["AttentionUNet", "R2UNet", "UNet", "UNetDecoder", "UNetEncoder", "UNetPlusPlus", "VNet"]
