"""Encoders: multi-level feature extractors with timm-compatible state-dict keys (imported: registered)."""

from medseg.encoders.base import (
    Encoder,
    LoadReport,
    adapt_input_conv,
    build_encoder,
    create_encoder,
    encoder_info,
    for_dims,
    list_encoders,
    load_encoder_weights,
    read_state_dict,
    register_encoder,
)
from medseg.encoders.hrnet import HRNetEncoder
from medseg.encoders.pvt_v2 import PVTv2Encoder
from medseg.encoders.res2net import Res2NetEncoder
from medseg.encoders.resnet import ResNetEncoder
from medseg.encoders.vgg import VGGEncoder
from medseg.encoders.xception import XceptionEncoder

__all__ = ["Encoder", "HRNetEncoder", "LoadReport", "PVTv2Encoder", "Res2NetEncoder", "ResNetEncoder",
           "VGGEncoder", "XceptionEncoder", "adapt_input_conv", "build_encoder", "create_encoder",
           "encoder_info", "for_dims", "list_encoders", "load_encoder_weights", "read_state_dict",
           "register_encoder"]
