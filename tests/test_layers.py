from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import random_input as _input
from medseg import layers
from medseg.errors import MedsegError

DIMS = [2, 3]




@pytest.mark.parametrize(("spatial_dims", "conv", "transposed", "maxp", "avgp", "amax", "aavg", "drop"), [
    (2, nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d,
     nn.Dropout2d),
    (3, nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool3d,
     nn.Dropout3d),
])
def test_factories_return_the_class_of_the_dimension(spatial_dims: int, conv: type, transposed: type,
                                                     maxp: type, avgp: type, amax: type, aavg: type,
                                                     drop: type) -> None:
    assert type(layers.conv(spatial_dims, 2, 3)) is conv
    assert type(layers.conv_transpose(spatial_dims, 2, 3)) is transposed
    assert type(layers.max_pool(spatial_dims)) is maxp
    assert type(layers.avg_pool(spatial_dims)) is avgp
    assert type(layers.adaptive_max_pool(spatial_dims)) is amax
    assert type(layers.adaptive_avg_pool(spatial_dims)) is aavg
    assert type(layers.dropout(spatial_dims, 0.2)) is drop
    assert type(layers.dropout(spatial_dims, 0.2, channelwise=False)) is nn.Dropout
    assert type(layers.dropout(spatial_dims, 0.0)) is nn.Identity


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_norms_of_every_kind(spatial_dims: int) -> None:
    batch = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    instance = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
    assert type(layers.norm("batch", spatial_dims, 6)) is batch
    assert type(layers.norm("BATCH", spatial_dims, 6)) is batch
    assert type(layers.norm("instance", spatial_dims, 6)) is instance
    assert layers.norm("instance", spatial_dims, 6).affine
    plain = layers.norm("instance_noaffine", spatial_dims, 6)
    assert type(plain) is instance and not plain.affine and not list(plain.parameters())
    group = layers.norm("group", spatial_dims, 12, num_groups=8)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 4  # largest divisor of 12 <= 8
    assert isinstance(layers.norm("layer", spatial_dims, 6), layers.ChannelLayerNorm)
    assert isinstance(layers.norm("none", spatial_dims, 6), nn.Identity)
    assert isinstance(layers.norm(None, spatial_dims, 6), nn.Identity)
    x = _input(spatial_dims, 12)
    for kind in layers.NORMS:
        assert layers.norm(kind, spatial_dims, 12)(x).shape == x.shape


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_channel_layer_norm_normalises_each_position_over_channels(spatial_dims: int) -> None:
    x = _input(spatial_dims, 6) * 3 + 1
    y = layers.norm("layer", spatial_dims, 6)(x)
    torch.testing.assert_close(y.mean(1), torch.zeros_like(y.mean(1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones_like(y.mean(1)), atol=1e-3, rtol=0)


def test_bad_names_and_dims_raise_medseg_error() -> None:
    with pytest.raises(MedsegError):
        layers.conv(1, 2, 3)
    with pytest.raises(MedsegError):
        layers.conv(4, 2, 3)
    with pytest.raises(MedsegError):
        layers.norm("batch", 1, 3)
    with pytest.raises(MedsegError):
        layers.norm("weird", 2, 3)
    with pytest.raises(MedsegError):
        layers.activation("swishy")
    with pytest.raises(MedsegError):
        layers.max_pool(5)
    with pytest.raises(MedsegError):
        layers.interpolation_mode(3, "cubic")
    with pytest.raises(MedsegError):
        layers.interpolation_mode(2, "spline")
    with pytest.raises(MedsegError):
        layers.conv(2, 2, 3, kernel_size=4, padding="same")


def test_activations_of_every_kind() -> None:
    expected = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "gelu": nn.GELU,
                "elu": nn.ELU, "none": nn.Identity}
    assert set(expected) == set(layers.ACTIVATIONS)
    for name, cls in expected.items():
        assert type(layers.activation(name, 5)) is cls
    assert layers.activation("prelu", 5).weight.numel() == 5
    assert layers.activation("leaky_relu", negative_slope=0.2).negative_slope == 0.2
    assert layers.activation("leaky_relu:0.1").negative_slope == 0.1
    with pytest.raises(MedsegError, match="slope"):
        layers.activation("leaky_relu:steep")
    assert isinstance(layers.activation(None), nn.Identity)


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize(("kernel_size", "dilation"), [(1, 1), (3, 1), (3, 2), (5, 3), (7, 1)])
def test_same_padding_keeps_the_size(spatial_dims: int, kernel_size: int, dilation: int) -> None:
    conv = layers.conv(spatial_dims, 3, 2, kernel_size, dilation=dilation, padding="same")
    x = _input(spatial_dims, 3, size=9)
    assert conv(x).shape[2:] == x.shape[2:]
    valid = layers.conv(spatial_dims, 3, 2, kernel_size, dilation=dilation, padding="valid")
    valid_size = 19 - (kernel_size - 1) * dilation
    assert valid(_input(spatial_dims, 3, size=19)).shape[2:] == (valid_size,) * spatial_dims


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_conv_transpose_and_pools_change_size_by_two(spatial_dims: int) -> None:
    x = _input(spatial_dims, 4, size=6)
    assert layers.conv_transpose(spatial_dims, 4, 2)(x).shape == (2, 2, *([12] * spatial_dims))
    assert layers.max_pool(spatial_dims)(x).shape[2:] == (3,) * spatial_dims
    assert layers.avg_pool(spatial_dims)(x).shape[2:] == (3,) * spatial_dims
    assert layers.adaptive_avg_pool(spatial_dims)(x).shape[2:] == (1,) * spatial_dims
    torch.testing.assert_close(layers.adaptive_max_pool(spatial_dims)(x).flatten(1), x.flatten(2).amax(-1))


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_upsample_and_resize(spatial_dims: int) -> None:
    x = _input(spatial_dims, 2, size=4)
    up = layers.upsample(spatial_dims, 2)
    assert up.mode == ("bilinear" if spatial_dims == 2 else "trilinear") and up.align_corners is False
    assert up(x).shape[2:] == (8,) * spatial_dims
    nearest = layers.upsample(spatial_dims, 2, mode="nearest")
    assert nearest.align_corners is None
    torch.testing.assert_close(nearest(x)[(..., *([slice(None, None, 2)] * spatial_dims))], x)
    size = [5, 7, 3][:spatial_dims]
    assert layers.resize_to(x, size).shape[2:] == tuple(size)
    assert layers.resize_to(x, x.shape[2:]) is x
    assert layers.resize_to(x, size, mode="nearest").shape[2:] == tuple(size)
    assert layers.interpolation_mode(2, "cubic") == "bicubic"


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_weight_standardized_conv_standardises_each_filter(spatial_dims: int) -> None:
    conv = layers.conv(spatial_dims, 3, 5, 3, weight_standardized=True)
    assert isinstance(conv, layers.WeightStandardizedConv)
    with torch.no_grad():
        conv.conv.weight.mul_(7).add_(2)
    w = conv.conv.weight
    dims = list(range(1, w.dim()))
    std = torch.sqrt(w.var(dims, keepdim=True, unbiased=False) + conv.eps)
    standardised = (w - w.mean(dims, keepdim=True)) / std
    per_filter = standardised.flatten(1)
    torch.testing.assert_close(per_filter.mean(1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_filter.var(1, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)
    x = _input(spatial_dims, 3, size=6)
    conv_fn = F.conv2d if spatial_dims == 2 else F.conv3d
    torch.testing.assert_close(conv(x), conv_fn(x, standardised, conv.conv.bias, padding=1))
    plain = layers.conv(spatial_dims, 3, 5, 3)
    with torch.no_grad():
        plain.weight.copy_(standardised)
        plain.bias.copy_(conv.conv.bias)
    torch.testing.assert_close(conv(x), plain(x))
    # Rescaling and shifting a filter does not change the output.
    before = conv(x)
    with torch.no_grad():
        conv.conv.weight.mul_(3).add_(-1)
    torch.testing.assert_close(conv(x), before, atol=1e-4, rtol=1e-4)
    conv(x).sum().backward()
    assert torch.isfinite(conv.conv.weight.grad).all()


def test_group_count_and_same_padding() -> None:
    assert layers.group_count(32, 8) == 8
    assert layers.group_count(12, 8) == 4
    assert layers.group_count(7, 8) == 1
    assert layers.group_count(16, 0) == 1
    assert layers.same_padding(5) == 2 and layers.same_padding(3, dilation=4) == 4


def test_leading_and_center_crops() -> None:
    x = torch.arange(2 * 7 * 9, dtype=torch.float32).reshape(1, 2, 7, 9)
    assert torch.equal(layers.leading_crop(x, [5, 6]), x[:, :, :5, :6])
    assert torch.equal(layers.center_crop(x, [5, 6]), x[:, :, 1:6, 1:7])
    assert torch.equal(layers.leading_crop(x, [7, 9]), x)


def test_max_unpool_factory_inverts_max_pool_in_2d_and_3d() -> None:
    for dims in (2, 3):
        x = torch.rand(1, 2, *[4] * dims) + 1  # positive: the zeros put back never beat a maximum
        pooled, indices = layers.max_pool(dims, 2, return_indices=True)(x)
        restored = layers.max_unpool(dims, 2)(pooled, indices)
        assert restored.shape == x.shape
        assert torch.equal(layers.max_pool(dims, 2)(restored), pooled)


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_resize_to_antialiases_only_a_shrinking_2d_image(spatial_dims: int) -> None:
    x = _input(spatial_dims, 2, size=8)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    small, large = [5, 6, 4][:spatial_dims], [11, 9, 10][:spatial_dims]
    expected = F.interpolate(x, size=small, mode=mode, align_corners=False, antialias=spatial_dims == 2)
    torch.testing.assert_close(layers.resize_to(x, small, antialias=True), expected)
    if spatial_dims == 2:  # the antialiased and plain shrinks differ, so the first check can fail
        assert not torch.allclose(layers.resize_to(x, small), expected)
    torch.testing.assert_close(layers.resize_to(x, large, antialias=True),
                               F.interpolate(x, size=large, mode=mode, align_corners=False))
    torch.testing.assert_close(layers.resize_to(x, large, align_corners=True),
                               F.interpolate(x, size=large, mode=mode, align_corners=True))


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_resize_labels_keeps_values_dtype_and_form(spatial_dims: int) -> None:
    labels = torch.randint(0, 4, (2, 1, *([6] * spatial_dims)), dtype=torch.uint8)
    size = [9, 4, 5][:spatial_dims]
    out = layers.resize_labels(labels, size)
    assert out.shape == (2, 1, *size) and out.dtype == torch.uint8
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    expected = F.interpolate(labels.float(), size=size, mode="nearest-exact").to(torch.uint8)
    assert torch.equal(out, expected)
    flat = layers.resize_labels(labels[:, 0].long(), size, has_channels=False)
    assert flat.shape == (2, *size) and flat.dtype == torch.int64 and torch.equal(flat, expected[:, 0].long())
    up = layers.resize_labels(labels, [12] * spatial_dims)  # a 2x upsampling repeats every voxel
    assert torch.equal(up[(..., *([slice(None, None, 2)] * spatial_dims))], labels)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_resize_to_is_scriptable() -> None:
    scripted = torch.jit.script(layers.resize_to)
    x = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(scripted(x, [5, 5], "linear", False, True), layers.resize_to(x, [5, 5],
                                                                                               antialias=True))
