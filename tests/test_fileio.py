"""Atomic writes leave either the old file or the complete new one, never a partial file."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.fileio import (
    atomic_path,
    remove_stale_temporaries_of,
    write_bytes_atomically,
    write_text_atomically,
)


def test_write_text_creates_folders_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.md"
    write_text_atomically(target, "one")
    write_text_atomically(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
    assert [p.name for p in target.parent.iterdir()] == ["b.md"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "c.bin"
    write_bytes_atomically(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin"]


def test_stale_temporaries_of_one_target_are_removed(tmp_path: Path) -> None:
    """What killed writers of ``a[1].png`` left (a file, a staging folder) goes; other files stay."""
    (tmp_path / ".a[1].png.x1.tmp").write_bytes(b"half")
    (tmp_path / ".a[1].png.x2.tmp").mkdir()
    (tmp_path / ".a[1].png.x2.tmp" / "a[1].png").write_bytes(b"half")
    keep = [tmp_path / "a[1].png", tmp_path / ".b.png.x3.tmp", tmp_path / ".a[1].png.x4.part"]
    for path in keep:
        path.write_bytes(b"keep")
    removed = remove_stale_temporaries_of(tmp_path / "a[1].png")
    assert [p.name for p in removed] == [".a[1].png.x1.tmp", ".a[1].png.x2.tmp"]
    assert sorted(tmp_path.iterdir()) == sorted(keep)
