"""The shared typed-config converter (medseg.config_types), on small dataclasses of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import yaml

from medseg.config_types import (
    ConfigError,
    Range,
    bounded,
    check_config,
    config_to_dict,
    dataclass_from_dict,
    did_you_mean,
    with_overrides,
)
from medseg.errors import MedsegError


@dataclass(frozen=True)
class Switch:
    enabled: bool = True
    p: float = bounded(0.5, ge=0.0, le=1.0)

    @classmethod
    def config_shorthand(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


@dataclass(frozen=True)
class Turn(Switch):
    degrees: Range | tuple[Range, ...] | None = bounded(None, ge=-360.0, le=360.0)
    spread: Range = bounded(Range(0.0, 1.0), ge=0.0)
    mode: Literal["near", "far"] = "near"


@dataclass
class Item:
    name: str
    size: int = bounded(1, ge=1)


@dataclass
class Root:
    turn: Turn = field(default_factory=Turn)
    items: list[Item] = field(default_factory=list)
    sizes: tuple[int, ...] | None = bounded(None, gt=0)
    options: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        if self.sizes is not None and len(self.sizes) > 3:
            raise ConfigError(f"{key or 'root'}.sizes: at most 3 values, got {len(self.sizes)}")


def test_ranges_are_named_tuples_read_from_lists_of_two_numbers() -> None:
    turn = dataclass_from_dict(Turn, {"degrees": [-10, 10], "spread": [0, 2]}, "turn")
    assert turn.degrees == (-10.0, 10.0) and isinstance(turn.degrees, Range)
    assert all(isinstance(v, float) for v in turn.degrees) and turn.spread.high == 2.0
    per_axis = dataclass_from_dict(Turn, {"degrees": [[-5, 5], [0, 0], [1, 2]]})
    assert per_axis.degrees == ((-5.0, 5.0), (0.0, 0.0), (1.0, 2.0))
    assert all(isinstance(r, Range) for r in per_axis.degrees)
    assert dataclass_from_dict(Turn, {"degrees": None}).degrees is None


@pytest.mark.parametrize(("data", "message"), [
    ({"spread": 1.0}, r"^turn\.spread: expected a range \[low, high\], got 1\.0$"),
    ({"spread": [1, 2, 3]}, r"^turn\.spread: expected a range \[low, high\], got \[1, 2, 3\]$"),
    ({"spread": [0, "x"]}, r"^turn\.spread\[1\]: expected a number, got 'x'$"),
    ({"spread": [2, 1]}, r"^turn\.spread: low 2\.0 is above high 1\.0$"),
    ({"degrees": [[0, 1], [5, -5]]}, r"^turn\.degrees: low 5\.0 is above high -5\.0$"),  # inside a union
    ({"degrees": [5, -5]}, r"^turn\.degrees: low 5\.0 is above high -5\.0$"),
    ({"degrees": [[0, 1], [0, 400]]}, r"^turn\.degrees: 400\.0 is outside the allowed interval \[-360\.0, "),
    ({"degrees": 5}, r"^turn\.degrees: expected a range \[low, high\] or a list \(each a range "
                     r"\[low, high\]\) or null, got 5$"),
    ({"spread": [-1, 1]}, r"^turn\.spread: every value must be >= 0\.0, got \[-1\.0, 1\.0\]$"),
    ({"p": 1.5}, r"^turn\.p: 1\.5 is outside the allowed interval \[0\.0, 1\.0\]$"),
    ({"mode": "nera"}, r"^turn\.mode: 'nera' is not one of near, far; did you mean 'near'\?$"),
    ({"enabled": "yes"}, r"^turn\.enabled: expected true or false, got 'yes'$"),
    ({"degres": [0, 1]}, r"^unknown config key 'turn\.degres'; did you mean 'turn\.degrees'\?$"),
    ({"zzz": 1}, r"^unknown config key 'turn\.zzz'; valid keys under 'turn': enabled, p, degrees, spread, "
                 r"mode$"),
])
def test_errors_name_the_dotted_key_and_what_is_allowed(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclass_from_dict(Turn, data, "turn")


def test_the_shorthand_hook_and_none_give_the_defaults() -> None:
    root = dataclass_from_dict(Root, {"turn": False})
    assert root.turn == Turn(enabled=False)
    assert dataclass_from_dict(Root, {"turn": None}).turn == Turn()
    assert dataclass_from_dict(Root, {"turn": {"p": 0.25}}).turn == Turn(p=0.25)
    with pytest.raises(ConfigError, match=r"^turn: expected a mapping, got 5$"):
        dataclass_from_dict(Root, {"turn": 5})
    with pytest.raises(ConfigError, match=r"^config: expected a mapping, got \[1\]$"):
        dataclass_from_dict(Root, [1])


def test_nested_lists_bounds_required_keys_and_the_class_check() -> None:
    root = dataclass_from_dict(Root, {"items": [{"name": "a"}, {"name": "b", "size": 3.0}], "sizes": [1, 2]})
    assert root.items == [Item("a"), Item("b", 3)] and root.sizes == (1, 2)
    cases = [({"items": [{"size": 2}]}, r"^items\[0\]\.name: missing \(required\)$"),
             ({"items": [{"name": "a", "size": 0}]}, r"^items\[0\]\.size: must be >= 1, got 0$"),
             ({"sizes": [0, 2]}, r"^sizes: every value must be > 0, got \[0, 2\]$"),
             ({"sizes": [1, 2, 3, 4]}, r"^root\.sizes: at most 3 values, got 4$"),
             ({"sizes": [1, 2.5]}, r"^sizes\[1\]: expected an integer, got 2\.5$")]
    for data, message in cases:
        with pytest.raises(ConfigError, match=message):
            dataclass_from_dict(Root, data)


def test_plain_data_round_trips_through_yaml() -> None:
    root = dataclass_from_dict(Root, {"turn": {"degrees": [[-5, 5], [0, 0]], "mode": "far"},
                                      "items": [{"name": "a"}], "sizes": [4], "options": {"k": [1, 2]}})
    plain = config_to_dict(root)
    assert plain["turn"]["degrees"] == [[-5.0, 5.0], [0.0, 0.0]] and plain["sizes"] == [4]
    assert plain["items"] == [{"name": "a", "size": 1}]
    text = yaml.safe_dump(plain)  # only plain types: safe_dump refuses tuples' subclasses and dataclasses
    assert dataclass_from_dict(Root, yaml.safe_load(text)) == root


def test_check_config_checks_a_config_built_in_code() -> None:
    check_config(Root(turn=Turn(degrees=Range(-1.0, 1.0))), "root")
    with pytest.raises(ConfigError, match=r"^root\.turn\.degrees: low 1\.0 is above high -1\.0$"):
        check_config(Root(turn=Turn(degrees=Range(1.0, -1.0))), "root")
    with pytest.raises(ConfigError, match=r"^root\.turn\.mode: 'side' is not one of near, far$"):
        check_config(Root(turn=Turn(mode="side")), "root")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^root\.turn\.p: 2\.0 is outside the allowed interval"):
        check_config(Root(turn=Turn(p=2)), "root")


def test_config_errors_are_medseg_errors_and_did_you_mean() -> None:
    assert issubclass(ConfigError, MedsegError)
    assert did_you_mean("epoch", ["epochs", "seed"], "train.") == "; did you mean 'train.epochs'?"
    assert did_you_mean("zzz", ["epochs"]) == ""


def test_with_overrides_sets_dotted_keys_in_a_copy() -> None:
    data = {"turn": {"p": 0.1}, "items": [{"name": "a"}]}
    merged = with_overrides(data, [("turn.mode", "far"), ("options.a.b", 1), ("turn.p", 0.2)])
    assert merged == {"turn": {"p": 0.2, "mode": "far"}, "items": [{"name": "a"}], "options": {"a": {"b": 1}}}
    assert data == {"turn": {"p": 0.1}, "items": [{"name": "a"}]} and merged["items"] is not data["items"]
    with pytest.raises(ConfigError, match=r"^override turn\.p\.x: turn\.p is 0\.1, not a section$"):
        with_overrides(data, [("turn.p.x", 1)])
