"""The run directory: one folder per training run holding its resolved config, split, checkpoints, logs,
plots and predictions (names fixed here so the trainer, ``predict`` and the report agree)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from medseg.engine.checkpoint import checkpoint_paths
from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

__all__ = ["RunPaths", "discard_new_run", "prepare_run_dir", "remove_stale_temporaries"]


@dataclass(frozen=True)
class RunPaths:
    """The files of a run directory ``root`` (build with :meth:`at`)."""

    root: Path
    config: Path
    splits: Path
    last: Path
    best: Path
    log: Path
    progress: Path
    tensorboard: Path
    predictions: Path

    @classmethod
    def at(cls, root: str | Path) -> RunPaths:
        root = Path(root)
        last, best = checkpoint_paths(root)
        return cls(root=root, config=root / "config.yaml", splits=root / "splits.json", last=last, best=best,
                   log=root / "log.csv", progress=root / "progress.png", tensorboard=root / "tensorboard",
                   predictions=root / "predictions")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the hidden ``.NAME.*.tmp`` files that killed atomic writers left in ``folder`` (call only
    when no other process writes there, e.g. on resume); returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed


def prepare_run_dir(run_dir: str | Path, resume: bool = False) -> RunPaths:
    """Create (or, with ``resume``, reopen) a run directory.

    A new run refuses a folder that already holds a run (``last.pt``), so nothing is overwritten by
    accident; a resumed run needs its ``last.pt`` and loses the temporaries of the interrupted writes.
    """
    paths = RunPaths.at(run_dir)
    if resume:
        if not paths.last.is_file():
            raise MedsegError(f"cannot resume: {paths.last} not found (run directory {paths.root})")
        remove_stale_temporaries(paths.root)
        return paths
    if paths.last.is_file():
        raise MedsegError(f"run directory {paths.root} already holds a run ({paths.last.name}); resume it "
                          "with --resume or choose another run_dir")
    paths.root.mkdir(parents=True, exist_ok=True)
    return paths


def discard_new_run(paths: RunPaths, created: bool) -> None:
    """Undo the set-up of a new run whose data turned out unusable: the whole folder when the run created
    it (nothing else can be in it), else only the config and split it wrote."""
    if created:
        shutil.rmtree(paths.root, ignore_errors=True)
        return
    for path in (paths.config, paths.splits):
        path.unlink(missing_ok=True)
    remove_stale_temporaries(paths.root)
