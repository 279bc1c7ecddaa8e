"""Polyp segmentation benchmark on Kvasir-SEG (issue 6): every model trained under one budget, evaluated
on a held-out split with the polyp measures (Dice, IoU, MAE, S_alpha, mean E_phi, weighted F_beta, HD95).

The same for every model: the seeded split, the image size (images resized to ``--size``², RGB
normalisation), the epochs and time limit, batch, AdamW (lr ``--lr``, weight decay 1e-4) with cosine decay,
the engine's default augmentation, the structure loss (``--loss default``: each model's own loss), training
from scratch, whole-image prediction without postprocessing. Each model has its registry defaults, except
our U-Net with the widths of ``configs/unet-kvasir.yaml`` (32 at the first of 4 levels). MAE and the polyp
measures are computed on the predicted foreground probability map, the overlap and distance metrics on
``p >= 0.5``. The paper setting (GPU) is ``--size 352`` with 50-100 epochs; see ``--help`` for the options.

    .venv/bin/python benchmarks/polyp.py [--models unet monai_basicunet msnet ...] [--size 352]
        [--epochs 50] [--minutes-per-model M] [--train-cases N] [--test-cases 100] [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from typing import Any

from train_compare import MONAI_BASICUNET, ROOT, Budget, Column, Task, Variant, build_parser, main

MODELS = ["unet", MONAI_BASICUNET, "msnet", "m2snet", "unet_v2", "unext", "unext_s"]
UNET_OPTIONS = {"features": 32, "depth": 4}  # as configs/unet-kvasir.yaml
#: Rows that are a model with fixed options and/or PointRend (the HRNet + PointRend issue's rows).
VARIANTS = {
    "hrnet_w18s": Variant("hrnet_v2", {"config": "w18_small_v2"}),
    "hrnet_w18s_pointrend": Variant("hrnet_v2", {"config": "w18_small_v2"}, pointrend={}),
    "unet_pointrend": Variant("unet", UNET_OPTIONS, pointrend={}),
    # the classic-zoo issue's rows: the adversarial mode (Luc et al. 2016) on from the second epoch
    "unet_adversarial": Variant("unet", UNET_OPTIONS, adversarial={
        "weight": 0.1, "start_epoch": 1, "discriminator": {"options": {"features": 16}}}),
    "deeplabv3plus_r50": Variant("deeplabv3plus", {"encoder": "resnet50", "output_stride": 16}),
    "pspnet_r50": Variant("pspnet", {"encoder": "resnet50s"}),
}
COLUMNS = (Column("Dice", "dice"), Column("IoU", "iou"), Column("MAE", "mae"),
           Column("S_alpha", "s_measure"), Column("E_phi (mean)", "e_measure_mean"),
           Column("F_beta^w", "weighted_fbeta"), Column("HD95 (px)", "hd95", digits=2),
           Column("NSD (1 px)", "nsd"))


def base_config(budget: Budget) -> dict[str, Any]:
    return {
        "data": {"layout": "paired", "resize": list(budget.size), "patch_size": None, "normalization": "rgb",
                 "label_mode": "binary", "class_names": ["polyp"]},
        "optim": {"name": "adamw", "lr": budget.lr, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "min_lr_factor": 0.01},
        "train": {"val_every": 1, "val_metrics": ["dice"], "best_metric": "dice"},
        "inference": {"mode": "whole"},
    }


TASK = Task(name="polyp", title="Polyp segmentation on Kvasir-SEG: models trained under one budget",
            spatial_dims=2, in_channels=3, default_root=ROOT.parent / "shared" / "data" / "kvasir-seg",
            base_config=base_config, columns=COLUMNS, fair_loss="structure", probability_maps=True,
            model_options={"unet": UNET_OPTIONS}, variants=VARIANTS,
            notes=["metrics: mean over the test cases (`medseg evaluate`); MAE, S_alpha, E_phi and F_beta^w "
                   "on the foreground probability map, Dice, IoU and HD95 on p >= 0.5; HD95 in pixels of "
                   "the source image, '(k nan)' = k cases with an empty prediction or mask, left out; "
                   "NSD: normalised surface Dice at a tolerance of 1 pixel"])


def parser() -> Any:
    return build_parser(TASK, __doc__.splitlines()[0], {
        "models": MODELS, "size": [352], "epochs": 50, "batch_size": 16, "val_cases": 50, "test_cases": 100,
        "lr": 1e-3})


if __name__ == "__main__":
    sys.exit(main(TASK, parser()))
