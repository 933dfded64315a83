"""``cycleqd merge CONFIG --out DIR``: merge models from a mergekit-style YAML."""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cycleqd.cli.app import app


@app.command()
def merge(
    config: Annotated[Path, typer.Argument(help="Merge config (mergekit-style YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (a Hugging Face model).")],
    device: Annotated[str, typer.Option(help="Where the arithmetic runs: cpu or cuda.")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads (default: torch's).")] = None,
    shard_size: Annotated[
        str | None, typer.Option(help="Output shard size (bytes, or like 2GB); overrides the config's.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Merge models tensor by tensor with a merge method of the library (task arithmetic, TIES, ...).

    A config that names an unknown method is told every valid one. The YAML reads like mergekit's
    (merge_method, base_model, models with weight and density, parameters, dtype, out_dtype) plus
    seed, shard_size and check_finite. See examples/merge/.
    """
    import torch

    from cycleqd.errors import ConfigError
    from cycleqd.merging import describe, load_merge_config, parse_size, prepare_merge, run_merge

    if threads:
        torch.set_num_threads(threads)
    _reuse_freed_memory()
    console = Console(stderr=True)
    try:
        shard_bytes = parse_size(shard_size) if shard_size is not None else None
    except ValueError as exc:
        raise ConfigError(f"--shard-size: {exc}") from None
    cfg = load_merge_config(config)
    plan = prepare_merge(cfg, root=config.parent, out_dir=out)
    if shard_bytes is not None:
        plan.shard_size = shard_bytes
    info = describe(plan)
    console.print(
        f"[bold]{info['method']}[/] merge of {len(plan.models)} model(s) onto {info['base']} "
        f"→ {out} ({info['out_dtype']})",
        highlight=False,
    )
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]merging"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[name]}"),
        console=console,
        disable=not progress,
    ) as bar:
        task = bar.add_task("merge", total=plan.n_tensors, name="")
        path = run_merge(plan, out, device=device, on_tensor=lambda n: bar.update(task, advance=1, name=n))
    console.print(f"merged {plan.n_tensors} tensors in {time.perf_counter() - start:.1f} s", highlight=False)
    typer.echo(str(path))


def _reuse_freed_memory() -> None:
    """Let glibc keep freed blocks below 1 GiB for reuse instead of handing each back to the OS.

    Why: a merge allocates and frees tensors of the same few sizes over and over. With glibc's
    defaults every large one is a fresh memory map whose pages fault in (and are zeroed) on first
    touch, which costs more than the arithmetic; reusing the heap makes allocation nearly free. The
    peak stays the largest live set. Only this process is affected; nothing happens off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
