"""The export sweep (benchmarks/export_all.py): every registered model either exports to both formats
within the tolerance or is listed, per format, in the README's export section with its reason."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import export_all  # noqa: E402

from medseg.engine.export import RELATIVE_TOLERANCE, TOLERANCE, ExportResult  # noqa: E402
from medseg.models.registry import list_models  # noqa: E402


def readme_exceptions() -> dict[str, set[str]]:
    """``{model: {formats}}`` from the README's lines ``- `model`, `other` (torchscript, onnx): reason``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("#### Export", 1)[1].split("\n#", 1)[0]
    listed: dict[str, set[str]] = {}
    line = re.compile(r"^- ((?:`[\w+]+`(?:, )?)+) \(([a-z, ]+)\):", flags=re.MULTILINE)
    for names, formats in line.findall(section):
        for name in re.findall(r"`([\w+]+)`", names):
            listed[name] = {f.strip() for f in formats.split(",")}
    return listed


def test_readme_lists_only_registered_models() -> None:
    listed = readme_exceptions()
    assert listed, "the README's export section lists no model"
    assert set(listed) <= {*list_models(), export_all.POINTREND}
    assert listed["unext_s"] == {"onnx"} and listed["enet"] == {"torchscript", "onnx"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [*list_models(), export_all.POINTREND])
def test_every_model_exports_or_is_listed_with_its_reason(tmp_path: Path, name: str) -> None:
    pytest.importorskip("onnxruntime")
    dims = export_all.model_info("unet" if name == export_all.POINTREND else name)["dims"]
    outcome = export_all.sweep(name, 2 if 2 in dims else 3, tmp_path)
    failed = {fmt for fmt, result in outcome.results.items() if isinstance(result, str)}
    assert failed == readme_exceptions().get(name, set()), outcome.results
    for result in outcome.results.values():
        if isinstance(result, ExportResult):
            assert result.max_abs_diff <= TOLERANCE + RELATIVE_TOLERANCE * result.logit_scale
