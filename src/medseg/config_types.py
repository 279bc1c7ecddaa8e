"""Typed configuration: config dataclasses from plain data (YAML, JSON, overrides) and back.

One converter (:func:`dataclass_from_dict`) turns a mapping into any config dataclass by its type hints:
nested dataclasses, ``X | None`` and other unions, lists, tuples, dicts, ``Literal`` choices, value types
declared as ``NamedTuple`` (such as :class:`Range`) and numeric bounds from field metadata
(:func:`bounded`). Two small hooks let a class take other forms of its values:

- a dataclass may define a classmethod ``config_shorthand(value)`` that rewrites a value that is not a
  mapping into the mapping it stands for (``elastic: true`` -> ``{enabled: true}``);
- a dataclass or a ``NamedTuple`` value type may define ``check(key)``, run once the value is built, for
  rules across its fields (``low <= high``); it raises :class:`ConfigError` naming ``key``.

Errors are one-line :class:`ConfigError` messages naming the full dotted key
(``augmentation.rotation.degrees``), the expected type or the allowed values, and for unknown keys the
closest valid ones. :func:`config_to_dict` is the inverse: plain dicts, lists and scalars;
:func:`with_overrides` sets dotted keys (``train.epochs``) in such plain data.

This module is a leaf: it imports the standard library and :mod:`medseg.errors` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints

from medseg.errors import MedsegError

__all__ = ["ConfigError", "Range", "bounded", "check_config", "config_to_dict", "dataclass_from_dict",
           "did_you_mean", "plain", "with_overrides"]


class ConfigError(MedsegError):
    """A configuration that does not validate (the message names the key)."""


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with numeric bounds, checked on every number of the value (None skipped).

    A closed interval (``ge`` and ``le``) is reported as ``x is outside the allowed interval [ge, le]``,
    other bounds as ``must be >= ge, got x``.
    """
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    return dataclasses.field(default=default,
                             metadata={"bounds": {k: v for k, v in bounds.items() if v is not None}})


class Range(NamedTuple):
    """A closed interval ``[low, high]``: in a config a list of two numbers with ``low <= high``."""

    low: float
    high: float

    def check(self, key: str) -> None:
        if self.low > self.high:
            raise ConfigError(f"{key}: low {self.low} is above high {self.high}")


# ------------------------------------------------------------------------------------------ messages


def did_you_mean(name: str, valid: Sequence[str] | Mapping[str, Any], prefix: str = "") -> str:
    """``; did you mean 'a', 'b'?``: the valid names closest to ``name`` (after ``prefix``), or ``""``."""
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


_SCALAR_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                 type(None): "null"}


def _is_named_tuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _describe(tp: Any) -> str:
    """The expected type in words: ``an integer``, ``a list of numbers or null``, ``one of a, b``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if _is_named_tuple(tp):
        return f"a {tp.__name__.lower()} [{', '.join(tp._fields)}]"
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list (each {_describe(args[0])})" if args else "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return _SCALAR_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


# ------------------------------------------------------------------------------------------ conversion


def _convert_scalar(value: Any, tp: type, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif isinstance(value, tp):
        return value
    raise _type_error(key, tp, value)


def _convert_union(value: Any, tp: Any, key: str) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:  # keep the inner message (it may name an item) unless it is about this value
        try:
            return _convert(value, options[0], key)
        except ConfigError as exc:
            if str(exc).startswith(f"{key}: expected "):
                raise _type_error(key, tp, value) from None
            raise
    for option in options:
        try:
            return _convert(value, option, key)
        except ConfigError:
            continue
    raise _type_error(key, tp, value)


def _convert_sequence(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if _is_named_tuple(tp):
        if not isinstance(value, (list, tuple)) or len(value) != len(tp._fields):
            raise _type_error(key, tp, value)
        hints = get_type_hints(tp)
        return tp(*(_convert(v, hints[name], f"{key}[{i}]")
                    for i, (v, name) in enumerate(zip(value, tp._fields, strict=True))))
    if not isinstance(value, (list, tuple)):
        raise _type_error(key, tp, value)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({list(value)!r})")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    item = args[0] if args else Any
    items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check and convert one value to type ``tp``; ConfigError names ``key``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(str(a) for a in args)}"
                          f"{did_you_mean(str(value), [str(a) for a in args])}")
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, key)
    if origin in (list, tuple) or _is_named_tuple(tp):
        return _convert_sequence(value, tp, key)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        key_type, value_type = args or (Any, Any)
        return {_convert(k, key_type, key): _convert(v, value_type, _join(key, str(k)))
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return dataclass_from_dict(tp, value, key)
    return _convert_scalar(value, tp, key)


# ------------------------------------------------------------------------------------------ checks


def _numbers(value: Any) -> Iterator[float]:
    """The numbers of a value, nested lists and tuples included (booleans are not numbers)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def _check_value_types(value: Any, key: str) -> None:
    """Run ``check(key)`` of every ``NamedTuple`` value type in ``value`` (e.g. a :class:`Range`)."""
    if isinstance(value, tuple) and _is_named_tuple(type(value)) and hasattr(value, "check"):
        value.check(key)
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_value_types(item, key)


