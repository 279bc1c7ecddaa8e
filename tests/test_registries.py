"""The generic registry: registration, aliases, look-ups and the did-you-mean error."""

from __future__ import annotations

import pytest

from medseg.errors import MedsegError, UnknownModelError
from medseg.registries import Registry


def test_names_aliases_and_lookup_ignore_letter_case() -> None:
    registry: Registry[int] = Registry("widget")
    registry.add("Alpha", 1, aliases=["a"])
    registry.add("beta", 2)
    assert registry.get("ALPHA") == 1 and registry.get("A") == 1 and registry.get("beta") == 2
    assert registry.names() == ["alpha", "beta"] and registry.aliases_of("a") == ["a"]
    assert "a" in registry and "gamma" not in registry and list(registry) == ["alpha", "beta"]


def test_a_name_or_alias_registered_twice_is_refused() -> None:
    registry: Registry[int] = Registry("widget")
    registry.add("alpha", 1, aliases=["a"])
    with pytest.raises(ValueError, match="'a' is registered twice"):
        registry.add("a", 2)
    registry.remove("alpha")
    assert "a" not in registry
    registry.add("a", 3)
    assert registry.get("a") == 3


def test_unknown_names_suggest_the_closest_or_list_all() -> None:
    registry: Registry[int] = Registry("loss", error=UnknownModelError)
    registry.add("dice", 1)
    registry.add("focal", 2)
    with pytest.raises(UnknownModelError, match="unknown loss 'dcie'; did you mean dice"):
        registry.get("dcie")
    with pytest.raises(MedsegError, match="known losses: dice, focal"):
        registry.get("zzzzzz")


def test_populate_runs_once_before_the_first_lookup() -> None:
    calls = []
    registry: Registry[int] = Registry("widget", populate=lambda: (calls.append(1), registry.add("x", 9)))
    assert calls == []
    assert registry.get("x") == 9 and registry.names() == ["x"]
    assert calls == [1]


def test_is_alias_tells_aliases_from_names_and_unknown_names() -> None:
    registry: Registry[int] = Registry("widget")
    registry.add("alpha", 1, aliases=["alpha3d"])
    assert registry.is_alias("ALPHA3D") and not registry.is_alias("alpha") and not registry.is_alias("zz")
    registry.remove("alpha")
    assert not registry.is_alias("alpha3d")
