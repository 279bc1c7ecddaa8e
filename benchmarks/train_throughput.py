"""Training-step throughput: our U-Net against MONAI's ``BasicUNet`` with the same widths (engine issue).

Both networks: level widths (32, 32, 64, 128, 256), a 32-channel last decoder level, instance norm,
LeakyReLU, transposed-convolution up-sampling (BasicUNet's defaults; ours is ``create_model("unet",
features=(32, 32, 64, 128, 256), norm="instance", act="leaky_relu")``), 2 classes, Dice+CE-free plain
cross-entropy loss, SGD with Nesterov momentum. One step = forward, backward and optimiser step; the
median of ``--repeats`` steps after ``--warmup`` steps, the two networks alternating step by step so that
load on a shared machine affects both alike. Cases: 2D 256x256 batch 8, 3D 96³ batch 2.

    .venv/bin/python benchmarks/train_throughput.py [--device cpu|cuda] [--repeats 5] [--warmup 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from medseg.engine.benchmark import machine_description, machine_slug, markdown_table
from medseg.fileio import write_text_atomically
from medseg.models.registry import count_parameters, create_model

WIDTHS = (32, 32, 64, 128, 256)
CASES = ((2, 256, 8), (3, 96, 2))


def build_pair(dims: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    from monai.networks.nets import BasicUNet

    ours = create_model("unet", in_channels=1, num_classes=2, spatial_dims=dims, features=WIDTHS,
                        norm="instance", act="leaky_relu")
    theirs = BasicUNet(spatial_dims=dims, in_channels=1, out_channels=2, features=(*WIDTHS, 32))
    return ours.to(device), theirs.to(device)


class Stepper:
    """One training step of a model on a fixed batch."""

    def __init__(self, model: nn.Module, image: torch.Tensor, target: torch.Tensor) -> None:
        self.model, self.image, self.target = model.train(), image, target
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
        self.loss = nn.CrossEntropyLoss()

    def __call__(self) -> float:
        if self.image.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model(self.image), self.target).backward()
        self.optimizer.step()
        if self.image.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def measure(dims: int, size: int, batch: int, device: torch.device, warmup: int, repeats: int
            ) -> tuple[float, float, int, int]:
    torch.manual_seed(0)
    image = torch.randn(batch, 1, *(size,) * dims, device=device)
    target = torch.randint(0, 2, (batch, *(size,) * dims), device=device)
    ours, theirs = build_pair(dims, device)
    steps = (Stepper(ours, image, target), Stepper(theirs, image, target))
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + repeats):
        for step, record in zip(steps, times, strict=True):
            elapsed = step()
            if i >= warmup:
                record.append(elapsed)
    return (statistics.median(times[0]), statistics.median(times[1]), count_parameters(ours),
            count_parameters(theirs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for dims, size, batch in CASES:
        ours, theirs, p_ours, p_theirs = measure(dims, size, batch, device, args.warmup, args.repeats)
        shape = "x".join([str(size)] * dims)
        rows.append([f"{dims}D {shape}", str(batch), f"{p_ours:,} / {p_theirs:,}", f"{batch / ours:.2f}",
                     f"{batch / theirs:.2f}", f"{theirs / ours:.2f}x"])
        print(" | ".join(rows[-1]), file=sys.stderr)
    table = markdown_table(["case", "batch", "parameters (ours / MONAI)", "ours samples/s",
                            "MONAI BasicUNet samples/s", "speed-up"], rows,
                           [False, True, True, True, True, True])
    kind = "gpu" if device.type == "cuda" else "cpu"
    text = (f"# Training-step throughput: medseg U-Net vs MONAI BasicUNet ({kind})\n\n"
            f"{machine_description(device)}\n\nForward + backward + SGD step, median of {args.repeats} steps "
            f"after {args.warmup} warm-up steps, alternating. Speed-up = MONAI time / our time.\n\n"
            f"Command: `.venv/bin/python benchmarks/train_throughput.py --device {args.device} "
            f"--warmup {args.warmup} --repeats {args.repeats}`\n\n{table}\n")
    path = args.out / f"train-throughput-{kind}-{machine_slug(device)}.md"
    write_text_atomically(path, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
