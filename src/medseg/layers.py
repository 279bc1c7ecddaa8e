"""Dimension-agnostic layer factories keyed by ``spatial_dims`` in {2, 3}.

One code path builds 2D and 3D networks: every block asks these factories for its
convolutions, normalisations, activations, pools, dropouts and up-samplers.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg.errors import MedsegError

SUPPORTED_DIMS = (2, 3)
NORMS = ("batch", "frozen_batch", "group", "instance", "instance_noaffine", "layer", "none")
ACTIVATIONS = ("relu", "leaky_relu", "prelu", "gelu", "elu", "none")
Padding = int | Literal["same", "valid"]


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise a clear error."""
    if spatial_dims != 2 and spatial_dims != 3:
        raise MedsegError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def _pick(spatial_dims: int, two: type, three: type) -> type:
    return two if check_spatial_dims(spatial_dims) == 2 else three


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the size of an odd kernel at stride 1."""
    if kernel_size % 2 == 0:
        raise MedsegError(f"'same' padding needs an odd kernel size, got {kernel_size}")
    return (kernel_size - 1) // 2 * dilation


def _resolve_padding(padding: Padding, kernel_size: int, dilation: int) -> int:
    if padding == "same":
        return same_padding(kernel_size, dilation)
    if padding == "valid":
        return 0
    return int(padding)


class WeightStandardizedConv(nn.Module):
    """Convolution with weight standardisation (Qiao et al. 2019, Eq. 5).

    Each output filter is normalised to zero mean and unit variance over its fan-in before
    the convolution; used with group norm for small-batch training (as in BiT / ResNet-GN-WS).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 0, dilation: int = 1, groups: int = 1,
                 bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = _pick(spatial_dims, nn.Conv2d, nn.Conv3d)(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        w = self.conv.weight
        dims = list(range(1, w.dim()))
        mean = w.mean(dim=dims, keepdim=True)
        var = w.var(dim=dims, keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + self.eps)
        return self.conv._conv_forward(x, w, self.conv.bias)


def conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
         padding: Padding = "same", dilation: int = 1, groups: int = 1, bias: bool = True,
         weight_standardized: bool = False) -> nn.Module:
    """A 2D/3D convolution; ``padding`` is an int, ``"same"`` (odd kernels) or ``"valid"``."""
    pad = _resolve_padding(padding, kernel_size, dilation)
    if weight_standardized:
        return WeightStandardizedConv(spatial_dims, in_channels, out_channels, kernel_size, stride, pad,
                                      dilation, groups, bias)
    cls = _pick(spatial_dims, nn.Conv2d, nn.Conv3d)
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=pad, dilation=dilation,
               groups=groups, bias=bias)


def conv_transpose(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 2,
                   stride: int = 2, padding: int = 0, output_padding: int = 0,
                   bias: bool = True) -> nn.Module:
    """A 2D/3D transposed convolution (default: the U-Net 2x2 up-convolution)."""
    cls = _pick(spatial_dims, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
               output_padding=output_padding, bias=bias)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channel axis at every position of a channels-first tensor."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    All four tensors are buffers (no parameters, never updated), as torchvision's ``FrozenBatchNorm2d`` in
    its detection backbones; the state-dict keys are BatchNorm's (``weight``, ``bias``, ``running_mean``,
    ``running_var``) so BN weight files load (their ``num_batches_tracked`` is dropped). 2D and 3D.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * scale.view(shape) + shift.view(shape)


def group_count(channels: int, requested: int) -> int:
    """The largest number of groups <= ``requested`` that divides ``channels``."""
    return math.gcd(channels, requested) if requested > 0 else 1


