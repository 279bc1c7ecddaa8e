"""Cross-entropy, weighted CE, BCE, balanced BCE and focal loss: hand-computed values and torch's CE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import MedsegError
from medseg.losses import create_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# one binary image [1, 1, 2, 2]: logits and target, element by element
LOGITS = [0.0, 2.0, -1.0, 3.0]
TARGET = [1.0, 0.0, 0.0, 1.0]


def _binary(logits=LOGITS, target=TARGET, dims: int = 2):
    shape = (1, 1, 2, 2) if dims == 2 else (1, 1, 1, 2, 2)
    return torch.tensor(logits).view(shape), torch.tensor(target).view(shape)


def _bce_terms(beta: float = 1.0, logits=LOGITS, target=TARGET) -> list[float]:
    """-(β t log σ(x) + (1 - t) log(1 - σ(x))) = β t softplus(-x) + (1 - t) softplus(x)."""
    return [beta * t * softplus(-x) + (1 - t) * softplus(x) for x, t in zip(logits, target, strict=True)]


@pytest.mark.parametrize("dims", [2, 3])
def test_bce_hand_computed(dims: int) -> None:
    x, t = _binary(dims=dims)
    expected = sum(_bce_terms()) / 4  # (ln 2 + ln(1+e²) + ln(1+e⁻¹) + ln(1+e⁻³)) / 4
    assert expected == pytest.approx(0.795481, abs=1e-6)
    assert float(create_loss("bce")(x, t)) == pytest.approx(expected, rel=1e-6)
    assert float(create_loss("ce", mode="binary")(x, t)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_balanced_bce_hand_computed(dims: int) -> None:
    x, t = _binary(dims=dims)
    loss = create_loss("balanced_bce", beta=3.0)(x, t)
    assert float(loss) == pytest.approx(sum(_bce_terms(3.0)) / 4, rel=1e-6)
    assert float(loss) == pytest.approx(1.1663485, abs=1e-6)


def test_balanced_bce_beta_above_one_penalises_false_negatives_more() -> None:
    x = torch.tensor([-2.0, -2.0, -2.0, -2.0]).view(1, 1, 2, 2)  # predicts background everywhere
    t = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)  # one missed positive: a false negative
    low, high = (float(create_loss("balanced_bce", beta=b)(x, t)) for b in (1.0, 4.0))
    assert high > low
    assert high - low == pytest.approx(3.0 * softplus(2.0) / 4, rel=1e-6)


def test_balanced_bce_auto_and_log_beta() -> None:
    target = [1.0, 0.0, 0.0, 0.0]
    x, t = _binary(target=target)
    auto = create_loss("balanced_bce", beta="auto")(x, t)  # n_neg / n_pos = 3
    assert float(auto) == pytest.approx(sum(_bce_terms(3.0, target=target)) / 4, rel=1e-6)
    log = create_loss("balanced_bce", beta="log")(x, t)  # ConResNet: ln(N / (Σ t + 1)) = ln 2
    assert float(log) == pytest.approx(sum(_bce_terms(math.log(2.0), target=target)) / 4, rel=1e-6)


def test_weighted_ce_auto_weights_hand_computed() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 3.0, -1.0]]).view(1, 2, 1, 3)  # C = 2, three voxels
    labels = torch.tensor([0, 1, 1]).view(1, 1, 3)
    nll = [-F.log_softmax(logits[0, :, 0, i], 0)[int(labels[0, 0, i])].item() for i in range(3)]
    w0, w1 = 3 / (2 * 1), 3 / (2 * 2)  # N / (C n_c)
    expected = (w0 * nll[0] + w1 * nll[1] + w1 * nll[2]) / (w0 + 2 * w1)
    assert float(create_loss("wce")(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_weighted_ce_binary_auto_weights_hand_computed() -> None:
    target = [1.0, 0.0, 0.0, 0.0]
    x, t = _binary(target=target)
    w_pos, w_neg = 4 / (2 * 1), 4 / (2 * 3)
    pairs = zip(_bce_terms(target=target), target, strict=True)
    terms = [(w_pos if tv else w_neg) * term for term, tv in pairs]
    assert float(create_loss("wce", mode="binary")(x, t)) == pytest.approx(sum(terms) / 4, rel=1e-6)


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
@pytest.mark.parametrize("options", [{}, {"class_weights": [0.3, 1.0, 2.5]}, {"label_smoothing": 0.2},
                                     {"class_weights": [0.3, 1.0, 2.5], "label_smoothing": 0.1,
                                      "ignore_index": 255}])
def test_ce_matches_torch(spatial: tuple[int, ...], options: dict) -> None:
    """``ce`` always, and ``wce`` when its weights are given (without them it computes its own)."""
    logits = torch.randn(2, 3, *spatial)
    labels = torch.randint(0, 3, (2, *spatial))
    if "ignore_index" in options:
        labels[0, 0] = 255
    weight = torch.tensor(options["class_weights"]) if "class_weights" in options else None
    theirs = F.cross_entropy(logits, labels, weight=weight, ignore_index=options.get("ignore_index", -100),
                             label_smoothing=options.get("label_smoothing", 0.0))
    for name in ("ce", "wce") if weight is not None else ("ce",):
        ours = create_loss(name, **options)(logits, labels.unsqueeze(1))
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"class_weights": [0.3, 1.0, 2.5], "label_smoothing": 0.1}])
def test_ce_with_one_hot_targets_equals_ce_with_labels(options: dict) -> None:
    logits, labels = torch.randn(2, 3, 4, 5, 6), torch.randint(0, 3, (2, 4, 5, 6))
    onehot = F.one_hot(labels, 3).movedim(-1, 1).float()
    loss = create_loss("ce", **options)
    torch.testing.assert_close(loss(logits, onehot), loss(logits, labels))


def test_bce_label_smoothing_and_ignore_match_torch() -> None:
    logits = torch.randn(2, 3, 5, 6)
    target = (torch.rand(2, 3, 5, 6) > 0.5).float()
    target[:, :, 0] = -1
    valid = target != -1
    ours = create_loss("ce", mode="multilabel", label_smoothing=0.2, ignore_index=-1)(logits, target)
    smoothed = target * 0.8 + 0.1
    theirs = F.binary_cross_entropy_with_logits(logits[valid], smoothed[valid])
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("mode,channels", [("binary", 1), ("multiclass", 3), ("multilabel", 2)])
def test_focal_with_gamma_zero_is_cross_entropy(mode: str, channels: int) -> None:
    logits = torch.randn(2, channels, 4, 5, 3)
    if mode == "multiclass":
        target = torch.randint(0, 3, (2, 4, 5, 3))
    else:
        target = torch.rand(2, channels, 4, 5, 3) > 0.5
    focal = create_loss("focal", mode=mode, gamma=0.0)(logits, target)
    torch.testing.assert_close(focal, create_loss("ce", mode=mode)(logits, target))


def test_focal_hand_computed_binary() -> None:
    x, t = _binary()
    gamma, alpha = 2.0, 0.25
    expected = 0.0
    for xv, tv in zip(LOGITS, TARGET, strict=True):
        p = 1 / (1 + math.exp(-xv))
        p_t, a_t = (p, alpha) if tv else (1 - p, 1 - alpha)
        expected += -a_t * (1 - p_t) ** gamma * math.log(p_t)
    loss = create_loss("focal", gamma=gamma, alpha=alpha)(x, t)
    assert float(loss) == pytest.approx(expected / 4, rel=1e-6)


def test_pixel_loss_errors() -> None:
    with pytest.raises(MedsegError, match="class_weights"):
        create_loss("ce", class_weights=[1.0, 2.0])(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4).long())
    with pytest.raises(MedsegError, match="labels must lie"):
        create_loss("ce")(torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 3))
    with pytest.raises(MedsegError, match="beta"):
        create_loss("balanced_bce", beta="often")
    with pytest.raises(MedsegError, match="does not match"):
        create_loss("bce")(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
