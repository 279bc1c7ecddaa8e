"""Encoders: multi-level feature extractors with timm-compatible state-dict keys (imported: registered)."""

from medseg.encoders import pvt_v2, res2net, resnet, vgg  # noqa: F401  (register the built-in encoders)
from medseg.encoders.base import (
    Encoder,
    LoadReport,
    adapt_input_conv,
    build_encoder,
    create_encoder,
    encoder_info,
    list_encoders,
    load_encoder_weights,
    read_state_dict,
    register_encoder,
)
from medseg.encoders.res2net import Res2NetEncoder
from medseg.encoders.resnet import ResNetEncoder
from medseg.encoders.vgg import VGGEncoder

__all__ = ["Encoder", "LoadReport", "Res2NetEncoder", "ResNetEncoder", "VGGEncoder", "adapt_input_conv",
           "build_encoder", "create_encoder", "encoder_info", "list_encoders", "load_encoder_weights",
           "read_state_dict", "register_encoder"]
