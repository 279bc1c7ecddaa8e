"""U-Net / 3D U-Net: reference counts, same and valid padding sizes, up-sampling modes, deep supervision."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from medseg.errors import InputSizeError, MedsegError
from medseg.models.registry import count_parameters, create_model, get_entry
from medseg.models.unet import ConcatSkip, UNet, center_crop
from medseg.outputs import SegOutput


def test_reference_counts_are_exact() -> None:
    """The spec's counts (valid 1->2, same 3->1, the UNet++ paper's 32-wide) are the unnormalised network."""
    references = get_entry("unet").references
    with torch.device("meta"):  # counted, never run
        counts = [count_parameters(create_model("unet", **r.options)) for r in references]
        with_bn = count_parameters(UNet(2, 1, 2, padding="valid", norm="batch"))
    assert counts == [r.params for r in references] == [31_030_658, 31_031_745, 7_759_521]
    assert with_bn != counts[0]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("upsample", ["transpose", "interpolate"])
def test_same_padding_keeps_the_input_size(spatial_dims: int, upsample: str) -> None:
    model = UNet(spatial_dims, 2, 3, depth=3, features=4, upsample=upsample).eval()
    size = (16,) * spatial_dims
    x = torch.randn(2, 2, *size)
    out = model(x)
    assert isinstance(out, Tensor)
    assert out.shape == (2, 3, *size)
    assert model.output_size(size) == size


def test_upsampling_modes_differ_in_parameters() -> None:
    transpose = UNet(2, 1, 1, features=8, upsample="transpose")
    interpolate = UNet(2, 1, 1, features=8, upsample="interpolate")
    # a 2x2 up-conv has 4 weights per channel pair, a 1x1 conv 1
    widths = [8, 16, 32, 64]
    weights = sum(2 * w * w for w in widths)
    assert count_parameters(transpose) - count_parameters(interpolate) == 3 * weights
    with pytest.raises(MedsegError, match="upsample"):
        UNet(2, 1, 1, upsample="pixelshuffle")


def test_valid_padding_follows_the_paper_size_rule() -> None:
    model = UNet(2, 1, 2, features=4, padding="valid")
    assert model.output_size((572, 572)) == (388, 388)
    assert model.smallest_valid_size() == 188
    assert model.valid_size(572) and not model.valid_size(574)
    x = torch.randn(1, 1, 188, 204)
    out = model.eval()(x)
    assert out.shape == (1, 2, *model.output_size((188, 204))) == (1, 2, 4, 20)


def test_valid_padding_3d_small() -> None:
    model = UNet(3, 1, 2, depth=2, features=2, padding="valid").eval()
    assert model.smallest_valid_size() == 44
    out = model(torch.randn(1, 1, 44, 44, 60))
    assert out.shape == (1, 2, 4, 4, 20)


def test_valid_padding_sees_no_border() -> None:
    """Without padding the network is shift-equivariant by multiples of 2 ** depth: the output of a
    window of the input is the matching window of the output of the whole input."""
    model = UNet(2, 1, 1, depth=1, features=2, padding="valid").eval()
    x = torch.randn(1, 1, 36, 20)
    whole = model(x)
    assert whole.shape[2:] == model.output_size((36, 20)) == (20, 4)
    window = model(x[:, :, 16:, :])
    assert window.shape[2:] == (4, 4)
    assert torch.allclose(window, whole[:, :, 16:, :], atol=1e-6)


def test_input_size_errors_name_the_sizes_that_work() -> None:
    same = UNet(2, 1, 1, features=4)
    with pytest.raises(InputSizeError, match="32 or 48"):
        same(torch.randn(1, 1, 40, 32))
    valid = UNet(2, 1, 1, features=4, padding="valid")
    assert valid.nearest_valid_sizes(200) == (188, 204)
    with pytest.raises(InputSizeError, match="188 or 204"):
        valid(torch.randn(1, 1, 200, 188))
    with pytest.raises(InputSizeError, match="188 or 204"):
        valid.output_size((200, 188))


def test_unet3d_alias_is_three_dimensional() -> None:
    model = create_model("unet3d", features=2, depth=3)
    assert model.spatial_dims == 3
    assert any(isinstance(m, nn.Conv3d) for m in model.modules())
    assert model.eval()(torch.randn(1, 1, 16, 16, 8)).shape == (1, 1, 16, 16, 8)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_outputs(spatial_dims: int) -> None:
    model = UNet(spatial_dims, 1, 2, depth=3, features=4, deep_supervision=True)
    x = torch.randn(2, 1, *(16,) * spatial_dims)
    out = model.train()(x)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 2, *x.shape[2:])
    assert len(out.aux) == 2 and all(a.shape == out.logits.shape for a in out.aux)
    eval_out = model.eval()(x)
    assert isinstance(eval_out, Tensor) and eval_out.shape == out.logits.shape
    assert isinstance(UNet(spatial_dims, 1, 2, depth=3, features=4).train()(x), Tensor)


def test_dropout_sits_at_the_end_of_the_contracting_path() -> None:
    model = UNet(2, 1, 1, depth=2, features=4, dropout=0.5)
    drops = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout2d)]
    assert drops == ["encoder.levels.2.1.1.drop"]
    x = torch.randn(2, 1, 16, 16)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_center_crop() -> None:
    x = torch.arange(36.0).view(1, 1, 6, 6)
    crop = center_crop(x, [2, 4])
    assert torch.equal(crop, x[:, :, 2:4, 1:5])
    assert torch.equal(center_crop(x, [6, 6]), x)


class AddSkip(nn.Module):
    """A skip combination that adds the cropped skip to the up-sampled feature."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels

    def forward(self, up: Tensor, skip: Tensor) -> Tensor:
        return up + center_crop(skip, list(up.shape[2:]))


