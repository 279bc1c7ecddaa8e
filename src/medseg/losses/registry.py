"""The loss registry: ``register_loss``, ``create_loss``, ``list_losses``.

Losses register a class (or a factory function) under a name; later losses (LossNet, the ConResNet loss)
plug in with the same decorator. The builders live in a :class:`~medseg.registries.Registry`, filled by
importing :mod:`medseg.losses` on first use. Unknown names raise :class:`MedsegError` with the closest
names, unknown options name the key and the allowed values.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from medseg.errors import MedsegError
from medseg.losses.base import check_keys
from medseg.registries import Registry

LossBuilder = Callable[..., nn.Module]


def _import_losses() -> None:
    import medseg.losses  # noqa: F401  (registers the built-in losses)


_LOSSES: Registry[LossBuilder] = Registry("loss", populate=_import_losses, error=MedsegError)


def register_loss(name: str, *, aliases: Sequence[str] = ()) -> Callable[[LossBuilder], LossBuilder]:
    """Class or function decorator registering a loss builder under ``name`` (lower case) and ``aliases``."""

    def decorate(builder: LossBuilder) -> LossBuilder:
        return _LOSSES.add(name, builder, aliases)

    return decorate


def unregister_loss(name: str) -> None:
    """Remove a loss and its aliases (tests, plug-ins); unknown names are ignored."""
    _LOSSES.remove(name)


def get_loss_builder(name: str) -> LossBuilder:
    """The builder registered under ``name`` or an alias; unknown names suggest the closest ones."""
    return _LOSSES.get(name)


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
    return _LOSSES.names()
