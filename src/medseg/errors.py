"""Exceptions that the command line turns into one-line messages with exit code 2."""

from __future__ import annotations


class MedsegError(ValueError):
    """Base class of the errors caused by bad input (names, sizes, files, configs)."""


class UnknownModelError(MedsegError):
    """A model name that is not in the registry."""


class InputSizeError(MedsegError):
    """An input whose spatial size the model cannot process."""
