"""``progress.png``: training loss, validation scores and learning rate per epoch (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.fileio import atomic_path

__all__ = ["plot_progress"]


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """The epochs and finite values of ``key`` (rows without it, or NaN, are skipped)."""
    epochs, values = [], []
    for row in history:
        value = row.get(key)
        if isinstance(value, (int, float)) and not math.isnan(value):
            epochs.append(int(row["epoch"]))
            values.append(float(value))
    return epochs, values


def plot_progress(history: Sequence[Mapping[str, Any]], path: str | Path,
                  val_keys: Sequence[str] = ("val_dice",)) -> Path:
    """Draw loss, validation metrics (``val_keys``) and learning rate against the epoch into ``path``
    (PNG, written atomically). ``history`` rows hold ``epoch``, ``train_loss``, ``lr`` and the val keys."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.6), dpi=90, layout="constrained")
    loss_axes, val_axes, lr_axes = figure.subplots(1, 3)
    loss_axes.plot(*_series(history, "train_loss"), marker=".", label="train")
    loss_axes.set(title="loss", xlabel="epoch")
    for key in val_keys:
        epochs, values = _series(history, key)
        if epochs:
            val_axes.plot(epochs, values, marker=".", label=key.removeprefix("val_"))
    val_axes.set(title="validation", xlabel="epoch")
    if val_axes.lines:
        val_axes.legend(loc="best")
    lr_axes.plot(*_series(history, "lr"), marker=".")
    lr_axes.set(title="learning rate", xlabel="epoch")
    for axes in (loss_axes, val_axes, lr_axes):
        axes.grid(alpha=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
