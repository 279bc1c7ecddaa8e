"""Data set layouts (paired folders, Decathlon / nnU-Net, CSV/JSON lists), case ids and splits.

Layout discovery looks at file names only, so most tests create empty files with the right names.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from medseg.data.datasets import (
    DECATHLON,
    LIST,
    PAIRED,
    Case,
    detect_layout,
    kfold_splits,
    load_dataset,
    read_splits,
    train_val_split,
    write_splits,
)
from medseg.data.geometry import DataError
from medseg.errors import MedsegError

REAL_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def touch(root: Path, *names: str) -> list[Path]:
    paths = [root / name for name in names]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return paths


def pairs(cases: list[Case]) -> dict[str, tuple[list[str], str | None]]:
    """Case id -> (image names, label name), for comparing with what the test wrote."""
    return {c.case_id: ([p.name for p in c.images], c.label.name if c.label else None) for c in cases}


# ----------------------------------------------------------------------------------------------------
# Paired folders
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("masks_dir", "suffix", "mask_ext"), [
    ("masks", "", ".png"),
    ("masks", "_mask", ".png"),
    ("labels", "_seg", ".png"),
    ("gt", "_gt", ".bmp"),
    ("ground_truth", "-mask", ".tif"),
    ("masks", "_Segmentation", ".png"),
    ("masks", "", ".jpg"),
])
def test_paired_masks_match_by_name_with_suffix_and_other_extension(tmp_path: Path, masks_dir: str,
                                                                    suffix: str, mask_ext: str) -> None:
    ids = ["case_b", "case_a", "polyp.1"]
    touch(tmp_path, *(f"images/{i}.jpg" for i in ids), *(f"{masks_dir}/{i}{suffix}{mask_ext}" for i in ids))
    dataset = load_dataset(tmp_path)
    assert dataset.layout == PAIRED == detect_layout(tmp_path)
    assert pairs(dataset.cases) == {i: ([f"{i}.jpg"], f"{i}{suffix}{mask_ext}") for i in ids}
    assert dataset.case_ids == sorted(ids)
    assert all(c.label.parent.name == masks_dir for c in dataset.cases)


def test_paired_exact_name_wins_over_suffix(tmp_path: Path) -> None:
    # an image called "x_mask" exists: its mask is the file of the same name, "x" gets "x_seg"
    touch(tmp_path, "images/x.png", "images/x_mask.png", "masks/x_mask.png", "masks/x_seg.png")
    assert pairs(load_dataset(tmp_path).cases) == {"x": (["x.png"], "x_seg.png"),
                                                   "x_mask": (["x_mask.png"], "x_mask.png")}


def test_paired_image_word_in_the_image_name(tmp_path: Path) -> None:
    touch(tmp_path, "images/p7_img.png", "masks/p7_mask.png")
    assert pairs(load_dataset(tmp_path).cases) == {"p7_img": (["p7_img.png"], "p7_mask.png")}


def test_paired_skips_hidden_and_non_image_files(tmp_path: Path) -> None:
    touch(tmp_path, "images/a.png", "images/._a.png", "images/.DS_Store", "images/notes.txt",
          "masks/a.png", "masks/._a.png", "masks/Thumbs.db")
    assert pairs(load_dataset(tmp_path).cases) == {"a": (["a.png"], "a.png")}


def test_paired_dicom_series_folders_are_cases(tmp_path: Path) -> None:
    touch(tmp_path, "images/patient1/IM0001", "images/patient1/IM0002", "images/patient2/a.dcm",
          "images/notes/readme.txt", "masks/patient1.nii.gz", "masks/patient2_seg.nii.gz")
    dataset = load_dataset(tmp_path)
    assert pairs(dataset.cases) == {"patient1": (["patient1"], "patient1.nii.gz"),
                                    "patient2": (["patient2"], "patient2_seg.nii.gz")}
    assert dataset.cases[0].images[0].is_dir()


def test_unmatched_files_strict_error_names_them(tmp_path: Path) -> None:
    touch(tmp_path, "images/a.png", "images/b.png", "images/c.png", "masks/a.png", "masks/zz_mask.png")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    message = str(info.value)
    assert "3 files without a partner" in message
    assert str(tmp_path / "images" / "b.png") + ": image without a mask" in message
    assert str(tmp_path / "images" / "c.png") + ": image without a mask" in message
    assert str(tmp_path / "masks" / "zz_mask.png") + ": mask without an image" in message


def test_unmatched_files_lenient_mode_warns_and_keeps_the_rest(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    touch(tmp_path, "images/a.png", "images/b.png", "masks/a.png", "masks/q.png")
    with caplog.at_level(logging.WARNING, logger="medseg.data.datasets"):
        dataset = load_dataset(tmp_path, strict=False)
    assert dataset.case_ids == ["a"]
    assert sorted(p.path.name for p in dataset.unmatched) == ["b.png", "q.png"]
    logged = caplog.text
    assert "b.png: image without a mask" in logged and "q.png: mask without an image" in logged


def test_single_unmatched_image_is_the_error_itself(tmp_path: Path) -> None:
    touch(tmp_path, "images/a.png", "images/b.png", "masks/a.png")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert info.value.path == tmp_path / "images" / "b.png"
    assert info.value.problem == "image without a mask in masks/"


def test_ambiguous_masks_name_both_files(tmp_path: Path) -> None:
    touch(tmp_path, "images/a.png", "masks/a_mask.png", "masks/a_seg.png")
    with pytest.raises(DataError, match="ambiguous masks") as info:
        load_dataset(tmp_path, strict=False)
    assert str(tmp_path / "masks" / "a_mask.png") in str(info.value)
    assert str(tmp_path / "masks" / "a_seg.png") in str(info.value)


def test_duplicate_case_ids_name_both_files(tmp_path: Path) -> None:
    touch(tmp_path, "images/a.png", "images/a.jpg", "masks/a.png")
    with pytest.raises(DataError, match="case id 'a'") as info:
        load_dataset(tmp_path, strict=False)
    assert "a.png" in str(info.value) and "a.jpg" in str(info.value)


def test_empty_and_unknown_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty folder"):
        load_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="empty folder") as info:
        load_dataset(tmp_path)
    assert info.value.path == tmp_path / "images"
    touch(tmp_path, "images/a.png")
    with pytest.raises(DataError, match="empty folder") as info:
        load_dataset(tmp_path)
    assert info.value.path == tmp_path / "masks"
    other = tmp_path / "other"
    touch(other, "scans/a.png")
    with pytest.raises(DataError, match="no data set layout recognised"):
        load_dataset(other)
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------
# Decathlon / nnU-Net
# ----------------------------------------------------------------------------------------------------

def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_nnunet_v2_channel_files_group_into_multichannel_cases(tmp_path: Path) -> None:
    write_json(tmp_path / "dataset.json", {
        "channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "edema": 1, "tumour": 2},
        "numTraining": 2, "file_ending": ".nii.gz"})
    touch(tmp_path, "imagesTr/brain_001_0001.nii.gz", "imagesTr/brain_001_0000.nii.gz",
          "imagesTr/brain_002_0000.nii.gz", "imagesTr/brain_002_0001.nii.gz",
          "labelsTr/brain_001.nii.gz", "labelsTr/brain_002.nii.gz",
          "imagesTs/brain_010_0000.nii.gz", "imagesTs/brain_010_0001.nii.gz")
    dataset = load_dataset(tmp_path)
    assert dataset.layout == DECATHLON
    assert pairs(dataset.cases) == {
        f"brain_00{i}": ([f"brain_00{i}_0000.nii.gz", f"brain_00{i}_0001.nii.gz"], f"brain_00{i}.nii.gz")
        for i in (1, 2)}
    assert dataset.class_names == {0: "background", 1: "edema", 2: "tumour"}
    assert dataset.channel_names == ["T1", "FLAIR"] and dataset.num_channels == 2
    test_images = ["brain_010_0000.nii.gz", "brain_010_0001.nii.gz"]
    assert pairs(dataset.test_cases) == {"brain_010": (test_images, None)}


def test_paired_names_ending_in_four_digits_are_one_case_each(tmp_path: Path) -> None:
    """PolypGen's names: the nnU-Net channel rule does not apply outside its layout."""
    names = [f"10_endocv2021_positive_{i:04d}" for i in range(3)]
    touch(tmp_path, *(f"images/{n}.jpg" for n in names), *(f"masks/{n}_mask.jpg" for n in names[:2]),
          f"masks/{names[2]}.jpg")
    dataset = load_dataset(tmp_path)
    assert pairs(dataset.cases) == {names[0]: ([f"{names[0]}.jpg"], f"{names[0]}_mask.jpg"),
                                    names[1]: ([f"{names[1]}.jpg"], f"{names[1]}_mask.jpg"),
                                    names[2]: ([f"{names[2]}.jpg"], f"{names[2]}.jpg")}


