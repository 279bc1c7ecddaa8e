"""Data set layouts: find the cases (image channels and label) of a folder or a list, and split them.

:func:`load_dataset` recognises three layouts from file names alone (nothing is read here):

- **paired folders**: ``ROOT/images/`` and ``ROOT/masks/`` (or ``labels/``, ``gt/``, ``ground_truth/``);
  a mask belongs to the image whose name it repeats, possibly followed by a suffix (``_mask``, ``_seg``,
  ``_gt``, ``_label``, ``-mask``, ...) and possibly with another extension (image ``.jpg``, mask ``.png``).
- **Decathlon / nnU-Net**: ``imagesTr/``, ``labelsTr/``, optional ``imagesTs/`` and ``dataset.json``
  (the Medical Segmentation Decathlon's ``modality``/``labels``/``training`` keys, or nnU-Net v2's
  ``channel_names``/``labels``/``file_ending``). nnU-Net stores one file per channel with the suffixes
  ``_0000``, ``_0001``, ...; the Decathlon's own ``imagesTr`` holds one (possibly 4D) file per case.

The channel-suffix rule (``{case}_{XXXX}`` files are channels of one case) applies only to this layout,
or where the user declares it (``channels_suffix=True``: the ``data.channels_suffix`` key, or
``--channels-suffix``). Elsewhere every image file is one case whatever its name: PolypGen's
``10_endocv2021_positive_0000.jpg`` is a case of its own in a paired folder.
- **an explicit list**: a CSV file (columns ``image`` or ``image_0``, ``image_1``, ..., ``label``,
  optional ``case_id``) or a JSON file (a list of objects with the same keys, or the Decathlon's
  ``{"training": [...]}``), paths relative to the list's folder.

Problems that do not stop the discovery (an image without a mask, two masks for one image, a missing
channel, a duplicate case id) are collected as :class:`Problem` pairs by :func:`scan_dataset`, so that
``medseg check`` can report all of them at once; :func:`load_dataset` turns them into one
:class:`~medseg.data.geometry.DataError`.

Splits follow nnU-Net's ``splits_final.json``: a list of ``{"train": [...], "val": [...]}`` folds.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medseg.config_types import ConfigError
from medseg.data.geometry import DataError
from medseg.data.io import case_id as file_case_id
from medseg.data.io import image_extension, strip_extension
from medseg.errors import MedsegError, check_choice
from medseg.fileio import write_text_atomically

logger = logging.getLogger(__name__)

PAIRED = "paired"
DECATHLON = "decathlon"
LIST = "list"

_LAYOUT_NAMES = {PAIRED: "a paired folder", DECATHLON: "a Decathlon / nnU-Net data set",
                 LIST: "a CSV/JSON list"}

IMAGE_FOLDERS = ("images", "image", "imgs")
MASK_FOLDERS = ("masks", "mask", "labels", "label", "gt", "ground_truth", "groundtruth")

#: A mask name is its image's name plus one of these words after ``_``, ``-``, ``.`` or a space.
_MASK_SUFFIX = re.compile(
    r"^(?P<key>.+?)[_\-. ](?:mask|masks|seg|segmentation|gt|label|labels|lbl|annotation|annot)$",
    re.IGNORECASE)
#: An image name may carry a word of its own (``case_img.png`` with ``case_mask.png``).
_IMAGE_SUFFIX = re.compile(r"^(?P<key>.+?)[_\-. ](?:img|image|images|input)$", re.IGNORECASE)
#: nnU-Net's channel suffix: ``{case}_{XXXX}`` (four digits).
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

#: Problems listed in one error message before the rest are counted.
_MAX_LISTED = 10


class Problem(NamedTuple):
    """One problem of a data set: the file (or folder) and what is wrong with it, in one line."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class Case:
    """One case: its id (kept from the file names to the predictions), image channels and label."""

    case_id: str
    images: list[Path]
    label: Path | None = None


