"""``cycleqd version``."""

from __future__ import annotations

import typer

from cycleqd import __version__
from cycleqd.cli.app import app


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)
