"""``cycleqd merge``: a mergekit-style config (:mod:`.config`), its plan (:mod:`.plan`), its run."""

from cycleqd.merging.config import MergeConfig, load_merge_config, parse_size
from cycleqd.merging.plan import MergePlan, describe, prepare_merge
from cycleqd.merging.run import run_merge

__all__ = [
    "MergeConfig",
    "MergePlan",
    "describe",
    "load_merge_config",
    "parse_size",
    "prepare_merge",
    "run_merge",
]
