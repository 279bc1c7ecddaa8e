"""One registry class for every named family: models, encoders, losses, schedules.

A :class:`Registry` maps lower-case names (and aliases) to entries, refuses a name registered twice,
imports the modules that fill it on first use (``populate``) and answers an unknown name with the
closest known ones (:func:`~medseg.errors.unknown_name_message`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from medseg.errors import MedsegError, unknown_name_message

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``"model"``, ``"encoder"``, ``"loss"``, ``"schedule"``).

    Args:
        kind: the word used in messages (``unknown loss 'dcie'; did you mean dice?``).
        populate: called once before the first look-up, to import the modules that register entries.
        error: the exception raised for an unknown name (a :class:`MedsegError` subclass).
    """

    def __init__(self, kind: str, populate: Callable[[], None] | None = None,
                 error: type[MedsegError] = MedsegError) -> None:
        self.kind = kind
        self._populate = populate
        self._error = error
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, entry: T, aliases: Iterable[str] = ()) -> T:
        """Register ``entry`` under ``name`` and ``aliases`` (lower-cased); a taken name is an error."""
        name, aliases = name.lower(), [a.lower() for a in aliases]
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} name {key!r} is registered twice")
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def remove(self, name: str) -> None:
        """Remove ``name`` and its aliases (tests, plug-ins); unknown names are ignored."""
        name = name.lower()
        if self._entries.pop(name, None) is not None:
            for alias in [a for a, target in self._aliases.items() if target == name]:
                del self._aliases[alias]

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases (any letter case)."""
        self._ensure_populated()
        key = str(name).lower()
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise self._error(unknown_name_message(self.kind, str(name), [*self._entries, *self._aliases]))
        return key

    def get(self, name: str) -> T:
        """The entry for ``name`` or an alias; an unknown name raises with the closest known names."""
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """The registered names, sorted (aliases not included)."""
        self._ensure_populated()
        return sorted(self._entries)

    def aliases_of(self, name: str) -> list[str]:
        """The aliases of the registered ``name``, sorted."""
        key = self.canonical(name)
        return sorted(a for a, target in self._aliases.items() if target == key)

    def is_alias(self, name: str) -> bool:
        """Whether ``name`` (any letter case) is a registered alias rather than a name; unknown: ``False``."""
        self._ensure_populated()
        return str(name).lower() in self._aliases

    def __contains__(self, name: object) -> bool:
        self._ensure_populated()
        key = str(name).lower()
        return key in self._entries or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _ensure_populated(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate()
