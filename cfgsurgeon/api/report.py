"""What every API result shares: the lines the command line prints for it."""

from __future__ import annotations


class Report:
    """A result the CLI shows: ``lines()`` is exactly what the matching command prints to stdout."""

    def lines(self) -> list[str]:
        raise NotImplementedError

    def __str__(self) -> str:
        return "\n".join(self.lines())


class Lines(Report):
    """A report that is only its lines (a command whose result is what it wrote)."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = list(lines)

    def lines(self) -> list[str]:
        return list(self._lines)
