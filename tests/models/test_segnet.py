"""SegNet (medseg.models.segnet): the reference count, the mirrored decoder, unpooling with the encoder's
indices, odd sizes."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import medseg
from medseg.errors import InputSizeError, MedsegError
from medseg.models.segnet import SegNet

SMALL = medseg.model_info("segnet")["small_options"]


def test_reference_count_is_the_spec() -> None:
    with torch.device("meta"):
        model = medseg.create_model("segnet", in_channels=3, num_classes=11)
    assert medseg.count_parameters(model) == 29_449_355
    # the encoder is exactly vgg16_bn's convolutional part
    assert medseg.count_parameters(model.encoder) == 14_723_136


def test_decoder_mirrors_vgg16_bn() -> None:
    with torch.device("meta"):
        model = SegNet(2, 3, 11)
    convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)]
    widths = [(c.in_channels, c.out_channels) for c in convs]
    # conv5_3_D .. conv1_1_D of the official net (decoder of Fig. 2)
    assert widths == [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128), (128, 128),
                                         (128, 64), (64, 64), (64, 11)]
    norms = [m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 12  # every decoder conv but the classifier is conv-BN-ReLU
    assert isinstance(model.decoder[-1].convs[-1], nn.Conv2d)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unpooling_puts_values_at_the_encoder_maxima(spatial_dims: int) -> None:
    torch.manual_seed(0)
    model = SegNet(spatial_dims, 1, 2, **SMALL).eval()
    seen: dict[str, Tensor] = {}
    # the last decoder block unpools with the indices of the first encoder pool (relu1_2, full size)
    model.decoder[-1].unpool.register_forward_hook(lambda m, args, out: seen.update(pooled=args[0],
                                                                                    unpooled=out))
    model.encoder.register_forward_hook(lambda m, args, out: seen.update(finest=out[0]))
    size = (32, 35) if spatial_dims == 2 else (32, 32, 33)
    with torch.no_grad():
        model(torch.randn(1, 1, *size))
    finest, unpooled = seen["finest"], seen["unpooled"]
    assert unpooled.shape == finest.shape
    window = model.pool(finest)[0]
    for d in range(spatial_dims):  # each window's max over the window's positions
        window = window.repeat_interleave(2, dim=d + 2)
    inner = (slice(None), slice(None), *[slice(0, n) for n in window.shape[2:]])
    nonzero = unpooled != 0
    assert nonzero.any()
    # every unpooled value sits where relu1_2 has its window maximum ...
    assert (finest[inner] == window)[nonzero[inner]].all()
    # ... and the values are the decoder's, moved but not changed
    pooled = seen["pooled"]
    assert torch.equal(unpooled[nonzero].sort().values, pooled[pooled != 0].sort().values)
    assert not nonzero[..., -1].any()  # the odd last column (or slice) was dropped by the pool: zeros


def test_sizes_and_errors() -> None:
    model = SegNet(2, 1, 2, **SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 37, 61)).shape == (1, 2, 37, 61)
    with pytest.raises(InputSizeError, match="at least 32"):
        model(torch.randn(1, 1, 16, 64))
    with pytest.raises(MedsegError, match="VGG encoder"):
        SegNet(2, 1, 2, encoder="resnet18")
