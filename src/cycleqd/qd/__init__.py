"""Quality-diversity layer: archives, binning, parent selection and metrics (numpy only, no torch).

It handles model ids and scores, never tensors: the engine offers each evaluated model to an
:class:`ArchiveSet`, draws parents with :func:`select_parents`, and deletes the weights of the ids that
:meth:`ArchiveSet.add` reports as released.
"""

from cycleqd.qd.archive import AddResult, AddStatus, Archive, Elite
from cycleqd.qd.archive_set import ArchiveSet, SetAddResult
from cycleqd.qd.bins import BinSpec, DegenerateRangeWarning, make_bin_specs, paper_ranges
from cycleqd.qd.metrics import archive_metrics, best_per_task, pareto_front, set_metrics
from cycleqd.qd.selection import (
    SELECTIONS,
    SelectionRule,
    check_rule_settings,
    elite_sampling_probabilities,
    select_parents,
    selection_probabilities,
    uniform_probabilities,
)

__all__ = [
    "SELECTIONS",
    "AddResult",
    "AddStatus",
    "Archive",
    "ArchiveSet",
    "BinSpec",
    "DegenerateRangeWarning",
    "Elite",
    "SelectionRule",
    "SetAddResult",
    "archive_metrics",
    "best_per_task",
    "check_rule_settings",
    "elite_sampling_probabilities",
    "make_bin_specs",
    "paper_ranges",
    "pareto_front",
    "select_parents",
    "selection_probabilities",
    "set_metrics",
    "uniform_probabilities",
]