def test_skip_factory_replaces_the_skip_combination() -> None:
    calls: list[tuple[int, int, int]] = []

    def factory(level: int, up_channels: int, skip_channels: int) -> nn.Module:
        calls.append((level, up_channels, skip_channels))
        return AddSkip(up_channels)

    model = UNet(2, 1, 1, depth=2, features=4, skip_factory=factory)
    assert sorted(calls) == [(0, 4, 4), (1, 8, 8)]
    assert not any(isinstance(m, ConcatSkip) for m in model.modules())
    concat = UNet(2, 1, 1, depth=2, features=4)
    # the first conv of each decoder level sees half the channels: 9 * (4 * 4 + 8 * 8) fewer weights
    assert count_parameters(concat) - count_parameters(model) == 9 * (4 * 4 + 8 * 8)
    assert model.eval()(torch.randn(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_valid_padding_exports() -> None:
    model = UNet(2, 1, 2, depth=1, features=2, padding="valid").eval()
    x = torch.randn(1, 1, 20, 20)
    program = torch.export.export(model, (x,))
    assert torch.allclose(program.module()(x), model(x))


def test_sdi_skip_option_shapes_and_widths() -> None:
    from medseg.blocks.sdi import SemanticDetailSkips
    from medseg.models.unet import UNet as _UNet

    for dims in (2, 3):
        model = _UNet(dims, 1, 2, depth=2, features=4, skip="sdi", sdi_channels=3).eval()
        assert isinstance(model.skips, SemanticDetailSkips)
        assert len(model.skips.infusion) == 2  # one SDI per skip level, none for the bottleneck
        x = torch.randn(1, 1, *[8] * dims)
        with torch.no_grad():
            assert model(x).shape == (1, 2, *[8] * dims)
        # the decoder's first conv sees up (4 or 8 channels) + the 3-channel SDI skip
        assert model.decoder.levels[-1].conv[0].conv.in_channels == 4 + 3


def test_concat_skip_is_the_default_and_bad_skip_raises() -> None:
    from medseg.errors import MedsegError
    from medseg.models.unet import UNet as _UNet

    assert _UNet(2, 1, 1, depth=2, features=4).skips is None
    with pytest.raises(MedsegError, match="skip"):
        _UNet(2, 1, 1, depth=2, features=4, skip="sum")


def test_anisotropic_pool_kernels_skip_the_thick_axis() -> None:
    """nnU-Net-style pool kernels: no pooling along the first axis at the first two steps, so 8 slices
    go through three steps (multiples (2, 8, 8)); each axis is checked against its own multiple."""
    model = UNet(3, 1, 2, features=4, pool_kernels=[[1, 2, 2], [1, 2, 2], [2, 2, 2]])
    assert model.depth == 3 and model.axis_multiples == [2, 8, 8] and model.input_multiple == 8
    pools = [level[0] for level in list(model.encoder.levels)[1:]]
    assert [tuple(p.kernel_size) for p in pools] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    features = model.encoder(torch.randn(1, 1, 8, 32, 32))
    assert [tuple(f.shape[2:]) for f in features] == [(8, 32, 32), (8, 16, 16), (8, 8, 8), (4, 4, 4)]
    assert model(torch.randn(1, 1, 6, 16, 24)).shape == (1, 2, 6, 16, 24)
    with pytest.raises(InputSizeError, match=r"multiples of \(2, 8, 8\)"):
        model(torch.randn(1, 1, 8, 12, 16))
    with pytest.raises(MedsegError, match="pool_kernels"):
        UNet(3, 1, 2, pool_kernels=[[1, 3, 2]])
