"""Settings of a demo: the recipe, CycleQD's settings scaled down from the paper, baselines, ablations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cycleqd.demo.baselines import Grids
from cycleqd.demo.model import ModelShape
from cycleqd.demo.recipe import Recipe
from cycleqd.demo.train import TrainSettings


@dataclass(frozen=True)
class CycleQDSettings:
    """CycleQD as in the paper, with fewer generations.

    Attributes:
        generations: Children made (paper: 1200).
        bins: Bins per behaviour characteristic (paper: 15), ranges by the paper's rule.
        alpha_low: Elite sampling α_low (paper: 0.5).
        alpha_high: Elite sampling α_high (paper: 0.8).
        crossover_mean: μ of the crossover coefficients (official code: 1).
        crossover_std: σ of the crossover coefficients (official code: 0.01).
        mutation: ``svd-expert`` (official code), ``svd-self``, ``gaussian`` or ``none``.
        rho: svd-expert: r ~ U[0, ρ) (official code: 0.1).
        temperature: Softmax temperature of the final aggregation (1).
    """

    generations: int = 120
    bins: int = 15
    alpha_low: float = 0.5
    alpha_high: float = 0.8
    crossover_mean: float = 1.0
    crossover_std: float = 0.01
    mutation: str = "svd-expert"
    rho: float = 0.1
    temperature: float = 1.0

    def sections(self) -> dict[str, Any]:
        """The matching sections of a run config."""
        return {
            "generations": self.generations,
            "cycle": True,
            "archive": {"bins": self.bins},
            "selection": {"method": "elite", "alpha_low": self.alpha_low, "alpha_high": self.alpha_high},
            "crossover": {"mean": self.crossover_mean, "std": self.crossover_std},
            "mutation": {"kind": self.mutation, "rho": self.rho},
            "aggregation": {"temperature": self.temperature},
        }


#: The paper's ablations: name → what changes in the run config (same budget and seeds).
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


@dataclass(frozen=True)
class DemoSettings:
    """Everything a demo does.

    Attributes:
        recipe: Data and model training (the seed is replaced by each run's seed).
        cycleqd: CycleQD's settings.
        grids: The baselines' validation grids.
        seeds: Number of seeds (0, 1, ...): each trains its own models and runs everything.
        ablations: Also run the paper's ablations.
        quick: A tiny variant (small models and splits, a few generations) for tests.
    """

    recipe: Recipe = field(default_factory=Recipe)
    cycleqd: CycleQDSettings = field(default_factory=CycleQDSettings)
    grids: Grids = field(default_factory=Grids)
    seeds: int = 1
    ablations: bool = False
    quick: bool = False

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.cycleqd.generations < 1:
            raise ValueError(f"generations must be at least 1, got {self.cycleqd.generations}")

    @classmethod
    def quick_settings(cls, **changes: Any) -> DemoSettings:
        """A tiny variant that runs end to end in well under a minute (for tests)."""
        recipe = Recipe(
            validation=8,
            test=8,
            shape=ModelShape(hidden_size=32, layers=2, heads=2, intermediate_size=64),
            base=TrainSettings(steps=12, batch_size=16, lr=3e-3),
            expert=TrainSettings(steps=4, batch_size=16, lr=1e-3),
        )
        return replace(
            cls(recipe=recipe, cycleqd=CycleQDSettings(generations=3), grids=Grids.quick(), quick=True),
            **changes,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "recipe": self.recipe.describe(),
            "cycleqd": asdict(self.cycleqd),
            "grids": asdict(self.grids),
            "seeds": self.seeds,
            "ablations": self.ablations,
            "quick": self.quick,
            "evaluation": EVALUATION,
        }
