"""Exceptions that the command line turns into one-line messages with exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MedsegError(ValueError):
    """Base class of the errors caused by bad input (names, sizes, files, configs)."""


class UnknownModelError(MedsegError):
    """A model name that is not in the registry."""


class InputSizeError(MedsegError):
    """An input whose spatial size the model cannot process."""


def check_choice(key: str, value: object, allowed: object) -> object:
    """Return ``value`` if it is one of ``allowed``, else raise a :class:`MedsegError` naming ``key``."""
    choices = list(allowed)  # type: ignore[call-overload]
    if value not in choices:
        raise MedsegError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown {kind} 'name'; did you mean a, b?`` (the closest known names), or the list of all of them."""
    names = sorted(known)
    close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)
    plural = kind + ("es" if kind.endswith("s") else "s")
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known {plural}: {', '.join(names)}"
    return f"unknown {kind} {name!r}{hint}"
