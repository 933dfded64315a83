"""Command line (face layer): thin commands over the engine, evaluation and operators layers.

Each command lives in its own module and registers itself on :data:`app`; importing this package
registers them all. Errors of type :class:`~cycleqd.errors.CycleQDError` are printed as one message
without a traceback and exit with status 2.
"""

from __future__ import annotations

import sys

from rich.console import Console

from cycleqd.cli.app import app
from cycleqd.errors import CycleQDError

__all__ = ["app", "main"]


def _register() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cycleqd`` console script.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).
    """
    _register()
    try:
        app(args=argv, prog_name="cycleqd")
    except CycleQDError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
