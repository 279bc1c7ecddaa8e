"""Medical zoo models: reference counts (MONAI oracles where installed), structure and input rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.errors import MedsegError
from medseg.models.cenet import CENet
from medseg.models.densevoxelnet import DenseVoxelNet
from medseg.models.fcn3d import FCN3D
from medseg.models.highresnet import HighResBlock, HighResNet
from medseg.models.miniseg import AHSP, MiniSeg
from medseg.models.registry import count_parameters, create_model, get_entry
from medseg.models.residual_unet import ResidualUNet
from medseg.models.skipdensenet import SkipDenseNet3D
from medseg.models.unetr import UNETR
from medseg.outputs import SegOutput


def _conv_params(cin: int, cout: int, k: int, dims: int = 2, bias: bool = True) -> int:
    return cin * cout * k**dims + (cout if bias else 0)


# ---------------------------------------------------------------- HighResNet


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_highresnet_is_monai_highresnet_with_unrectified_logits(spatial_dims: int) -> None:
    """Parameter for parameter MONAI's HighResNet; MONAI's output is ReLU of ours (it rectifies logits)."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    reference = monai_nets.HighResNet(spatial_dims=spatial_dims).eval()
    ours = HighResNet(spatial_dims, 1, 1).eval()
    assert count_parameters(ours) == count_parameters(reference)
    pairs = list(zip(reference.parameters(), ours.parameters(), strict=True))
    assert all(p.shape == q.shape for p, q in pairs)
    with torch.no_grad():
        for p, q in pairs:
            q.copy_(p)
        x = torch.randn(1, 1, *(10,) * spatial_dims)
        torch.testing.assert_close(torch.relu(ours(x)), reference(x), atol=1e-5, rtol=1e-4)


def test_highresnet_reference_counts_and_layout() -> None:
    references = get_entry("highresnet").references
    assert [r.params for r in references] == [808_866, 274_050]
    for reference in references:
        assert count_parameters(create_model("highresnet", **reference.options)) == reference.params
    model = HighResNet(3, 1, 4)
    blocks = [b for b in model.modules() if isinstance(b, HighResBlock)]
    dilations = [b.units[0].conv.dilation[0] for b in blocks]
    assert dilations == [1, 1, 1, 2, 2, 2, 4, 4, 4]
    x = torch.randn(1, 1, 9, 11, 7)  # no down-sampling: any size
    assert model.eval()(x).shape == (1, 4, 9, 11, 7)


def test_highres_block_pads_channels_evenly_or_projects() -> None:
    block = HighResBlock(2, 2, 5).eval()
    for p in block.units.parameters():
        nn.init.zeros_(p)  # residual branch silenced: the output is the padded identity
    x = torch.randn(1, 2, 4, 4)
    y = block(x)
    assert torch.equal(y[:, 1:3], x) and not y[:, [0, 3, 4]].any()
    assert HighResBlock(2, 2, 5, channel_matching="project").project is not None
    with pytest.raises(MedsegError, match="cannot shrink"):
        HighResBlock(2, 8, 4)


# ---------------------------------------------------------------- UNETR


def test_unetr_count_is_monai_minus_its_unused_layer_norms() -> None:
    (reference,) = get_entry("unetr").references
    with torch.device("meta"):
        model = create_model("unetr", **reference.options)
    dead = 12 * 2 * 768  # MONAI 1.6 TransformerBlock.norm_cross_attn, unused without cross-attention
    assert count_parameters(model) == reference.params - dead == 92_784_046


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unetr_matches_monai_count_at_a_small_configuration(spatial_dims: int) -> None:
    monai_nets = pytest.importorskip("monai.networks.nets")
    options = {"img_size": 32, "feature_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_heads": 2}
    try:
        reference = monai_nets.UNETR(in_channels=1, out_channels=3, spatial_dims=spatial_dims,
                                     proj_type="conv", **options)
    except ImportError as exc:  # MONAI's ViT needs einops
        pytest.skip(f"MONAI UNETR unavailable: {exc}")
    dead = sum(p.numel() for block in reference.vit.blocks for p in block.norm_cross_attn.parameters()) \
        if hasattr(reference.vit.blocks[0], "norm_cross_attn") else 0
    ours = UNETR(spatial_dims, 1, 3, **options)
    assert count_parameters(ours) == count_parameters(reference) - dead


