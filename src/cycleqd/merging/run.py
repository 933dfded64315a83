"""Running a merge plan: tensors streamed through the merge method and written as they come.

The arithmetic runs in this thread while a second one writes the finished tensors
(:func:`~cycleqd.background.consume_in_background`), so reading, merging and writing overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import yaml

from cycleqd.background import consume_in_background
from cycleqd.merging.plan import MergePlan
from cycleqd.operators.merge import merge_models
from cycleqd.weights import save_model


def run_merge(
    plan: MergePlan,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    on_tensor: Callable[[str], None] | None = None,
) -> Path:
    """Merge and write the result as a Hugging Face folder, streaming tensor by tensor.

    Config, tokenizer and generation files are copied from the base; ``config.json`` gets the output
    dtype. The folder appears atomically when complete.

    Args:
        plan: A checked plan from :func:`prepare_merge`.
        out_dir: Destination folder (replaced when it exists).
        device: Where the arithmetic runs (``cpu`` or ``cuda``).
        on_tensor: Called with each tensor name once it is merged (for progress bars).

    Returns:
        The output folder.
    """
    cfg = plan.config
    tensors = merge_models(
        plan.base,
        plan.models,
        method=cfg.merge_method,
        parameters=plan.parameters,
        model_parameters=plan.model_parameters,
        seed=cfg.seed,
        out_dtype=plan.out_dtype,
        device=device,
        release_inputs=True,
    )

    def reported() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in tensors:
            yield name, tensor
            if on_tensor is not None:
                on_tensor(name)

    metadata = {"merged_by": "cycleqd", "merge_method": cfg.merge_method}

    def write(items: Iterator[tuple[str, torch.Tensor]]) -> Path:
        return save_model(
            items,
            out_dir,
            template=plan.base,
            dtype=plan.out_dtype,
            max_shard_bytes=plan.shard_size,
            metadata=metadata,
        )

    out = consume_in_background(reported(), write, depth=2)
    dumped = cfg.model_dump(exclude_defaults=True, mode="json")
    (Path(out) / "cycleqd_merge.yaml").write_text(yaml.safe_dump(dumped, sort_keys=False))
    return Path(out)
