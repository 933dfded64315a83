"""The paper's claim in miniature, checked on a demo's rows (test split; every model chosen on select).

Per seed: the model the seed recommends (its final CycleQD row, the presets' recommendation best on
select) must have a higher test average than every expert and every merging baseline, and on every
skill keep at least half of that skill's expert's gain over the base:
``final[t] − base[t] ≥ ½ · max(expert_t[t] − base[t], 0)``. Fine-tuning on all the data (kind
``reference``) is reported beside it, not part of the claim: it needs the experts' training data,
which merging does without.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def check_seed(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The claim checks of one seed's rows.

    Args:
        rows: The rows of one seed.

    Returns:
        The checks, or ``None`` when the seed has no base, expert or final CycleQD row.
    """
    base = next((r for r in rows if r["kind"] == "base"), None)
    experts = {r["name"].removeprefix("expert-"): r for r in rows if r["kind"] == "expert"}
    final = next((r for r in rows if r["kind"] == "cycleqd" and r.get("final")), None)
    if base is None or final is None or not experts:
        return None
    others = [r for r in rows if r["kind"] in ("expert", "baseline")]
    strongest = max(others, key=lambda r: r["average"])
    skills = {}
    for task, expert in experts.items():
        gain = expert["test"][task] - base["test"][task]
        kept = final["test"][task] - base["test"][task]
        skills[task] = {
            "base": base["test"][task],
            "expert": expert["test"][task],
            "final": final["test"][task],
            "expert_gain": gain,
            "kept_gain": kept,
            "kept_fraction": kept / gain if gain > 0 else None,
            "kept_half": kept >= 0.5 * max(gain, 0.0) - 1e-12,
        }
    beats = final["average"] > strongest["average"]
    return {
        "seed": final["seed"],
        "final": final["name"],
        "final_average": final["average"],
        "strongest_other": strongest["name"],
        "strongest_other_average": strongest["average"],
        "margin": final["average"] - strongest["average"],
        "beats_experts_and_baselines": beats,
        "beaten_by": [r["name"] for r in others if r["average"] >= final["average"]],
        "skills": skills,
        "all_skills_kept_half": all(s["kept_half"] for s in skills.values()),
        "holds": beats and all(s["kept_half"] for s in skills.values()),
    }


def check_claims(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The claim checks of every seed, and each model's test average over the seeds.

    Args:
        rows: All rows of ``results.json``.

    Returns:
        ``per_seed`` (see :func:`check_seed`), ``holds`` (for every seed), and ``averages``: row name →
        spread of its test average over the seeds (the final CycleQD row of each seed is also
        gathered under ``cycleqd (final)``).
    """
    seeds = sorted({r["seed"] for r in rows})
    per_seed = [c for c in (check_seed([r for r in rows if r["seed"] == s]) for s in seeds) if c is not None]
    by_name: dict[str, list[float]] = {}
    kinds: dict[str, str] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r["average"])
        kinds[r["name"]] = r["kind"]
        if r["kind"] == "cycleqd" and r.get("final"):
            by_name.setdefault("cycleqd (final)", []).append(r["average"])
            kinds["cycleqd (final)"] = "cycleqd"
    return {
        "per_seed": per_seed,
        "holds": bool(per_seed) and all(c["holds"] for c in per_seed),
        "averages": {name: {"kind": kinds[name], **spread(v)} for name, v in by_name.items()},
    }
