"""Postprocessing on hand-made 2D and 3D label maps: largest component, holes, small components."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.engine.postprocess import (
    PostprocessOptions,
    apply_per_class,
    fill_holes,
    keep_largest_component,
    postprocess,
    remove_small_components,
)
from medseg.errors import MedsegError


def blobs_2d() -> np.ndarray:
    """Three blobs of 9, 4 and 1 pixels; the 1-pixel one touches the 4-pixel one by a corner only."""
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:4, 1:4] = True  # 9
    mask[6:8, 6:8] = True  # 4
    mask[8, 8] = True  # 1, diagonal neighbour of (7, 7)
    return mask


def test_keep_largest_component_2d_and_connectivity():
    mask = blobs_2d()
    largest = keep_largest_component(mask)
    assert largest.sum() == 9 and largest[1:4, 1:4].all()
    grown = np.zeros((10, 12), dtype=bool)
    grown[6:8, 5:8] = True  # 6 pixels
    grown[8:10, 8] = True  # 2 pixels, a diagonal neighbour of (7, 7): 8 pixels with 8-connectivity
    grown[0, 0:7] = True  # 7 pixels
    four = keep_largest_component(grown, connectivity=1)
    assert four[0].sum() == 7 and four.sum() == 7
    eight = keep_largest_component(grown, connectivity=2)
    assert eight[0].sum() == 0 and eight[6:10].sum() == 8
    assert not keep_largest_component(np.zeros((4, 4), dtype=bool)).any()


def test_keep_largest_component_3d():
    mask = np.zeros((8, 9, 10), dtype=bool)
    mask[0:2, 0:2, 0:2] = True
    mask[4:8, 5:9, 6:10] = True
    mask[7, 0, 9] = True
    out = keep_largest_component(mask)
    assert out.sum() == 64 and out[4:8, 5:9, 6:10].all()


def test_remove_small_components_by_voxels_and_volume():
    mask = blobs_2d()
    assert remove_small_components(mask, 4).sum() == 13
    assert remove_small_components(mask, 5).sum() == 9
    assert remove_small_components(mask, 2, connectivity=2).sum() == 14  # the corner pixel joins the 4
    # pixel of 0.5 x 2 mm = 1 mm²: the 4-pixel blob has 4 mm², the 9-pixel one 9 mm²
    assert remove_small_components(mask, min_volume=4.0, spacing=(0.5, 2.0)).sum() == 13
    assert remove_small_components(mask, min_volume=4.1, spacing=(0.5, 2.0)).sum() == 9
    assert remove_small_components(mask, min_volume=4.1, spacing=(2.0, 2.0)).sum() == 13  # 4 px = 16 mm²
    with pytest.raises(MedsegError, match="spacing"):
        remove_small_components(mask, min_volume=1.0)


def test_fill_holes_3d_and_slice_wise():
    mask = np.zeros((7, 7, 7), dtype=bool)
    mask[1:6, 1:6, 1:6] = True
    mask[3, 3, 3] = False  # an enclosed hole
    mask[2:5, 3, 3] = False  # a longer hole, still enclosed in 3D
    filled = fill_holes(mask)
    assert filled[1:6, 1:6, 1:6].all() and filled.sum() == 125
    tube = np.zeros((5, 7, 7), dtype=bool)
    tube[:, 1:6, 1:6] = True
    tube[:, 3, 3] = False  # a channel open at both ends: no hole in 3D, a hole in every axial slice
    assert fill_holes(tube).sum() == tube.sum()
    assert fill_holes(tube, axis=0).sum() == tube.sum() + 5
    assert fill_holes(tube, axis=1).sum() == tube.sum()
    with pytest.raises(MedsegError, match="axis"):
        fill_holes(tube, axis=3)


def test_multiclass_per_class():
    labels = np.zeros((10, 12), dtype=np.uint8)
    labels[blobs_2d()] = 1
    labels[0, 8:12] = 2
    labels[4, 10] = 2
    out = postprocess(labels, "multiclass", PostprocessOptions(largest_component=True))
    assert (out == 1).sum() == 9 and (out == 2).sum() == 4 and out[4, 10] == 0
    only_two = postprocess(labels, "multiclass", PostprocessOptions(largest_component=(2,)))
    assert (only_two == 1).sum() == 14 and only_two[4, 10] == 0
    assert labels[4, 10] == 2  # the input is not modified


def test_multiclass_hole_filling_keeps_other_classes():
    labels = np.zeros((9, 9), dtype=np.int16)
    labels[1:8, 1:8] = 1
    labels[3:6, 3:6] = 0
    labels[4, 4] = 2  # a structure inside the hole
    out = postprocess(labels, "multiclass", PostprocessOptions(fill_holes=True))
    assert out[4, 4] == 2 and (out == 1).sum() == 49 - 1
    assert out.dtype == labels.dtype


def test_small_components_with_spacing_in_3d_multiclass():
    labels = np.zeros((6, 10, 10), dtype=np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels of 2 mm³ = 16 mm³
    labels[3:6, 4:8, 4:8] = 1  # 48 voxels = 96 mm³
    labels[5, 0, 0] = 2  # 1 voxel = 2 mm³
    options = PostprocessOptions(min_component_volume=10.0)
    out = postprocess(labels, "multiclass", options, spacing=(2.0, 1.0, 1.0))
    assert (out == 1).sum() == 56 and (out == 2).sum() == 0
    out = postprocess(labels, "multiclass", PostprocessOptions(min_component_volume=20.0), spacing=(2, 1, 1))
    assert (out == 1).sum() == 48


def test_multilabel_channels_are_independent():
    channels = np.zeros((2, 10, 12), dtype=np.uint8)
    channels[0][blobs_2d()] = 1
    channels[1, 2:9, 2:9] = 1
    channels[1, 5, 5] = 0
    channels[1, 0, 0] = 1
    options = PostprocessOptions(largest_component=True, fill_holes=True)
    out = postprocess(channels, "multilabel", options)
    assert out[0].sum() == 9 and out[1].sum() == 49 and out[1, 5, 5] == 1 and out[1, 0, 0] == 0
    assert out.dtype == np.uint8 and out.shape == channels.shape


def test_binary_and_errors():
    mask = blobs_2d().astype(np.uint8)
    out = postprocess(mask, "binary", PostprocessOptions(min_component_voxels=2))
    assert out.sum() == 13
    assert np.array_equal(postprocess(mask, "binary"), mask)
    with pytest.raises(MedsegError, match="label mode"):
        apply_per_class(mask, "softmax", keep_largest_component)
    with pytest.raises(MedsegError, match="connectivity"):
        keep_largest_component(blobs_2d(), connectivity=3)
    with pytest.raises(MedsegError, match="integers"):
        postprocess(mask.astype(float), "multiclass", PostprocessOptions(largest_component=True))
