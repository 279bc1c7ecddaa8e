"""Hippocampus segmentation benchmark on MSD Task04 (issue 8): 3D models trained under one budget, evaluated
on a held-out split with Dice, HD95 and ASSD per class (anterior, posterior).

The same for every model: the seeded split, the patch size (``--size``, array order), z-score
normalisation, the epochs, batches per epoch and time limit, batch, nnU-Net's SGD (Nesterov momentum 0.99,
lr ``--lr``, poly decay), the engine's default 3D augmentation with a third of the patches on foreground,
Dice + CE for every model (``--loss default``: each model's own loss), training from scratch, Gaussian
sliding-window prediction (step 0.5) without postprocessing. Each model has its registry defaults (the
rows of ``VARIANTS``: their presets' model options), except
our U-Net, built with the peer's layout (widths 32/32/64/128/256, 4 poolings, instance norm, leaky ReLU 0.1;
no deep supervision, as the loss is the same for all) so that the two U-Nets differ only in their code.
(``configs/unet3d-hippocampus.yaml``'s 3-pooling U-Net learns much more slowly in a short budget: on the
same 40 batches its Dice + CE stalls near 0.96 while the 4-pooling form reaches 0.59.) The patch must
leave more than one voxel after the 4 poolings of both (instance norm), e.g. 32x48x32.

    .venv/bin/python benchmarks/hippocampus.py [--models unet monai_basicunet conresnet hrnet3d highresnet3d
        unetr residual_unet3d] [--size 32 48 32]
        [--epochs 50] [--iterations-per-epoch 50] [--minutes-per-model M] [--device cpu|cuda]

``unet2p5d`` is the 2.5D U-Net (a 2D U-Net on 5-slice windows, :mod:`medseg.data.slices`); give it with
``unet`` for the 3D / 2.5D comparison: ``--models unet unet2p5d``.
"""

from __future__ import annotations

import sys
from typing import Any

from train_compare import MONAI_BASICUNET, ROOT, Budget, Column, Task, Variant, build_parser, main

MODELS = ["unet", MONAI_BASICUNET, "conresnet", "hrnet3d", "highresnet3d", "unetr", "residual_unet3d"]
#: The 3D HRNetV2 of configs/hrnet3d-hippocampus.yaml (W18-Small-v1 topology, widths 8-64, stem 32),
#: without its deep supervision (the loss is the same for every row).
#: The 2.5D U-Net (configs/unet2p5d-hippocampus.yaml, issue 21): the 2D form of the benchmark's U-Net on
#: 5-slice windows (k = 2, slices across the axial array axis 0), 2D patches of 64x48 (the slices are about
#: 52x34), 4x the batch of the 3D runs (a 2D patch has far fewer voxels); slice-by-slice prediction.
#: The medical-zoo rows (issue 21) take the model options of their presets: HighResNet
#: (configs/highresnet3d-hippocampus.yaml, the paper's 16/32/64 channels), UNETR narrowed to hidden size 96
#: (configs/unetr-hippocampus.yaml; ``img_size`` is the training patch: ``Variant.size_option``) and the
#: residual U-Net 3D (configs/residual-unet3d-hippocampus.yaml, widths 16-128, instance norm). Optimiser and
#: schedule are the benchmark's, as for every row.
UNET_LAYOUT = {"features": [32, 32, 64, 128, 256], "norm": "instance", "act": "leaky_relu:0.1"}
UNETR_OPTIONS = {"feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4}
VARIANTS = {"hrnet3d": Variant("hrnet_v2", {"config": "hrnet_w18_small", "width": 8, "stem_width": 32,
                                            "stage1_channels": 16}),
            "unet2p5d": Variant("unet", dict(UNET_LAYOUT), spatial_dims=2,
                                data={"slices": 2, "slice_axis": "axial", "patch_size": [64, 48],
                                      "batch_size": 32},
                                inference={"mode": "whole", "window_batch_size": 16}),
            "highresnet3d": Variant("highresnet"),
            "unetr": Variant("unetr", UNETR_OPTIONS, size_option="img_size"),
            "residual_unet3d": Variant("residual_unet3d", {"features": 16, "depth": 3, "norm": "instance"})}
CLASSES = ((1, "anterior"), (2, "posterior"))
COLUMNS = tuple(column for label, name in CLASSES for column in (
    Column(f"Dice {name}", "dice", label), Column(f"HD95 {name} (mm)", "hd95", label, 2),
    Column(f"ASSD {name} (mm)", "assd", label, 2)))


def base_config(budget: Budget) -> dict[str, Any]:
    return {
        "data": {"layout": "decathlon", "patch_size": list(budget.size), "normalization": "zscore",
                 "label_mode": "multiclass", "num_classes": 3,
                 "class_names": ["background", "anterior", "posterior"], "foreground_fraction": 0.33},
        "optim": {"name": "sgd", "lr": budget.lr, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
        "schedule": {"name": "poly", "power": 0.9},
        "train": {"val_every": 1, "val_metrics": ["dice"], "best_metric": "dice"},
        "inference": {"mode": "sliding_window", "step": 0.5, "sigma_scale": 0.125, "window_batch_size": 4},
    }


TASK = Task(name="hippocampus", title="Hippocampus segmentation on MSD Task04: 3D models under one budget",
            spatial_dims=3, in_channels=1,
            default_root=ROOT.parent / "shared" / "data" / "msd-task04-hippocampus",
            base_config=base_config, columns=COLUMNS, fair_loss="dice_ce",
            model_options={"unet": dict(UNET_LAYOUT)}, variants=VARIANTS,
            notes=["metrics: mean over the test cases per class (`medseg evaluate`); distances in mm with "
                   "the images' spacing; a case whose prediction or mask of a class is empty has no "
                   "distance for that class and is left out of that mean"])


def parser() -> Any:
    return build_parser(TASK, __doc__.splitlines()[0], {
        "models": MODELS, "size": [32, 48, 32], "epochs": 50, "iterations_per_epoch": 50, "batch_size": 8,
        "val_cases": 20, "test_cases": 40, "lr": 1e-2})


if __name__ == "__main__":
    sys.exit(main(TASK, parser()))