def test_unetr_reads_the_chosen_layers_and_takes_other_sizes() -> None:
    torch.manual_seed(0)
    model = UNETR(3, 1, 2, img_size=32, feature_size=2, hidden_size=8, mlp_dim=16, num_layers=4, num_heads=2,
                  skip_layers=(1, 2, 3)).eval()
    seen: list[int] = []
    for i, block in enumerate(model.vit.blocks):
        block.register_forward_hook(lambda *_, i=i: seen.append(i))
    x = torch.randn(1, 1, 16, 32, 48)  # another grid than img_size: interpolated position embedding
    assert model(x).shape == (1, 2, 16, 32, 48)
    assert seen == [0, 1, 2, 3]
    assert model.vit.embedding.position.shape == (1, 8, 8)
    # skips of layers (1, 2, 3) differ from those of (2, 3, 3)? choose a different layer: the output changes
    other = UNETR(3, 1, 2, img_size=32, feature_size=2, hidden_size=8, mlp_dim=16, num_layers=4, num_heads=2,
                  skip_layers=(2, 3, 3)).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(model(x), other(x))
    with pytest.raises(MedsegError, match="skip_layers"):
        UNETR(3, 1, 2, num_layers=4, skip_layers=(3, 6, 9))
    with pytest.raises(MedsegError, match="multiple of 16"):
        model(torch.randn(1, 1, 16, 16, 20))


# ---------------------------------------------------------------- MiniSeg


def test_miniseg_official_count_and_aux_outputs() -> None:
    (reference,) = get_entry("miniseg").references
    model = create_model("miniseg", **reference.options)
    assert count_parameters(model) == reference.params == 82_912
    assert count_parameters(MiniSeg(2, 3, 2, aux=False)) == 82_666  # official MiniSeg(aux=False)
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert isinstance(out, SegOutput) and len(out.aux) == 3
    assert all(a.shape == (2, 2, 32, 32) for a in [out.logits, *out.aux])
    assert type(model.eval()(torch.randn(1, 3, 32, 32))) is torch.Tensor


def test_ahsp_attention_reweights_each_branch_and_needs_quarters() -> None:
    block = AHSP(2, 8, 8).eval()
    assert [b.dilation[0] for b in block.branches] == [1, 2, 4, 8]
    assert block.attention.out_channels == 4 and block.attention.groups == 4
    assert block(torch.randn(1, 8, 9, 9)).shape == (1, 8, 9, 9)
    assert AHSP(3, 8, 8, stride=2)(torch.randn(2, 8, 2, 2, 2)).shape == (2, 8, 1, 1, 1)
    with pytest.raises(MedsegError, match="multiple of 4"):
        AHSP(2, 8, 6)


# ---------------------------------------------------------------- CE-Net


def test_cenet_count_is_the_official_layout() -> None:
    """ResNet-34 trunk + DAC + RMP + decoder blocks + head, counted layer by layer from CE_Net_."""
    def decoder(cin: int, cout: int) -> int:
        mid = cin // 4
        return (_conv_params(cin, mid, 1) + 2 * mid + _conv_params(mid, mid, 3) + 2 * mid
                + _conv_params(mid, cout, 1) + 2 * cout)

    dac = 3 * _conv_params(512, 512, 3) + _conv_params(512, 512, 1)
    rmp = _conv_params(512, 1, 1)
    head = _conv_params(64, 32, 4) + _conv_params(32, 32, 3) + _conv_params(32, 1, 3)
    expected = (21_284_672 + dac + rmp + decoder(516, 256) + decoder(256, 128) + decoder(128, 64)
                + decoder(64, 64) + head)
    (reference,) = get_entry("cenet").references
    with torch.device("meta"):
        model = create_model("cenet", **reference.options)
    assert count_parameters(model) == expected == reference.params