def test_paired_channel_files_are_grouped_when_declared(tmp_path: Path) -> None:
    touch(tmp_path, "images/a_0000.png", "images/a_0001.png", "masks/a.png")
    assert pairs(load_dataset(tmp_path, channels_suffix=True).cases) == {
        "a": (["a_0000.png", "a_0001.png"], "a.png")}
    with pytest.raises(DataError, match="without a partner"):  # one case per file: a_0001 has no mask
        load_dataset(tmp_path)


def test_decathlon_channel_rule_can_be_switched_off(tmp_path: Path) -> None:
    touch(tmp_path, "imagesTr/scan_0001.nii.gz", "imagesTr/scan_0002.nii.gz",
          "labelsTr/scan_0001.nii.gz", "labelsTr/scan_0002.nii.gz")
    dataset = load_dataset(tmp_path, channels_suffix=False)
    assert sorted(dataset.case_ids) == ["scan_0001", "scan_0002"]


def test_paired_nested_folders_match_masks_in_the_same_sub_folder(tmp_path: Path) -> None:
    touch(tmp_path, "images/centre 1/x.jpg", "images/centre 1/y.JPG", "images/centre2/x.jpg",
          "masks/centre 1/x_mask.png", "masks/centre 1/y.jpg", "masks/centre2/x.jpg")
    dataset = load_dataset(tmp_path)
    assert pairs(dataset.cases) == {"centre 1__x": (["x.jpg"], "x_mask.png"),
                                    "centre 1__y": (["y.JPG"], "y.jpg"),
                                    "centre2__x": (["x.jpg"], "x.jpg")}
    assert dataset.case("centre2__x").label == tmp_path / "masks/centre2/x.jpg"