@dataclass
class Dataset:
    """The cases of a data set and what its metadata says about them.

    Attributes:
        root: the data set folder (the list's folder for a CSV/JSON list).
        layout: ``"paired"``, ``"decathlon"`` or ``"list"``.
        cases: the training cases, sorted by case id (each with a label, except list rows without one).
        class_names: label value -> name when the metadata declares them (``dataset.json``), else ``None``.
        channel_names: one name per image channel when declared, else ``None``.
        num_channels: the number of image channels when known from names or channel files, else ``None``.
        test_cases: unlabelled cases (``imagesTs/``).
        unmatched: images without a mask and masks without an image (reported, not silently dropped).
        warnings: inconsistencies in the metadata that do not affect the cases found.
    """

    root: Path
    layout: str
    cases: list[Case]
    class_names: dict[int, str] | None = None
    channel_names: list[str] | None = None
    num_channels: int | None = None
    test_cases: list[Case] = field(default_factory=list)
    unmatched: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def case_ids(self) -> list[str]:
        return [case.case_id for case in self.cases]

    def case(self, case_id: str) -> Case:
        """The case with id ``case_id`` (``KeyError`` when there is none)."""
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)


# ----------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------

def load_dataset(path: str | Path, strict: bool = True, channels_suffix: bool | None = None,
                 allow_outside_root: bool = False, layout: str = "auto") -> Dataset:
    """Find the cases of the data set at ``path`` (a folder or a CSV/JSON list), detecting its layout.

    Args:
        path: the data set folder, a CSV/JSON list, or a Decathlon ``dataset.json``.
        strict: raise when an image has no mask or a mask no image; when ``False`` such files are
            left out of the cases with a logged warning (they stay listed in ``Dataset.unmatched``).
        channels_suffix: whether ``{case}_{XXXX}`` files are channels of one case: ``None`` (default)
            in the Decathlon / nnU-Net layout only, ``True`` in a paired folder too, ``False`` never.
        allow_outside_root: let a CSV/JSON list name files outside its own folder (``../``, absolute
            paths); refused by default, so a list cannot make the run read files elsewhere.
        layout: ``"auto"`` (detect it) or the layout the data set must have (``data.layout``):
            ``"paired"``, ``"decathlon"`` or ``"list"``.

    Raises:
        DataError: a missing or empty path, an unknown layout, an unreadable list or ``dataset.json``,
            two masks for one image, duplicate case ids, missing channels, or no case at all.
        ConfigError: ``path`` is not of the required ``layout``.
    """
    if layout != "auto":
        check_choice("data.layout", layout, ("auto", *_LAYOUT_NAMES))
        found = detect_layout(path)
        if found != layout:
            raise ConfigError(f"data.layout: {layout!r}, but {path} is {_LAYOUT_NAMES[found]}")
    dataset, errors = scan_dataset(path, channels_suffix, allow_outside_root)
    if errors:
        raise problems_error(dataset.root, errors, "problems")
    if dataset.unmatched and strict:
        raise problems_error(dataset.root, dataset.unmatched, "files without a partner")
    for problem in [*dataset.unmatched, *dataset.warnings]:
        logger.warning("%s", problem)
    if not dataset.cases:
        raise DataError(dataset.root, "no cases found")
    return dataset


def scan_dataset(path: str | Path, channels_suffix: bool | None = None, allow_outside_root: bool = False
                 ) -> tuple[Dataset, list[Problem]]:
    """The data set at ``path`` and the problems that make its case list wrong (duplicates, ambiguous
    masks, missing channels, missing listed files, listed files outside the list's folder unless
    ``allow_outside_root``), without raising for them. ``channels_suffix`` as in :func:`load_dataset`.

    Raises:
        DataError: only when no case list can be made at all (missing path, empty folder, unknown layout,
            unreadable ``dataset.json`` or list).
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout == PAIRED:
        return _scan_paired(path, channels_suffix is True)
    if layout == DECATHLON:
        return _scan_decathlon(path.parent if path.is_file() else path, channels_suffix is not False)
    return _scan_list(path, allow_outside_root)


def is_nnunet_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is an image folder of the Decathlon / nnU-Net layout (``imagesTr/``,
    ``imagesTs/``, or a folder beside a ``dataset.json``), where the channel-suffix rule applies."""
    folder = Path(folder)
    return folder.name in ("imagesTr", "imagesTs") or (folder.parent / "dataset.json").is_file()


