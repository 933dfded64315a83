"""Loading and saving Hugging Face models without transformers' own progress bars.

transformers draws a "Loading weights" bar for every ``from_pretrained`` and a "Writing model shards"
bar for every ``save_pretrained``; cycleqd draws its own progress, so those bars would only interleave
with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Turn transformers' progress bars off for the duration, then back to how they were."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
