"""The PointRend wrapper: protocol, training output, adaptive subdivision (2D/3D), U-Net and M2SNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import medseg
from medseg.blocks.point_sampling import uncertainty
from medseg.errors import MedsegError
from medseg.losses import build_loss
from medseg.models.pointrend import PointRend, subdivision_sizes, wrap_pointrend
from medseg.models.registry import count_parameters
from medseg.models.unet import UNetPointRendBackbone
from medseg.outputs import SegOutput


class HalfResolution(nn.Module):
    """A toy :class:`CoarseAndFine` network: coarse logits and fine features at half the input size."""

    fine_channels = 6

    def __init__(self, in_channels: int = 2, num_classes: int = 3, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.features = conv(in_channels, self.fine_channels, 2, stride=2)
        self.logits = conv(self.fine_channels, num_classes, 1)
        self.num_classes = num_classes

    def coarse_and_fine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fine = self.features(x)
        return self.logits(fine), fine


def small_unet(spatial_dims: int = 2, num_classes: int = 2, **options) -> nn.Module:
    options = {"features": 4, "depth": 3, **options}
    return medseg.create_model("unet", in_channels=1, num_classes=num_classes, spatial_dims=spatial_dims,
                               **options)


def dense_points(model: PointRend, x: Tensor) -> Tensor:
    """The point head at every input pixel (voxel), computed with interpolation and a 1x1 conv per layer
    (not point sampling): what subdivision must give when every grid point is refined."""
    coarse, fine = model.backbone.coarse_and_fine(x)
    size = list(x.shape[2:])
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    fine_dense = F.interpolate(fine, size=size, mode=mode, align_corners=False).flatten(2)
    coarse_dense = F.interpolate(coarse, size=size, mode=mode, align_corners=False).flatten(2)
    h = torch.cat([fine_dense, coarse_dense], dim=1)
    head = model.point_head
    for fc in head.fcs:
        h = torch.relu(F.conv1d(h, fc.weight, fc.bias))
        if head.every_layer:
            h = torch.cat([h, coarse_dense], dim=1)
    return F.conv1d(h, head.predictor.weight, head.predictor.bias).view(x.shape[0], -1, *size)


def test_subdivision_sizes_double_and_land_on_the_input_size() -> None:
    assert subdivision_sizes([8, 8], [32, 32]) == [[16, 16], [32, 32]]
    assert subdivision_sizes([11, 8], [44, 30]) == [[22, 16], [44, 30]]  # not a power of 2
    assert subdivision_sizes([4, 4, 4], [16, 16, 8]) == [[8, 8, 8], [16, 16, 8]]
    assert subdivision_sizes([8, 8], [32, 32], steps=1) == [[16, 16]]
    assert subdivision_sizes([8, 8], [8, 8]) == []


@pytest.mark.parametrize("spatial_dims, size, every_layer", [(2, (32, 48), False), (2, (32, 48), True),
                                                             (3, (16, 16, 24), False)])
def test_subdivision_refining_every_point_equals_the_dense_point_head(spatial_dims: int, size: tuple,
                                                                      every_layer: bool) -> None:
    options = {"subdivision_points": 10**6, "every_layer": every_layer}
    model = wrap_pointrend(small_unet(spatial_dims, 3), options, num_classes=3).eval()
    with torch.no_grad():
        nn.init.normal_(model.point_head.predictor.weight, std=0.5)  # not the near-zero start
        x = torch.randn(2, 1, *size)
        out = model(x)
        dense = dense_points(model, x)
        coarse, _ = model.backbone.coarse_and_fine(x)
    assert isinstance(out, Tensor) and out.shape == (2, 3, *size)
    torch.testing.assert_close(out, dense, rtol=1e-4, atol=1e-5)
    upsampled = F.interpolate(coarse, size=list(size), mode="bilinear" if spatial_dims == 2 else "trilinear")
    assert not torch.allclose(out, upsampled, atol=1e-3)


def test_one_step_rewrites_exactly_the_most_uncertain_points() -> None:
    """Coarse at half the size: one x2 step; N points differ from the up-sampled coarse logits, and they are
    the N most uncertain of the up-sampled map."""
    n = 37
    model = PointRend(HalfResolution(), subdivision_points=n).eval()
    with torch.no_grad():
        nn.init.normal_(model.point_head.predictor.weight, std=0.5)
        x = torch.randn(2, 2, 12, 20)
        out = model(x)
        coarse, _ = model.backbone.coarse_and_fine(x)
    upsampled = F.interpolate(coarse, size=[12, 20], mode="bilinear", align_corners=False)
    changed = (out != upsampled).any(dim=1).flatten(1)
    assert (changed.sum(dim=1) == n).all()
    top = uncertainty(upsampled).flatten(1).topk(n, dim=1).indices
    assert changed.gather(1, top).all()


def test_fewer_steps_than_needed_end_with_a_resize() -> None:
    model = wrap_pointrend(small_unet(), {"steps": 1, "subdivision_points": 4}, num_classes=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 2, 32, 32)


@pytest.mark.parametrize("spatial_dims, size", [(2, (32, 64)), (3, (16, 16, 16))])
def test_training_output_and_every_parameter_gets_a_gradient(spatial_dims: int, size: tuple) -> None:
    """No unused parameters (DistributedDataParallel needs all of them): the U-Net's levels above stride 4
    and its final head are left out of the wrapped model."""
    model = wrap_pointrend(small_unet(spatial_dims, 3), {"points": 50}, num_classes=3).train()
    x = torch.randn(2, 1, *size)
    out = model(x)
    assert isinstance(out, SegOutput) and out.logits.shape == (2, 3, *size)
    assert out.extras["point_logits"].shape == (2, 3, 50)
    coords = out.extras["point_coords"]
    assert coords.shape == (2, 50, spatial_dims) and coords.min() >= 0 and coords.max() <= 1
    (out.logits.mean() + out.extras["point_logits"].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_default_training_points_follow_the_area_rule() -> None:
    model = wrap_pointrend(small_unet(), num_classes=2).train()
    assert model(torch.randn(1, 1, 128, 256)).extras["point_logits"].shape[-1] == 128  # 32768 / 256


def test_wrapped_unet_parameters() -> None:
    """The U-Net's own modules up to stride 4 (shared, not copied) + a 1x1 coarse head + the point head."""
    unet = small_unet(features=64, depth=4)
    model = wrap_pointrend(unet, num_classes=2)
    backbone = model.backbone
    assert isinstance(backbone, UNetPointRendBackbone) and backbone.fine_channels == 256
    assert backbone.encoder is unet.encoder and backbone.levels[0] is unet.decoder.levels[0]
    dropped = sum(count_parameters(m) for m in (*unet.decoder.levels[2:], unet.head))
    coarse_head = 256 * 2 + 2
    assert count_parameters(backbone) == count_parameters(unet) - dropped + coarse_head
    assert count_parameters(model.point_head) == 198_402
    assert count_parameters(model) == count_parameters(backbone) + 198_402