def norm(kind: str | None, spatial_dims: int, channels: int, num_groups: int = 8,
         affine: bool = True) -> nn.Module:
    """A normalisation layer: ``batch``, ``frozen_batch`` (:class:`FrozenBatchNorm`), ``group``,
    ``instance``, ``instance_noaffine`` (no scale and shift: MONAI's and nnU-Net's ``instance``),
    ``layer`` (channel-wise) or ``none``."""
    check_spatial_dims(spatial_dims)
    kind = (kind or "none").lower()
    if kind == "batch":
        return _pick(spatial_dims, nn.BatchNorm2d, nn.BatchNorm3d)(channels, affine=affine)
    if kind == "frozen_batch":
        return FrozenBatchNorm(channels)
    if kind == "instance":
        return _pick(spatial_dims, nn.InstanceNorm2d, nn.InstanceNorm3d)(channels, affine=affine)
    if kind == "instance_noaffine":
        return _pick(spatial_dims, nn.InstanceNorm2d, nn.InstanceNorm3d)(channels, affine=False)
    if kind == "group":
        return nn.GroupNorm(group_count(channels, num_groups), channels, affine=affine)
    if kind == "layer":
        return ChannelLayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise MedsegError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def activation(kind: str | None, channels: int = 1, inplace: bool = True,
               negative_slope: float = 0.01) -> nn.Module:
    """An activation: relu, leaky_relu, prelu (a slope per channel), gelu, elu or none.

    ``leaky_relu:0.1`` gives the slope in the name, so that model options and configs can set it
    (MONAI's BasicUNet uses 0.1, nnU-Net 0.01, the default).
    """
    kind = (kind or "none").lower()
    if kind.startswith("leaky_relu:"):
        try:
            negative_slope = float(kind.split(":", 1)[1])
        except ValueError:
            raise MedsegError(f"activation {kind!r}: the slope after 'leaky_relu:' must be a number") \
                from None
        kind = "leaky_relu"
    if kind == "relu":
        return nn.ReLU(inplace=inplace)
    if kind == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=inplace)
    if kind == "prelu":
        return nn.PReLU(channels)
    if kind == "gelu":
        return nn.GELU()
    if kind == "elu":
        return nn.ELU(inplace=inplace)
    if kind == "none":
        return nn.Identity()
    raise MedsegError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")


def max_pool(spatial_dims: int, kernel_size: int = 2, stride: int | None = None, padding: int = 0,
             return_indices: bool = False, ceil_mode: bool = False) -> nn.Module:
    """2D/3D max pooling (default: the 2x2 down-sampling of U-Net); ``ceil_mode`` keeps the partial
    window at an odd end (Caffe's pooling, FCN)."""
    cls = _pick(spatial_dims, nn.MaxPool2d, nn.MaxPool3d)
    return cls(kernel_size, stride=stride, padding=padding, return_indices=return_indices,
               ceil_mode=ceil_mode)


def max_unpool(spatial_dims: int, kernel_size: int = 2, stride: int | None = None) -> nn.Module:
    """2D/3D max unpooling: the inverse of :func:`max_pool` with ``return_indices`` (SegNet's decoder)."""
    cls = _pick(spatial_dims, nn.MaxUnpool2d, nn.MaxUnpool3d)
    return cls(kernel_size, stride=stride)


def avg_pool(spatial_dims: int, kernel_size: int = 2, stride: int | None = None, padding: int = 0,
             count_include_pad: bool = True) -> nn.Module:
    """2D/3D average pooling."""
    cls = _pick(spatial_dims, nn.AvgPool2d, nn.AvgPool3d)
    return cls(kernel_size, stride=stride, padding=padding, count_include_pad=count_include_pad)


def adaptive_avg_pool(spatial_dims: int, output_size: int = 1) -> nn.Module:
    """2D/3D adaptive average pooling (global pooling by default)."""
    return _pick(spatial_dims, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)(output_size)


def adaptive_max_pool(spatial_dims: int, output_size: int = 1) -> nn.Module:
    """2D/3D adaptive max pooling (global pooling by default)."""
    return _pick(spatial_dims, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)(output_size)


def dropout(spatial_dims: int, p: float, channelwise: bool = True) -> nn.Module:
    """Dropout: whole channels (Dropout2d/3d) when ``channelwise``, else element-wise; identity at p=0."""
    if p <= 0:
        return nn.Identity()
    if channelwise:
        return _pick(spatial_dims, nn.Dropout2d, nn.Dropout3d)(p)
    check_spatial_dims(spatial_dims)
    return nn.Dropout(p)


def interpolation_mode(spatial_dims: int, mode: str = "linear") -> str:
    """Map ``linear``/``cubic`` to the torch mode of the dimension (bilinear/trilinear, bicubic)."""
    check_spatial_dims(spatial_dims)
    if mode == "linear":
        return "bilinear" if spatial_dims == 2 else "trilinear"
    if mode == "cubic":
        if spatial_dims == 3:
            raise MedsegError("cubic interpolation exists only in 2D; use 'linear' in 3D")
        return "bicubic"
    if mode in ("nearest", "nearest-exact", "area"):
        return mode
    raise MedsegError(f"unknown interpolation mode '{mode}'; choose linear, cubic, nearest or area")