def test_nnunet_channels_without_dataset_json_are_counted_from_files(tmp_path: Path) -> None:
    touch(tmp_path, *(f"imagesTr/c{i}_000{k}.png" for i in (1, 2) for k in range(3)),
          "labelsTr/c1.png", "labelsTr/c2.png")
    dataset = load_dataset(tmp_path)
    assert dataset.num_channels == 3 and dataset.channel_names is None and dataset.class_names is None
    assert [len(c.images) for c in dataset.cases] == [3, 3]


def test_missing_channel_names_the_missing_file(tmp_path: Path) -> None:
    write_json(tmp_path / "dataset.json", {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"0": "bg"}})
    touch(tmp_path, "imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz", "imagesTr/b_0000.nii.gz",
          "labelsTr/a.nii.gz", "labelsTr/b.nii.gz")
    with pytest.raises(DataError, match="missing channel 1 of case 'b'") as info:
        load_dataset(tmp_path)
    assert info.value.path == tmp_path / "imagesTr" / "b_0001.nii.gz"


def test_channel_beyond_the_declared_ones(tmp_path: Path) -> None:
    write_json(tmp_path / "dataset.json", {"channel_names": {"0": "CT"}, "labels": {"background": 0}})
    touch(tmp_path, "imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz", "labelsTr/a.nii.gz")
    with pytest.raises(DataError, match="channel 1 beyond the 1 channels") as info:
        load_dataset(tmp_path)
    assert info.value.path.name == "a_0001.nii.gz"


def test_msd_4d_files_are_one_case_each_and_hidden_files_are_skipped(tmp_path: Path) -> None:
    names = ["BRATS_001", "BRATS_002", "BRATS_010"]
    write_json(tmp_path / "dataset.json", {
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": 3,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": ["./imagesTs/BRATS_100.nii.gz"]})
    touch(tmp_path, *(f"imagesTr/{n}.nii.gz" for n in names), *(f"labelsTr/{n}.nii.gz" for n in names),
          *(f"imagesTr/._{n}.nii.gz" for n in names), "labelsTr/._BRATS_001.nii.gz",
          "imagesTs/BRATS_100.nii.gz")
    dataset = load_dataset(tmp_path / "dataset.json")  # the dataset.json itself names the data set too
    assert dataset.layout == DECATHLON and dataset.root == tmp_path
    assert pairs(dataset.cases) == {n: ([f"{n}.nii.gz"], f"{n}.nii.gz") for n in names}
    assert dataset.channel_names == ["FLAIR", "T1w", "t1gd", "T2w"] and dataset.num_channels == 4
    assert dataset.class_names == {0: "background", 1: "edema", 2: "non-enhancing tumor",
                                   3: "enhancing tumour"}
    assert [c.case_id for c in dataset.test_cases] == ["BRATS_100"]
    assert dataset.warnings == [] and dataset.unmatched == []