def test_m2snet_implements_the_protocol_and_keeps_its_output() -> None:
    small = medseg.model_info("m2snet")["small_options"]
    net = medseg.create_model("m2snet", in_channels=3, num_classes=1, **small).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        coarse, fine = net.coarse_and_fine(x)
        assert coarse.shape[2:] == fine.shape[2:] == (16, 16) and fine.shape[1] == net.fine_channels == 8
        torch.testing.assert_close(net(x), F.interpolate(coarse, size=[64, 64], mode="bilinear"))
        wrapped = wrap_pointrend(net, num_classes=1).eval()
        assert wrapped(x).shape == (1, 1, 64, 64)


def test_bad_models_and_options_are_clear_errors() -> None:
    with pytest.raises(MedsegError, match="coarse_and_fine"):
        PointRend(nn.Conv2d(1, 1, 1), num_classes=1)
    with pytest.raises(MedsegError, match="padding 'same'"):
        wrap_pointrend(small_unet(padding="valid", norm="none"), num_classes=2)
    with pytest.raises(MedsegError, match="unknown PointRend option"):
        wrap_pointrend(small_unet(), {"pionts": 3}, num_classes=2)
    with pytest.raises(MedsegError, match="num_classes"):
        wrap_pointrend(small_unet())
    with pytest.raises(medseg.errors.InputSizeError):
        wrap_pointrend(small_unet(), num_classes=2)(torch.randn(1, 1, 30, 32))


def test_wrapped_unet_learns_a_small_batch_with_the_point_loss() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 1, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    target = ((yy - 16) ** 2 + (xx - 14) ** 2 < 81).float().expand(4, 1, 32, 32)
    x = x + 2 * target  # a bright disc in noise
    model = wrap_pointrend(small_unet(num_classes=1), {"points": 128}, num_classes=1)
    loss_fn = build_loss({"losses": ["dice", "bce"], "mode": "binary", "pointrend": True})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    values = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert sum(values[-5:]) / 5 < 0.6 * sum(values[:5]) / 5
    model.eval()
    with torch.no_grad():
        dice = 2 * ((model(x) > 0) * target).sum() / ((model(x) > 0).sum() + target.sum())
    assert dice > 0.8
