"""The whole CLI (check, train, predict, evaluate) on a paired folder named as users name files:
PolypGen's ``_0000`` endings, spaces, dots, upper-case extensions, ``-mask`` words and nested folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import tiny_config
from medseg.cli import main

#: Synthetic case -> (image path, mask path) under the renamed data set.
RENAMES = {
    "case_000": ("images/10_endocv2021_positive_0000.jpg", "masks/10_endocv2021_positive_0000_mask.jpg"),
    "case_001": ("images/10_endocv2021_positive_0001.jpg", "masks/10_endocv2021_positive_0001.jpg"),
    "case_002": ("images/patient 2.v1.PNG", "masks/patient 2.v1-mask.PNG"),
    "case_003": ("images/centre B/img.3.png", "masks/centre B/img.3_seg.png"),
    "case_004": ("images/centre B/4_0000.png", "masks/centre B/4_0000.png"),
    "case_005": ("images/EC5.TIF", "masks/EC5_mask.png"),
    "case_006": ("images/6.jpeg", "masks/6.png"),
    "case_007": ("images/7_0001.png", "masks/7_0001.png"),
}
EXPECTED_IDS = sorted(["10_endocv2021_positive_0000", "10_endocv2021_positive_0001", "patient 2.v1",
                       "centre B__img.3", "centre B__4_0000", "EC5", "6", "7_0001"])


def _renamed(source: Path, target: Path) -> Path:
    from medseg.data import read_image, read_mask, write_image, write_mask

    for case, (image_name, mask_name) in RENAMES.items():
        image, geometry = read_image(source / "images" / f"{case}.png")
        mask, _ = read_mask(source / "masks" / f"{case}.png")
        (target / image_name).parent.mkdir(parents=True, exist_ok=True)
        (target / mask_name).parent.mkdir(parents=True, exist_ok=True)
        write_image(target / image_name, image, geometry)
        if mask_name.lower().endswith(".jpg"):  # JPEG masks, as Kvasir and PolypGen ship them
            Image.fromarray((mask[0] * 255).astype(np.uint8)).save(target / mask_name, quality=95)
        else:
            write_mask(target / mask_name, mask * 255, geometry)
    return target


@pytest.mark.slow
def test_check_train_predict_evaluate_on_user_file_names(tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path, epochs=1)
    data = _renamed(Path(config["data"]["root"]), tmp_path / "renamed")
    config["data"].update(root=str(data), val_fraction=0.25)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))

    assert main(["check", str(data), "--no-progress"]) == 0
    assert "cases: 8" in capsys.readouterr().out

    assert main(["train", str(config_path), "--no-progress"]) == 0
    splits = json.loads((Path(config["run_dir"]) / "splits.json").read_text())
    fold = splits[0] if isinstance(splits, list) else splits
    assert sorted(fold["train"] + fold["val"]) == EXPECTED_IDS

    predictions = tmp_path / "predictions"
    checkpoint = Path(config["run_dir"]) / "last.pt"
    assert main(["predict", str(checkpoint), str(data / "images"), str(predictions), "--no-progress"]) == 0
    masks = [p for p in predictions.iterdir() if p.is_file() and not p.name.startswith(".")]  # not the record
    assert sorted(p.name.rsplit(".", 1)[0] for p in masks) == EXPECTED_IDS

    assert main(["evaluate", str(predictions), str(data), "--no-progress", "--metrics", "dice"]) == 0
    summary = json.loads((predictions / "evaluation" / "summary.json").read_text())
    assert summary["cases"] == 8 and not summary["missing"] and not summary["extra"]
