"""Tests of the fully connected CRF (medseg.blocks.crf): energy, cleaning, exact vs window paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.blocks.crf import DenseCRF, build_crf
from medseg.errors import MedsegError

# A kernel that makes the bilateral term matter on the toy image below (colours 0 / 1 plus noise).
TOY = {"appearance_weight": 1.0, "appearance_theta": 5.0, "intensity_theta": 0.2, "smoothness_weight": 1.0,
       "smoothness_theta": 1.0}


def two_regions(size: int = 16, flip: float = 0.25, seed: int = 0, spatial_dims: int = 2
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An image dark on the left half and bright on the right (plus noise), its true labels, a noisy
    labelling (``flip`` of the pixels flipped) and the noisy labelling's logits (+-1)."""
    g = torch.Generator().manual_seed(seed)
    shape = [size] * spatial_dims
    truth = (torch.arange(size) >= size // 2).long().expand(*shape)
    image = truth.float().expand(1, 3, *shape).clone() + 0.05 * torch.randn(1, 3, *shape, generator=g)
    noisy = truth.clone()
    flipped = torch.rand(*shape, generator=g) < flip
    noisy[flipped] = 1 - noisy[flipped]
    logits = 2.0 * (F.one_hot(noisy, 2).movedim(-1, 0)[None].float() - 0.5)
    return image, truth, noisy, logits


@pytest.mark.parametrize("options", [{}, TOY], ids=["deeplab-defaults", "toy-kernel"])
def test_mean_field_lowers_the_free_energy(options: dict) -> None:
    image, _, _, logits = two_regions()
    energies = []
    for iterations in range(5):
        crf = DenseCRF(iterations=iterations, method="exact", **options)
        energies.append(crf.free_energy(logits, image, crf.mean_field(logits, image)).item())
    assert energies[-1] < 0.5 * energies[0]
    assert all(b <= a + 1e-3 for a, b in zip(energies, energies[1:], strict=False)), energies
    # the expected energy alone drops too: the noisy labelling pays for every disagreeing pair
    crf = DenseCRF(iterations=5, method="exact", **options)
    q0 = torch.softmax(logits, 1)
    assert crf.expected_energy(logits, image, crf.mean_field(logits, image)) < crf.expected_energy(
        logits, image, q0)


def test_free_energy_matches_a_brute_force_sum() -> None:
    image, _, _, logits = two_regions(size=4)
    crf = DenseCRF(iterations=2, method="exact", **TOY)
    q = crf.mean_field(logits, image)
    unary = -torch.log_softmax(logits, 1).flatten(2)[0]  # [L, N]
    qf = q.flatten(2)[0]
    kernel = crf.pairwise_kernel(image)[0]
    n = qf.shape[1]
    pairwise = sum(kernel[i, j] * (1 - (qf[:, i] * qf[:, j]).sum())
                   for i in range(n) for j in range(i + 1, n))
    entropy = -(qf * qf.log()).sum()
    expected = (qf * unary).sum() + pairwise - entropy
    torch.testing.assert_close(crf.free_energy(logits, image, q)[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["exact", "window"])
def test_crf_cleans_a_noisy_two_region_labelling(method: str) -> None:
    image, truth, noisy, logits = two_regions(size=24)
    before = (noisy == truth).float().mean()
    refined = DenseCRF(iterations=5, method=method, window=3, **TOY)(logits, image)
    after = (refined.argmax(1)[0] == truth).float().mean()
    assert before < 0.8 and after > 0.97, (before, after)
    assert torch.allclose(refined.logsumexp(1), torch.zeros(1), atol=1e-5)  # log-marginals


def test_single_sigmoid_channel_is_two_classes() -> None:
    image, truth, noisy, logits = two_regions(size=16)
    crf = DenseCRF(iterations=5, method="exact", **TOY)
    binary = logits[:, 1:2] - logits[:, 0:1]
    refined = crf(binary, image)
    assert refined.shape == binary.shape
    assert ((refined[0, 0] > 0).long() == truth).float().mean() > 0.97
    # the same marginals as the two-class call
    torch.testing.assert_close(torch.sigmoid(refined[:, 0]), crf.mean_field(logits, image)[:, 1], atol=1e-5,
                               rtol=1e-5)


def test_window_covering_the_image_equals_the_exact_message() -> None:
    image, _, _, logits = two_regions(size=8)
    q = torch.softmax(logits, 1)
    exact = DenseCRF(method="exact", **TOY).message(q, image)
    window = DenseCRF(method="window", window=7, **TOY).message(q, image)
    torch.testing.assert_close(window, exact, rtol=1e-5, atol=1e-5)
    # a small window drops far pairs: smaller messages, not equal ones
    assert (DenseCRF(method="window", window=1, **TOY).message(q, image) <= exact + 1e-6).all()


def test_downsampled_window_still_cleans() -> None:
    image, truth, _, logits = two_regions(size=32)
    refined = DenseCRF(iterations=5, method="window", window=2, downsample=2, **TOY)(logits, image)
    assert (refined.argmax(1)[0] == truth).float().mean() > 0.95


def test_auto_picks_exact_for_small_images() -> None:
    image, _, _, logits = two_regions(size=8)
    auto = DenseCRF(iterations=3, max_exact_pixels=64, **TOY)
    exact = DenseCRF(iterations=3, method="exact", **TOY)
    small_window = DenseCRF(iterations=3, method="window", window=1, **TOY)
    torch.testing.assert_close(auto(logits, image), exact(logits, image))
    assert not torch.allclose(small_window(logits, image), exact(logits, image))


def test_zero_weights_or_iterations_leave_the_softmax() -> None:
    image, _, _, logits = two_regions(size=8)
    expected = torch.log_softmax(logits, 1)
    torch.testing.assert_close(DenseCRF(iterations=0)(logits, image), expected)
    torch.testing.assert_close(DenseCRF(appearance_weight=0, smoothness_weight=0)(logits, image), expected)


@pytest.mark.parametrize("method", ["exact", "window"])
def test_crf_in_3d(method: str) -> None:
    image, truth, noisy, logits = two_regions(size=8, spatial_dims=3)
    refined = DenseCRF(iterations=5, method=method, window=2, **TOY)(logits, image)
    assert refined.shape == logits.shape
    assert (refined.argmax(1)[0] == truth).float().mean() > (noisy == truth).float().mean() + 0.1


def test_bad_inputs_and_options() -> None:
    image, _, _, logits = two_regions(size=8)
    with pytest.raises(MedsegError, match="differ"):
        DenseCRF()(logits, image[..., :4])
    with pytest.raises(MedsegError, match="method"):
        DenseCRF(method="permutohedral")
    with pytest.raises(MedsegError, match="widths"):
        DenseCRF(intensity_theta=0)
    with pytest.raises(MedsegError, match="crf: .*unexpected keyword argument 'iters'"):
        build_crf({"iters": 3})
    assert build_crf(None) is None and build_crf(False) is None
    assert build_crf({"iterations": 3}).iterations == 3
    assert isinstance(build_crf(True), DenseCRF)
