"""``medseg evaluate``: case matching across formats, spacing, probability maps, unmatched and broken cases,
the output files and the command line."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.data import Geometry, read_mask, write_image, write_mask, write_polyp_dataset
from medseg.engine.evaluate import (
    CaseJob,
    CasePair,
    OverlayView,
    error_slice,
    evaluate_folders,
    evaluate_job,
    make_overlay,
    match_cases,
    read_prediction,
)
from medseg.metrics.case import METRIC_NAMES

FAST = ["dice", "iou", "hd", "assd", "mae"]


def disk(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def dice_of(pred: np.ndarray, gt: np.ndarray) -> float:
    return 2 * np.count_nonzero(pred & gt) / (np.count_nonzero(pred) + np.count_nonzero(gt))


def write_2d_cases(root: Path, n: int, size: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """PNG truths (0/255) in root/gt and shifted PNG predictions (0/1) in root/pred."""
    cases = {}
    for i in range(n):
        gt = disk(size, (size / 2, size / 2), 5 + i % 4)
        pred = np.roll(gt, i % 3, axis=1)
        write_mask(root / "gt" / f"case_{i:02d}.png", gt[None] * np.uint8(255))
        write_mask(root / "pred" / f"case_{i:02d}.png", pred[None])
        cases[f"case_{i:02d}"] = (pred, gt)
    return cases


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def geometry_3d(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Geometry:
    return dataclasses.replace(Geometry.identity(shape), spacing=spacing)


def cube(shape: tuple[int, int, int], start: tuple[int, int, int], size: int = 4) -> np.ndarray:
    array = np.zeros(shape, np.uint8)
    array[tuple(slice(s, s + size) for s in start)] = 1
    return array


def test_2d_png_cases_give_the_long_csv_with_every_metric(tmp_path: Path) -> None:
    cases = write_2d_cases(tmp_path, 3)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    out = tmp_path / "pred" / "evaluation"
    assert summary.files == {n: out / n for n in ("metrics.csv", "summary.json", "report.html")}
    header = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "case,class,metric,value"
    rows = read_rows(out / "metrics.csv")
    assert len(rows) == 3 * len(METRIC_NAMES)
    assert [r["metric"] for r in rows[: len(METRIC_NAMES)]] == list(METRIC_NAMES)
    assert {r["class"] for r in rows} == {"1"}
    for case, (pred, gt) in cases.items():
        value = next(float(r["value"]) for r in rows if r["case"] == case and r["metric"] == "dice")
        assert value == pytest.approx(dice_of(pred.astype(bool), gt.astype(bool)))
    assert summary.dice["case_00"] == 1.0


def test_summary_json_structure(tmp_path: Path) -> None:
    write_2d_cases(tmp_path, 2)
    evaluate_folders(tmp_path / "pred", tmp_path / "gt", out_dir=tmp_path / "out", metrics=FAST,
                     progress=False)
    data = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert data["cases"] == 2 and data["missing"] == [] and data["extra"] == []
    assert list(data["metrics"]) == FAST
    for stats in data["metrics"].values():
        assert {"mean", "std", "median", "per_class", "nan"} <= set(stats)
        assert set(stats["per_class"]) == {"1"}


def test_fpr_and_fnr_reach_the_csv_the_summary_and_the_cli_table(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[0, :2] = pred[3, 2:] = 1  # TP 2, FN 2, FP 2, TN 10
    write_mask(tmp_path / "gt" / "a.png", gt[None] * np.uint8(255))
    write_mask(tmp_path / "pred" / "a.png", pred[None])
    evaluate_folders(tmp_path / "pred", tmp_path / "gt", out_dir=tmp_path / "out", metrics=["fpr", "fnr"],
                     progress=False)
    rows = read_rows(tmp_path / "out" / "metrics.csv")
    assert [(r["metric"], float(r["value"])) for r in rows] == [("fpr", 2 / 12), ("fnr", 2 / 4)]
    data = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert data["metrics"]["fpr"]["mean"] == pytest.approx(1 / 6) and data["metrics"]["fnr"]["mean"] == 0.5
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "cli"),
                 "--metrics", "fnr", "fpr", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| fnr " in out and "| fpr " in out


def test_3d_nifti_distances_use_the_truths_anisotropic_spacing(tmp_path: Path) -> None:
    shape, spacing = (10, 10, 10), (3.0, 1.0, 0.5)
    gt = cube(shape, (2, 2, 2))
    write_mask(tmp_path / "gt" / "vol.nii.gz", gt[None], geometry_3d(shape, spacing))
    # The prediction is shifted by one voxel along axis 0 and carries a wrong (unit) spacing of its own.
    write_mask(tmp_path / "pred" / "vol.nii.gz", cube(shape, (3, 2, 2))[None], Geometry.identity(shape))
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=["dice", "hd", "hd95"],
                               progress=False)
    values = {metric: value for _, _, metric, value in summary.rows}
    assert values["dice"] == pytest.approx(0.75)
    assert values["hd"] == pytest.approx(3.0) and values["hd95"] == pytest.approx(3.0)


def test_mixed_formats_match_by_case_id(tmp_path: Path) -> None:
    shape, spacing = (8, 12, 12), (2.0, 0.5, 0.5)
    geometry = geometry_3d(shape, spacing)
    for name, start in (("a", (2, 4, 4)), ("b", (1, 3, 5))):
        write_mask(tmp_path / "gt" / f"{name}.mha", cube(shape, (2, 4, 4))[None], geometry)
        write_mask(tmp_path / "pred" / f"{name}.nii.gz", cube(shape, start)[None], geometry)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=["dice", "hd"], progress=False)
    assert summary.data["cases"] == 2 and not summary.missing and not summary.extra
    assert summary.dice == {"a": 1.0, "b": pytest.approx(dice_of(cube(shape, (1, 3, 5)).astype(bool),
                                                                 cube(shape, (2, 4, 4)).astype(bool)))}


def test_missing_extra_and_size_mismatch_are_reported_not_fatal(tmp_path: Path) -> None:
    write_2d_cases(tmp_path, 3)
    (tmp_path / "pred" / "case_02.png").unlink()  # missing
    write_mask(tmp_path / "pred" / "stray.png", np.zeros((1, 32, 32), np.uint8))  # extra
    write_mask(tmp_path / "pred" / "case_01.png", np.zeros((1, 20, 32), np.uint8))  # wrong size
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=FAST, progress=False)
    assert summary.missing == ["case_02"] and summary.extra == ["stray"]
    assert list(summary.problems) == ["case_01"] and "size mismatch" in summary.problems["case_01"]
    assert "20x32" in summary.problems["case_01"] and "32x32" in summary.problems["case_01"]
    assert summary.data["cases"] == 1 and {r[0] for r in summary.rows} == {"case_00"}
    data = json.loads(summary.files["summary.json"].read_text(encoding="utf-8"))
    assert data["missing"] == ["case_02"] and data["extra"] == ["stray"] and "case_01" in data["problems"]


def test_probability_maps_feed_mae_and_are_thresholded(tmp_path: Path) -> None:
    gt = disk(24, (12, 12), 6)
    probability = np.clip(gt * 0.8 + 0.1, 0, 1).astype(np.float32)
    probability[0, 0] = 0.55  # above 0.5: a false positive once thresholded
    write_mask(tmp_path / "gt" / "p.png", gt[None])
    write_image(tmp_path / "pred" / "p.nii.gz", probability[None])
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=["dice", "mae"], progress=False)
    values = {metric: value for _, _, metric, value in summary.rows}
    assert values["mae"] == pytest.approx(np.abs(probability - gt).mean(), rel=1e-6)
    assert values["dice"] == pytest.approx(dice_of(probability >= 0.5, gt.astype(bool)))
    assert values["dice"] < 1


def test_grey_png_predictions_are_probability_maps_in_binary_tasks(tmp_path: Path) -> None:
    gt = disk(24, (12, 12), 6)
    grey = (gt * 200 + 20).astype(np.uint8)
    write_image(tmp_path / "grey.png", grey[None])
    prediction = read_prediction(tmp_path / "grey.png", (1,))
    assert np.array_equal(prediction.labels, gt)
    assert prediction.probabilities is not None
    assert np.allclose(prediction.probabilities[0], grey / 255.0)
    assert read_prediction(tmp_path / "grey.png", (1, 2)).probabilities is None  # labels when multiclass


def test_classes_are_the_union_of_the_truth_labels(tmp_path: Path) -> None:
    shape = (6, 8, 8)
    one = cube(shape, (1, 1, 1), 3)
    two = one + 3 * cube(shape, (1, 5, 5), 2)  # labels 1 and 3
    for name, gt in (("x", one), ("y", two)):
        write_mask(tmp_path / "gt" / f"{name}.nii.gz", gt[None])
        write_mask(tmp_path / "pred" / f"{name}.nii.gz", gt[None])
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=["dice"], progress=False)
    assert summary.data["classes"] == [1, 3]
    assert sorted((r[0], r[1]) for r in summary.rows) == [("x", 1), ("x", 3), ("y", 1), ("y", 3)]
    assert all(r[3] == 1.0 for r in summary.rows)  # class 3 absent from both in x: the both-empty Dice
    only = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=["dice"], labels=[3], progress=False)
    assert {r[1] for r in only.rows} == {3}


def test_a_data_set_root_as_truth_gives_its_images_to_the_overlays(tmp_path: Path) -> None:
    root = write_polyp_dataset(tmp_path / "polyps", n_cases=2, size=(64, 64), seed=1)
    for mask in (root / "masks").iterdir():
        labels, _ = read_mask(mask)
        write_mask(tmp_path / "pred" / mask.name.replace(".png", ".nii.gz"), np.roll(labels, 2, axis=1))
    matching = match_cases(tmp_path / "pred", root)
    assert [p.case_id for p in matching.pairs] == ["case_000", "case_001"]
    assert all(p.image is not None and p.image.parent.name == "images" for p in matching.pairs)
    overlay = make_overlay(matching.pairs[0], [1], 0.5)
    assert overlay is not None and overlay.image is not None and overlay.image.shape == (64, 64, 3)
    summary = evaluate_folders(tmp_path / "pred", root, metrics=FAST, progress=False)
    assert summary.data["cases"] == 2


def test_masks_named_with_a_mask_word_match_and_images_beside_them_are_found(tmp_path: Path) -> None:
    gt = disk(16, (8, 8), 4)
    write_mask(tmp_path / "data" / "masks" / "c1_mask.png", gt[None])
    write_image(tmp_path / "data" / "images" / "c1.png", np.stack([gt * 100] * 3).astype(np.uint8))
    write_mask(tmp_path / "pred" / "c1.png", gt[None])
    matching = match_cases(tmp_path / "pred", tmp_path / "data" / "masks")
    assert [(p.case_id, p.truth.name) for p in matching.pairs] == [("c1", "c1_mask.png")]
    assert matching.pairs[0].image == tmp_path / "data" / "images" / "c1.png"
    assert not matching.missing and not matching.extra


def test_the_3d_overlay_shows_the_slice_with_the_largest_error(tmp_path: Path) -> None:
    gt = np.zeros((5, 6, 6), np.uint8)
    gt[1:4, 1:5, 1:5] = 1
    pred = gt.copy()
    pred[3] = 0
    pred[2, 0, 0] = 1
    assert error_slice(pred, gt) == 3
    assert error_slice(gt, gt) == 1  # no error: the slice with the most truth (first of the ties)
    write_mask(tmp_path / "gt.nii.gz", gt[None])
    write_mask(tmp_path / "pred.nii.gz", pred[None])
    overlay = make_overlay(CasePair("v", tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz"), [1], 0.8)
    assert overlay is not None and overlay.image is None
    assert np.array_equal(overlay.truth, gt[3]) and np.array_equal(overlay.prediction, pred[3])
    assert "slice 3 of 5" in overlay.caption and "Dice 0.800" in overlay.caption


def test_process_pool_gives_the_same_rows(tmp_path: Path) -> None:
    write_2d_cases(tmp_path, 9, size=24)
    pooled = evaluate_folders(tmp_path / "pred", tmp_path / "gt", out_dir=tmp_path / "a", metrics=FAST,
                              progress=False, workers=2)
    single = evaluate_folders(tmp_path / "pred", tmp_path / "gt", out_dir=tmp_path / "b", metrics=FAST,
                              progress=False, workers=1)
    assert pooled.rows == single.rows
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()


def test_report_is_self_contained_and_names_the_worst_and_best_cases(tmp_path: Path) -> None:
    cases = write_2d_cases(tmp_path, 7)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=FAST, progress=False)
    text = summary.files["report.html"].read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 1 + 7  # box plots + 5 worst + 2 remaining best
    assert "<link" not in text and "<script" not in text and 'src="http' not in text
    ranked = sorted(cases, key=lambda c: (summary.dice[c], c))
    worst_section, best_section = text.split("Worst cases by Dice")[1].split("Best cases by Dice")
    assert all(f"{c} — Dice" in worst_section for c in ranked[:5])
    assert all(f"{c} — Dice" in best_section for c in ranked[5:])
    assert math.isclose(summary.dice[ranked[-1]], 1.0)


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------

def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("medseg: error: ")
    return lines[0]


def test_cli_prints_the_summary_and_reports_unmatched_cases(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    write_2d_cases(tmp_path, 3)
    (tmp_path / "pred" / "case_02.png").unlink()
    out = tmp_path / "eval"
    code = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(out), "--metrics",
                 "dice", "hd95", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert "| dice " in captured.out and "| hd95 " in captured.out
    assert "medseg: warning: 1 ground-truth case without a prediction (missing): case_02" in captured.err
    assert str(out / "report.html") in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "report.html", "summary.json"]


@pytest.mark.parametrize(("setup", "expected"), [
    ("no-pred", "prediction folder"),
    ("no-match", "no case of"),
    ("bad-metric", "unknown metric(s) dice2; known: dice, iou"),
])
def test_cli_bad_input_is_one_line_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     setup: str, expected: str) -> None:
    write_2d_cases(tmp_path, 1)
    pred = tmp_path / "pred"
    args = ["evaluate", str(pred), str(tmp_path / "gt"), "--no-progress"]
    if setup == "no-pred":
        args[1] = str(tmp_path / "absent")
    elif setup == "no-match":
        (pred / "case_00.png").rename(pred / "other.png")
    else:
        args += ["--metrics", "dice2"]
    assert main(args) == 2
    line = error_line(capsys)
    assert expected in line
    if setup == "bad-metric":
        assert all(name in line for name in METRIC_NAMES)


def count_truth_reads(monkeypatch: pytest.MonkeyPatch, truth_folder: Path) -> dict[str, int]:
    """Count the reads of each ground-truth file by ``medseg evaluate`` (in this process; the pairs are
    read in :mod:`medseg.engine.pairing`)."""
    from medseg.engine import pairing

    counts: dict[str, int] = {}
    original = pairing.read_mask

    def counting(path: Path):
        if Path(path).parent == truth_folder:
            counts[Path(path).name] = counts.get(Path(path).name, 0) + 1
        return original(path)

    monkeypatch.setattr(pairing, "read_mask", counting)
    return counts


def test_each_truth_is_read_once_for_metrics_and_overlays(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    write_2d_cases(tmp_path, 12, size=24)
    counts = count_truth_reads(monkeypatch, tmp_path / "gt")
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=FAST, progress=False, workers=1)
    assert summary.data["cases"] == 12 and (tmp_path / "pred" / "evaluation" / "report.html").is_file()
    assert counts == {f"case_{i:02d}.png": 1 for i in range(12)}  # 10 of them are drawn in the report


def test_a_case_without_every_class_is_evaluated_again_for_the_union(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (6, 8, 8)
    one = cube(shape, (1, 1, 1), 3)
    both = one + 2 * cube(shape, (1, 5, 5), 2)
    for name, gt in (("a", both), ("b", one), ("c", both)):
        write_mask(tmp_path / "gt" / f"{name}.nii.gz", gt[None])
        write_mask(tmp_path / "pred" / f"{name}.nii.gz", np.roll(both, 1, axis=2)[None])
    counts = count_truth_reads(monkeypatch, tmp_path / "gt")
    found = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=FAST, progress=False, workers=1,
                             out_dir=tmp_path / "found")
    assert found.data["classes"] == [1, 2]
    assert counts == {"a.nii.gz": 1, "b.nii.gz": 2, "c.nii.gz": 1}  # b lacks label 2
    given = evaluate_folders(tmp_path / "pred", tmp_path / "gt", metrics=FAST, labels=[1, 2], progress=False,
                             workers=1, out_dir=tmp_path / "given")
    assert found.rows == given.rows and found.dice == given.dice
    csv_files = [(tmp_path / folder / "metrics.csv").read_text() for folder in ("found", "given")]
    assert csv_files[0] == csv_files[1]


def test_overlays_from_the_evaluated_arrays_equal_those_read_from_the_files(tmp_path: Path) -> None:
    root = write_polyp_dataset(tmp_path / "polyps", n_cases=1, size=(48, 40), seed=2)
    labels, _ = read_mask(root / "masks" / "case_000.png")
    write_mask(tmp_path / "pred" / "case_000.png", np.roll(labels, 3, axis=2))
    pair = match_cases(tmp_path / "pred", root).pairs[0]
    result = evaluate_job(CaseJob(pair, (1,), ("dice",), 1.0))
    assert isinstance(result.view, OverlayView)
    from_view, from_files = make_overlay(pair, [1], 0.5, result.view), make_overlay(pair, [1], 0.5)
    assert from_view is not None and from_files is not None and from_view.image is not None
    assert from_view.caption == from_files.caption and from_view.aspect == from_files.aspect
    for name in ("image", "truth", "prediction"):
        assert np.array_equal(getattr(from_view, name), getattr(from_files, name)), name
