"""The shared model test: every registered model, in every spatial_dims it supports.

Small instances (the registry's ``small_options``) check the output contract, gradients and that one
batch can be fitted; full-size instances are only built (on the ``meta`` device when possible) to
count their parameters against the references of the specs. Instance models (``task="instance"``, e.g.
Mask R-CNN) have their own forward contract and tests; only their parameter counts are checked here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import medseg
from medseg import layers
from medseg.models.base import smallest_valid_size
from medseg.outputs import SegOutput, main_logits

IN_CHANNELS, NUM_CLASSES, BATCH = 2, 3, 2
MIN_SIZE = {2: 32, 3: 16}
PARAMETER_TOLERANCE = 0.005
FIT_STEPS = 8

MODELS = medseg.list_models()
INFO = {name: medseg.model_info(name) for name in MODELS}
SEMANTIC = [name for name in MODELS if INFO[name]["task"] == "semantic"]
CASES = [pytest.param(name, dims, id=f"{name}-{dims}d") for name in SEMANTIC for dims in INFO[name]["dims"]]
EXPORT_CASES = [pytest.param(name, dims, id=f"{name}-{dims}d")
                for name in SEMANTIC if INFO[name]["exportable"] for dims in INFO[name]["dims"]]
REFERENCE_CASES = [pytest.param(name, i, id=f"{name}-ref{i}")
                   for name in MODELS for i in range(len(INFO[name]["references"]))]


def build_small(name: str, spatial_dims: int) -> nn.Module:
    torch.manual_seed(0)
    return medseg.create_model(name, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES,
                               spatial_dims=spatial_dims, **INFO[name]["small_options"])


def input_size(name: str, model: nn.Module, spatial_dims: int) -> int:
    """The smallest size >= 32 (2D) or >= 16 (3D) that the model takes."""
    return smallest_valid_size(model, MIN_SIZE[spatial_dims])


def small_case(name: str, spatial_dims: int, train: bool) -> tuple[nn.Module, Tensor, Tensor]:
    """A small model in train or eval mode, a fixed random batch ``[2, 2, *spatial]`` and integer
    targets ``[2, *spatial]``."""
    model = build_small(name, spatial_dims).train(train)
    size = input_size(name, model, spatial_dims)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, IN_CHANNELS, *[size] * spatial_dims, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (BATCH, *[size] * spatial_dims), generator=generator)
    return model, x, target


def segmentation_loss(output: Tensor | SegOutput, target: Tensor) -> Tensor:
    """Cross-entropy of the main logits plus that of each auxiliary map resized to the target."""
    maps = [output.logits, *output.aux] if isinstance(output, SegOutput) else [output]
    return sum(F.cross_entropy(layers.resize_to(m, list(target.shape[1:])), target) for m in maps)


def expected_shape(x: Tensor) -> tuple[int, ...]:
    return (x.shape[0], NUM_CLASSES, *x.shape[2:])


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_eval_forward_is_a_plain_tensor_at_input_size(name: str, spatial_dims: int) -> None:
    model, x, _ = small_case(name, spatial_dims, train=False)
    with torch.no_grad():
        out = model(x)
    assert type(out) is Tensor
    assert tuple(out.shape) == expected_shape(x)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_train_forward_gives_logits_and_aux_maps(name: str, spatial_dims: int) -> None:
    model, x, _ = small_case(name, spatial_dims, train=True)
    out = model(x)
    assert isinstance(out, Tensor | SegOutput)
    assert tuple(main_logits(out).shape) == expected_shape(x)
    if isinstance(out, SegOutput):
        for aux in out.aux:
            assert tuple(aux.shape[:2]) == (BATCH, NUM_CLASSES)
            assert aux.dim() == x.dim()


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_backward_gives_finite_gradients(name: str, spatial_dims: int) -> None:
    model, x, target = small_case(name, spatial_dims, train=True)
    segmentation_loss(model(x), target).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with_grad = [(n, p) for n, p in trainable if p.grad is not None]
    assert len(with_grad) >= 0.9 * len(trainable), \
        f"no gradient for {[n for n, p in trainable if p.grad is None]}"
    for param_name, p in with_grad:
        assert torch.isfinite(p.grad).all(), param_name
    assert any(p.grad.abs().sum() > 0 for _, p in with_grad)


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_fits_one_batch(name: str, spatial_dims: int) -> None:
    model, x, target = small_case(name, spatial_dims, train=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(FIT_STEPS):
        optimizer.zero_grad()
        loss = segmentation_loss(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = segmentation_loss(model(x), target).item()
    assert final < losses[0], f"loss did not decrease: {losses} then {final}"


def build_full_size(name: str, options: dict) -> nn.Module:
    """Build at full size without memory when the constructor allows it (parameters are only counted)."""
    try:
        with torch.device("meta"):
            return medseg.create_model(name, **options)
    except (RuntimeError, NotImplementedError):
        return medseg.create_model(name, **options)


@pytest.mark.parametrize(("name", "index"), REFERENCE_CASES)
def test_reference_parameter_count(name: str, index: int) -> None:
    reference = INFO[name]["references"][index]
    model = build_full_size(name, reference["options"])
    count = medseg.count_parameters(model)
    assert abs(count - reference["params"]) <= PARAMETER_TOLERANCE * reference["params"], (
        f"{name} {reference['options']}: {count:,} parameters, reference {reference['params']:,} "
        f"({reference['source']})")


@pytest.mark.parametrize(("name", "spatial_dims"), EXPORT_CASES)
def test_torch_export_matches_eager(name: str, spatial_dims: int) -> None:
    model, x, _ = small_case(name, spatial_dims, train=False)
    with torch.no_grad():
        eager = model(x)
        exported = torch.export.export(model, (x,))
        result = exported.module()(x)
    assert type(result) is Tensor
    torch.testing.assert_close(result, eager, atol=1e-4, rtol=1e-4)
