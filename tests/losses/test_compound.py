"""Exponential logarithmic and combo losses on tiny inputs, Dice + CE, the registry and build_loss."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import MedsegError
from medseg.losses import (
    CompoundLoss,
    DeepSupervisionLoss,
    DiceCELoss,
    SegLoss,
    build_loss,
    create_loss,
    list_losses,
    register_loss,
    unregister_loss,
)

LOGITS = [0.0, 2.0, -1.0, 3.0]
TARGET = [1.0, 0.0, 0.0, 1.0]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _binary(dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, 1, 2, 2) if dims == 2 else (1, 1, 2, 1, 2)
    return torch.tensor(LOGITS).view(shape), torch.tensor(TARGET).view(shape)


def _binary_dice(smooth: float = 1.0) -> float:
    p = [sigmoid(x) for x in LOGITS]
    inter = sum(pi * t for pi, t in zip(p, TARGET, strict=True))
    return (2 * inter + smooth) / (sum(p) + sum(TARGET) + smooth)


@pytest.mark.parametrize("dims", [2, 3])
def test_exp_log_binary_hand_computed(dims: int) -> None:
    dice = _binary_dice()
    assert dice == pytest.approx(0.697060, abs=1e-6)
    w = math.sqrt(4 / 2)  # two positives, two negatives: ((2 + 2) / 2)^0.5 for both labels
    pairs = zip(LOGITS, TARGET, strict=True)
    nll = [-math.log(sigmoid(x)) if t else -math.log(1 - sigmoid(x)) for x, t in pairs]
    expected = 0.8 * (-math.log(dice)) ** 0.3 + 0.2 * sum(w * v ** 0.3 for v in nll) / 4
    x, t = _binary(dims)
    assert float(create_loss("exp_log")(x, t)) == pytest.approx(expected, rel=1e-5)


def test_exp_log_multiclass_hand_computed() -> None:
    logits = [[1.0, 2.0, 0.5], [0.0, 3.0, -1.0]]  # C = 2 classes, three voxels
    labels = [0, 1, 1]
    probs = []
    for i in range(3):
        e = [math.exp(logits[c][i]) for c in range(2)]
        probs.append([v / sum(e) for v in e])
    dices = []
    for c in range(2):
        inter = sum(probs[i][c] for i in range(3) if labels[i] == c)
        dices.append((2 * inter + 1) / (sum(probs[i][c] for i in range(3)) + labels.count(c) + 1))
    weights = [math.sqrt(3 / 1), math.sqrt(3 / 2)]  # f_0 = 1, f_1 = 2
    dice_term = sum((-math.log(d)) ** 0.3 for d in dices) / 2
    cross_term = sum(weights[labels[i]] * (-math.log(probs[i][labels[i]])) ** 0.3 for i in range(3)) / 3
    expected = 0.8 * dice_term + 0.2 * cross_term
    loss = create_loss("exp_log", mode="multiclass")(torch.tensor(logits).view(1, 2, 1, 3),
                                                     torch.tensor(labels).view(1, 1, 3))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_exp_log_given_label_frequencies() -> None:
    x, t = _binary()
    same = create_loss("exp_log", label_frequencies=[0.5])(x, t)  # = the batch's frequencies here
    torch.testing.assert_close(same, create_loss("exp_log")(x, t))


@pytest.mark.parametrize("dims", [2, 3])
def test_combo_binary_hand_computed(dims: int) -> None:
    alpha, beta = 0.4, 0.7
    terms = [-(beta * t * math.log(sigmoid(x)) + (1 - beta) * (1 - t) * math.log(1 - sigmoid(x)))
             for x, t in zip(LOGITS, TARGET, strict=True)]
    expected = alpha * sum(terms) / 4 - (1 - alpha) * _binary_dice()
    x, t = _binary(dims)
    assert float(create_loss("combo", alpha=alpha, beta=beta)(x, t)) == pytest.approx(expected, rel=1e-5)


def test_dice_ce_is_the_sum_of_its_terms() -> None:
    logits, labels = torch.randn(2, 4, 6, 5, 4), torch.randint(0, 4, (2, 6, 5, 4))
    loss = DiceCELoss(lambda_dice=0.3, lambda_ce=2.0, ignore_index=None)
    expected = (0.3 * create_loss("dice", include_background=False)(logits, labels)
                + 2.0 * create_loss("ce")(logits, labels))
    torch.testing.assert_close(loss(logits, labels), expected)


REQUIRED = {"ce", "wce", "bce", "balanced_bce", "focal", "dice", "generalized_dice", "tversky",
            "focal_tversky", "jaccard", "boundary", "exp_log", "combo", "dice_ce", "structure"}


def test_registry_names_and_the_model_defaults() -> None:
    import medseg

    assert REQUIRED <= set(list_losses())
    for model in medseg.list_models():
        info = medseg.model_info(model)
        if info["task"] == "instance":  # detectors compute their own loss terms
            assert info["default_loss"] == "internal"
        else:
            assert info["default_loss"] in list_losses()


def test_register_loss_plugs_into_build_loss() -> None:
    @register_loss("test_mean_logit")
    class MeanLogit(SegLoss):
        def compute(self, logits, targets, extras):
            return logits.mean() * extras.get("scale", 1.0)

    try:
        loss = build_loss({"losses": [{"name": "test_mean_logit", "weight": 2.0}], "mode": "binary"})
        x = torch.ones(1, 1, 3, 3)
        assert float(loss(x, torch.zeros(1, 1, 3, 3), scale=3.0)) == pytest.approx(6.0)
        with pytest.raises(ValueError, match="twice"):
            register_loss("test_mean_logit")(MeanLogit)
    finally:
        unregister_loss("test_mean_logit")
    assert "test_mean_logit" not in list_losses()


def test_build_loss_compound_config() -> None:
    config = {"losses": [{"name": "dice", "weight": 1},
                         {"name": "ce", "weight": 0.5, "label_smoothing": 0.1}],
              "mode": "multiclass", "include_background": False}
    loss = build_loss(config)
    assert isinstance(loss, CompoundLoss)
    assert loss.terms["dice"].include_background is False and loss.terms["dice"].mode == "multiclass"
    logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    expected = (create_loss("dice", include_background=False)(logits, labels)
                + 0.5 * create_loss("ce", label_smoothing=0.1)(logits, labels))
    torch.testing.assert_close(loss(logits, labels), expected)
    assert set(loss.last_values) == {"dice", "ce"}
    loss.set_weight("ce", 0.0)
    dice = create_loss("dice", include_background=False)(logits, labels)
    torch.testing.assert_close(loss(logits, labels), dice)
    with pytest.raises(MedsegError, match="term"):
        loss.set_weight("focal", 1.0)


def test_build_loss_shortcuts_and_deep_supervision() -> None:
    assert isinstance(build_loss("dice_ce"), DiceCELoss)
    assert isinstance(build_loss({"losses": ["dice", "dice"]}), CompoundLoss)
    assert list(build_loss({"losses": ["dice", "dice"]}).terms) == ["dice", "dice_2"]
    ds = build_loss({"losses": [{"name": "dice_ce"}], "deep_supervision": True})
    assert isinstance(ds, DeepSupervisionLoss) and isinstance(ds.loss, DiceCELoss)
    ds = build_loss({"losses": ["dice"], "deep_supervision": {"weights": [1, 0.5], "resize": "output"}})
    assert ds.weights == [1.0, 0.5] and ds.resize == "output"


@pytest.mark.parametrize("config,message", [
    ({"losses": [{"name": "dise"}]}, "unknown loss 'dise'.*dice"),
    ({"losses": [{"name": "dice", "smooth": 1}]}, r"losses\[0\].*smooth.*allowed: .*smooth_nr"),
    ({"losses": [{"name": "dice"}], "reduction": "mean"}, "reduction.*allowed: losses, mode"),
    ({"losses": [{"name": "dice", "weight": -1}]}, r"losses\[0\].weight"),
    ({"losses": [{"weight": 1}]}, r"losses\[0\].*'name'"),
    ({"losses": []}, "non-empty"),
    ({"losses": ["dice"], "mode": "multi"}, "mode must be one of"),
    ({"losses": ["dice"], "deep_supervision": {"weight": [1]}},
     "deep_supervision.weight;.*allowed: deep_supervision.weights"),
    ({"losses": [{"name": "tversky", "alpha": -1}]}, r"losses\[0\].*alpha"),
])
def test_build_loss_errors_name_the_key(config: dict, message: str) -> None:
    with pytest.raises(MedsegError, match=message):
        build_loss(config)


def test_create_loss_errors() -> None:
    with pytest.raises(MedsegError, match="unknown loss 'qqqqqqqq'; known losses: .*dice_ce"):
        create_loss("qqqqqqqq")
    with pytest.raises(MedsegError, match="mode must be one of"):
        create_loss("dice", mode="regression")
    with pytest.raises(MedsegError, match="reduction"):
        create_loss("dice", reduction="median")
