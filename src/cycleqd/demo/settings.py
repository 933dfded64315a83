"""Settings of a demo: the recipe, the CycleQD presets and their budget, baselines, ablations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cycleqd.demo.baselines import Grids
from cycleqd.demo.model import ModelShape
from cycleqd.demo.recipe import Recipe
from cycleqd.demo.train import TrainSettings
from cycleqd.presets import PRESETS

#: The paper's ablations of the ``paper`` preset: name → what changes in the run config (same budget
#: and seeds).
ABLATIONS: dict[str, dict[str, Any]] = {
    "fixed-roles": {"cycle": False},
    "no-mutation": {"mutation": {"kind": "none"}},
    "gaussian-mutation": {"mutation": {"kind": "gaussian", "sigma": 3e-4}},
    "uniform-selection": {"selection": {"method": "uniform"}},
}

#: Evaluation settings of every model of the demo (one resident model, all prompts of a task at once).
EVALUATION: dict[str, Any] = {
    "backend": "hf",
    "batch_size": 128,
    "device": "cpu",
    "dtype": "float32",
    "chat_template": "off",
    "workers": 4,
    "sandbox": {"timeout_s": 10.0, "cpu_s": 5.0, "memory_mb": 512},
}

#: Optimiser steps of a learned seed merge in the quick demo (a preset's default would dominate it).
QUICK_DISTILL_STEPS = 4


@dataclass(frozen=True)
class DemoSettings:
    """Everything a demo does.

    Attributes:
        recipe: Data and model training (the seed is replaced by each run's seed).
        presets: The CycleQD presets run on every seed (:data:`~cycleqd.presets.PRESETS`); the first
            one's seed-0 run is the demo folder's own run.
        generations: Children each CycleQD run makes (paper: 1200).
        top_k: Candidates of every method scored again on select (CycleQD's ``final.top_k``).
        grids: The baselines' validation grids.
        seeds: Number of seeds (0, 1, ...): each trains its own models and runs everything.
        ablations: Also run the paper's ablations (of the ``paper`` preset).
        quick: A tiny variant (small models and splits, a few generations) for tests.
    """

    recipe: Recipe = field(default_factory=Recipe)
    presets: tuple[str, ...] = ("paper", "offplane")
    generations: int = 120
    top_k: int = 8
    grids: Grids = field(default_factory=Grids)
    seeds: int = 1
    ablations: bool = False
    quick: bool = False

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.generations < 1:
            raise ValueError(f"generations must be at least 1, got {self.generations}")
        unknown = [p for p in self.presets if p not in PRESETS]
        if unknown or not self.presets:
            raise ValueError(f"presets must be some of {', '.join(PRESETS)}, got {list(self.presets)}")

    def run_sections(self, preset: str) -> dict[str, Any]:
        """The run config sections of one preset's CycleQD run (besides models, tasks, evaluation)."""
        sections: dict[str, Any] = {
            "preset": preset,
            "generations": self.generations,
            "final": {"top_k": self.top_k},
        }
        if self.quick:  # its models are trained for seconds and may answer nothing right
            sections["stop_without_signal"] = False
            if PRESETS[preset].get("init", {}).get("distill") is not None:
                sections["init"] = {"distill": {"steps": QUICK_DISTILL_STEPS}}
        return sections

    @classmethod
    def quick_settings(cls, **changes: Any) -> DemoSettings:
        """A tiny variant that runs end to end in well under a minute (for tests)."""
        recipe = Recipe(
            validation=8,
            select=8,
            test=8,
            shape=ModelShape(hidden_size=32, layers=2, heads=2, intermediate_size=64),
            base=TrainSettings(steps=12, batch_size=16, lr=3e-3),
            expert=TrainSettings(steps=4, batch_size=16, lr=1e-3),
        )
        return replace(
            cls(recipe=recipe, generations=3, top_k=2, grids=Grids.quick(), quick=True),
            **changes,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "recipe": self.recipe.describe(),
            "presets": {p: PRESETS[p] for p in self.presets},
            "generations": self.generations,
            "top_k": self.top_k,
            "grids": asdict(self.grids),
            "seeds": self.seeds,
            "ablations": self.ablations,
            "quick": self.quick,
            "evaluation": EVALUATION,
        }
