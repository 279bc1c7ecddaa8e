"""``medseg check``: read every case of a data set and report all of its problems at once.

Each problem is a :class:`~medseg.data.datasets.Problem` ``(path, problem)`` printed as ``PATH: problem``:
unreadable or truncated files, images without masks and masks without images, image/mask size or
geometry mismatches, channel counts that differ between cases (or from ``dataset.json``), label values
outside the declared classes, non-integer labels, NaN/Inf voxels, empty folders. The summary gives the
number of cases, the image size and spacing ranges (min/median/max per axis), the channel counts and the
class frequencies (voxel fraction and number of cases containing each label value), the figures of
nnU-Net's dataset fingerprint that a user checks first.

Each file is decoded once; an image is only described (:func:`~medseg.data.io.inspect_image`: channels,
shape, geometry, NaN/Inf counts), not converted, and label values are counted with ``np.bincount``. Cases
are checked in a process pool (``workers``, default one per core); the report is the same, in the same
order, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from medseg.data.cases import channel_problem, label_problem
from medseg.data.datasets import Case, Dataset, Problem, scan_dataset
from medseg.data.formats.base import ImageInfo
from medseg.data.geometry import DataError, Geometry
from medseg.data.io import inspect_image, read_mask

T = TypeVar("T")

#: Label values listed one per line in the summary before the rest are counted.
_MAX_CLASS_LINES = 20
_AXES = {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}
#: Label maps spanning fewer values are counted value by value; others whose values all lie in
#: ``0 .. _MAX_BINCOUNT_LABEL`` with ``np.bincount``; the rest with ``np.unique``.
_FEW_LABELS = 8
_MAX_BINCOUNT_LABEL = 1 << 16


@dataclass
class CaseStats:
    """What the summary needs of one case whose image was read."""

    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    channels: int
    label_counts: dict[int, int] | None = None


#: What :func:`check_case` returns: the case's stats (``None`` when its image could not be read), problems.
CaseResult = tuple[CaseStats | None, list[Problem]]


@dataclass
class CheckReport:
    """The problems and the summary figures of one data set."""

    root: Path
    layout: str | None
    num_cases: int = 0
    num_test_cases: int = 0
    problems: list[Problem] = field(default_factory=list)
    stats: list[CaseStats] = field(default_factory=list)
    class_names: dict[int, str] | None = None
    channel_names: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary_lines(self) -> list[str]:
        """``layout``, ``cases: N``, channels, sizes, spacings and class frequencies."""
        lines = [f"layout: {self.layout or 'not recognised'} ({self.root})", f"cases: {self.num_cases}"]
        if self.num_test_cases:
            lines.append(f"test cases: {self.num_test_cases}")
        if not self.stats:
            return lines
        lines.append(f"channels: {_channels_text(self.stats, self.channel_names)}")
        dims = Counter(len(s.shape) for s in self.stats).most_common(1)[0][0]
        same_dims = [s for s in self.stats if len(s.shape) == dims]
        axes = ", ".join(_AXES.get(dims, tuple(f"a{i}" for i in range(dims))))
        lines.append(f"size ({axes}): {_range_text([s.shape for s in same_dims], integers=True)}")
        lines.append(f"spacing ({axes}): {_range_text([s.spacing for s in same_dims], integers=False)}")
        lines += _class_lines([s.label_counts for s in self.stats if s.label_counts is not None],
                              self.class_names)
        return lines

    def lines(self) -> list[str]:
        """The whole report: one line per problem, the summary, then the verdict."""
        count = len(self.problems)
        verdict = "no problems found" if self.ok else f"{count} problem{'s' if count != 1 else ''} found"
        return [*map(str, self.problems), *self.summary_lines(), verdict]


def default_workers() -> int:
    """The number of cores this process may run on (``os.cpu_count()`` where affinity is unknown)."""
    with contextlib.suppress(AttributeError, OSError):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def check_dataset(path: str | Path, num_classes: int | None = None, progress: bool = True,
                  channels_suffix: bool | None = None, allow_outside_root: bool = False,
                  workers: int | None = None) -> CheckReport:
    """Read every case of the data set at ``path`` and collect all of its problems.

    Args:
        path: a data set folder or list (any layout :func:`~medseg.data.datasets.load_dataset` takes).
        num_classes: the number of classes the labels may hold (values ``0 .. num_classes - 1``; 1 means
            binary, ``{0, 1}``); by default the classes of ``dataset.json`` when it declares them,
            else label values are not checked.
        progress: show a progress bar over the cases on stderr.
        channels_suffix: read ``{case}_{XXXX}`` files as channels of one case (``None``: only in the
            Decathlon / nnU-Net layout; see :func:`~medseg.data.datasets.load_dataset`).
        allow_outside_root: let a CSV/JSON list name files outside its folder (else each is a problem).
        workers: processes reading cases (default: :func:`default_workers`); 0 reads them in this
            process. The report does not depend on it.

    Raises:
        DataError: only when ``path`` does not exist; every other problem is in the report.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    try:
        dataset, errors = scan_dataset(path, channels_suffix, allow_outside_root)
    except DataError as exc:
        return CheckReport(root=path, layout=None, problems=[Problem(exc.path, exc.problem)])
    report = CheckReport(root=dataset.root, layout=dataset.layout, num_cases=len(dataset.cases),
                         num_test_cases=len(dataset.test_cases),
                         problems=[*errors, *dataset.unmatched, *dataset.warnings],
                         class_names=dataset.class_names, channel_names=dataset.channel_names)
    allowed = _allowed_labels(dataset, num_classes)
    cases = [*dataset.cases, *dataset.test_cases]
    read_cases = []
    results = _check_cases(cases, allowed, default_workers() if workers is None else workers, progress)
    for case, (stats, problems) in zip(cases, results, strict=True):
        report.problems += problems
        if stats is not None:
            report.stats.append(stats)
            read_cases.append(case)
    report.problems += _consistency_problems(read_cases, report.stats, dataset)
    return report


