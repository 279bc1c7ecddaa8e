"""progress.png: a valid PNG drawn from a history with gaps (epochs without validation, NaN)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.engine.plots import _series, plot_progress


def test_plot_progress_writes_a_png(tmp_path: Path) -> None:
    history = [{"epoch": 1, "train_loss": 1.0, "lr": 0.01},
               {"epoch": 2, "train_loss": 0.7, "lr": 0.005, "val_dice": 0.4},
               {"epoch": 3, "train_loss": 0.5, "lr": 0.001, "val_dice": math.nan}]
    path = plot_progress(history, tmp_path / "progress.png")
    image = np.asarray(Image.open(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    assert image.std() > 0  # something was drawn
    assert not list(tmp_path.glob(".*.tmp"))
    assert _series(history, "val_dice") == ([2], [0.4])
    assert _series(history, "train_loss") == ([1, 2, 3], [1.0, 0.7, 0.5])
