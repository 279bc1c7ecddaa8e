"""RoIAlign against an explicit per-bin average of bilinear samples (Python loops), 2D and 3D."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import MedsegError
from medseg.ops import LevelMapper, MultiScaleRoIAlign, roi_align


def bilinear_loop(image: list, coords: list[float], extents: list[int]) -> float:
    """One sample of ``image`` (nested lists, axis order as ``extents``) with the ROIAlign border rule."""
    if any(c < -1.0 or c > e for c, e in zip(coords, extents, strict=True)):
        return 0.0
    lows, highs, fracs = [], [], []
    for c, e in zip(coords, extents, strict=True):
        c = max(c, 0.0)
        low = int(math.floor(c))
        if low >= e - 1:
            low = high = e - 1
            c = float(low)
        else:
            high = low + 1
        lows.append(low)
        highs.append(high)
        fracs.append(c - low)
    total = 0.0
    for corner in range(2 ** len(coords)):
        w, value = 1.0, image
        for a in range(len(coords)):
            hi = (corner >> a) & 1
            w *= fracs[a] if hi else 1 - fracs[a]
            value = value[highs[a] if hi else lows[a]]
        total += w * value
    return total


def roi_align_loop(features: torch.Tensor, rois: torch.Tensor, size: int, scale: float, ratio: int,
                   aligned: bool) -> torch.Tensor:
    d = features.dim() - 2
    extents = list(features.shape[2:])
    out = torch.zeros(rois.shape[0], features.shape[1], *[size] * d, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for r, roi in enumerate(rois.tolist()):
        b = int(roi[0])
        # per tensor axis a: box column d - 1 - a
        starts = [roi[1 + d - 1 - a] * scale - offset for a in range(d)]
        lengths = [roi[1 + d + d - 1 - a] * scale - offset - starts[a] for a in range(d)]
        if not aligned:
            lengths = [max(v, 1.0) for v in lengths]
        for c in range(features.shape[1]):
            image = features[b, c].double().tolist()
            bins = [[]]
            for _ in range(d):
                bins = [p + [i] for p in bins for i in range(size)]
            for bin_index in bins:
                acc = 0.0
                samples = [[]]
                for _ in range(d):
                    samples = [p + [i] for p in samples for i in range(ratio)]
                for s in samples:
                    coords = [starts[a] + (bin_index[a] + (s[a] + 0.5) / ratio) * lengths[a] / size
                              for a in range(d)]
                    acc += bilinear_loop(image, coords, extents)
                out[(r, c, *bin_index)] = acc / ratio ** d
    return out


def random_rois(n: int, d: int, batch: int, extent: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, d, generator=g) * extent * 1.1 - extent * 0.2  # some outside the image
    side = torch.rand(n, d, generator=g) * extent * 0.7 + 0.2
    index = torch.randint(0, batch, (n, 1), generator=g).float()
    return torch.cat([index, low, low + side], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize(("ratio", "scale"), [(2, 1.0), (1, 0.5), (3, 0.25)])
def test_roi_align_2d_matches_the_loop(aligned: bool, ratio: int, scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 9, 11, generator=g)
    rois = random_rois(6, 2, 2, 11 / scale, seed=1)
    out = roi_align(features, rois, 4, scale, ratio, aligned)
    expected = roi_align_loop(features, rois, 4, scale, ratio, aligned)
    assert out.shape == (6, 3, 4, 4)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    assert expected.abs().sum() > 0


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_3d_matches_the_loop(aligned: bool) -> None:
    g = torch.Generator().manual_seed(2)
    features = torch.randn(2, 2, 5, 6, 7, generator=g)
    rois = random_rois(4, 3, 2, 6.0, seed=3)
    out = roi_align(features, rois, 3, 1.0, 2, aligned)
    expected = roi_align_loop(features, rois, 3, 1.0, 2, aligned)
    assert out.shape == (4, 2, 3, 3, 3)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_roi_align_is_differentiable_and_checks_input() -> None:
    features = torch.randn(1, 2, 8, 8, requires_grad=True)
    roi_align(features, torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]]), 2).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    with pytest.raises(MedsegError, match="rois"):
        roi_align(features, torch.zeros(1, 7), 2)
    assert roi_align(features, torch.zeros(0, 5), 2).shape == (0, 2, 2, 2)


def test_level_mapper_rule() -> None:
    mapper = LevelMapper(2, 5)
    sides = torch.tensor([10.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sides, sides], dim=1)
    expected = [min(max(math.floor(4 + math.log2(s / 224) + 1e-6), 2), 5) - 2 for s in sides.tolist()]
    assert mapper(boxes).tolist() == expected == [0, 0, 1, 2, 2, 3, 3]


def test_multiscale_roi_align_pools_each_box_from_its_level() -> None:
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, 3, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 460.0, 460.0]]),
             torch.tensor([[4.0, 4.0, 154.0, 154.0]])]
    out = MultiScaleRoIAlign(7)(feats, boxes, (64, 64))
    assert out.shape == (3, 3, 7, 7)
    # sqrt(area) 20 -> P2, 460 -> P5, 150 -> P3
    cases = [(0, 0, [0.0, 0, 0, 20, 20]), (1, 3, [0.0, 0, 0, 460, 460]), (2, 1, [1.0, 4, 4, 154, 154])]
    for row, level, roi in cases:
        expected = roi_align(feats[level], torch.tensor([roi]), 7, 1 / 2 ** (level + 2))[0]
        torch.testing.assert_close(out[row], expected)
