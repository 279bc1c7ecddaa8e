"""Our losses against MONAI's on random inputs (2D and 3D, each mode), to 1e-5, with the settings mapped."""

from __future__ import annotations

import warnings

import pytest
import torch

monai_losses = pytest.importorskip("monai.losses")

from medseg.losses import build_loss, create_loss  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)
SHAPES = {2: (9, 11), 3: (5, 6, 7)}


def _inputs(mode: str, spatial_dims: int, channels: int = 3, batch: int = 2):
    """Logits and (our target, MONAI's target) for ``mode``; MONAI's multiclass target is ``[B, 1, ...]``."""
    spatial = SHAPES[spatial_dims]
    if mode == "binary":
        channels = 1
    logits = 2.0 * torch.randn(batch, channels, *spatial, dtype=torch.float64).float()
    if mode == "multiclass":
        labels = torch.randint(0, channels, (batch, *spatial))
        return logits, labels, labels.unsqueeze(1)
    target = (torch.rand(batch, channels, *spatial) > 0.6).float()
    return logits, target, target


def _act(mode: str) -> dict:
    return {"softmax": True, "to_onehot_y": True} if mode == "multiclass" else {"sigmoid": True}


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours.double(), theirs.double(), **TOL)


MODES = ["binary", "multiclass", "multilabel"]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", [
    {},
    {"squared": True},
    {"batch": True},
    {"include_background": False},
    {"smooth_nr": 0.0, "smooth_dr": 1e-6, "squared": True, "batch": True},
    {"smooth_nr": 1.0, "smooth_dr": 1.0},
])
def test_dice_matches_monai(mode: str, spatial_dims: int, options: dict) -> None:
    logits, target, monai_target = _inputs(mode, spatial_dims)
    ours = create_loss("dice", mode=mode, **options)(logits, target)
    mapped = {("squared_pred" if k == "squared" else k): v for k, v in options.items()}
    if mode != "multiclass":
        mapped.pop("include_background", None)  # no background channel in these modes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = monai_losses.DiceLoss(**_act(mode), **mapped)(logits, monai_target)
    _close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("squared", [False, True])
def test_jaccard_matches_monai_with_halved_smooth_terms(mode: str, spatial_dims: int, squared: bool) -> None:
    logits, target, monai_target = _inputs(mode, spatial_dims)
    ours = create_loss("jaccard", mode=mode, squared=squared, smooth_nr=0.5, smooth_dr=0.5)(logits, target)
    theirs = monai_losses.DiceLoss(**_act(mode), jaccard=True, squared_pred=squared, smooth_nr=1.0,
                                   smooth_dr=1.0)(logits, monai_target)
    _close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dice_ignore_index_matches_monai(spatial_dims: int) -> None:
    logits, labels, _ = _inputs("multiclass", spatial_dims)
    labels[:, :2] = 255
    ours = create_loss("dice", mode="multiclass", ignore_index=255)(logits, labels)
    monai_dice = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, ignore_index=255)
    theirs = monai_dice(logits, labels.unsqueeze(1))
    _close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", [{}, {"batch": True}, {"weight_type": "simple"},
                                     {"weight_type": "uniform", "include_background": False}])
def test_generalized_dice_matches_monai(mode: str, spatial_dims: int, options: dict) -> None:
    logits, target, monai_target = _inputs(mode, spatial_dims, channels=4)
    if mode == "multiclass":  # an absent class exercises the infinite-weight rule
        target[target == 3] = 2
        monai_target = target.unsqueeze(1)
    ours = create_loss("generalized_dice", mode=mode, **options)(logits, target)
    mapped = {("w_type" if k == "weight_type" else k): v for k, v in options.items()}
    if mode != "multiclass":
        mapped.pop("include_background", None)
    theirs = monai_losses.GeneralizedDiceLoss(**_act(mode), **mapped)(logits, monai_target)
    _close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", [{"alpha": 0.3, "beta": 0.7}, {"alpha": 0.5, "beta": 0.5, "batch": True},
                                     {"alpha": 0.8, "beta": 0.2, "include_background": False,
                                      "smooth_nr": 1.0, "smooth_dr": 1.0}])
def test_tversky_matches_monai(mode: str, spatial_dims: int, options: dict) -> None:
    logits, target, monai_target = _inputs(mode, spatial_dims)
    ours = create_loss("tversky", mode=mode, **options)(logits, target)
    mapped = dict(options)
    if mode != "multiclass":
        mapped.pop("include_background", None)
    theirs = monai_losses.TverskyLoss(**_act(mode), **mapped)(logits, monai_target)
    _close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tversky_half_half_equals_dice(spatial_dims: int) -> None:
    logits, target, _ = _inputs("multiclass", spatial_dims)
    tversky = create_loss("tversky", mode="multiclass", alpha=0.5, beta=0.5)(logits, target)
    _close(tversky, create_loss("dice", mode="multiclass")(logits, target))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("options", [{"gamma": 2.0}, {"gamma": 0.5, "alpha": 0.25}, {"gamma": 0.0}])