def detect_layout(path: str | Path) -> str:
    """``"paired"``, ``"decathlon"`` or ``"list"`` for the data set at ``path`` (names only)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if path.is_file():
        if path.name == "dataset.json" and (path.parent / "imagesTr").is_dir():
            return DECATHLON
        if path.suffix.lower() in (".csv", ".json"):
            return LIST
        raise DataError(path, "not a data set: expected a folder, or a .csv or .json list of cases")
    if (path / "dataset.json").is_file() or (path / "imagesTr").is_dir():
        return DECATHLON
    if _find_folder(path, IMAGE_FOLDERS) is not None:
        return PAIRED
    if not _visible_entries(path):
        raise DataError(path, "empty folder")
    raise DataError(path, "no data set layout recognised: expected images/ with masks/ (or labels/, gt/), "
                          "imagesTr/ with labelsTr/ and dataset.json, or a .csv/.json list")


def problems_error(root: Path, problems: Sequence[Problem], what: str) -> DataError:
    """One :class:`DataError` for ``problems``: the problem itself when there is one, else a list."""
    if len(problems) == 1:
        return DataError(problems[0].path, problems[0].problem)
    listed = "; ".join(str(p) for p in problems[:_MAX_LISTED])
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return DataError(root, f"{len(problems)} {what}: {listed}{more}")


# ----------------------------------------------------------------------------------------------------
# File names
# ----------------------------------------------------------------------------------------------------

def _visible_entries(folder: Path) -> list[Path]:
    """The folder's entries without hidden ones (``.DS_Store``, the ``._*`` files of macOS tarballs)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a visible file with an extension that a reader handles, or a DICOM series
    folder (visible files all ``.dcm`` or without extension, as scanners often write them)."""
    name = path.name.lower()
    if name.startswith("."):
        return False
    if path.is_dir():
        files = [p for p in _visible_entries(path) if p.is_file()]
        return bool(files) and all(p.suffix.lower() in (".dcm", "") for p in files)
    return path.is_file() and image_extension(name) is not None


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The images of ``folder`` (files and DICOM series folders), sorted by name; other entries are
    skipped. With ``recursive``, sub-folders that are not DICOM series are searched too (``images/centre1/
    x.jpg``); their images follow the folder's own, sub-folder by sub-folder."""
    if not folder.is_dir():
        return []
    files, folders = [], []
    for entry in _visible_entries(folder):
        if is_image_file(entry):
            files.append(entry)
        elif recursive and entry.is_dir():
            folders.append(entry)
        else:
            logger.debug("skipping %s: not an image file", entry)
    for sub in folders:
        files += image_files(sub, recursive=True)
    return files


#: Joins the sub-folders and the name of an image in a nested folder into its case id.
NESTED_SEPARATOR = "__"


def nested_case_id(path: Path, root: Path) -> str:
    """The case id of ``path`` found under ``root``: its name without extension, prefixed by its
    sub-folders joined with ``__`` (``images/centre1/x.jpg`` -> ``centre1__x``), so that predictions of
    a nested folder can be written side by side and matched to the nested masks."""
    relative = path.relative_to(root)
    return NESTED_SEPARATOR.join([*relative.parts[:-1], strip_extension(relative.name)])