def test_cenet_rmp_needs_six_at_the_bottleneck() -> None:
    model = CENet(2, 3, 1, encoder="resnet18", encoder_options={"widths": (8, 8, 8, 8), "stem_width": 8},
                  head_channels=4).eval()
    assert model(torch.randn(1, 3, 192, 192)).shape == (1, 1, 192, 192)
    with pytest.raises(MedsegError, match="RMP needs"):
        model(torch.randn(1, 3, 160, 160))


# ---------------------------------------------------------------- 3D-only models and the residual U-Net


@pytest.mark.parametrize("cls", [DenseVoxelNet, SkipDenseNet3D, FCN3D])
def test_3d_only_models_refuse_2d(cls: type) -> None:
    with pytest.raises(MedsegError, match="3D only"):
        cls(2, 1, 2)
    name = {DenseVoxelNet: "densevoxelnet", SkipDenseNet3D: "skipdensenet3d", FCN3D: "fcn3d"}[cls]
    with pytest.raises(MedsegError, match="supports spatial_dims 3"):
        create_model(name, spatial_dims=2)


def test_densevoxelnet_one_downsampling_and_aux() -> None:
    model = DenseVoxelNet(3, 1, 2, stem_channels=4, growth_rate=2, layers_per_block=3, up_channels=4)
    assert model.stem.stride == (2, 2, 2)
    assert model.block1.out_channels == 4 + 3 * 2
    out = model.train()(torch.randn(2, 1, 6, 8, 10))
    assert isinstance(out, SegOutput) and out.logits.shape == out.aux[0].shape == (2, 2, 6, 8, 10)


def test_skipdensenet_has_a_skip_from_every_block() -> None:
    model = SkipDenseNet3D(3, 1, 2, stem_channels=4, growth_rate=2, block_layers=(1, 1, 1), skip_channels=3)
    assert len(model.skips) == len(model.blocks) == 3
    assert model.head.conv.in_channels == 9
    seen = []
    for skip in model.skips:
        skip.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[2:])))
    assert model.eval()(torch.randn(1, 1, 8, 8, 4)).shape == (1, 2, 8, 8, 4)
    assert seen == [(8, 8, 4)] * 3  # every block brought back to full resolution


def test_residual_unet_sums_skips_and_defaults_to_3d() -> None:
    model = create_model("residual_unet3d", features=2, depth=2)
    assert isinstance(model, ResidualUNet) and model.spatial_dims == 3
    assert [up.out_channels for up in model.ups] == [4, 2]
    # summation skips: the up-path level sees the skip's width, not twice it (concatenation)
    assert [lvl[0].conv1.in_channels for lvl in model.up_levels] == [4, 2]
    assert model.eval()(torch.randn(1, 1, 8, 8, 8)).shape == (1, 1, 8, 8, 8)
    assert create_model("residual_unet3d", spatial_dims=2, features=2, depth=2).spatial_dims == 2


def test_fcn3d_scores_pool3_pool4_and_fc7() -> None:
    model = FCN3D(3, 1, 3, encoder_options={"widths": (2, 2, 4, 4, 4), "convs": (1, 1, 1, 1, 1)},
                  fc_channels=4, dropout=0.0).eval()
    widths = (model.score_pool3.in_channels, model.score_pool4.in_channels, model.score_fr.in_channels)
    assert widths == (4, 4, 4)
    assert model.up8.stride == (8, 8, 8)
    assert model(torch.randn(1, 1, 32, 32, 64)).shape == (1, 3, 32, 32, 64)
