"""medseg's default recipe against a plain MONAI loop on Kvasir-SEG (issue 23; see ``peer_common``).

Images resized to ``--size``² (RGB normalisation), binary polyp masks; medseg trains our U-Net (features
16, instance norm) with Dice + BCE and the engine's default augmentation, the peer MONAI's BasicUNet with
flips and ``DiceCELoss``; Dice at the source resolution on the held-out cases.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_polyp.py [--minutes 5] [--size 128]
        [--set augmentation.rotation=false ...] [--reuse-peer]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from peer_common import PeerTask, build_parser, main
from train_compare import ROOT


def medseg_config(args: argparse.Namespace) -> dict[str, Any]:
    size = list(args.size) * (2 if len(args.size) == 1 else 1)
    return {
        "data": {"layout": "paired", "resize": size, "patch_size": None, "normalization": "rgb",
                 "label_mode": "binary", "class_names": ["polyp"]},
        "loss": {"losses": [{"name": "dice", "weight": 1.0}, {"name": "bce", "weight": 1.0}]},
        "train": {"iterations_per_epoch": None, "val_every": 1, "val_metrics": ["dice"]},
        "inference": {"mode": "whole", "mirror": False},
    }


TASK = PeerTask(name="polyp", title="Kvasir-SEG: medseg's default recipe against a plain MONAI loop",
                spatial_dims=2, in_channels=3, out_channels=1, label_mode="binary", classes=(1,),
                default_root=ROOT.parent / "shared" / "data" / "kvasir-seg", medseg_config=medseg_config,
                patch=lambda args: None)


if __name__ == "__main__":
    sys.exit(main(TASK, build_parser(TASK, __doc__.splitlines()[0], {
        "size": [128], "batch_size": 16, "val_cases": 50, "test_cases": 100}), {1: "polyp"}))
