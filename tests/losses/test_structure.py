"""Structure loss (wBCE + wIoU) against a direct computation of the M2SNet / PraNet formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import MedsegError
from medseg.losses import create_loss, edge_weights


def direct_structure(probs: torch.Tensor, mask: torch.Tensor, kernel: int = 31) -> torch.Tensor:
    """The spec's formula written out: one pooling call, BCE from probabilities, per-sample/channel terms."""
    dims = mask.dim() - 2
    pad = [kernel // 2] * (2 * dims)
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    w = 1 + 5 * (pool(F.pad(mask, pad), kernel, stride=1) - mask).abs()
    axes = tuple(range(2, mask.dim()))
    bce = -(mask * probs.log() + (1 - mask) * (1 - probs).log())
    wbce = (w * bce).sum(axes) / w.sum(axes)
    inter = (probs * mask * w).sum(axes)
    union = ((probs + mask) * w).sum(axes)
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return wbce + wiou


def test_edge_weights_by_hand() -> None:
    mask = torch.zeros(1, 1, 40, 40)
    mask[0, 0, 20, 20] = 1
    w = edge_weights(mask)
    assert float(w[0, 0, 20, 20]) == pytest.approx(1 + 5 * 960 / 961)
    assert float(w[0, 0, 20, 35]) == pytest.approx(1 + 5 / 961)
    assert float(w[0, 0, 20, 36]) == 1.0
    torch.testing.assert_close(w, 1 + 5 * (F.avg_pool2d(mask, 31, 1, 15) - mask).abs())


@pytest.mark.parametrize("spatial", [(40, 36), (6, 9, 8)])
@pytest.mark.parametrize("mode,channels", [("binary", 1), ("multilabel", 2)])
def test_structure_matches_the_formula(spatial: tuple[int, ...], mode: str, channels: int) -> None:
    logits = 2 * torch.randn(2, channels, *spatial, dtype=torch.float64)
    mask = (torch.rand(2, channels, *spatial) > 0.7).double()
    ours = create_loss("structure", mode=mode)(logits, mask)
    torch.testing.assert_close(ours.double(), direct_structure(torch.sigmoid(logits), mask).mean(),
                               rtol=1e-5, atol=1e-6)


def test_structure_multiclass_is_one_vs_rest_on_softmax() -> None:
    logits = torch.randn(2, 3, 20, 24, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 20, 24))
    onehot = F.one_hot(labels, 3).movedim(-1, 1).double()
    per_class = direct_structure(torch.softmax(logits, 1), onehot, kernel=5)
    ours = create_loss("structure", kernel_size=5, include_background=False)(logits, labels)
    torch.testing.assert_close(ours.double(), per_class[:, 1:].mean(), rtol=1e-5, atol=1e-6)


def test_structure_kernel_per_axis_and_errors() -> None:
    logits, mask = torch.randn(1, 1, 4, 12, 12), (torch.rand(1, 1, 4, 12, 12) > 0.5).float()
    assert torch.isfinite(create_loss("structure", kernel_size=(3, 11, 11))(logits, mask))
    with pytest.raises(MedsegError, match="kernel_size"):
        create_loss("structure", kernel_size=4)(logits, mask)
