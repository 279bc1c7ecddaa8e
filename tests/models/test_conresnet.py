"""Tests of ConResNet (Zhang et al. 2020): parameter counts, shapes, the input residual and the ablations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg import count_parameters, create_model, model_info
from medseg.errors import InputSizeError, MedsegError
from medseg.outputs import SegOutput

SMALL = {"widths": (8, 8, 16, 16)}


def small(in_channels: int = 2, num_classes: int = 3, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("conresnet", in_channels=in_channels, num_classes=num_classes, spatial_dims=3,
                        **{**SMALL, **options})


def test_parameter_counts_of_the_spec() -> None:
    with torch.device("meta"):
        brats = create_model("conresnet", in_channels=4, num_classes=3, spatial_dims=3)
        pancreas = create_model("conresnet", in_channels=1, num_classes=2, spatial_dims=3)
    assert count_parameters(brats) == 19_018_732
    assert count_parameters(pancreas) == 19_010_792
    # the spec's encoder (17,593,792) is the five stages, without the fusion GN-ReLU-Dropout-Conv
    encoder = count_parameters(brats.encoder) - count_parameters(brats.encoder.fusion)
    assert encoder == 17_593_792


def test_registry_metadata() -> None:
    info = model_info("conresnet")
    assert info["dims"] == [3] and info["default_loss"] == "conresnet" and info["input_multiple"] == 8


@pytest.mark.parametrize("size", [(8, 16, 24), (16, 8, 8)])
def test_train_and_eval_shapes(size: tuple[int, int, int]) -> None:
    model = small(in_channels=3, num_classes=2)
    x = torch.randn(2, 3, *size)
    out = model.train()(x)
    assert isinstance(out, SegOutput) and out.aux == []
    assert out.logits.shape == (2, 2, *size)
    residuals = out.extras["residual_logits"]
    assert len(residuals) == 3 and all(r.shape == (2, 2, *size) for r in residuals)
    logits = model.eval()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 2, *size)


def test_input_sizes_and_dims_are_checked() -> None:
    with pytest.raises(InputSizeError, match="multiple of 8"):
        small()(torch.randn(1, 2, 12, 16, 16))
    with pytest.raises(MedsegError, match="spatial_dims"):
        create_model("conresnet", in_channels=1, num_classes=1, spatial_dims=2)
    with pytest.raises(MedsegError, match="widths"):
        small(widths=(8, 8, 16))
    with pytest.raises(MedsegError, match="slice_axis"):
        small(slice_axis=3)


@pytest.mark.parametrize("axis", [0, 1])
def test_the_input_residual_is_computed_inside(axis: int) -> None:
    model = small(in_channels=2, slice_axis=axis).eval()
    seen = {}
    model.context4.res_in.register_forward_hook(lambda m, i, o: seen.__setitem__("res", i[0].detach()))
    x = torch.randn(1, 2, 16, 16, 24)
    model(x)
    dim = 2 + axis
    residual = torch.zeros_like(x)
    for s in range(1, x.shape[dim]):
        residual.select(dim, s).copy_((x.select(dim, s) - x.select(dim, s - 1)).abs())
    expected = F.interpolate(residual, size=(4, 4, 6), mode="trilinear", align_corners=True)
    assert torch.allclose(seen["res"], expected, atol=1e-6)


def test_ablation_switches_change_outputs_and_parameters() -> None:
    x = torch.randn(1, 2, 16, 16, 16)
    full = small().eval()
    no_res = small(context_residual=False).eval()
    no_att = small(context_attention=False).eval()
    # three 1x1 context convs (w1*w1 + w0*w0 + w0*w0 with widths 8, 8) disappear without residual mapping
    assert count_parameters(full) - count_parameters(no_res) == 3 * 8 * 8
    assert count_parameters(no_att) == count_parameters(full)
    no_att.load_state_dict(full.state_dict())
    out = full(x)
    assert not torch.allclose(out, no_att(x), atol=1e-4)
    assert not torch.allclose(out, no_res(x), atol=1e-4)


def test_slice_axis_changes_the_output() -> None:
    x = torch.randn(1, 2, 16, 16, 16)
    depth = small(slice_axis=0).eval()
    width = small(slice_axis=2).eval()
    width.load_state_dict(depth.state_dict())
    assert not torch.allclose(depth(x), width(x), atol=1e-4)


def test_single_channel_binary_and_gradients() -> None:
    model = small(in_channels=1, num_classes=1).train()
    out = model(torch.randn(2, 1, 16, 16, 16))
    loss = out.logits.mean() + sum(r.mean() for r in out.extras["residual_logits"])
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
