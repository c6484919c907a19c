"""Errors that reach the user as one line naming the file, region or config key."""

from __future__ import annotations


class CinderSegError(Exception):
    """Bad input or configuration; ``str(err)`` is a complete one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(CinderSegError):
    """The configuration is invalid (unknown key, wrong type, impossible value)."""


class InputError(CinderSegError):
    """An input file (DEM, labels, tiles) is missing, unreadable or unusable."""
