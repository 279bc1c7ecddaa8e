"""The ``medseg`` command: models, benchmark, errors (one line, exit code 2), --version and --help."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch import nn

from medseg import __version__, layers
from medseg.cli import COMMANDS, main
from medseg.engine.benchmark import TABLE_COLUMNS
from medseg.models import registry
from medseg.models.registry import list_models, register_model

TINY = "_test_cli_tiny"


def build_single_conv(*, in_channels: int, num_classes: int, spatial_dims: int) -> nn.Module:
    return layers.conv(spatial_dims, in_channels, num_classes, 3)


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> Iterator[None]:
    register_model(TINY, paper="Nobody 2024, A one-conv test network: nothing more", dims=(2,),
                   default_loss="ce", input_multiple=4)(build_single_conv)
    yield
    registry.unregister_model(TINY)


def benchmark_args(out: Path, *extra: str) -> list[str]:
    return ["benchmark", TINY, "--size", "16", "--repeats", "1", "--warmup", "0", "--no-progress",
            "--out", str(out), *extra]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("medseg: error: ")
    return lines[0]


def test_models_lists_every_model_with_its_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(list_models()) <= set(rows)
    tiny = [cell.strip() for cell in rows[TINY].strip("|").split("|")]
    assert tiny == [TINY, "-", "2D", "10", "ce", "4", "Nobody 2024, A one-conv test network"]


def test_benchmark_writes_the_table_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" / "bench.md"
    assert main(benchmark_args(out)) == 0
    printed = capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert printed.strip() in text
    assert "- machine: CPU: " in text and "torch " in text and "threads" in text
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == [*TABLE_COLUMNS, f"latency vs {TINY}"]
    row = next(line for line in text.splitlines() if line.startswith(f"| {TINY}"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:3] == ["2D", "1x1x16x16"]
    assert cells[-1] == "1.00x"
    assert [p.name for p in out.parent.iterdir()] == ["bench.md"]  # no temporary file left


def test_benchmark_skips_unsupported_dims_with_a_note(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.md"
    assert main(benchmark_args(out, "--dims", "2", "3")) == 0
    assert f"{TINY}: skipped in 3D (supports 2D)" in capsys.readouterr().err
    text = out.read_text(encoding="utf-8")
    assert f"- {TINY}: skipped in 3D" in text
    assert "| 3D " not in text


def test_unknown_model_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.md"
    assert main(["benchmark", TINY + "x", "--out", str(out)]) == 2
    assert f"did you mean {TINY}" in error_line(capsys)
    assert not out.exists()


def test_bad_size_names_the_sizes_that_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", TINY, "--size", "18", "--out", str(tmp_path / "b.md")]) == 2
    assert "nearest: 16 or 20" in error_line(capsys)


def test_unsupported_dims_only_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", TINY, "--dims", "3", "--out", str(tmp_path / "b.md")]) == 2
    assert "supports 2D only" in error_line(capsys)


@pytest.mark.parametrize("args", [["benchmark", TINY, "--size", "0"], ["benchmark", TINY, "--dims", "4"],
                                  ["benchmark"], ["no-such-command"]])
def test_argparse_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "medseg" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"medseg {__version__}"


@pytest.mark.parametrize("command", [None, *(c.name for c in COMMANDS)])
def test_help_on_every_command(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"] if command else ["--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: medseg {command or ''}".rstrip())


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: medseg" in capsys.readouterr().err


def test_exit_code_and_single_line_through_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "medseg.cli", "benchmark", "unett", "--out",
                           str(tmp_path / "b.md")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: unknown model 'unett'")
