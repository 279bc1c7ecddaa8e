"""Instance targets from label maps (masks, boxes, labels) and back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.data.instances import instance_targets_from_label_map, label_map_from_masks
from medseg.errors import MedsegError


def test_targets_from_a_label_map() -> None:
    label_map = np.zeros((6, 8), dtype=np.uint16)
    label_map[1:3, 2:5] = 7   # rows 1-2, columns 2-4
    label_map[4, 7] = 3       # one pixel
    t = instance_targets_from_label_map(label_map)
    assert t["boxes"].tolist() == [[7.0, 4.0, 8.0, 5.0], [2.0, 1.0, 5.0, 3.0]]  # ids 3 then 7
    assert t["labels"].tolist() == [1, 1]
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 6, 8)
    assert t["masks"][1].sum() == 6 and t["masks"][0, 4, 7] == 1


def test_labels_come_from_the_class_map_and_3d_boxes() -> None:
    label_map = np.zeros((3, 4, 5), dtype=np.int64)
    label_map[0:2, 1:3, 0:4] = 1
    label_map[2, 3, 4] = 2
    classes = np.zeros_like(label_map)
    classes[label_map == 1] = 2
    classes[0, 1, 0] = 1  # a minority voxel
    t = instance_targets_from_label_map(torch.from_numpy(label_map), classes)
    assert t["labels"].tolist() == [2, 1]
    assert t["boxes"].tolist() == [[0.0, 1.0, 0.0, 4.0, 3.0, 2.0], [4.0, 3.0, 2.0, 5.0, 4.0, 3.0]]


def test_empty_label_map_gives_no_objects() -> None:
    t = instance_targets_from_label_map(np.zeros((4, 4), dtype=np.uint8))
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 4, 4) and t["labels"].shape == (0,)


def test_round_trip_and_overlaps() -> None:
    rng = np.random.default_rng(0)
    label_map = rng.integers(0, 5, (16, 16))
    t = instance_targets_from_label_map(label_map)
    back = label_map_from_masks(t["masks"])
    # ids are renumbered 1..N in increasing original id order
    remap = {old: new for new, old in enumerate(np.unique(label_map[label_map > 0]), start=1)}
    assert np.array_equal(back, np.vectorize(lambda v: remap.get(v, 0))(label_map))
    masks = np.zeros((2, 4, 4))
    masks[0, :2] = 0.9
    masks[1, 1:3] = 0.8
    assert label_map_from_masks(masks)[1].tolist() == [1, 1, 1, 1]
    assert label_map_from_masks(masks, scores=[0.1, 0.9])[1].tolist() == [2, 2, 2, 2]


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(MedsegError, match="2D or 3D"):
        instance_targets_from_label_map(np.zeros(5))
    with pytest.raises(MedsegError, match="integer"):
        instance_targets_from_label_map(np.full((2, 2), 0.5))
    with pytest.raises(MedsegError, match="scores"):
        label_map_from_masks(np.zeros((2, 3, 3)), scores=[1.0])
