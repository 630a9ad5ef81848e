"""Errors that know where they happened, so a user's mistake becomes one precise line, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Location:
    """A place in a user's file: ``file:line:column`` (line and column are 1-based, 0 = unknown)."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        parts = [self.file]
        if self.line:
            parts.append(str(self.line))
            if self.column:
                parts.append(str(self.column))
        return ":".join(parts)


class CfgSurgeonError(Exception):
    """Base class of every error caused by user input (bad file, bad option, impossible request)."""

    def __init__(self, message: str, where: Location | str | Path | None = None):
        self.message = message
        self.where = Location(str(where)) if isinstance(where, str | Path) else where
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class CfgSyntaxError(CfgSurgeonError):
    """The text is not a well-formed darknet cfg."""


class CfgError(CfgSurgeonError):
    """The cfg is well-formed but describes something invalid or unsupported."""


class WeightsError(CfgSurgeonError):
    """A ``.weights`` file does not fit its cfg."""


class UsageError(CfgSurgeonError):
    """A request that cannot be carried out (bad ratio, output path that would overwrite an input, ...)."""
