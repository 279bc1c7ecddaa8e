"""The evaluation report: one self-contained HTML file (figures embedded as base64 PNG, inline CSS).

Sections: a header (folders, date, cases, classes, missing / extra predictions, cases left out), the
summary table (mean ± std and median per metric, pooled and per class, with the count of non-finite
values), box plots of every metric (one subplot per metric, one box per class, non-finite values left out
and counted in the title) and overlays of the worst and best cases by Dice: the image (or the ground
truth as grey when no image is found) with the contours of the truth (green, solid) and the prediction
(yellow, dashed: red would vanish on endoscopy images), cropped around both when they are small; for 3D
cases the slice along the first array axis with the most wrong voxels.

Figures are drawn with matplotlib's object API (``Figure`` + Agg), so the global pyplot state and
backend are never touched.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure

from medseg.fileio import write_text_atomically
from medseg.metrics.aggregate import Row, statistics, values_by_metric

TRUTH_COLOUR = "#22c55e"
PREDICTION_COLOUR = "#facc15"
BOX_COLUMNS = 4
DPI = 96

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #1f2937; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #e5e7eb; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #e5e7eb; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f4f6; } td:first-child, th:first-child { text-align: left; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; word-break: break-all; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; text-align: center; } figcaption { font-size: 0.85em; margin-top: 0.3em; }
img { max-width: 100%; } .note { color: #6b7280; font-size: 0.9em; }
.warn { color: #b45309; } td.text { text-align: left; }
"""


@dataclass(frozen=True)
class Overlay:
    """One case drawn in the report.

    Attributes:
        case_id: the case id.
        score: its Dice (mean over the classes), shown in the caption.
        caption: the text under the picture.
        image: the uint8 picture of :func:`medseg.engine.display.display_image`, ``[H, W]`` grey or
            ``[H, W, 3]`` RGB, or ``None`` (the truth is shown as grey).
        truth, prediction: ``[H, W]`` label maps (0 = background).
        aspect: the height / width of a pixel (the spacing ratio of the two axes).
    """

    case_id: str
    score: float
    caption: str
    image: np.ndarray | None
    truth: np.ndarray
    prediction: np.ndarray
    aspect: float = 1.0


@dataclass(frozen=True)
class ReportInfo:
    """The header of the report."""

    prediction_folder: str
    ground_truth_folder: str
    date: str
    title: str = "medseg evaluation"


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------

def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def box_plot_figure(rows: Sequence[Row], metrics: Sequence[str]) -> Figure:
    """One subplot per metric with one box per class (finite values; the NaN count in the title)."""
    grouped = values_by_metric(rows)
    names = [m for m in metrics if m in grouped]
    columns = max(1, min(BOX_COLUMNS, len(names)))
    lines = max(1, math.ceil(len(names) / columns))
    figure = Figure(figsize=(3.0 * columns, 2.3 * lines + 0.3))
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.3 / (2.3 * lines + 0.3) + 0.04 / lines,
                           top=1 - 0.25 / (2.3 * lines + 0.3), wspace=0.35, hspace=0.45)
    for ax, name in zip(axes, names, strict=False):
        by_class = grouped[name]
        values = [np.asarray(v, dtype=float) for v in by_class.values()]
        finite = [v[np.isfinite(v)] for v in values]
        nan = sum(v.size - f.size for v, f in zip(values, finite, strict=True))
        ax.set_title(name + (f" ({nan} NaN)" if nan else ""), fontsize=10)
        if not any(f.size for f in finite):
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            continue
        ax.boxplot(finite, widths=0.5, flierprops={"markersize": 3, "alpha": 0.6})
        ax.set_xticks(range(1, len(finite) + 1), labels=[f"class {c}" for c in by_class])
        ax.tick_params(labelsize=8)
        ax.locator_params(axis="y", nbins=5)  # fewer tick labels: readable, and half the drawing time
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return figure


