"""Model-specific tests of MultiResUNet (Ibtehaz & Rahman 2020)."""

from __future__ import annotations

import torch

from medseg.blocks.multires import MultiResBlock, ResPath, multires_widths
from medseg.models.registry import count_parameters, create_model


def _keras_trainable_count(in_channels: int, num_classes: int) -> int:
    """Trainable parameters of the official Keras MultiResUnet (nibtehaz/MultiResUNet), from its structure:
    conv2d_bn = conv without bias + batch norm without scale (beta only); plain batch norms have 2C."""
    total = 0

    def conv_bn(cin: int, cout: int, k: int) -> None:
        nonlocal total
        total += cin * cout * k * k + cout

    def mrb(cin: int, unet_width: int) -> int:
        nonlocal total
        a, b, c = multires_widths(unet_width)
        out = a + b + c
        conv_bn(cin, out, 1), conv_bn(cin, a, 3), conv_bn(a, b, 3), conv_bn(b, c, 3)
        total += 4 * out
        return out

    skips, cin = [], in_channels
    for level, length in enumerate((4, 3, 2, 1)):
        cin = mrb(cin, 32 * 2**level)
        for _ in range(length):
            conv_bn(cin, cin, 1), conv_bn(cin, cin, 3)
            total += 2 * cin
        skips.append(cin)
    cin = mrb(cin, 512)
    for level in reversed(range(4)):
        width = 32 * 2**level
        total += cin * width * 4 + width
        cin = mrb(width + skips[level], width)
    conv_bn(cin, num_classes, 1)
    return total


def test_count_against_the_official_keras_model() -> None:
    keras = _keras_trainable_count(3, 1)
    assert keras == 8_905_119
    model = create_model("multiresunet", in_channels=3, num_classes=1)
    scales = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    plain = sum(2 * b.out_channels for b in model.modules() if isinstance(b, MultiResBlock))
    plain += sum(u.norm.num_features for p in model.modules() if isinstance(p, ResPath) for u in p)
    conv_bn_scales = scales - plain
    # ours has the batch-norm scale where Keras' conv2d_bn has none: exactly that difference
    assert count_parameters(model) == keras + conv_bn_scales


def test_widths_and_res_path_lengths_follow_the_paper() -> None:
    assert multires_widths(32) == (8, 17, 26)  # 51 channels for U = 32
    model = create_model("multiresunet", in_channels=3, num_classes=1)
    assert [len(p) for p in model.res_paths] == [4, 3, 2, 1]
    assert [b.out_channels for b in model.encoder] == [51, 105, 212, 426, 853]


def test_3d_and_group_norm_leaky_relu() -> None:
    model = create_model("multiresunet", in_channels=1, num_classes=2, spatial_dims=3, features=4, depth=2,
                         norm="group", act="leaky_relu")
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in model.modules())
    assert model.eval()(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