def check_case(case: Case, allowed: tuple[set[int], str] | None = None) -> CaseResult:
    """Read one case and list its problems; the stats are ``None`` when its image could not be read.

    ``allowed`` is the set of permitted label values and where it comes from (for the message).
    """
    problems: list[Problem] = []
    image = _read_channels(case.images, problems)
    label = _read(case.label, problems, read_mask) if case.label is not None else None
    label_counts = _label_counts(case.label, label[0], allowed, problems) if label is not None else None
    if image is None:
        return None, problems
    if label is not None:
        assert case.label is not None
        problem = label_problem(case.images[0], _grid(image), label[1].with_shape(tuple(label[0].shape[1:])))
        problems += [Problem(case.label, problem)] if problem else []
    stats = CaseStats(case.case_id, image.shape, tuple(float(s) for s in image.geometry.spacing),
                      image.channels, label_counts)
    return stats, problems


def _check_cases(cases: Sequence[Case], allowed: tuple[set[int], str] | None, workers: int,
                 progress: bool) -> list[CaseResult]:
    """:func:`check_case` of each case, in order, in a pool of ``workers`` processes (0: here)."""
    check = functools.partial(check_case, allowed=allowed)
    bar = tqdm(total=len(cases), desc="check", unit="case", file=sys.stderr, disable=not progress,
               leave=False)
    results: list[CaseResult] = []
    with bar, process_pool(workers, len(cases)) as pool:
        chunksize = max(1, min(8, len(cases) // (4 * max(workers, 1))))
        for result in map(check, cases) if pool is None else pool.map(check, cases, chunksize=chunksize):
            results.append(result)
            bar.update()
    return results


@contextlib.contextmanager
def process_pool(workers: int, num_cases: int) -> Iterator[Executor | None]:
    """A pool of ``workers`` processes (forked where possible: no start-up imports), or ``None`` for 0
    workers or a single case."""
    if workers < 1 or num_cases < 2:
        yield None
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork") if "fork" in methods else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: workers use no threads
        with ProcessPoolExecutor(max_workers=min(workers, num_cases), mp_context=context) as pool:
            yield pool


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------

def _read(path: Path, problems: list[Problem], reader: Callable[[Path], T]) -> T | None:
    """``reader(path)`` (:func:`inspect_image` or :func:`read_mask`), or ``None`` with the reason added to
    ``problems``."""
    try:
        return reader(path)
    except DataError as exc:
        problems.append(Problem(exc.path, exc.problem))
    except Exception as exc:  # a reader's own failure still becomes one line about the file
        problems.append(Problem(path, f"cannot read: {type(exc).__name__}: {' '.join(str(exc).split())}"))
    return None


def _read_channels(paths: Sequence[Path], problems: list[Problem]) -> ImageInfo | None:
    """The case's channel files read, with their NaN/Inf voxels and mismatches reported; the info of the
    first with the channels of all."""
    parts = [(p, _read(p, problems, inspect_image)) for p in paths]
    for p, part in parts:
        if part is not None:
            problems += _non_finite_problems(p, part)
    if any(part is None for _, part in parts):
        return None
    (first, info), *others = parts
    for p, other in others:
        assert info is not None and other is not None
        problem = channel_problem(first, _grid(info), p, _grid(other))
        if problem:
            problems.append(Problem(p, problem))
            return None
    return replace(info, channels=sum(part.channels for _, part in parts if part is not None))


def _non_finite_problems(path: Path, info: ImageInfo) -> list[Problem]:
    found = [f"{n} {kind} voxels" for n, kind in ((info.nan, "NaN"), (info.inf, "Inf")) if n]
    return [Problem(path, f"contains {' and '.join(found)}")] if found else []


# ----------------------------------------------------------------------------------------------------
# Labels and pairs
# ----------------------------------------------------------------------------------------------------

def _allowed_labels(dataset: Dataset, num_classes: int | None) -> tuple[set[int], str] | None:
    """The permitted label values and their source: ``num_classes`` first, then ``dataset.json``."""
    if num_classes is not None:
        return set(range(max(num_classes, 2))), f"--num-classes {num_classes}"
    if dataset.class_names:
        return set(dataset.class_names), "dataset.json"
    return None


def _label_counts(path: Path, label: np.ndarray, allowed: tuple[set[int], str] | None,
                  problems: list[Problem]) -> dict[int, int]:
    """The voxel count of each label value; values outside ``allowed`` are added to ``problems``.

    (:func:`~medseg.data.io.read_mask` has already refused non-integer, NaN and multi-channel labels.)
    """
    label_counts = _value_counts(label)
    if allowed is not None:
        outside = sorted(set(label_counts) - allowed[0])
        if outside:
            problems.append(Problem(path, f"label values {_list_text(outside)} outside the declared classes "
                                          f"{_list_text(sorted(allowed[0]))} ({allowed[1]})"))
    return label_counts


def _value_counts(label: np.ndarray) -> dict[int, int]:
    """``{value: voxel count}`` of the values present, ascending: a comparison pass per value when there
    are few, ``np.bincount`` for small non-negative values (linear time, where ``np.unique`` sorts)."""
    if label.size and np.issubdtype(label.dtype, np.integer):
        low, high = int(label.min()), int(label.max())
        if high - low < _FEW_LABELS:
            counts = {v: int(np.count_nonzero(label == v)) for v in range(low, high + 1)}
            return {v: c for v, c in counts.items() if c}
        if low >= 0 and high <= _MAX_BINCOUNT_LABEL:
            counts = np.bincount(label.ravel().astype(np.intp, copy=False), minlength=high + 1)
            return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(label, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _grid(info: ImageInfo) -> Geometry:
    """The geometry of an inspected image, with its spatial shape."""
    return info.geometry.with_shape(tuple(info.shape))


# ----------------------------------------------------------------------------------------------------
# Consistency across cases
# ----------------------------------------------------------------------------------------------------

def _consistency_problems(cases: Sequence[Case], stats: Sequence[CaseStats], dataset: Dataset
                          ) -> list[Problem]:
    """Cases whose channel count or number of spatial dimensions differs from the others'."""
    problems = []
    if dataset.channel_names:
        expected = len(dataset.channel_names)
        reason = f"dataset.json declares {expected} ({', '.join(dataset.channel_names)})"
    else:
        expected, reason = _majority((s.channels for s in stats), "channels", len(stats))
    problems += [Problem(c.images[0], f"{s.channels} channels, but {reason}")
                 for c, s in zip(cases, stats, strict=True) if s.channels != expected]
    dims, reason = _majority((len(s.shape) for s in stats), "spatial dimensions", len(stats))
    problems += [Problem(c.images[0], f"{len(s.shape)} spatial dimensions, but {reason}")
                 for c, s in zip(cases, stats, strict=True) if len(s.shape) != dims]
    return problems


def _majority(values: Iterable[int], what: str, total: int) -> tuple[int | None, str]:
    counts = Counter(values).most_common(1)
    if not counts:
        return None, ""
    value, count = counts[0]
    return value, f"{count} of {total} cases have {value} {what}"


# ----------------------------------------------------------------------------------------------------
# Summary text
# ----------------------------------------------------------------------------------------------------

def _list_text(values: Sequence[int]) -> str:
    shown = ", ".join(str(v) for v in values[:_MAX_CLASS_LINES])
    return "{" + shown + (", ..." if len(values) > _MAX_CLASS_LINES else "") + "}"


def _range_text(rows: Sequence[Sequence[float]], integers: bool) -> str:
    """``min A x B, median C x D, max E x F`` over the rows, per axis."""
    table = np.asarray(rows, float)
    parts = []
    for name, values in (("min", table.min(0)), ("median", np.median(table, 0)), ("max", table.max(0))):
        parts.append(f"{name} " + " x ".join(f"{v:g}" if integers else f"{v:.4g}" for v in values))
    return ", ".join(parts)


def _channels_text(stats: Sequence[CaseStats], names: Sequence[str] | None) -> str:
    counts = Counter(s.channels for s in stats)
    text = ", ".join(f"{c} ({n} case{'s' if n != 1 else ''})" for c, n in sorted(counts.items()))
    return text + (f"; dataset.json: {', '.join(names)}" if names else "")


def _class_lines(label_counts: Sequence[dict[int, int]], names: dict[int, str] | None) -> list[str]:
    """One line per label value: its share of all label voxels and the number of cases that hold it."""
    if not label_counts:
        return ["classes: no label read"]
    voxels: Counter[int] = Counter()
    present: Counter[int] = Counter()
    for counts in label_counts:
        voxels.update(counts)
        present.update(v for v, c in counts.items() if c)
    total = sum(voxels.values())
    values = sorted(set(voxels) | set(names or {}))
    lines = [f"classes ({len(label_counts)} labels; voxel fraction, cases containing the class):"]
    for value in values[:_MAX_CLASS_LINES]:
        name = f" {names[value]}" if names and value in names else ""
        lines.append(f"  {value}{name}: {voxels[value] / max(total, 1):.4%} of voxels, "
                     f"in {present[value]} case{'s' if present[value] != 1 else ''}")
    if len(values) > _MAX_CLASS_LINES:
        lines.append(f"  ... {len(values) - _MAX_CLASS_LINES} more label values (up to {values[-1]})")
    return lines
