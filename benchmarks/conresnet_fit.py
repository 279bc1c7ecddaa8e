"""ConResNet's first optimiser steps on a fixed batch of hippocampus patches (issue 23, item 4).

Prints the logits' scale at initialisation and, per step, the ConResNet loss and its segmentation part
(softmax Dice + CE), for one learning rate and the four 1x1 heads as built (PyTorch's default), drawn
again (``--redraw-heads``: the same distribution, other values) or set to zero (``--zero-heads``). The
batch: the first ``--cases`` cases of MSD Task04, z-scored, zero-padded and cropped to ``--size`` at the
origin.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/conresnet_fit.py --lr 1e-3 --steps 8 [--zero-heads]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medseg.data import load_dataset
from medseg.data.cases import read_case
from medseg.data.preprocess import normalize_zscore
from medseg.losses import build_loss
from medseg.models.registry import create_model

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("seg_head", "res_head", "res2_head", "res4_head")


def fixed_batch(root: Path, cases: int, size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for case in load_dataset(root).cases[:cases]:
        image, label, _ = read_case(case)
        image = normalize_zscore(image.astype(np.float32))
        pad = [(0, 0)] + [(0, max(0, p - n)) for p, n in zip(size, image.shape[1:], strict=True)]
        window = (slice(None), *(slice(0, p) for p in size))
        images.append(torch.from_numpy(np.pad(image, pad)[window].copy()))
        labels.append(torch.from_numpy(np.pad(label, pad)[window].astype(np.int64)))
    return torch.stack(images), torch.stack(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=3, default=[32, 48, 32])
    parser.add_argument("--residual-weight", type=float, default=0.5)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--redraw-heads", action="store_true", help="draw the heads' initial weights again")
    parser.add_argument("--zero-heads", action="store_true", help="zero the heads' initial weights and bias")
    parser.add_argument("--data", type=Path,
                        default=ROOT.parent / "shared" / "data" / "msd-task04-hippocampus")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x, y = fixed_batch(args.data, args.cases, tuple(args.size))
    torch.manual_seed(0)
    model = create_model("conresnet", in_channels=1, num_classes=3, spatial_dims=3, slice_axis=0)
    for name in HEADS:
        head = getattr(model, name)
        if args.redraw_heads:
            head.reset_parameters()
        if args.zero_heads:
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
    loss_fn = build_loss({"losses": [{"name": "conresnet", "residual_weight": args.residual_weight,
                                      "slice_axis": 0}], "mode": "multiclass"})
    seg_fn = build_loss({"losses": [{"name": "dice_ce"}], "mode": "multiclass"})
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        out = model(x)
        loss, logits = loss_fn(out, y), out.logits
        if step == 0:
            print(f"init logits: std {logits.std().item():.2f}, max |logit| {logits.abs().max().item():.1f}")
        print(f"step {step}: loss {loss.item():.3f}, segmentation Dice + CE {seg_fn(logits, y).item():.3f}, "
              f"logits std {logits.std().item():.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
