"""Merge methods: plain per-tensor functions over task vectors, a registry, and streamed model merges.

Every method takes the task vectors τ_i = θ_i − θ0 of one tensor (float32) and returns the merged task
vector; the merged model is θ0 + τ. :func:`merge_models` streams a whole model through a method.
"""

from cycleqd.operators.merge.dare import dare_drop, dare_linear, dare_ties
from cycleqd.operators.merge.iso import iso_c, iso_cts
from cycleqd.operators.merge.linear import linear, linear_soup
from cycleqd.operators.merge.params import count_layers, evaluate_setting, position
from cycleqd.operators.merge.registry import MERGE_METHODS, MergeMethod, get_merge_method
from cycleqd.operators.merge.slerp import slerp
from cycleqd.operators.merge.streaming import merge_models
from cycleqd.operators.merge.task_arithmetic import task_arithmetic
from cycleqd.operators.merge.ties import magnitude_prune, sign_consensus_merge, ties
from cycleqd.operators.merge.tsv import tsv_m

__all__ = [
    "MERGE_METHODS",
    "MergeMethod",
    "count_layers",
    "dare_drop",
    "dare_linear",
    "dare_ties",
    "evaluate_setting",
    "get_merge_method",
    "iso_c",
    "iso_cts",
    "linear",
    "linear_soup",
    "magnitude_prune",
    "merge_models",
    "position",
    "sign_consensus_merge",
    "slerp",
    "task_arithmetic",
    "ties",
    "tsv_m",
]