def test_sigmoid_focal_matches_monai(mode: str, spatial_dims: int, options: dict) -> None:
    logits, target, monai_target = _inputs(mode, spatial_dims)
    ours = create_loss("focal", mode=mode, **options)(logits, target)
    theirs = monai_losses.FocalLoss(**options)(logits, monai_target)
    _close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("options", [{"gamma": 2.0}, {"gamma": 1.0, "alpha": 0.25},
                                     {"gamma": 2.0, "alpha": [0.1, 0.5, 0.4]}])
def test_softmax_focal_matches_monai_times_classes(spatial_dims: int, options: dict) -> None:
    """MONAI averages the one-hot terms over voxels and classes; ours sums the classes of a voxel."""
    logits, target, monai_target = _inputs("multiclass", spatial_dims)
    ours = create_loss("focal", mode="multiclass", **options)(logits, target)
    theirs = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, **options)(logits, monai_target)
    _close(ours, logits.shape[1] * theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_softmax_focal_without_background_is_a_zero_background_alpha(spatial_dims: int) -> None:
    """MONAI's ``include_background=False`` re-normalises the softmax over the other channels; ours keeps
    the softmax over all classes and drops the background terms, i.e. MONAI's ``alpha=[0, 1, 1]``."""
    logits, target, monai_target = _inputs("multiclass", spatial_dims)
    ours = create_loss("focal", mode="multiclass", include_background=False)(logits, target)
    theirs = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, alpha=[0.0, 1.0, 1.0])(
        logits, monai_target)
    _close(ours, logits.shape[1] * theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", [{}, {"include_background": True, "batch": True},
                                     {"lambda_dice": 0.5, "lambda_ce": 2.0, "squared": True}])
def test_dice_ce_matches_monai(mode: str, spatial_dims: int, options: dict) -> None:
    logits, target, monai_target = _inputs(mode, spatial_dims)
    ours = create_loss("dice_ce", mode=mode, **options)(logits, target)
    mapped = {("squared_pred" if k == "squared" else k): v for k, v in options.items()}
    if mode == "multiclass":
        mapped.setdefault("include_background", False)  # our default: nnU-Net's, without the background
    else:
        mapped.pop("include_background", None)
    if mode == "multilabel":  # MONAI's CE branch would treat 3 channels as classes: compare Dice + BCE
        dice = monai_losses.DiceLoss(sigmoid=True, squared_pred=mapped.get("squared_pred", False),
                                     batch=mapped.get("batch", False))(logits, target)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        theirs = mapped.get("lambda_dice", 1.0) * dice + mapped.get("lambda_ce", 1.0) * bce
    else:
        theirs = monai_losses.DiceCELoss(**_act(mode), **mapped)(logits, monai_target)
    _close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dice_ce_label_smoothing_and_weights_match_monai(spatial_dims: int) -> None:
    logits, target, monai_target = _inputs("multiclass", spatial_dims)
    weights = [0.2, 1.0, 3.0]
    ours = create_loss("dice_ce", mode="multiclass", include_background=True, lambda_dice=0.0,
                       class_weights=weights, label_smoothing=0.1)(logits, target)
    theirs = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=0.0, label_smoothing=0.1,
                                     weight=torch.tensor(weights))(logits, monai_target)
    _close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dice_plus_focal_config_matches_monai_dice_focal(spatial_dims: int) -> None:
    logits, target, _ = _inputs("multilabel", spatial_dims)
    loss = build_loss({"mode": "multilabel", "losses": [{"name": "dice"}, {"name": "focal", "weight": 0.5}]})
    theirs = monai_losses.DiceFocalLoss(sigmoid=True, lambda_focal=0.5)(logits, target)
    _close(loss(logits, target), theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_boundary_matches_monai(mode: str, spatial_dims: int) -> None:
    logits, target, monai_target = _inputs(mode, spatial_dims)
    include = mode != "multiclass"
    ours = create_loss("boundary", mode=mode)(logits, target)
    theirs = monai_losses.BoundaryLoss(**_act(mode), include_background=include)(logits, monai_target)
    _close(ours, theirs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("gamma", [1.0, 4.0 / 3.0])
def test_focal_tversky_is_the_per_class_tversky_to_the_power_one_over_gamma(spatial_dims: int,
                                                                            gamma: float) -> None:
    logits, target, monai_target = _inputs("multiclass", spatial_dims)
    ours = create_loss("focal_tversky", mode="multiclass", alpha=0.3, beta=0.7, gamma=gamma)(logits, target)
    per_class = monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7,
                                         reduction="none")(logits, monai_target)
    _close(ours, (per_class ** (1.0 / gamma)).mean())


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_dice_reductions_match_monai(spatial_dims: int, reduction: str) -> None:
    logits, target, monai_target = _inputs("multiclass", spatial_dims, channels=4)
    ours = create_loss("dice", mode="multiclass", reduction=reduction)(logits, target)
    theirs = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, reduction=reduction)(logits, monai_target)
    _close(ours, theirs.reshape(ours.shape))
