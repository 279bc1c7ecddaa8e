"""``medseg evaluate --instance``: instance label maps in 16-bit PNG, TIFF and NIfTI, score sidecars,
unmatched and broken cases, the written files and the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.data import read_mask, write_mask
from medseg.engine.evaluate_instances import evaluate_instance_folders
from medseg.metrics.instance import CASE_METRICS, InstanceEvaluation


def boxes(shape: tuple[int, ...], *items: tuple[int, tuple[slice, ...]]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint16)
    for identifier, box in items:
        labels[box] = identifier
    return labels


def write_cases(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, dict[int, float] | None]]:
    """Three cases (16-bit PNG with ids above 255, TIFF, 3D NIfTI), a score sidecar, one prediction
    without a truth and one truth without a prediction."""
    s = slice
    exact_gt = boxes((24, 24), (300, (s(0, 8), s(0, 8))), (40000, (s(12, 20), s(12, 20))))
    shifted_gt = boxes((24, 24), (1, (s(0, 14), s(0, 14))), (2, (s(16, 24), s(0, 8))))
    shifted = boxes((24, 24), (5, (s(0, 14), s(2, 16))), (9, (s(16, 24), s(16, 24))))  # IoU 0.75; a miss
    volume_gt = boxes((6, 10, 10), (1, (s(0, 4), s(0, 4), s(0, 4))), (2, (s(0, 4), s(5, 10), s(5, 10))))
    volume = boxes((6, 10, 10), (7, (s(0, 4), s(0, 4), s(0, 4))))
    cases = {
        "a_png": (exact_gt, exact_gt, {300: 0.9, 40000: 0.2}),
        "b_tiff": (shifted, shifted_gt, None),
        "c_nifti": (volume, volume_gt, None),
    }
    extension = {"a_png": ".png", "b_tiff": ".tif", "c_nifti": ".nii.gz"}
    for case, (pred, gt, scores) in cases.items():
        write_mask(root / "gt" / f"{case}{extension[case]}", gt[None])
        write_mask(root / "pred" / f"{case}{extension[case]}", pred[None])
        if scores is not None:
            (root / "pred" / f"{case}_instances.json").write_text(
                json.dumps({"scores": {str(k): v for k, v in scores.items()}}), encoding="utf-8")
    write_mask(root / "pred" / "extra.png", exact_gt[None])
    write_mask(root / "gt" / "missing.png", exact_gt[None])
    return cases


def test_read_mask_keeps_16_bit_ids(tmp_path: Path) -> None:
    labels = boxes((8, 8), (300, (slice(0, 2), slice(0, 2))), (65535, (slice(4, 6), slice(4, 6))))
    for name in ("ids.png", "ids.tif", "ids.nii.gz"):
        write_mask(tmp_path / name, labels[None])
        read, _ = read_mask(tmp_path / name)
        np.testing.assert_array_equal(read[0], labels)


def test_folders_give_csv_and_summary_with_pooled_ap(tmp_path: Path) -> None:
    cases = write_cases(tmp_path)
    summary = evaluate_instance_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    out = tmp_path / "pred" / "evaluation"
    assert summary.files == {n: out / n for n in ("metrics.csv", "summary.json")}
    assert not (out / "report.html").exists()
    with (out / "metrics.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3 * len(CASE_METRICS)
    value = {(r["case"], r["metric"]): float(r["value"]) for r in rows}
    assert value[("a_png", "dsb")] == 1.0 and value[("a_png", "n_gt")] == 2  # the 16-bit ids survived
    assert value[("b_tiff", "dsb")] == pytest.approx(5 / 10 / 3)  # TP = FP = FN = 1 at 0.5..0.7 (IoU 0.75)
    assert value[("b_tiff", "rq")] == pytest.approx(1 / (1 + 0.5 + 0.5))
    assert value[("c_nifti", "aji")] == pytest.approx(64 / (64 + 100))
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (data["missing"], data["extra"], data["problems"]) == (["missing"], ["extra"], {})
    assert data["metrics"]["dsb"]["mean"] == pytest.approx((1.0 + 1 / 6 + 0.5) / 3)
    # Pooled ranking (score 1 without a sidecar; ties in case order): b 5, b 9 (FP), c 7, a 300 (0.9),
    # a 40000 (0.2); 6 objects. Up to 0.75: TP FP TP TP TP, interpolated precision 1 to recall 1/6 (17
    # points), then 0.8 to 4/6 (50 points); above: FP FP TP TP TP, precision 0.6 to recall 1/2 (51 points).
    assert data["ap"]["ap50"] == pytest.approx(57 / 101) and data["ap"]["ap75"] == pytest.approx(57 / 101)
    assert data["ap"]["per_threshold"]["0.80"] == pytest.approx(0.6 * 51 / 101)
    assert data["ap"]["ap"] == pytest.approx((6 * 57 / 101 + 4 * 0.6 * 51 / 101) / 10)
    expected = InstanceEvaluation()
    for case, (pred, gt, scores) in cases.items():
        expected.add(case, pred, gt, scores)
    assert data["ap"]["ap"] == pytest.approx(expected.average_precision()["ap"])
    assert (data["ap"]["gt_instances"], data["ap"]["pred_instances"]) == (6, 5)


def test_bad_sidecars_and_sizes_leave_the_case_out(tmp_path: Path) -> None:
    write_cases(tmp_path)
    pred = tmp_path / "pred"
    (pred / "a_png_instances.json").write_text('{"scores": {"300": 0.5}}', encoding="utf-8")  # 40000 lacks
    (pred / "b_tiff_instances.json").write_text("{not json", encoding="utf-8")
    (pred / "c_nifti_instances.json").write_text('{"scores": {"7": "high"}}', encoding="utf-8")
    write_mask(tmp_path / "gt" / "d.png", np.ones((1, 8, 8), dtype=np.uint8))
    write_mask(pred / "d.png", np.ones((1, 8, 9), dtype=np.uint8))
    (pred / "e_instances.json").write_text('{"scores": {"1": 0.5}}', encoding="utf-8")
    signed = np.zeros((1, 8, 8), dtype=np.int16)
    signed[0, :2, :2] = -3
    write_mask(tmp_path / "gt" / "e.nii.gz", np.ones((1, 8, 8), dtype=np.int16))
    write_mask(pred / "e.nii.gz", np.where(signed == 0, 1, signed).astype(np.int16))
    write_mask(tmp_path / "gt" / "f.png", np.ones((1, 8, 8), dtype=np.uint8))
    write_mask(pred / "f.png", np.ones((1, 8, 8), dtype=np.uint8))  # the one good case
    summary = evaluate_instance_folders(pred, tmp_path / "gt", out_dir=tmp_path / "out", progress=False)
    problems = summary.problems
    assert set(problems) == {"a_png", "b_tiff", "c_nifti", "d", "e"} and summary.data["cases"] == 1
    assert problems["a_png"].startswith("a_png_instances.json: ") and "40000" in problems["a_png"]
    assert problems["b_tiff"].startswith("b_tiff_instances.json: not readable as JSON")
    assert problems["c_nifti"].startswith("c_nifti_instances.json: expected")
    assert problems["d"].startswith("d.png: size mismatch")
    assert problems["e"].startswith("e.nii.gz: ") and "negative" in problems["e"]  # the map, not the sidecar
    assert json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))["problems"] == problems


def test_no_case_evaluable_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_mask(tmp_path / "gt" / "a.png", boxes((8, 8), (1, (slice(0, 2), slice(0, 2))))[None])
    write_mask(tmp_path / "pred" / "a.png", np.zeros((1, 9, 8), dtype=np.uint8))
    code = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--instance", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("medseg: error: no case could be evaluated")


def test_cli_instance_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cases(tmp_path)
    out = tmp_path / "cli"
    code = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--instance", "--out", str(out),
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert "| dsb " in captured.out and "AP50" in captured.out and "3 cases evaluated" in captured.out
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert f"AP {data['ap']['ap']:.4f}" in captured.out
    code = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--instance", "--metrics", "dice"])
    assert code == 2 and "do not apply to --instance" in capsys.readouterr().err
