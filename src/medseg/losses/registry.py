"""The loss registry: ``register_loss``, ``create_loss``, ``list_losses``.

Losses register a class (or a factory function) under a name; later losses (LossNet, the ConResNet loss)
plug in with the same decorator. Unknown names and options raise :class:`MedsegError` naming the key and
the allowed values.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from medseg.errors import MedsegError
from medseg.losses.base import check_keys

LossBuilder = Callable[..., nn.Module]

_LOSSES: dict[str, LossBuilder] = {}
_ALIASES: dict[str, str] = {}


def register_loss(name: str, *, aliases: Sequence[str] = ()) -> Callable[[LossBuilder], LossBuilder]:
    """Class or function decorator registering a loss builder under ``name`` (lower case) and ``aliases``."""

    def decorate(builder: LossBuilder) -> LossBuilder:
        for key in (name, *aliases):
            if key in _LOSSES or key in _ALIASES:
                raise ValueError(f"loss name {key!r} is registered twice")
        _LOSSES[name] = builder
        for alias in aliases:
            _ALIASES[alias] = name
        return builder

    return decorate


def unregister_loss(name: str) -> None:
    """Remove a loss and its aliases (tests, plug-ins); unknown names are ignored."""
    if _LOSSES.pop(name, None) is not None:
        for alias in [a for a, target in _ALIASES.items() if target == name]:
            del _ALIASES[alias]


def _ensure_losses_imported() -> None:
    import medseg.losses  # noqa: F401  (registers the built-in losses)


def get_loss_builder(name: str) -> LossBuilder:
    """The builder registered under ``name`` or an alias; unknown names list the allowed ones."""
    _ensure_losses_imported()
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key in _LOSSES:
        return _LOSSES[key]
    known = sorted([*_LOSSES, *_ALIASES])
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise MedsegError(f"unknown loss {name!r}{hint}; allowed: {', '.join(known)}")


def loss_options(name: str) -> list[str]:
    """The keyword options the loss ``name`` accepts."""
    signature = inspect.signature(get_loss_builder(name))
    return [p.name for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def accepts_option(name: str, option: str) -> bool:
    """Whether the loss ``name`` takes the keyword ``option`` (or any keyword)."""
    params = inspect.signature(get_loss_builder(name)).parameters.values()
    return any(p.name == option or p.kind is p.VAR_KEYWORD for p in params)


def create_loss(name: str, **options: Any) -> nn.Module:
    """Build the registered loss ``name`` with ``options``; bad option names raise :class:`MedsegError`."""
    builder = get_loss_builder(name)
    signature = inspect.signature(builder)
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        check_keys(options, loss_options(name), f"option(s) of loss {name!r}:")
    return builder(**options)


def list_losses() -> list[str]:
    """The registered loss names, sorted (aliases not included)."""
    _ensure_losses_imported()
    return sorted(_LOSSES)
