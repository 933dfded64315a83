"""Command line (face layer): thin commands over the engine, evaluation and operators layers.

Each command lives in its own module and registers itself on :data:`app`; importing this package
registers them all. Errors of type :class:`~cycleqd.errors.CycleQDError` are printed as one message
without a traceback and exit with status 2.
"""

from __future__ import annotations

import errno
import sqlite3
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


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def _run_folder(argv: list[str]) -> str | None:
    """The run folder a ``run`` (``--out``) or ``resume`` (first argument) command names."""
    if not argv:
        return None
    if argv[0] == "run":
        for i, arg in enumerate(argv):
            if arg in ("--out", "-o") and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith("--out="):
                return arg.split("=", 1)[1]
    if argv[0] == "resume":
        return next((a for a in argv[1:] if not a.startswith("-")), None)
    return None


def disk_full_message(exc: BaseException, argv: list[str]) -> str:
    """What to tell a user whose command stopped on a full disk (or quota).

    Args:
        exc: The error (``OSError`` ENOSPC/EDQUOT, or SQLite's "database or disk is full").
        argv: The command's arguments, to name the run folder and the command that continues it.

    Returns:
        One message: where, what to do, and that what was written is kept.
    """
    where = getattr(exc, "filename", None)
    folder = _run_folder(argv)
    target = where or folder or "the output folder"
    text = f"the disk is full (writing {target}); free space on that file system (`df -h {target}`)"
    if folder is not None:
        return (
            text + f", then continue with `cycleqd resume {folder}`: the run restarts from its last "
            "checkpoint, which a full disk cannot damage (it is replaced atomically)"
        )
    return text + ", then run the command again"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cycleqd`` console script.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).
    """
    _register()
    args = list(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=True)
    try:
        app(args=args, prog_name="cycleqd")
    except CycleQDError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (OSError, sqlite3.OperationalError) as exc:
        if not _is_disk_full(exc):
            raise
        console.print(f"[bold red]error:[/] {disk_full_message(exc, args)}", highlight=False, soft_wrap=True)
        sys.exit(2)