def view_box(truth: np.ndarray, prediction: np.ndarray, full: float = 0.7) -> tuple[slice, ...]:
    """The part of the picture to show: the box around truth and prediction, widened by half its size
    and 8 pixels on each side; the whole picture when that covers ``full`` of both axes or more, or
    when both masks are empty."""
    union = (truth != 0) | (prediction != 0)
    if not union.any():
        return tuple(slice(0, n) for n in union.shape)
    box = []
    for axis, n in enumerate(union.shape):
        hits = np.flatnonzero(union.any(axis=1 - axis))
        low, high = int(hits[0]), int(hits[-1]) + 1
        pad = (high - low) // 2 + 8
        box.append(slice(max(0, low - pad), min(n, high + pad)))
    if all(b.stop - b.start >= full * n for b, n in zip(box, union.shape, strict=True)):
        return tuple(slice(0, n) for n in union.shape)
    return tuple(box)


def _contours(ax: Any, labels: np.ndarray, colour: str, style: Any) -> None:
    """One contour per label value; the masks get a background border, so that a mask touching the
    picture's edge (up to a prediction covering all of it) is outlined along the edge too."""
    outline = [patheffects.withStroke(linewidth=3.2, foreground="black", alpha=0.55)]
    rows, columns = np.arange(-1, labels.shape[0] + 1), np.arange(-1, labels.shape[1] + 1)
    for value in np.unique(labels):
        if value != 0:
            mask = np.pad(labels == value, 1).astype(np.float32)
            lines = ax.contour(columns, rows, mask, levels=[0.5], colors=colour, linewidths=1.5,
                               linestyles=style)
            lines.set_path_effects(outline)
            lines.set_clip_on(False)  # a contour along the picture's edge is drawn whole, in the margin


