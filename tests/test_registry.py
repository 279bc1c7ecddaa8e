"""The registry contract: create_model, list_models, model_info, errors with suggestions, aliases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import medseg
from medseg import layers
from medseg.errors import MedsegError, UnknownModelError
from medseg.models import registry
from medseg.models.registry import (
    Reference,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)

TINY = "_test_reg_tiny"
TINY_ALIAS = "_test_reg_tiny3d"
FLAT = "_test_reg_flat"
INFO_KEYS = {"name", "paper", "dims", "default_loss", "input_multiple", "aliases", "references",
             "small_options", "exportable"}


def build_tiny(*, in_channels: int, num_classes: int, spatial_dims: int, width: int = 4) -> nn.Module:
    """A conv-ReLU-conv network: 3x3 to ``width`` channels, then 1x1 to the classes."""
    return nn.Sequential(layers.conv(spatial_dims, in_channels, width, 3), layers.activation("relu"),
                         layers.conv(spatial_dims, width, num_classes, 1))


def tiny_params(in_channels: int, num_classes: int, spatial_dims: int, width: int = 4) -> int:
    return (in_channels * 3**spatial_dims + 1) * width + (width + 1) * num_classes


@pytest.fixture(scope="module", autouse=True)
def tiny_models() -> Iterator[None]:
    register_model(TINY, paper="Nobody 2024, A tiny test network", dims=(2, 3), default_loss="dice",
                   input_multiple=2, aliases=(TINY_ALIAS,), small_options={"width": 2},
                   references=[Reference({"in_channels": 3, "num_classes": 2, "width": 8},
                                         tiny_params(3, 2, 2, 8), "hand count")])(build_tiny)
    register_model(FLAT, paper="Nobody 2024, A 2D-only test network", dims=(2,), default_loss="ce",
                   input_multiple=1)(build_tiny)
    yield
    for key in (TINY, FLAT):
        registry.unregister_model(key)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_create_model_builds_a_module_with_the_common_keywords(spatial_dims: int) -> None:
    model = create_model(TINY, in_channels=3, num_classes=5, spatial_dims=spatial_dims, width=6)
    assert isinstance(model, nn.Module)
    assert count_parameters(model) == tiny_params(3, 5, spatial_dims, 6)
    out = model(torch.randn(2, 3, *[8] * spatial_dims))
    assert tuple(out.shape) == (2, 5, *[8] * spatial_dims)


def test_create_model_defaults_to_2d_one_channel_one_class() -> None:
    model = create_model(TINY)
    assert isinstance(model[0], nn.Conv2d)
    assert count_parameters(model) == tiny_params(1, 1, 2)


def test_alias_resolves_to_the_model_and_implies_3d() -> None:
    model = create_model(TINY_ALIAS.upper(), in_channels=1, num_classes=2)
    assert isinstance(model[0], nn.Conv3d)
    assert model_info(TINY_ALIAS)["name"] == TINY
    assert TINY in list_models()
    assert TINY_ALIAS not in list_models()


def test_list_models_is_sorted_and_public() -> None:
    names = list_models()
    assert names == sorted(names)
    assert medseg.list_models() == names


def test_model_info_contract_of_a_registered_model() -> None:
    info = model_info(TINY)
    assert set(info) >= INFO_KEYS
    assert info["paper"].startswith("Nobody 2024")
    assert info["dims"] == [2, 3]
    assert info["default_loss"] == "dice"
    assert info["input_multiple"] == 2
    assert info["aliases"] == [TINY_ALIAS]
    assert info["small_options"] == {"width": 2}
    [reference] = info["references"]
    assert reference == {"options": {"in_channels": 3, "num_classes": 2, "width": 8},
                         "params": tiny_params(3, 2, 2, 8), "source": "hand count"}
    assert count_parameters(create_model(TINY, **reference["options"])) == reference["params"]


def test_model_info_is_a_copy() -> None:
    info = model_info(TINY)
    info["small_options"]["width"] = 99
    info["references"][0]["options"]["width"] = 99
    assert model_info(TINY)["small_options"] == {"width": 2}
    assert model_info(TINY)["references"][0]["options"]["width"] == 8


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_declares_its_metadata(name: str) -> None:
    info = model_info(name)
    assert set(info) >= INFO_KEYS
    assert info["name"] == name
    assert isinstance(info["paper"], str) and len(info["paper"]) > 10
    assert info["dims"] and set(info["dims"]) <= {2, 3}
    assert isinstance(info["default_loss"], str) and info["default_loss"]
    assert isinstance(info["input_multiple"], int) and info["input_multiple"] >= 1
    for reference in info["references"]:
        assert set(reference) == {"options", "params", "source"}
        assert isinstance(reference["params"], int) and reference["params"] > 0
        assert isinstance(reference["source"], str) and reference["source"]
    for alias in info["aliases"]:
        assert model_info(alias)["name"] == name


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownModelError, match=f"did you mean {TINY}"):
        create_model(TINY + "y")
    with pytest.raises(UnknownModelError, match="did you mean"):
        model_info(TINY[:-1])


def test_unknown_name_far_from_everything_lists_the_known_models() -> None:
    with pytest.raises(UnknownModelError, match=f"known models: .*{TINY}"):
        create_model("qqqqqqqqqqqqqqqqqqqqqq")


def test_misspelled_unet_suggests_unet() -> None:
    if "unet" not in list_models():
        pytest.skip("unet is not registered yet")
    with pytest.raises(UnknownModelError, match=r"did you mean .*\bunet\b"):
        create_model("unett")


def test_unknown_model_error_is_a_medseg_error() -> None:
    assert issubclass(UnknownModelError, MedsegError)


def test_unsupported_spatial_dims_raise() -> None:
    with pytest.raises(MedsegError, match="supports spatial_dims 2, got 3"):
        create_model(FLAT, spatial_dims=3)
    with pytest.raises(MedsegError, match="got 4"):
        create_model(TINY, spatial_dims=4)


def test_unknown_option_raises_naming_the_model() -> None:
    with pytest.raises(MedsegError, match=f"{TINY}.*unexpected keyword argument 'depth'"):
        create_model(TINY, depth=3)


def test_bad_channel_counts_raise() -> None:
    with pytest.raises(MedsegError, match="in_channels and num_classes"):
        create_model(TINY, in_channels=0)


def test_registering_a_taken_name_raises() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_model(TINY_ALIAS, paper="x", dims=(2,), default_loss="ce", input_multiple=1)(build_tiny)
    assert registry.get_entry(TINY_ALIAS).name == TINY


def test_count_parameters_skips_frozen_parameters() -> None:
    model = create_model(TINY, in_channels=1, num_classes=1)
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.numel()
    assert count_parameters(model) == tiny_params(1, 1, 2) - frozen
    assert count_parameters(model, trainable_only=False) == tiny_params(1, 1, 2)
