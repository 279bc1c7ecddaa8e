"""The discriminators of adversarial segmentation (Luc et al. 2016): structure, shapes, dims, errors."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_grads_finite
from medseg.errors import MedsegError
from medseg.models.discriminator import create_discriminator


def conv_params(cin: int, cout: int, kernel: int, dims: int = 2) -> int:
    return cin * cout * kernel ** dims + cout


def test_luc_variant_has_the_papers_stanford_background_layers() -> None:
    # image branch 5x5 16, 5x5 64; map branch 5x5 64; fused 3x3 128, pool, 3x3 256, pool, 3x3 512, 3x3 out
    expected = (conv_params(3, 16, 5) + conv_params(16, 64, 5) + conv_params(1, 64, 5)
                + conv_params(128, 128, 3) + conv_params(128, 256, 3) + conv_params(256, 512, 3)
                + conv_params(512, 1, 3))
    net = create_discriminator("luc", spatial_dims=2, image_channels=3, map_channels=1)
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("name", ["luc", "concat"])
@pytest.mark.parametrize("dims", [2, 3])
def test_scores_per_location_depend_on_image_and_map(name: str, dims: int) -> None:
    torch.manual_seed(0)
    net = create_discriminator(name, spatial_dims=dims, image_channels=2, map_channels=3, features=4)
    image, probs = torch.randn(2, 2, *[16] * dims), torch.rand(2, 3, *[16] * dims)
    scores = net(image, probs)
    assert scores.shape == (2, 1, *[4] * dims)
    assert not torch.allclose(scores, net(image, torch.rand_like(probs)))
    assert not torch.allclose(scores, net(torch.randn_like(image), probs))


def test_gradients_reach_the_map() -> None:
    net = create_discriminator("concat", spatial_dims=2, image_channels=1, map_channels=2, features=4)
    image = torch.randn(2, 1, 16, 16)

    class OnMap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(image, x)

    assert_grads_finite(OnMap(), torch.rand(2, 2, 16, 16))


def test_unknown_name_and_option_are_one_line_errors() -> None:
    with pytest.raises(MedsegError, match="unknown discriminator 'patchgan'.*luc, concat"):
        create_discriminator("patchgan", spatial_dims=2, image_channels=1, map_channels=1)
    with pytest.raises(MedsegError, match="discriminator 'luc': bad options"):
        create_discriminator("luc", spatial_dims=2, image_channels=1, map_channels=1, depth=3)
