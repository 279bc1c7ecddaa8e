"""BPR's refinement network (medseg.models.bpr) and the HRNet encoder's mask stem."""

from __future__ import annotations

import pytest
import torch

import medseg
from medseg.encoders import HRNetEncoder
from medseg.errors import MedsegError
from medseg.models.bpr import BoundaryPatchRefiner

SMALL = medseg.model_info("bpr")["small_options"]


@pytest.mark.parametrize(("config", "expected"),
                         [("hrnet_w18_small_v2", 3_935_278), ("hrnet_w48", 65_846_978)])
def test_parameter_counts_are_exactly_the_official_ones(config: str, expected: int) -> None:
    with torch.device("meta"):
        model = medseg.create_model("bpr", in_channels=4, num_classes=2, config=config)
    assert medseg.count_parameters(model) == expected
    assert {r["params"] for r in medseg.model_info("bpr")["references"]} == {3_935_278, 65_846_978}


def test_the_mask_conv_is_added_before_the_first_bn() -> None:
    with torch.device("meta"):
        model = medseg.create_model("bpr", in_channels=4, num_classes=2)
    conv = model.encoder.conv_mask
    assert conv.in_channels == 1 and conv.out_channels == 64 and conv.stride == (2, 2) and conv.bias is None
    assert model.encoder.conv1.in_channels == 3
    head = model.head
    assert head[0].bias is None and head[0].in_channels == 270 and head[3].out_channels == 2


def test_the_mask_channel_changes_the_output_and_is_normalised() -> None:
    torch.manual_seed(0)
    model = BoundaryPatchRefiner(2, 4, 2, **SMALL).eval()
    image = torch.rand(1, 3, 32, 32)
    zeros, ones = torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
    with torch.no_grad():
        a = model(torch.cat([image, zeros], 1))
        b = model(torch.cat([image, ones], 1))
        # the encoder sees (m - 0.5) / 0.5: a mask of 0.5 is a zero mask input
        half = model(torch.cat([image, torch.full_like(zeros, 0.5)], 1))
        direct = model.encoder(torch.cat([image, zeros], 1))
    assert a.shape == (1, 2, 32, 32) and not torch.allclose(a, b)
    features = model.encoder.stem(torch.cat([image, zeros], 1))
    assert features.shape[1] == 8 and len(direct) == 4
    model.encoder.conv_mask.weight.data.zero_()
    with torch.no_grad():
        assert torch.allclose(model(torch.cat([image, ones], 1)), half)


def test_encoder_mask_channels_option() -> None:
    encoder = HRNetEncoder(3, 2, "hrnet_w18_small", width=4, stem_width=8, stage1_channels=4, mask_channels=1)
    plain = HRNetEncoder(3, 2, "hrnet_w18_small", width=4, stem_width=8, stage1_channels=4)
    assert plain.conv_mask is None and "conv_mask.weight" not in plain.state_dict()
    assert encoder.new_layers == ("conv_mask.",)
    plain.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith("conv_mask.")})
    encoder.conv_mask.weight.data.zero_()
    x = torch.rand(2, 3, 32, 32)
    encoder.eval(), plain.eval()
    with torch.no_grad():
        for a, b in zip(encoder(torch.cat([x, torch.rand(2, 1, 32, 32)], 1)), plain(x), strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(MedsegError, match="mask_channels"):
        HRNetEncoder(3, 2, "hrnet_w18_small", mask_channels=-1)


def test_3d_and_the_input_check() -> None:
    model = medseg.create_model("bpr3d", in_channels=2, num_classes=2, **SMALL).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 2, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    with pytest.raises(MedsegError, match="in_channels >= 2"):
        medseg.create_model("bpr", in_channels=1, num_classes=2)
