"""Exceptions that the command line turns into one-line messages with exit code 2."""

from __future__ import annotations


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