_TESTS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
          "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def _check_bounds(value: Any, bounds: Mapping[str, float], key: str) -> None:
    if not bounds or value is None:
        return
    interval = set(bounds) == {"ge", "le"}
    for number in _numbers(value):
        for name, bound in bounds.items():
            test, sign = _TESTS[name]
            if test(number, bound):
                continue
            if interval:
                raise ConfigError(f"{key}: {number} is outside the allowed interval "
                                  f"[{bounds['ge']}, {bounds['le']}]")
            every = "every value " if isinstance(value, (list, tuple)) else ""
            raise ConfigError(f"{key}: {every}must be {sign} {bound}, got {plain(value)!r}")


def dataclass_from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build the config dataclass ``cls`` from a mapping (recursively), checking every key and type.

    Missing keys keep their defaults; ``None`` for a nested section means its defaults; a value that is
    not a mapping goes through the class's ``config_shorthand`` when it has one. After construction the
    fields' value types (``check``) and numeric bounds, then the class's ``check(key)`` (cross-field
    rules) are applied. An instance of ``cls`` is returned as it is.
    """
    if isinstance(data, cls):
        return data
    shorthand = getattr(cls, "config_shorthand", None)
    if shorthand is not None and data is not None and not isinstance(data, Mapping):
        data = shorthand(data)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _type_error(key or "config", cls, data)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, value in data.items():
        if name not in fields:
            where = f"; valid keys under {key!r}: {', '.join(fields)}" if key else ""
            hint = did_you_mean(str(name), fields, f"{key}." if key else "") or where
            raise ConfigError(f"unknown config key {_join(key, str(name))!r}{hint}")
        values[name] = _convert(value, hints[name], _join(key, name))
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{_join(key, missing[0])}: missing (required)")
    config = cls(**values)
    for name, f in fields.items():
        _check_value_types(getattr(config, name), _join(key, name))
        _check_bounds(getattr(config, name), f.metadata.get("bounds", {}), _join(key, name))
    if hasattr(config, "check"):
        config.check(key)
    return config


def check_config(config: Any, key: str = "") -> None:
    """Check a config dataclass built in code (not read by :func:`dataclass_from_dict`) as if it had been
    read: every type, choice, bound and ``check``; :class:`ConfigError` names the key."""
    dataclass_from_dict(type(config), config_to_dict(config), key)


# ------------------------------------------------------------------------------------------ overrides


def with_overrides(data: Mapping[str, Any], overrides: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of ``data`` (mappings and lists copied) with each ``(dotted key, value)`` of ``overrides`` set,
    in order, creating missing sections; a key below a value that is not a section is a ConfigError."""
    result = _copy(data)
    for dotted, value in overrides:
        parts = dotted.split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: {'.'.join(parts[:depth + 1])} is {child!r}, not a "
                                  "section")
            node = child
        node[parts[-1]] = value
    return result


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ plain data


def plain(value: Any) -> Any:
    """``value`` as plain data: dataclasses and mappings as dicts, tuples (ranges too) as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain data (dicts, lists, scalars) for YAML, JSON and checkpoints; the
    inverse of :func:`dataclass_from_dict`."""
    return plain(config)