def test_ids_ending_in_four_digits_are_no_channels_when_a_label_has_the_full_name(tmp_path: Path) -> None:
    touch(tmp_path, "imagesTr/scan_0001.nii.gz", "imagesTr/scan_0002.nii.gz",
          "labelsTr/scan_0001.nii.gz", "labelsTr/scan_0002.nii.gz")
    assert load_dataset(tmp_path).case_ids == ["scan_0001", "scan_0002"]


def test_stale_training_list_is_a_warning(tmp_path: Path) -> None:
    write_json(tmp_path / "dataset.json", {"labels": {"0": "background", "1": "organ"},
                                           "training": [{"image": "./imagesTr/x.nii.gz", "label": "l"},
                                                        {"image": "./imagesTr/gone.nii.gz", "label": "l"}]})
    touch(tmp_path, "imagesTr/x.nii.gz", "labelsTr/x.nii.gz")
    dataset = load_dataset(tmp_path)
    assert dataset.case_ids == ["x"]
    assert len(dataset.warnings) == 1 and "gone" in dataset.warnings[0].problem


def test_bad_dataset_json_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text("{\"labels\": {", encoding="utf-8")
    touch(tmp_path, "imagesTr/x.nii.gz", "labelsTr/x.nii.gz")
    with pytest.raises(DataError, match="not valid JSON") as info:
        load_dataset(tmp_path)
    assert info.value.path == tmp_path / "dataset.json"


def test_decathlon_without_images(tmp_path: Path) -> None:
    write_json(tmp_path / "dataset.json", {"labels": {"0": "background"}})
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(DataError, match="empty folder") as info:
        load_dataset(tmp_path)
    assert info.value.path == tmp_path / "imagesTr"


# ----------------------------------------------------------------------------------------------------
# Explicit lists
# ----------------------------------------------------------------------------------------------------

def test_csv_list_with_relative_paths_channels_and_case_ids(tmp_path: Path) -> None:
    touch(tmp_path, "data/s1_t1.nii.gz", "data/s1_t2.nii.gz", "data/s1_seg.nii.gz",
          "data/s2_t1.nii.gz", "data/s2_t2.nii.gz", "data/s2_seg.nii.gz")
    csv_path = tmp_path / "lists" / "train.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("case_id,image_0,image_1,label\n"
                        "subject1,../data/s1_t1.nii.gz,../data/s1_t2.nii.gz,../data/s1_seg.nii.gz\n"
                        f"subject2,../data/s2_t1.nii.gz,{tmp_path / 'data' / 's2_t2.nii.gz'},"
                        "../data/s2_seg.nii.gz\n",
                        encoding="utf-8")
    dataset = load_dataset(csv_path, allow_outside_root=True)  # refused by default: tests/hostile
    assert dataset.layout == LIST and dataset.num_channels == 2
    assert pairs(dataset.cases) == {
        f"subject{i}": ([f"s{i}_t1.nii.gz", f"s{i}_t2.nii.gz"], f"s{i}_seg.nii.gz") for i in (1, 2)}
    assert all(p.exists() for c in dataset.cases for p in [*c.images, c.label])


def test_csv_list_case_id_from_the_image_name(tmp_path: Path) -> None:
    touch(tmp_path, "img/a.png", "msk/a.png", "img/b.png")
    (tmp_path / "pairs.csv").write_text("image,label\nimg/a.png,msk/a.png\nimg/b.png,\n", encoding="utf-8")
    cases = load_dataset(tmp_path / "pairs.csv").cases
    assert pairs(cases) == {"a": (["a.png"], "a.png"), "b": (["b.png"], None)}


