"""The typer application that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cycleqd",
    help="CycleQD: grow multi-skill models from single-skill experts by quality-diversity evolution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """CycleQD: grow a swarm of multi-skill models from single-skill experts."""
