"""The one display normaliser of predict's overlays and the evaluation report."""

from __future__ import annotations

import numpy as np

from medseg.engine.display import display_image


def test_8_bit_rgb_is_kept_as_it_is() -> None:
    image = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    picture = display_image(image)
    assert picture.shape == (5, 7, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture, np.moveaxis(image, 0, -1))


def test_other_rgb_is_scaled_to_8_bits() -> None:
    fractions = np.linspace(0, 1, 3 * 4 * 4).reshape(3, 4, 4)
    np.testing.assert_array_equal(display_image(fractions), np.rint(np.moveaxis(fractions, 0, -1) * 255))
    sixteen = (fractions * 1000).astype(np.uint16)  # above 255: scaled by the maximum
    assert display_image(sixteen).max() == 255 and display_image(sixteen)[0, 0, 0] == 0
    np.testing.assert_array_equal(display_image(np.full((3, 2, 2), 100.0)), np.full((2, 2, 3), 100))


def test_grey_images_get_a_percentile_window_of_their_first_channel() -> None:
    ramp = np.arange(101, dtype=np.float64).reshape(1, 1, 101)
    ramp[0, 0, 0], ramp[0, 0, -1] = -1e6, 1e6  # outliers beyond the 1st and 99th percentiles
    picture = display_image(np.concatenate([ramp, np.zeros_like(ramp)]))  # two channels: grey of the first
    assert picture.shape == (1, 101) and picture.dtype == np.uint8
    assert picture[0, 0] == 0 and picture[0, -1] == 255
    low, high = np.percentile(ramp, (1, 99))
    expected = np.rint(np.clip((ramp[0, 0, 1:-1] - low) / (high - low), 0, 1) * 255)
    np.testing.assert_array_equal(picture[0, 1:-1], expected)
    assert display_image(np.full((1, 3, 3), 7.0)).tolist() == [[255] * 3] * 3  # window [0, 7]
    volume = np.random.default_rng(1).normal(size=(3, 4, 5, 6))  # 3D with 3 channels: grey, not RGB
    assert display_image(volume).shape == (4, 5, 6)
