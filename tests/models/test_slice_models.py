"""Model-specific tests of the slice-based 3D models (ConvLSTM U-Net, H-DenseUNet), the ConvLSTM block,
the Dense U-Net and the Non-local U-Net."""

from __future__ import annotations

import pytest
import torch

from medseg.blocks.attention import NonLocalBlock
from medseg.blocks.convlstm import ConvLSTM
from medseg.errors import InputSizeError, MedsegError
from medseg.models.registry import create_model
from medseg.models.slices import slices_to_volume, volume_to_slices
from medseg.outputs import SegOutput

SMALL_LSTM = {"features": 4, "depth": 2}
SMALL_H = {"options_2d": {"features": 4, "depth": 2, "layers_per_block": 2, "growth_rate": 2},
           "options_3d": {"features": 4, "depth": 1, "layers_per_block": 2, "growth_rate": 2}}


def test_slices_round_trip() -> None:
    x = torch.randn(2, 3, 5, 4, 6)
    slices = volume_to_slices(x)
    assert slices.shape == (10, 3, 4, 6)
    assert torch.equal(slices[1 * 5 + 3], x[1, :, 3])
    assert torch.equal(slices_to_volume(slices, 2), x)


def test_convlstm_is_causal_forward_and_sees_both_sides_bidirectionally() -> None:
    torch.manual_seed(0)
    seq = torch.randn(1, 4, 2, 6, 6)
    changed = seq.clone()
    changed[:, 3] += 1.0  # change the last step only
    one_way = ConvLSTM(2, 2, 3)
    assert one_way.out_channels == 3
    a, b = one_way(seq), one_way(changed)
    assert a.shape == (1, 4, 3, 6, 6)
    assert torch.equal(a[:, :3], b[:, :3])  # earlier steps cannot see a later one
    both = ConvLSTM(2, 2, 3, bidirectional=True)
    a, b = both(seq), both(changed)
    assert a.shape == (1, 4, 6, 6, 6)
    assert not torch.allclose(a[:, 0], b[:, 0])  # the backward direction carries it to the first step


@pytest.mark.parametrize("bidirectional", [True, False])
def test_convlstm_unet_mixes_neighbouring_slices(bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = create_model("convlstm_unet", in_channels=1, num_classes=2, spatial_dims=3,
                         bidirectional=bidirectional, **SMALL_LSTM).eval()
    x = torch.randn(1, 1, 5, 16, 16)
    changed = x.clone()
    changed[:, :, 4] += 1.0
    with torch.no_grad():
        out, out2 = model(x), model(changed)
    assert out.shape == (1, 2, 5, 16, 16)
    if bidirectional:  # slice 0 sees slice 4 through the backward ConvLSTM
        assert (out[:, :, 0] - out2[:, :, 0]).abs().max() > 0
    else:  # a forward-only ConvLSTM: earlier slices are untouched
        assert torch.equal(out[:, :, :4], out2[:, :, :4])


def test_convlstm_unet_centre_output_and_any_slice_count() -> None:
    torch.manual_seed(0)
    model = create_model("convlstm_unet", in_channels=1, num_classes=2, spatial_dims=3, output="centre",
                         bidirectional=False, **SMALL_LSTM).eval()
    assert model(torch.randn(2, 1, 3, 16, 16)).shape == (2, 2, 16, 16)
    with pytest.raises(InputSizeError, match="H and W"):
        model(torch.randn(2, 1, 3, 16, 18))


@pytest.mark.parametrize("name", ["convlstm_unet", "h_denseunet"])
def test_slice_models_refuse_2d(name: str) -> None:
    with pytest.raises(MedsegError, match="spatial_dims 3"):
        create_model(name, in_channels=1, num_classes=2, spatial_dims=2)


def test_h_denseunet_train_output_has_the_2d_and_3d_maps() -> None:
    model = create_model("h_denseunet", in_channels=1, num_classes=3, spatial_dims=3, **SMALL_H)
    out = model.train()(torch.randn(2, 1, 4, 8, 8))
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 3, 4, 8, 8)
    assert [tuple(a.shape) for a in out.aux] == [(2, 3, 4, 8, 8)] * 2


def test_dense_unet_levels_are_dense_blocks() -> None:
    model = create_model("dense_unet", in_channels=1, num_classes=2, features=8, depth=2, layers_per_block=3,
                         growth_rate=4)
    assert model.encoder[0][0].out_channels == 8 + 3 * 4
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)


def test_multi_head_non_local_block_is_identity_at_init_and_heads_differ() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    block = NonLocalBlock(2, 8, 8, sub_sample=False, num_heads=4, scaled=True).eval()
    assert torch.equal(block(x), x)
    with pytest.raises(MedsegError, match="num_heads"):
        NonLocalBlock(2, 8, 6, num_heads=4)
    torch.nn.init.normal_(block.w[1].weight)
    one = NonLocalBlock(2, 8, 8, sub_sample=False, num_heads=1, scaled=True).eval()
    one.load_state_dict(block.state_dict())
    assert not torch.allclose(one(x), block(x))  # the same weights attend differently split in heads


def test_nonlocal_unet_attends_globally() -> None:
    torch.manual_seed(0)
    model = create_model("nonlocal_unet", in_channels=1, num_classes=2, features=4, depth=2, num_heads=2,
                         sub_sample=False).eval()
    for block in (model.bottom, model.up_blocks[0]):
        torch.nn.init.normal_(block.w[1].weight)  # leave the identity initialisation
    x = torch.zeros(1, 1, 32, 32)
    changed = x.clone()
    changed[..., 31, 31] = 10.0
    with torch.no_grad():
        diff = (model(x) - model(changed)).abs()
    assert diff[..., 0, 0].max() > 0  # a far corner reacts (convolutions alone reach ~20 pixels)
