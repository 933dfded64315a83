"""Where the engine's progress goes: a protocol the command line implements with rich."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Reporter(Protocol):
    """Receives progress from the engine (the command line shows it with rich)."""

    def phase(self, name: str, *, total: int | None = None, done: int = 0) -> None:
        """A new phase of work starts."""

    def advance(self, info: Mapping[str, Any] | None = None) -> None:
        """One unit of the current phase is done."""

    def log(self, message: str) -> None:
        """A line for the user."""


class NullReporter:
    """Reports nothing."""

    def phase(self, name: str, *, total: int | None = None, done: int = 0) -> None:  # noqa: D102
        pass

    def advance(self, info: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        pass

    def log(self, message: str) -> None:  # noqa: D102
        pass