def upsample(spatial_dims: int, scale_factor: float = 2, mode: str = "linear",
             align_corners: bool | None = None) -> nn.Module:
    """An up-sampling layer; ``linear`` means bilinear in 2D and trilinear in 3D."""
    torch_mode = interpolation_mode(spatial_dims, mode)
    if torch_mode in ("nearest", "nearest-exact", "area"):
        align_corners = None
    elif align_corners is None:
        align_corners = False
    return nn.Upsample(scale_factor=scale_factor, mode=torch_mode, align_corners=align_corners)


def resize_to(x: Tensor, size: list[int], mode: str = "linear", align_corners: bool = False,
              antialias: bool = False) -> Tensor:
    """Resize an image or feature map ``[B, C, *spatial]`` to ``size``: the one image resize of the package
    (``linear``: bilinear/trilinear by the number of axes; ``x`` itself when it has that size already).

    ``antialias`` low-pass filters a 2D image that shrinks along any axis (torch antialiases bilinear
    only), as preprocessing and whole-image inference do. ``size`` may be a list or a ``torch.Size``;
    the annotation is ``list[int]`` for TorchScript. Labels: :func:`resize_labels`.
    """
    tracing = torch.jit.is_tracing()  # medseg export: keep sizes symbolic and the graph free of shortcuts
    if not tracing:
        size = [int(s) for s in size]
        if list(x.shape[2:]) == size:
            return x
    torch_mode = interpolation_mode(x.dim() - 2, mode)
    if torch_mode in ("nearest", "nearest-exact", "area"):
        return F.interpolate(x, size=list(size), mode=torch_mode)
    shrinking = False
    for axis in range(len(size)):
        shrinking = shrinking or size[axis] < x.shape[axis + 2]
    return F.interpolate(x, size=list(size), mode=torch_mode, align_corners=align_corners,
                         antialias=antialias and shrinking and torch_mode == "bilinear")


def resize_labels(labels: Tensor, size: list[int], has_channels: bool = True) -> Tensor:
    """Resize a label map or mask to ``size`` with nearest-neighbour sampling (``nearest-exact``: no new
    values), keeping its dtype and its form (``[B, C, *spatial]``, or ``[B, *spatial]`` when
    ``has_channels`` is False): the one label resize of the package (images: :func:`resize_to`)."""
    x = labels if has_channels else labels.unsqueeze(1)
    resized = F.interpolate(x.float(), size=[int(s) for s in size], mode="nearest-exact").to(labels.dtype)
    return resized if has_channels else resized[:, 0]


def center_crop(x: Tensor, size: list[int]) -> Tensor:
    """The centre of a ``[B, C, *spatial]`` tensor at spatial ``size`` (U-Net's "copy and crop", FC-DenseNet's
    transition up); a no-op at equal sizes."""
    for d in range(len(size)):
        start = (x.shape[d + 2] - size[d]) // 2
        x = x.narrow(d + 2, start, size[d])
    return x


def leading_crop(x: Tensor, size: list[int]) -> Tensor:
    """The first ``size[d]`` positions of every spatial axis: crops a map whose grid starts at the same
    origin (an up-sampled coarse map that overhangs its skip, FCN); a no-op at equal sizes."""
    for d in range(len(size)):
        x = x.narrow(d + 2, 0, size[d])
    return x


def axial_conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, axis: int,
               stride: int = 1, dilation: int = 1, groups: int = 1, bias: bool = True) -> nn.Module:
    """A 1D convolution along spatial ``axis`` (0 = first spatial axis): a ``k x 1`` / ``1 x k`` conv in 2D,
    ``k x 1 x 1``, ... in 3D, with 'same' padding along that axis (ENet's asymmetric convs, ERFNet's
    factorised ones)."""
    check_spatial_dims(spatial_dims)
    if not 0 <= axis < spatial_dims:
        raise MedsegError(f"axis must be in [0, {spatial_dims}), got {axis}")
    kernel = [1] * spatial_dims
    kernel[axis] = kernel_size
    pad = [0] * spatial_dims
    pad[axis] = same_padding(kernel_size, dilation)
    dil = [1] * spatial_dims
    dil[axis] = dilation
    cls = _pick(spatial_dims, nn.Conv2d, nn.Conv3d)
    return cls(in_channels, out_channels, tuple(kernel), stride=stride, padding=tuple(pad),
               dilation=tuple(dil), groups=groups, bias=bias)