def _find_folder(root: Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of ``root`` named one of ``names`` (any letter case); two of them is ambiguous."""
    wanted = {n.lower() for n in names}
    found = [p for p in _visible_entries(root) if p.is_dir() and p.name.lower() in wanted]
    if len(found) > 1:
        raise DataError(root, f"ambiguous layout: both {found[0].name}/ and {found[1].name}/ present")
    return found[0] if found else None


def _key(stem: str, suffix: re.Pattern[str]) -> str:
    """``stem`` without a trailing ``suffix`` word (``case_mask`` -> ``case``)."""
    match = suffix.match(stem)
    return match["key"] if match else stem


def _unique_ids(cases: Iterable[Case]) -> tuple[list[Case], list[Problem]]:
    """The cases with a first-seen id, and a problem for each later case that repeats an id."""
    first: dict[str, Case] = {}
    errors = []
    for case in cases:
        if case.case_id in first:
            errors.append(Problem(case.images[0], f"case id {case.case_id!r} is also the id of "
                                                  f"{first[case.case_id].images[0]}"))
        else:
            first[case.case_id] = case
    return sorted(first.values(), key=lambda c: c.case_id), errors


# ----------------------------------------------------------------------------------------------------
# Paired folders
# ----------------------------------------------------------------------------------------------------

def _scan_paired(root: Path, channels_suffix: bool) -> tuple[Dataset, list[Problem]]:
    images_dir = _find_folder(root, IMAGE_FOLDERS)
    masks_dir = _find_folder(root, MASK_FOLDERS)
    assert images_dir is not None
    images = image_files(images_dir, recursive=True)
    if not images:
        raise DataError(images_dir, "empty folder" if not _visible_entries(images_dir) else "no image files")
    dataset = Dataset(root=root, layout=PAIRED, cases=[])
    if masks_dir is None:
        dataset.unmatched.append(Problem(root, f"no masks folder ({', '.join(MASK_FOLDERS)}) beside "
                                               f"{images_dir.name}/"))
        return dataset, []
    masks = image_files(masks_dir, recursive=True)
    if not masks:
        dataset.unmatched.append(Problem(masks_dir, f"empty folder: no masks for the {len(images)} images "
                                                    f"of {images_dir.name}/"))
        return dataset, []
    cases, errors, dataset.num_channels = cases_of_files(images, channels_suffix, root=images_dir)
    masks_of = match_masks(cases, masks, masks_dir)
    for case in cases:
        found = masks_of[case.case_id]
        if len(found) > 1:
            errors.append(Problem(case.images[0], "ambiguous masks: " + " and ".join(map(str, found))))
        elif found:
            case.label = found[0]
        else:
            dataset.unmatched.append(Problem(case.images[0], f"image without a mask in {masks_dir.name}/"))
    matched = {m for found in masks_of.values() for m in found}
    dataset.unmatched += [Problem(m, f"mask without an image in {images_dir.name}/")
                          for m in masks if m not in matched]
    dataset.cases = [case for case in cases if case.label is not None]
    return dataset, errors


def match_masks(cases: Sequence[Case], masks: Iterable[Path], masks_root: Path | None = None
                ) -> dict[str, list[Path]]:
    """The masks of each case id: a mask matches the image of the same name (extension aside); else the
    image whose name its name repeats before a mask word (``_mask``, ``_seg``, ``_gt``, ...); else the
    image whose name, without an image word (``_img``, ``_image``), is that same key. Masks found under
    ``masks_root`` are named by :func:`nested_case_id` (their sub-folders first)."""
    by_stem = {case.case_id: case.case_id for case in cases}
    by_key = {}
    for case in cases:
        by_key.setdefault(_key(case.case_id, _IMAGE_SUFFIX), case.case_id)
    found: dict[str, list[Path]] = {case.case_id: [] for case in cases}
    for mask in masks:
        stem = nested_case_id(mask, masks_root) if masks_root is not None else strip_extension(mask.name)
        key = _key(stem, _MASK_SUFFIX)
        owner = by_stem.get(stem) or by_stem.get(key) or by_key.get(key)
        if owner is not None:
            found[owner].append(mask)
    return found


# ----------------------------------------------------------------------------------------------------
# Decathlon / nnU-Net
# ----------------------------------------------------------------------------------------------------

def read_json(path: Path) -> Any:
    """The parsed JSON file, or a :class:`DataError` naming the file and the problem."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc.msg} at line {exc.lineno}") from None


def read_dataset_json(path: Path) -> dict[str, Any]:
    """The parsed ``dataset.json`` (a JSON object)."""
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise DataError(path, "expected a JSON object")
    return meta


