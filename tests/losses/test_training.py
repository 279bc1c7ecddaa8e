"""Every registered loss, in every mode, 2D and 3D: it decreases under a few optimisation steps, and its
gradients stay finite with empty targets (absent classes), a single voxel and fully ignored targets."""

from __future__ import annotations

import pytest
import torch

from medseg.losses import create_loss, list_losses

MODES = {"binary": 1, "multiclass": 3, "multilabel": 2}
SIZES = {2: (12, 12), 3: (6, 6, 6)}
OPTIONS = {name: {"random_features": True, "size": None} for name in ("lossnet", "m2snet")}
"""Options a loss needs without files (LossNet's VGG-16 weights); no resizing to 224 keeps the test fast."""
TWO_D_ONLY = {"lossnet", "m2snet"}  # VGG-16 features of 2D images


def _build(name: str, mode: str, spatial_dims: int, **options: object) -> torch.nn.Module:
    if spatial_dims == 3 and name in TWO_D_ONLY:
        pytest.skip(f"{name} is 2D only")
    return create_loss(name, mode=mode, **OPTIONS.get(name, {}), **options)


def _target(mode: str, spatial: tuple[int, ...], fill: str = "objects") -> torch.Tensor:
    channels = MODES[mode]
    if mode == "multiclass":
        labels = torch.zeros(2, *spatial, dtype=torch.long)
        if fill == "objects":
            labels[:, 1:4, 1:4] = 1
            labels[:, 4:, 4:] = 2
        elif fill == "single":
            labels[(0,) + (2,) * len(spatial)] = 1
        return labels
    target = torch.zeros(2, channels, *spatial)
    if fill == "objects":
        target[:, :, 2:5, 1:5] = 1
        target[:, -1, 3:] = 1
    elif fill == "single":
        target[(0, 0) + (2,) * len(spatial)] = 1
    return target


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list_losses())
def test_loss_decreases_when_optimised(name: str, mode: str, spatial_dims: int) -> None:
    spatial = SIZES[spatial_dims]
    logits = (0.1 * torch.randn(2, MODES[mode], *spatial)).requires_grad_()
    target = _target(mode, spatial)
    loss_fn = _build(name, mode, spatial_dims)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    values = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        optimiser.step()
        values.append(loss.item())
    assert values[-1] < values[0] - 1e-3, values


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("fill", ["empty", "single", "ignored"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list_losses())
def test_gradients_finite_with_empty_targets(name: str, mode: str, fill: str, spatial_dims: int) -> None:
    spatial = SIZES[spatial_dims]
    logits = (3 * torch.randn(2, MODES[mode], *spatial)).requires_grad_()
    target = _target(mode, spatial, "objects" if fill == "ignored" else fill)
    options = {}
    if fill == "ignored":
        target = torch.full_like(target, 255)
        options["ignore_index"] = 255
    loss = _build(name, mode, spatial_dims, **options)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    if fill == "ignored":  # nothing counts: no gradient reaches the logits
        assert not logits.grad.abs().gt(1e-6).any()
