"""Instance runs: config checks, Mask R-CNN through ``medseg train``, ``predict``, ``evaluate --instance``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from medseg.cli import main
from medseg.config_types import ConfigError
from medseg.data import read_mask
from medseg.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
from medseg.engine.config import config_from_dict
from medseg.models.mask_rcnn import LOSS_NAMES, MaskRCNN

TINY_MASK_RCNN = {"encoder": "resnet18", "encoder_options": {"widths": [8, 16, 32, 64], "stem_width": 8},
                  "fpn_channels": 16, "representation_size": 32, "mask_head_channels": 16, "min_size": None,
                  "max_size": None, "anchor_sizes": [[8], [16], [32], [64], [128]]}


def instance_config(tmp: Path, **train: Any) -> dict[str, Any]:
    """Mask R-CNN (tiny) on 10 synthetic 96x96 nuclei images (16-bit PNG label maps), 64x64 patches."""
    return {
        "name": "tiny-instance", "run_dir": str(tmp / "run"),
        "data": {"root": str(tmp / "data"), "synthetic": {"kind": "nuclei", "n_cases": 10, "size": [96, 96]},
                 "layout": "paired", "patch_size": [64, 64], "normalization": "rgb", "label_mode": "instance",
                 "val_fraction": 0.2, "batch_size": 2, "num_workers": 0},
        "model": {"name": "mask_rcnn", "options": TINY_MASK_RCNN},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"epochs": 2, "iterations_per_epoch": 3, "val_metrics": ["dsb", "ap50", "aji"],
                  "best_metric": "ap50", "device": "cpu", **train},
        "augmentation": {"rot90": True},
    }


def test_instance_settings_are_checked(tmp_path: Path) -> None:
    good = instance_config(tmp_path)
    config = config_from_dict(good)
    assert config.data.label_mode == "instance" and config.data.output_channels(None) == 2
    bad = {
        "a semantic model": ["model.name=unet", "model.options={}"],
        "instance metrics only": ["train.val_metrics=[dice]", "train.best_metric=dice"],
        "own losses": ["loss.name=dice"],
        "one object class": ["data.num_classes=3"],
        "ids kept": ["data.binarize_labels=true"],
    }
    messages = {"a semantic model": "label_mode", "instance metrics only": "val_metrics",
                "own losses": "loss", "one object class": "num_classes", "ids kept": "binarize_labels"}
    for case, overrides in bad.items():
        with pytest.raises(ConfigError, match=messages[case]):
            config_from_dict(good, overrides)
    with pytest.raises(ConfigError, match="label_mode"):  # an instance model needs instance labels
        config_from_dict(good, ["data.label_mode=binary", "train.val_metrics=[dice]",
                                "train.best_metric=dice"])
    with pytest.raises(ConfigError, match="val_metrics"):  # semantic runs cannot name instance metrics
        config_from_dict(None, ["train.val_metrics=[ap50]", "train.best_metric=ap50"])


@pytest.mark.slow
def test_train_predict_evaluate_mask_rcnn_through_the_cli(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(instance_config(tmp_path)), encoding="utf-8")
    assert main(["train", str(config_path), "--no-progress"]) == 0
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "log.csv").open(encoding="utf-8")))
    assert len(rows) == 2
    for row in rows:  # the summed loss and its parts
        parts = [float(row[name]) for name in LOSS_NAMES]
        assert all(np.isfinite(parts)) and float(row["train_loss"]) == pytest.approx(sum(parts), rel=1e-5)
        assert {"val_dsb", "val_ap50", "val_aji"} <= set(row)
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["label_mode"] == "instance"
    assert isinstance(build_model_from_checkpoint(ckpt), MaskRCNN)

    pred = tmp_path / "pred"
    images = tmp_path / "data" / "images"
    assert main(["predict", str(run / "best.pt"), str(images), str(pred), "--instances-json",
                 "--no-overlays", "--no-progress"]) == 0
    maps = sorted(pred.glob("case_*.png"))
    assert [p.name for p in maps] == sorted(p.name for p in images.glob("*.png"))
    for path in maps:
        assert path.read_bytes()[24] == 16  # PNG bit depth: a 16-bit label map
        ids, geometry = read_mask(path)
        assert ids.shape == (1, 96, 96)  # the source geometry
        sidecar = json.loads((pred / f"{path.stem}_instances.json").read_text(encoding="utf-8"))
        present = sorted(int(i) for i in np.unique(ids) if i > 0)
        assert sorted(int(k) for k in sidecar["scores"]) == present
        for key in present:
            x1, y1, x2, y2 = sidecar["boxes"][str(key)]
            ys, xs = np.nonzero(ids[0] == key)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert sidecar["labels"][str(key)] == 1 and 0 <= sidecar["scores"][str(key)] <= 1
    assert not list(pred.glob(".*tmp"))  # atomic writes leave no temporaries

    assert main(["evaluate", str(pred), str(tmp_path / "data" / "masks"), "--instance", "--no-progress"]) == 0
    summary = json.loads((pred / "evaluation" / "summary.json").read_text(encoding="utf-8"))
    assert summary["mode"] == "instance" and summary["cases"] == 10
    assert summary["ap"]["gt_instances"] > 0 and 0 <= summary["ap"]["ap50"] <= 1
    capsys.readouterr()


def test_instances_json_needs_an_instance_checkpoint(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import tiny_checkpoint
    from medseg.data import write_image

    checkpoint = tiny_checkpoint(tmp_path / "unet.pt")
    write_image(tmp_path / "in" / "a.png", np.zeros((1, 16, 16), np.uint8))
    assert main(["predict", str(checkpoint), str(tmp_path / "in"), str(tmp_path / "out"), "--instances-json",
                 "--no-progress"]) == 2
    assert "instance checkpoint" in capsys.readouterr().err
