"""The HTML report: self-contained, escaped, with box plots, the summary table and the overlays."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.engine.report import (
    Overlay,
    ReportInfo,
    box_plot_figure,
    figure_png,
    overlay_figure,
    render_report,
    summary_table_html,
    view_box,
    write_report,
)
from medseg.metrics.aggregate import summarize

NAN = float("nan")
ROWS = [("a", 1, "dice", 0.5), ("a", 2, "dice", 0.9), ("b", 1, "dice", 0.7), ("b", 2, "dice", 0.8),
        ("a", 1, "hd", 2.0), ("a", 2, "hd", NAN), ("b", 1, "hd", 4.0), ("b", 2, "hd", NAN)]
INFO = ReportInfo(prediction_folder="/p<red>", ground_truth_folder="/gt", date="2025-01-01 00:00 UTC")


def square_overlay(case: str, with_image: bool) -> Overlay:
    truth = np.zeros((20, 30), np.uint8)
    truth[5:15, 5:15] = 1
    prediction = np.roll(truth, 3, axis=1)
    image = np.random.default_rng(0).integers(0, 120, (20, 30, 3)).astype(np.uint8) if with_image else None
    return Overlay(case, 0.7, f"{case} — Dice 0.700", image, truth, prediction, aspect=2.0)


def colour_masks(overlay: Overlay) -> tuple[np.ndarray, np.ndarray]:
    """The green (truth) and yellow (prediction) pixels of the rendered overlay."""
    png = figure_png(overlay_figure(overlay))
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    green = (pixels[..., 1] > 150) & (pixels[..., 0] < 100) & (pixels[..., 2] < 150)
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 150) & (pixels[..., 2] < 100)
    return green, yellow


def decoded_images(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]


def test_report_is_one_self_contained_file(tmp_path: Path) -> None:
    data = summarize(ROWS, missing=["m1"], extra=["e<1>"])
    data["problems"] = {"c": "size mismatch: prediction 2x2, ground truth 3x3"}
    data["classes"] = [1, 2]
    path = tmp_path / "report.html"
    write_report(path, data, ROWS, [square_overlay("worst_case", True)], [square_overlay("best_case", False)],
                 INFO)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<link" not in text and "<script" not in text and "http" not in text
    images = decoded_images(text)
    assert len(images) == 3 and all(im.format == "PNG" and im.width > 100 for im in images)
    assert "worst_case — Dice 0.700" in text and "best_case — Dice 0.700" in text
    assert "/p&lt;red&gt;" in text and "e&lt;1&gt;" in text and "<red>" not in text
    assert "size mismatch" in text and "m1" in text


def test_summary_table_has_pooled_and_per_class_statistics() -> None:
    table = summary_table_html(ROWS, ["dice", "hd"])
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    cells = [re.findall(r"<t[dh]>(.*?)</t[dh]>", row) for row in rows]
    assert cells[0][:4] == ["metric", "mean ± std", "median", "NaN"]
    assert cells[0][4:] == ["class 1: mean ± std", "class 1: median", "class 2: mean ± std",
                            "class 2: median"]
    assert cells[1] == ["dice", "0.7250 ± 0.1479", "0.7500", "0", "0.6000 ± 0.1000", "0.6000",
                        "0.8500 ± 0.0500", "0.8500"]
    assert cells[2] == ["hd", "3.0000 ± 1.0000", "3.0000", "2", "3.0000 ± 1.0000", "3.0000", "– ± –", "–"]


def test_summary_table_of_one_class_has_no_repeated_class_columns() -> None:
    table = summary_table_html([r for r in ROWS if r[1] == 1], ["dice", "hd"])
    assert "class 1" not in table and "<td>dice</td><td>0.6000 ± 0.1000</td>" in table


def test_box_plots_have_one_panel_per_metric_and_one_box_per_class() -> None:
    figure = box_plot_figure(ROWS, ["dice", "hd"])
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["dice", "hd (2 NaN)"]
    assert [t.get_text() for t in visible[0].get_xticklabels()] == ["class 1", "class 2"]
    image = Image.open(io.BytesIO(figure_png(figure)))
    assert image.width > image.height > 50


def test_overlay_draws_truth_in_green_and_prediction_in_yellow() -> None:
    for with_image in (True, False):
        green, yellow = colour_masks(square_overlay("c", with_image))
        assert green.sum() > 50 and yellow.sum() > 50


def test_report_without_worst_and_best_cases_still_renders() -> None:
    text = render_report(summarize(ROWS), ROWS, [], [], INFO)
    assert text.count("No further cases") == 2


def test_view_box_crops_around_small_objects_only() -> None:
    truth = np.zeros((200, 100), np.uint8)
    truth[50:60, 40:50] = 1
    prediction = np.zeros_like(truth)
    prediction[55:70, 45:52] = 1
    # union rows 50..69 (20 rows: pad 18), cols 40..51 (12 cols: pad 14)
    assert view_box(truth, prediction) == (slice(32, 88), slice(26, 66))
    assert view_box(np.ones_like(truth), prediction) == (slice(0, 200), slice(0, 100))
    assert view_box(0 * truth, 0 * truth) == (slice(0, 200), slice(0, 100))


def test_a_prediction_covering_the_whole_picture_is_outlined_along_its_edge() -> None:
    truth = np.zeros((40, 40), np.uint8)
    truth[10:20, 10:20] = 1
    overlay = Overlay("full", 0.1, "full", None, truth, np.ones_like(truth))
    yellow = colour_masks(overlay)[1]
    assert yellow[:, :8].sum() > 20 and yellow[:, -8:].sum() > 20 and yellow[:8].sum() > 20
