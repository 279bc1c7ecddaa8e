"""PAN's blocks: Feature Pyramid Attention and Global Attention Upsample (2D and 3D)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.blocks.pyramid_attention import FeaturePyramidAttention, GlobalAttentionUpsample
from medseg.errors import MedsegError


@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (5, 7)), (2, (16, 16)), (3, (4, 6, 5))])
def test_fpa_keeps_the_size_and_gives_out_channels(spatial_dims: int, size: tuple[int, ...]) -> None:
    fpa = FeaturePyramidAttention(spatial_dims, 6, 4)
    out = fpa(torch.randn(2, 6, *size))
    assert out.shape == (2, 4, *size)


def test_fpa_pyramid_is_7_5_3_strided_then_refined() -> None:
    fpa = FeaturePyramidAttention(2, 6, 4)
    assert [(d.conv.kernel_size, d.conv.stride) for d in fpa.down] == [((7, 7), (2, 2)), ((5, 5), (2, 2)),
                                                                       ((3, 3), (2, 2))]
    assert [r.conv.kernel_size for r in fpa.refine] == [(7, 7), (5, 5), (3, 3)]
    assert fpa.down[0].conv.in_channels == 6 and fpa.down[0].conv.out_channels == 1


def test_fpa_attention_multiplies_the_master_branch() -> None:
    torch.manual_seed(0)
    fpa = FeaturePyramidAttention(2, 3, 4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        full = fpa(x)
        gp = fpa.global_pool(x)
        master = fpa.master(x)
        # the attention map, recomputed from the pyramid's modules: the U-shaped merge coarse to fine
        l1 = fpa.refine[0](fpa.down[0](x))
        l2 = fpa.refine[1](fpa.down[1](fpa.down[0](x)))
        l3 = fpa.refine[2](fpa.down[2](fpa.down[1](fpa.down[0](x))))
        merged = F.interpolate(F.interpolate(l3, size=l2.shape[2:], mode="bilinear") + l2, size=l1.shape[2:],
                               mode="bilinear") + l1
        attention = F.interpolate(merged, size=(16, 16), mode="bilinear")
    assert attention.shape[1] == 1  # a spatial map broadcast over the channels
    torch.testing.assert_close(full, master * attention + gp)
    assert gp.shape == (2, 4, 1, 1)


def test_fpa_bad_pyramid_channels() -> None:
    with pytest.raises(MedsegError, match="pyramid_channels"):
        FeaturePyramidAttention(2, 6, 4, pyramid_channels=3)
    assert FeaturePyramidAttention(2, 6, 4, pyramid_channels=4)(torch.randn(2, 6, 8, 8)).shape == (2, 4, 8, 8)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gau_output_at_the_low_resolution(spatial_dims: int) -> None:
    gau = GlobalAttentionUpsample(spatial_dims, 5, 4, 4)
    low, high = torch.randn(2, 5, *[8] * spatial_dims), torch.randn(2, 4, *[4] * spatial_dims)
    assert gau(low, high).shape == (2, 4, *[8] * spatial_dims)
    assert isinstance(gau.project, torch.nn.Identity)
    assert isinstance(GlobalAttentionUpsample(spatial_dims, 5, 6, 4).project, torch.nn.Sequential)


def test_gau_weights_the_low_level_feature_by_the_global_context() -> None:
    torch.manual_seed(0)
    gau = GlobalAttentionUpsample(2, 5, 4, 4).eval()
    low, high = torch.randn(2, 5, 8, 8), torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        up = F.interpolate(high, size=(8, 8), mode="bilinear")
        weights = gau.gate(high)
        assert weights.shape == (2, 4, 1, 1) and (weights >= 0).all()  # 1x1 conv-BN-ReLU of the pooled map
        torch.testing.assert_close(gau(low, high), F.relu(up + gau.low(low) * weights))
        gau.gate[1].norm.weight.zero_()
        gau.gate[1].norm.bias.zero_()  # no global context: only the up-sampled high-level feature
        torch.testing.assert_close(gau(low, high), F.relu(up))
