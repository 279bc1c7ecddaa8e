"""The semantic-to-instance baseline: watershed on the distance transform, through postprocess and predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from medseg.data import read_mask, write_image
from medseg.data.preprocess import Preprocessor
from medseg.engine.checkpoint import make_checkpoint, save_checkpoint
from medseg.engine.postprocess import PostprocessOptions, postprocess
from medseg.engine.predict import predict_paths
from medseg.engine.watershed import WatershedOptions, watershed_instances
from medseg.errors import MedsegError
from medseg.models.registry import register_model, unregister_model


def touching_discs(shape: tuple[int, int] = (64, 96), radius: int = 12, gap: float = 0.0) -> np.ndarray:
    """Two discs side by side whose rims touch (centres ``2 * radius - 1 + gap`` apart): one component."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centre_y, left = shape[0] // 2, shape[1] // 2 - radius
    right = left + 2 * radius - 1 + gap
    return ((yy - centre_y) ** 2 + (xx - left) ** 2 <= radius**2) | \
        ((yy - centre_y) ** 2 + (xx - right) ** 2 <= radius**2)


def test_watershed_separates_touching_discs_that_components_merge() -> None:
    mask = touching_discs()
    assert ndimage.label(mask)[1] == 1  # connected components: one object
    ids = watershed_instances(mask, WatershedOptions(min_distance=4))
    assert ids.dtype == np.uint16
    assert sorted(np.unique(ids).tolist()) == [0, 1, 2]
    assert np.array_equal(ids > 0, mask)  # exactly the foreground, nothing added or lost
    left, right = (np.argwhere(ids == k)[:, 1].mean() for k in (1, 2))
    cut = (left + right) / 2
    for k in (1, 2):  # each instance is one disc: on one side of the midline, about a disc's area
        columns = np.argwhere(ids == k)[:, 1]
        assert (columns < cut + 2).all() or (columns > cut - 2).all()
        assert abs((ids == k).sum() - mask.sum() / 2) < 0.05 * mask.sum()


def test_a_large_min_distance_keeps_the_pair_as_one_object_and_min_size_removes_specks() -> None:
    mask = touching_discs()
    assert watershed_instances(mask, WatershedOptions(min_distance=30)).max() == 1
    speck = mask.copy()
    speck[2:4, 2:4] = True  # 4 pixels apart from the discs
    assert watershed_instances(speck, WatershedOptions(min_distance=4)).max() == 3
    assert watershed_instances(speck, WatershedOptions(min_distance=4, min_size=10)).max() == 2
    assert watershed_instances(np.zeros((8, 8), bool)).max() == 0


def test_separate_discs_stay_separate_and_3d_works() -> None:
    ids = watershed_instances(touching_discs(gap=6))
    assert ids.max() == 2 and ndimage.label(ids > 0)[1] == 2
    zz, yy, xx = np.mgrid[:24, :24, :40]
    balls = ((zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 11) ** 2 <= 64) | \
        ((zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 26) ** 2 <= 64)
    assert ndimage.label(balls)[1] == 1
    assert watershed_instances(balls, WatershedOptions(min_distance=3)).max() == 2


def test_postprocess_option_turns_a_binary_map_into_instances_and_checks_its_inputs() -> None:
    mask = touching_discs().astype(np.uint8)
    plain = postprocess(mask, "binary", PostprocessOptions())
    assert plain.max() == 1
    split = postprocess(mask, "binary", PostprocessOptions(instances="watershed", watershed_min_distance=4))
    assert split.dtype == np.uint16 and split.max() == 2
    with pytest.raises(MedsegError, match="binary"):
        postprocess(mask, "multiclass", PostprocessOptions(instances="watershed"))
    with pytest.raises(MedsegError, match="instances"):
        PostprocessOptions(instances="connected")
    with pytest.raises(MedsegError, match="min_distance"):
        PostprocessOptions(instances="watershed", watershed_min_distance=0)


class BrightIsForeground(nn.Module):
    """Logits ``20 * (x - 0.5)``: the foreground is where the (0..1) image is bright."""

    input_multiple = 1

    def __init__(self, **_: object) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x - 0.5)


@pytest.fixture
def bright_model() -> str:
    name = "test_bright_foreground"
    register_model(name, paper="test", dims=(2,), default_loss="bce", input_multiple=1)(
        lambda in_channels, num_classes, spatial_dims, **o: BrightIsForeground())
    yield name
    unregister_model(name)


def test_predict_with_watershed_writes_16_bit_instance_maps(tmp_path: Path, bright_model: str) -> None:
    images = tmp_path / "images"
    write_image(images / "pair.png", touching_discs()[None].astype(np.uint8) * np.uint8(200))
    model = BrightIsForeground()
    scaled = Preprocessor(normalization="rgb", norm_stats={"max_value": 255}).to_dict()
    ckpt = make_checkpoint(model, name=bright_model, in_channels=1, num_classes=1, spatial_dims=2,
                           label_mode="binary", preprocessing=scaled,
                           inference={"mirror": False, "overlays": False,
                                      "postprocess": {"instances": "watershed", "watershed_min_distance": 4}})
    checkpoint = save_checkpoint(tmp_path / "best.pt", ckpt)
    [written] = predict_paths([checkpoint], images, tmp_path / "pred", device="cpu", progress=False)
    ids, _ = read_mask(written)
    assert written.name == "pair.png"
    assert ids.dtype == np.uint16 and sorted(np.unique(ids).tolist()) == [0, 1, 2]
    options = PostprocessOptions()  # without the option: one binary object
    [binary] = predict_paths([checkpoint], images, tmp_path / "plain", device="cpu", progress=False,
                             postprocess=options)
    assert np.unique(read_mask(binary)[0]).tolist() == [0, 1]
