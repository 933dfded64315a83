"""Named presets of a run config: ``paper`` (the method as published) and ``offplane`` (beyond it).

A config names one with ``preset: NAME``; the preset's sections are the defaults under what the file
sets (a field the file gives wins, sections merge field by field). ``paper`` sets nothing: the config
defaults are the paper's settings (official code's μ = 1, σ = 0.01, svd-expert mutation with ρ = 0.1,
elite sampling with α = 0.5 / 0.8, 15 bins, softmax aggregation with T = 1).

``offplane`` lets children leave the plane that the experts' task vectors span with coefficients
summing to 1, where the paper's crossover keeps them and where task arithmetic's plateau lies just
outside. Each part is one setting (see the config reference):

- ``init.merges``: the archives start with the average merge and task arithmetic at three λ beside the
  experts (four evaluations), so evolution starts on the plateau instead of climbing to it;
- ``crossover.scale_std``: a drawn log-normal scale of the child's task vector, so coefficients need
  not sum to 1 and the strength of the merge is searched too;
- ``crossover.per_layer`` with ``layer_std``: each layer group's weights spread around one model-wise
  draw, the AdaMerging-style freedom a single λ lacks;
- a wider model-wise ``std`` than the official code's 0.01 (a 50/50 midpoint), so crossover explores;
- ``init.distill`` (``optional``): a learned merge with a coefficient per expert and tensor, fitted
  to reproduce each expert's own replies on its task's validation prompts; skipped, with the reason
  logged, where the run cannot learn it (no language model, a task without ``teacher_pairs``, too
  little memory).

The search settings were chosen on the demo's select split over 3 seeds (never on test), against the
same settings with TIES-sparsified crossover (``crossover.method: ties``, density 0.7): mean select
average 0.782 for this preset, 0.776 for the TIES variant, 0.771 for ``paper`` (seeds 0-2:
0.784/0.807/0.755, 0.779/0.797/0.753, 0.779/0.793/0.741; 120 generations, recipe 3, the models of an
earlier machine). The learned merge was added on the same rule, on the select split of the demo's
current models: the recommendation's select average is 0.808 / 0.829 / 0.785 with it (mean 0.807)
and 0.780 / 0.797 / 0.760 without it (mean 0.779), seeds 0-2, 120 generations (``cycleqd demo
--seeds 3`` and the same runs with ``init: {distill: null}``). On test the recommendation then beats
every merging baseline on all three seeds (README).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from cycleqd.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "offplane": {
        "init": {
            "merges": [
                {"method": "linear"},
                {"method": "task_arithmetic", "params": {"lambda": 0.3}},
                {"method": "task_arithmetic", "params": {"lambda": 0.5}},
                {"method": "task_arithmetic", "params": {"lambda": 0.7}},
            ],
            "distill": {"optional": True},
        },
        "crossover": {"mean": 1.0, "std": 0.1, "per_layer": True, "layer_std": 0.1, "scale_std": 0.1},
    },
}
"""Preset name → the config sections it sets."""


#: Fields that name a section's kind (``mutation.kind``, ``selection.method``, ``crossover.method``).
KIND_FIELDS = ("kind", "method")


def merge_sections(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over ``defaults``: mappings merge key by key, anything else in ``given`` wins.

    A mapping of ``given`` that names another kind than the default's (a different ``kind`` or
    ``method``) replaces it whole: the settings of one kind mean nothing to another.

    Args:
        defaults: The preset's values.
        given: The config file's values.

    Returns:
        A new mapping (the inputs are not changed).
    """
    if _other_kind(defaults, given):
        return copy.deepcopy(dict(given))
    out = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = merge_sections(below, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _other_kind(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> bool:
    return any(f in given and f in defaults and given[f] != defaults[f] for f in KIND_FIELDS)


def apply_preset(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The config with its ``preset`` (if any) applied under its own values.

    Args:
        raw: A parsed config; ``preset`` names a key of :data:`PRESETS` or is absent/null.

    Returns:
        The config to validate (``preset`` kept, for the record).

    Raises:
        ConfigError: For an unknown preset name.
    """
    name = raw.get("preset")
    if name is None:
        return dict(raw)
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(
            f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)} (or leave it out)"
        )
    return merge_sections(PRESETS[name], raw)