def class_names_from_json(meta: Mapping[str, Any], path: Path) -> dict[int, str] | None:
    """Label value -> name from ``"labels"``: the Decathlon's ``{"1": "name"}`` or nnU-Net v2's
    ``{"name": 1}`` (region entries of v2, ``{"name": [1, 2]}``, name no single value and are skipped)."""
    labels = meta.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, dict):
        raise DataError(path, f"\"labels\" must be an object, got {type(labels).__name__}")
    names: dict[int, str] = {}
    for key, value in labels.items():
        if re.fullmatch(r"\d+", str(key)):
            names[int(key)] = str(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            names[value] = str(key)
        elif not isinstance(value, list):
            raise DataError(path, f"\"labels\": cannot read the entry {key!r}: {value!r}")
    return dict(sorted(names.items())) or None


def channel_names_from_json(meta: Mapping[str, Any], path: Path) -> list[str] | None:
    """Channel names from nnU-Net v2's ``"channel_names"`` or the Decathlon's ``"modality"``."""
    channels = meta.get("channel_names", meta.get("modality"))
    if channels is None:
        return None
    if not isinstance(channels, dict) or not all(re.fullmatch(r"\d+", str(k)) for k in channels):
        raise DataError(path, "\"channel_names\"/\"modality\" must map \"0\", \"1\", ... to names")
    indices = sorted(int(k) for k in channels)
    if indices != list(range(len(indices))):
        raise DataError(path, f"channel indices must be 0..{len(indices) - 1}, got {indices}")
    by_index = {int(k): str(v) for k, v in channels.items()}
    return [by_index[i] for i in indices]


def _scan_decathlon(root: Path, channels_suffix: bool = True) -> tuple[Dataset, list[Problem]]:
    json_path = root / "dataset.json"
    meta = read_dataset_json(json_path) if json_path.is_file() else {}
    channel_names = channel_names_from_json(meta, json_path)
    dataset = Dataset(root=root, layout=DECATHLON, cases=[], channel_names=channel_names,
                      class_names=class_names_from_json(meta, json_path))
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DataError(images_dir, "missing folder (the Decathlon layout needs imagesTr/ and labelsTr/)")
    images = image_files(images_dir)
    if not images:
        raise DataError(images_dir, "empty folder" if not _visible_entries(images_dir) else "no image files")
    labels, errors = _unique_ids(Case(strip_extension(p.name), [p]) for p in image_files(labels_dir))
    label_of = {case.case_id: case.images[0] for case in labels}
    expected = len(channel_names) if channel_names else None
    cases, channel_errors, dataset.num_channels = cases_of_files(images, channels_suffix, set(label_of),
                                                                 expected)
    errors += channel_errors
    for case in cases:
        case.label = label_of.get(case.case_id)
        if case.label is None:
            dataset.unmatched.append(Problem(case.images[0], f"image without a label in {labels_dir.name}/"))
    ids = {case.case_id for case in cases}
    dataset.unmatched += [Problem(case.images[0], f"label without an image in {images_dir.name}/")
                          for case in labels if case.case_id not in ids]
    dataset.cases = [case for case in cases if case.label is not None]
    test_images = image_files(root / "imagesTs")
    if test_images:
        dataset.test_cases, test_errors, _ = cases_of_files(test_images, channels_suffix, set(), expected)
        errors += test_errors
    dataset.warnings = _training_list_warnings(meta, json_path, ids)
    return dataset, errors


def cases_of_files(files: Sequence[Path], channels_suffix: bool, label_ids: set[str] | None = None,
                   expected: int | None = None, root: Path | None = None
                   ) -> tuple[list[Case], list[Problem], int | None]:
    """The cases of image ``files``: grouped by :func:`group_channels` when ``channels_suffix``, else one
    case per file under its name (extension aside; files found under ``root`` are named by
    :func:`nested_case_id`). Returns the cases, problems and channel count."""
    if channels_suffix:
        return group_channels(files, label_ids or set(), expected)
    cases, errors = _unique_ids(
        Case(nested_case_id(p, root) if root is not None else strip_extension(p.name), [p]) for p in files)
    return cases, errors, None


def group_channels(files: Sequence[Path], label_ids: set[str], expected: int | None
                   ) -> tuple[list[Case], list[Problem], int | None]:
    """Cases from nnU-Net channel files ``{case}_{XXXX}`` (a file whose full name is also a label's is
    a case of its own, as are files without the suffix, like the Decathlon's 4D images).

    Returns the cases, the problems (duplicate ids, missing or surplus channels) and the number of
    channels (``expected`` when given, else the channel files per case, ``None`` for single files).
    """
    channels: dict[str, dict[int, Path]] = {}
    singles: list[Case] = []
    for path in files:
        stem = strip_extension(path.name)
        match = _CHANNEL_SUFFIX.match(stem)
        if match and stem not in label_ids:
            channels.setdefault(match["case"], {}).setdefault(int(match["channel"]), path)
        else:
            singles.append(Case(stem, [path]))
    count = expected if expected is not None else max((max(c) + 1 for c in channels.values()), default=None)
    errors = []
    grouped = []
    for case_id, by_index in channels.items():
        first = next(iter(by_index.values()))
        ending = first.name[len(strip_extension(first.name)):]
        wanted = range(count or 0)
        errors += [Problem(first.parent / f"{case_id}_{i:04d}{ending}",
                           f"missing channel {i} of case {case_id!r} ({count} channels expected)")
                   for i in wanted if i not in by_index]
        errors += [Problem(p, f"channel {i} beyond the {count} channels of dataset.json")
                   for i, p in sorted(by_index.items()) if i >= (count or 0)]
        grouped.append(Case(case_id, [by_index[i] for i in wanted if i in by_index]))
    cases, duplicates = _unique_ids([*grouped, *singles])
    return cases, errors + duplicates, count


def _training_list_warnings(meta: Mapping[str, Any], path: Path, found: set[str]) -> list[Problem]:
    """Cases that ``dataset.json``'s ``"training"`` list names but ``imagesTr/`` lacks."""
    training = meta.get("training")
    if not isinstance(training, list):
        return []
    listed = [strip_extension(Path(str(entry["image"])).name) for entry in training
              if isinstance(entry, dict) and "image" in entry]
    missing = [case_id for case_id in listed if case_id not in found]
    if not missing:
        return []
    shown = ", ".join(missing[:_MAX_LISTED]) + (", ..." if len(missing) > _MAX_LISTED else "")
    return [Problem(path, f"lists {len(missing)} training cases that imagesTr/ lacks: {shown}")]


# ----------------------------------------------------------------------------------------------------
# Explicit lists (CSV, JSON)
# ----------------------------------------------------------------------------------------------------

_LABEL_KEYS = ("label", "mask", "seg", "segmentation", "gt")


def _scan_list(path: Path, allow_outside_root: bool = False) -> tuple[Dataset, list[Problem]]:
    records = _read_csv(path) if path.suffix.lower() == ".csv" else _read_json_list(path)
    cases: list[Case] = []
    errors: list[Problem] = []
    for where, record in records:
        case, problems = case_from_record(record, path.parent, f"{path.name} {where}", allow_outside_root)
        errors += problems
        if case is not None:
            cases.append(case)
    cases, duplicates = _unique_ids(cases)
    counts = {len(case.images) for case in cases}
    return Dataset(root=path.parent, layout=LIST, cases=cases,
                   num_channels=counts.pop() if len(counts) == 1 and 1 not in counts else None), \
        errors + duplicates


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [(f"row {i}", row) for i, row in enumerate(reader, start=2)]
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read the CSV list: {exc}") from None
    names = [c.strip().lower() for c in columns if c]
    if "image" not in names and "image_0" not in names:
        raise DataError(path, f"no 'image' or 'image_0' column (columns: {', '.join(names) or 'none'})")
    return rows


def _read_json_list(path: Path) -> list[tuple[str, dict[str, Any]]]:
    data = read_json(path)
    if isinstance(data, dict):
        if isinstance(data.get("training"), list):  # the Decathlon's form
            data = data["training"]
        elif isinstance(data.get("dataset"), dict):  # nnU-Net v2's {"case": {"images": [...], "label": ...}}
            data = [{"case_id": k, **v} for k, v in data["dataset"].items() if isinstance(v, dict)]
    if not isinstance(data, list):
        raise DataError(path, "expected a list of cases, or an object with a \"training\" list")
    if not all(isinstance(item, dict) for item in data):
        raise DataError(path, "every case must be an object with an \"image\" (and \"label\") key")
    return [(f"entry {i}", item) for i, item in enumerate(data)]


def case_from_record(record: Mapping[str, Any], base: Path, where: str, allow_outside_root: bool = False
                     ) -> tuple[Case | None, list[Problem]]:
    """A case from one CSV row or JSON object (keys ``image`` / ``images`` / ``image_0``..., ``label``,
    ``case_id``); relative paths are taken from ``base``. Listed files that do not exist are problems, as
    are (unless ``allow_outside_root``) paths that leave ``base`` (``../``, absolute paths elsewhere;
    judged on the names, so symbolic links inside ``base`` are followed)."""
    fields = {str(k).strip().lower(): v for k, v in record.items() if k is not None}
    images = _record_images(fields)
    if not images:
        return None, [Problem(base, f"{where}: no image")]
    label_text = next((fields[k] for k in _LABEL_KEYS if _filled(fields.get(k))), None)
    paths = [_resolve(base, text) for text in images]
    label = _resolve(base, label_text) if label_text is not None else None
    listed = [p for p in [*paths, label] if p is not None]
    outside = [] if allow_outside_root else [p for p in listed if not _inside(base, p)]
    problems = [Problem(p, f"outside the list's folder {base} (listed in {where}); set "
                           "data.allow_outside_root: true (medseg check --allow-outside-root) to allow it")
                for p in outside]
    problems += [Problem(p, f"does not exist (listed in {where})") for p in listed
                 if p not in outside and not p.exists()]
    if _filled(fields.get("case_id")):
        identifier = str(fields["case_id"]).strip()
    else:  # the first image's name, without ``_0000`` when the case has channel files
        identifier = file_case_id(paths[0], strip_channel=len(paths) > 1)
    return Case(identifier, paths, label), problems


def _filled(value: Any) -> bool:
    return value is not None and str(value).strip() != ""


def _record_images(fields: Mapping[str, Any]) -> list[str]:
    value = fields.get("image", fields.get("images"))
    if isinstance(value, list):
        return [str(v) for v in value if _filled(v)]
    if _filled(value):
        return [str(value)]
    numbered = sorted((int(k.split("_")[1]), v) for k, v in fields.items() if re.fullmatch(r"image_\d+", k))
    return [str(v) for _, v in numbered if _filled(v)]


def _resolve(base: Path, text: str) -> Path:
    path = Path(str(text).strip())
    return path if path.is_absolute() else base / path


def _inside(base: Path, path: Path) -> bool:
    """Whether ``path`` lies in ``base`` once ``..`` is resolved on the names."""
    return Path(os.path.normpath(path.absolute())).is_relative_to(os.path.normpath(base.absolute()))


# ----------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------

Split = dict[str, list[str]]


def _shuffled(case_ids: Iterable[str], seed: int, minimum: int) -> list[str]:
    """The sorted unique ids in a permutation fixed by ``seed`` (independent of the input order)."""
    ids = sorted(set(case_ids))
    if len(ids) < minimum:
        raise MedsegError(f"need at least {minimum} distinct cases, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order]


def train_val_split(case_ids: Iterable[str], val_fraction: float = 0.2, seed: int = 0) -> Split:
    """A seeded train/validation split: ``round(n * val_fraction)`` cases (at least one) for validation."""
    if not 0.0 < val_fraction < 1.0:
        raise MedsegError(f"val_fraction must be in (0, 1), got {val_fraction}")
    ids = _shuffled(case_ids, seed, minimum=2)
    n_val = min(max(1, round(len(ids) * val_fraction)), len(ids) - 1)
    return {"train": sorted(ids[n_val:]), "val": sorted(ids[:n_val])}


def kfold_splits(case_ids: Iterable[str], k: int = 5, seed: int = 0) -> list[Split]:
    """``k`` seeded cross-validation folds (nnU-Net's five-fold scheme): each case is in exactly one
    validation fold, fold sizes differ by at most one."""
    if k < 2:
        raise MedsegError(f"k must be at least 2, got {k}")
    ids = _shuffled(case_ids, seed, minimum=k)
    folds = [sorted(chunk.tolist()) for chunk in np.array_split(np.array(ids, dtype=object), k)]
    return [{"train": sorted(c for j, fold in enumerate(folds) if j != i for c in fold), "val": folds[i]}
            for i in range(k)]


def write_splits(path: str | Path, splits: Sequence[Mapping[str, Sequence[str]]]) -> None:
    """Write ``splits`` atomically as nnU-Net's ``splits_final.json`` (a list of train/val folds)."""
    folds = [{"train": list(s["train"]), "val": list(s["val"])} for s in splits]
    write_text_atomically(path, json.dumps(folds, indent=2) + "\n")


def read_splits(path: str | Path) -> list[Split]:
    """Read a ``splits_final.json`` (a list of ``{"train": [...], "val": [...]}``)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(path, "expected a list of folds")
    for i, fold in enumerate(data):
        if not (isinstance(fold, dict) and set(fold) == {"train", "val"}
                and all(isinstance(v, list) and all(isinstance(c, str) for c in v) for v in fold.values())):
            raise DataError(path, f"fold {i}: expected {{\"train\": [ids], \"val\": [ids]}}")
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in data]