def overlay_figure(overlay: Overlay, size: float = 3.6) -> Figure:
    """The image with the contours of the truth (green, solid) and the prediction (yellow, dashed),
    cropped around them by :func:`view_box`; the truth's labels as grey when there is no image."""
    box = view_box(overlay.truth, overlay.prediction)
    truth, prediction = overlay.truth[box], overlay.prediction[box]
    figure = Figure(figsize=(size, size))
    ax = figure.add_axes((0.015, 0.015, 0.97, 0.97))
    if overlay.image is not None:
        shown, cmap, vmax = overlay.image[box], "gray" if overlay.image.ndim == 2 else None, 255
    else:
        top = max(int(overlay.truth.max(initial=0)), 1)
        shown, cmap, vmax = 0.15 + 0.5 * truth / top, "gray", 1
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=vmax, aspect=overlay.aspect, interpolation="nearest")
    _contours(ax, truth, TRUTH_COLOUR, "solid")
    _contours(ax, prediction, PREDICTION_COLOUR, [(0, (4, 2.5))])
    ax.set_xlim(-0.5, truth.shape[1] - 0.5)
    ax.set_ylim(truth.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    return figure


# ----------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------

def _number(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def _listed(ids: Sequence[str], what: str) -> str:
    if not ids:
        return "none"
    items = ", ".join(html.escape(i) for i in ids)
    return f'<span class="warn">{len(ids)}</span> <details><summary>{what}</summary>{items}</details>'


def header_html(info: ReportInfo, data: dict[str, Any]) -> str:
    """The folders, date, case counts and the unmatched and left-out cases."""
    problems = data.get("problems", {})
    fields = [("predictions", html.escape(info.prediction_folder)),
              ("ground truth", html.escape(info.ground_truth_folder)),
              ("date", html.escape(info.date)),
              ("cases evaluated", str(data["cases"])),
              ("classes", ", ".join(str(c) for c in data.get("classes", []))),
              ("missing predictions", _listed(data["missing"], "ground-truth cases without a prediction")),
              ("extra predictions", _listed(data["extra"], "predictions without a ground truth")),
              ("cases left out", _listed(sorted(problems), "cases with a problem (see below)"))]
    if "nsd_tolerance" in data:
        fields.insert(5, ("NSD tolerance", f"{data['nsd_tolerance']:g} (ground-truth spacing units)"))
    items = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields)
    text = f"<h1>{html.escape(info.title)}</h1>\n<dl class=\"meta\">\n{items}\n</dl>"
    if problems:
        lines = "\n".join(f'<tr><td>{html.escape(c)}</td><td class="text">{html.escape(p)}</td></tr>'
                          for c, p in problems.items())
        text += f"\n<h2>Problems</h2>\n<table><tr><th>case</th><th>problem</th></tr>\n{lines}\n</table>"
    return text


def summary_table_html(rows: Sequence[Row], metrics: Sequence[str]) -> str:
    """Mean ± std and median per metric over all (case, class) values, then per class (when several)."""
    grouped = values_by_metric(rows)
    classes = sorted({label for by_class in grouped.values() for label in by_class})
    classes = classes if len(classes) > 1 else []  # one class: its columns would repeat the pooled ones
    head = "<tr><th>metric</th><th>mean ± std</th><th>median</th><th>NaN</th>" + "".join(
        f"<th>class {c}: mean ± std</th><th>class {c}: median</th>" for c in classes) + "</tr>"
    body = []
    for name in (m for m in metrics if m in grouped):
        pooled = statistics(v for values in grouped[name].values() for v in values)
        cells = [html.escape(name), f"{_number(pooled.mean)} ± {_number(pooled.std)}", _number(pooled.median),
                 str(pooled.nan)]
        for c in classes:
            stats = statistics(grouped[name].get(c, []))
            cells += [f"{_number(stats.mean)} ± {_number(stats.std)}", _number(stats.median)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    note = ('<p class="note">Statistics over finite values; NaN counts the non-finite ones (e.g. a surface '
            "distance when one mask is empty). Standard deviation: population (ddof = 0).</p>")
    return "<table>\n" + head + "\n" + "\n".join(body) + "\n</table>\n" + note


def _gallery(overlays: Sequence[Overlay]) -> str:
    if not overlays:
        return '<p class="note">No further cases (all are shown above).</p>'
    figures = []
    for overlay in overlays:
        uri = data_uri(figure_png(overlay_figure(overlay)))
        figures.append(f'<figure><img src="{uri}" alt="{html.escape(overlay.case_id)}" width="340">'
                       f"<figcaption>{html.escape(overlay.caption)}</figcaption></figure>")
    return '<div class="gallery">\n' + "\n".join(figures) + "\n</div>"


def render_report(data: dict[str, Any], rows: Sequence[Row], worst: Sequence[Overlay],
                  best: Sequence[Overlay], info: ReportInfo) -> str:
    """The whole report as one HTML string."""
    metrics = list(data["metrics"])
    boxes = data_uri(figure_png(box_plot_figure(rows, metrics)))
    legend = (f'<p class="note">Ground truth: <b style="color:{TRUTH_COLOUR}">green, solid</b>; '
              f'prediction: <b style="color:{PREDICTION_COLOUR};background:#555">yellow, dashed</b>. Views '
              "are cropped around truth and prediction when these are small. 3D cases: the slice along the "
              "first array axis with the most voxels where prediction and truth differ. Dice: mean over the "
              "classes.</p>")
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(info.title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        header_html(info, data),
        "<h2>Summary</h2>", summary_table_html(rows, metrics),
        "<h2>Box plots</h2>", f'<img src="{boxes}" alt="box plots of the metrics">',
        "<h2>Worst cases by Dice</h2>", legend, _gallery(worst),
        "<h2>Best cases by Dice</h2>", _gallery(best),
        "</body>", "</html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(path: str | Path, data: dict[str, Any], rows: Sequence[Row], worst: Sequence[Overlay],
                 best: Sequence[Overlay], info: ReportInfo) -> None:
    """Write :func:`render_report` to ``path`` atomically."""
    write_text_atomically(path, render_report(data, rows, worst, best, info))