def test_list_missing_file_and_missing_column_errors(tmp_path: Path) -> None:
    touch(tmp_path, "img/a.png")
    (tmp_path / "pairs.csv").write_text("image,label\nimg/a.png,msk/a.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"does not exist \(listed in pairs.csv row 2\)") as info:
        load_dataset(tmp_path / "pairs.csv")
    assert info.value.path == tmp_path / "msk" / "a.png"
    (tmp_path / "bad.csv").write_text("picture,mask\nimg/a.png,img/a.png\n", encoding="utf-8")
    with pytest.raises(DataError, match="no 'image' or 'image_0' column"):
        load_dataset(tmp_path / "bad.csv")


@pytest.mark.parametrize("form", ["list", "training"])
def test_json_list_forms(tmp_path: Path, form: str) -> None:
    touch(tmp_path, "imgs/a.nii.gz", "lbls/a.nii.gz", "imgs/b.nii.gz", "lbls/b.nii.gz")
    entries = [{"image": f"./imgs/{n}.nii.gz", "label": f"./lbls/{n}.nii.gz"} for n in "ab"]
    path = write_json(tmp_path / "cases.json", entries if form == "list" else {"training": entries})
    dataset = load_dataset(path)
    assert dataset.layout == LIST and dataset.root == tmp_path
    assert pairs(dataset.cases) == {n: ([f"{n}.nii.gz"], f"{n}.nii.gz") for n in "ab"}


def test_list_duplicate_case_ids_name_both_files(tmp_path: Path) -> None:
    touch(tmp_path, "x/a.png", "y/a.png", "m/a.png")
    path = write_json(tmp_path / "cases.json", [{"image": "x/a.png", "label": "m/a.png"},
                                                {"image": "y/a.png", "label": "m/a.png"}])
    with pytest.raises(DataError, match="case id 'a'") as info:
        load_dataset(path)
    assert str(tmp_path / "x" / "a.png") in str(info.value)
    assert str(tmp_path / "y" / "a.png") in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------

IDS = [f"case_{i:03d}" for i in range(23)]


def test_train_val_split_is_seeded_disjoint_covering_and_order_independent() -> None:
    split = train_val_split(IDS, val_fraction=0.2, seed=3)
    assert len(split["val"]) == round(23 * 0.2) == 5
    assert set(split["train"]).isdisjoint(split["val"])
    assert sorted(split["train"] + split["val"]) == IDS
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert train_val_split(shuffled, val_fraction=0.2, seed=3) == split
    assert train_val_split(IDS, val_fraction=0.2, seed=4) != split


def test_kfold_every_case_exactly_once_in_validation() -> None:
    folds = kfold_splits(IDS, k=5, seed=0)
    assert len(folds) == 5
    validation = [c for fold in folds for c in fold["val"]]
    assert sorted(validation) == IDS  # each case once
    assert sorted(len(f["val"]) for f in folds) == [4, 4, 5, 5, 5]
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == IDS and set(fold["train"]).isdisjoint(fold["val"])
    assert kfold_splits(list(reversed(IDS)), k=5, seed=0) == folds
    assert kfold_splits(IDS, k=5, seed=1) != folds


def test_split_argument_errors() -> None:
    with pytest.raises(MedsegError, match="at least 5 distinct cases"):
        kfold_splits(IDS[:4], k=5)
    with pytest.raises(MedsegError, match="val_fraction"):
        train_val_split(IDS, val_fraction=1.0)


def test_splits_written_as_nnunet_splits_final_json(tmp_path: Path) -> None:
    folds = kfold_splits(IDS, k=3, seed=0)
    path = tmp_path / "run" / "splits_final.json"
    write_splits(path, folds)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(raw, list) and all(set(f) == {"train", "val"} for f in raw)
    assert read_splits(path) == folds
    assert [p.name for p in path.parent.iterdir()] == ["splits_final.json"]  # no temporary file left
    write_json(path, [{"train": ["a"], "validation": ["b"]}])
    with pytest.raises(DataError, match="fold 0"):
        read_splits(path)


# ----------------------------------------------------------------------------------------------------
# The real data sets (skipped when ../shared/data is absent)
# ----------------------------------------------------------------------------------------------------

def real(name: str) -> Path:
    path = REAL_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data set {name} not found at {path}")
    return path


@pytest.mark.parametrize(("name", "count"), [("kvasir-seg", 900), ("dsb2018-nuclei", 564)])
def test_real_2d_paired_sets(name: str, count: int) -> None:
    dataset = load_dataset(real(name))
    assert dataset.layout == PAIRED and len(dataset.cases) == count and not dataset.unmatched
    assert all(c.label.name == c.images[0].name and c.label.parent.name == "masks" for c in dataset.cases)
    assert len(set(dataset.case_ids)) == count


def test_real_hippocampus_decathlon() -> None:
    root = real("msd-task04-hippocampus")
    dataset = load_dataset(root)
    assert dataset.layout == DECATHLON and len(dataset.cases) == 208
    assert dataset.class_names == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert dataset.channel_names == ["MRI"] and dataset.num_channels == 1
    listed = json.loads((root / "dataset.json").read_text(encoding="utf-8"))["training"]
    assert {Path(e["image"]).name.removesuffix(".nii.gz") for e in listed} == set(dataset.case_ids)
    assert all(c.label == root / "labelsTr" / c.images[0].name for c in dataset.cases)
