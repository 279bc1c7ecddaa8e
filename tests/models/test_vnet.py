"""V-Net: reference count, agreement with MONAI's topology, residual stages, input sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.errors import InputSizeError, MedsegError
from medseg.models.registry import count_parameters, create_model, get_entry
from medseg.models.vnet import ResidualConvs, VNet, VNetDownStage, VNetInputStage, VNetUpStage


def test_reference_count_and_prelu_slopes() -> None:
    (reference,) = get_entry("vnet").references
    with torch.device("meta"):  # counted, never run
        elu = create_model("vnet", **reference.options)
        prelu = create_model("vnet", **{**reference.options, "act": "prelu"})
    assert count_parameters(elu) == reference.params == 45_600_316
    slopes = sum(m.num_parameters for m in prelu.modules() if isinstance(m, nn.PReLU))
    assert count_parameters(prelu) - count_parameters(elu) == slopes == 3618


def test_same_function_as_monai_vnet() -> None:
    """With MONAI's settings (ELU, no conv bias) our network is MONAI's VNet, parameter for parameter."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    reference = monai_nets.VNet(spatial_dims=2, in_channels=1, out_channels=2, bias=False).eval()
    ours = VNet(2, 1, 2, act="elu", bias=False).eval()
    pairs = list(zip(reference.parameters(), ours.parameters(), strict=True))
    assert all(p.shape == q.shape for p, q in pairs)
    with torch.no_grad():
        for p, q in pairs:
            q.copy_(p)
        x = torch.randn(2, 1, 16, 16)
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_output_shape_and_kernels(spatial_dims: int) -> None:
    model = VNet(spatial_dims, 1, 3, features=2, down_convs=(1, 1, 1), up_convs=(1, 1, 1)).eval()
    assert model.input_multiple == 8
    x = torch.randn(1, 1, *(8,) * spatial_dims)
    assert model(x).shape == (1, 3, *x.shape[2:])
    kernels = {m.kernel_size for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))}
    assert kernels == {(5,) * spatial_dims, (2,) * spatial_dims, (1,) * spatial_dims}
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert {p.num_parameters for p in prelus} == {2, 4, 8, 16, 3}  # one slope per channel (the paper)


def test_convolutions_per_stage() -> None:
    model = VNet(3, 1, 2, features=2, down_convs=(2, 3, 3, 3), up_convs=(3, 3, 2, 1))
    assert [len(s.residual.convs) for s in model.down_stages] == [2, 3, 3, 3]
    assert [len(s.residual.convs) for s in model.up_stages] == [3, 3, 2, 1]
    widths = [s.residual.convs[0].conv.out_channels for s in (*model.down_stages, *model.up_stages)]
    assert widths == [4, 8, 16, 32, 32, 16, 8, 4]
    with pytest.raises(MedsegError, match="same non-zero length"):
        VNet(3, 1, 2, down_convs=(1, 2), up_convs=(1,))


def zero_convs(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("act", ["relu", "prelu"])
def test_residual_stage_adds_its_input(spatial_dims: int, act: str) -> None:
    """A stage whose convolutions output zero passes its input through the addition: act(0 + x)."""
    stage = ResidualConvs(spatial_dims, 4, 3, act=act).eval()
    x = torch.randn(2, 4, *(6,) * spatial_dims)
    changed = stage(x)
    zero_convs(stage.convs)
    assert torch.allclose(stage(x), stage.act(x))
    assert not torch.allclose(changed, stage.act(x))


def test_input_stage_repeats_the_image_over_its_channels() -> None:
    stage = VNetInputStage(2, 3, 8, act="none").eval()
    zero_convs(stage)
    x = torch.randn(1, 3, 5, 5)
    out = stage(x)
    assert out.shape == (1, 8, 5, 5)
    assert torch.equal(out, x[:, [0, 1, 2, 0, 1, 2, 0, 1]])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_down_and_up_stages(spatial_dims: int) -> None:
    down = VNetDownStage(spatial_dims, 4, 2).eval()
    up = VNetUpStage(spatial_dims, 8, 8, 1).eval()
    x = torch.randn(1, 4, *(8,) * spatial_dims)
    below = down(x)
    assert below.shape == (1, 8, *(4,) * spatial_dims)
    assert up(below, x).shape == (1, 8, *(8,) * spatial_dims)
    zero_convs(up.residual.convs)
    joined = torch.cat([up.up(below), x], dim=1)
    assert torch.allclose(up(below, x), up.residual.act(joined))


def test_dropout_on_the_two_coarsest_stages() -> None:
    model = VNet(3, 1, 1, features=2, dropout=0.2)
    dropped = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout3d)]
    assert dropped == ["down_stages.2.residual.dropout", "down_stages.3.residual.dropout",
                       "up_stages.0.residual.dropout", "up_stages.1.residual.dropout"]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sizes_not_a_multiple_of_16_are_refused(spatial_dims: int) -> None:
    model = VNet(spatial_dims, 1, 1, features=2)
    x = torch.randn(1, 1, *(16,) * (spatial_dims - 1), 40)
    with pytest.raises(InputSizeError, match="multiple of 16.*32 or 48"):
        model(x)
