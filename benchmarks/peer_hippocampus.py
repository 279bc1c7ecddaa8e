"""medseg's default recipe against a plain MONAI loop on MSD Task04 Hippocampus (issue 23; see
``peer_common``).

Patches of ``--size`` (array order, z-score normalisation), labels 0/1/2 (multiclass); medseg trains our
3D U-Net (features 16, instance norm) with Dice + CE and the engine's default 3D augmentation and
foreground oversampling, the peer MONAI's 3D BasicUNet on random patches with flips and ``DiceCELoss``;
Dice per class at the source resolution (Gaussian sliding windows, step 0.5) on the held-out cases.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_hippocampus.py [--minutes 5] [--size 32 48 32]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from peer_common import PeerTask, build_parser, main
from train_compare import ROOT


def patch(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(args.size) * (3 if len(args.size) == 1 else 1)


def medseg_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data": {"layout": "decathlon", "patch_size": list(patch(args)), "normalization": "zscore",
                 "label_mode": "multiclass", "num_classes": 3,
                 "class_names": ["background", "anterior", "posterior"]},
        "loss": {"name": "dice_ce"},
        "train": {"iterations_per_epoch": 50, "val_every": 1, "val_metrics": ["dice"]},
        "inference": {"mode": "sliding_window", "step": 0.5, "mirror": False},
    }


TASK = PeerTask(name="hippocampus", title="Hippocampus: medseg's default recipe against a plain MONAI loop",
                spatial_dims=3, in_channels=1, out_channels=3, label_mode="multiclass", classes=(1, 2),
                default_root=ROOT.parent / "shared" / "data" / "msd-task04-hippocampus",
                medseg_config=medseg_config, patch=patch)


if __name__ == "__main__":
    sys.exit(main(TASK, build_parser(TASK, __doc__.splitlines()[0], {
        "size": [32, 48, 32], "batch_size": 8, "val_cases": 20, "test_cases": 40}),
        {1: "anterior", 2: "posterior"}))
