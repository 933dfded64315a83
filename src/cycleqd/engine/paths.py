"""The layout of a run folder (DESIGN.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Every file and folder of a run.

    Attributes:
        root: The run folder.
    """

    root: Path

    @property
    def config(self) -> Path:
        """The resolved config (YAML)."""
        return self.root / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        """Archives, registry, generation and jobs in flight (JSON, rewritten atomically)."""
        return self.root / "checkpoint.json"

    @property
    def metrics(self) -> Path:
        """One JSON line per generation."""
        return self.root / "metrics.jsonl"

    @property
    def models(self) -> Path:
        """Weights of the elites, one folder per model id."""
        return self.root / "models"

    @property
    def aggregate(self) -> Path:
        """The aggregated model as a Hugging Face folder."""
        return self.root / "aggregate"

    @property
    def soups(self) -> Path:
        """The soups offered to the final choice, one Hugging Face folder each."""
        return self.root / "soups"

    @property
    def final(self) -> Path:
        """The run's recommended model as a Hugging Face folder (chosen on select, else validation)."""
        return self.root / "final"

    @property
    def choice(self) -> Path:
        """The candidates for the recommendation and their scores (JSON)."""
        return self.root / "choice.json"

    @property
    def distill(self) -> Path:
        """The learned merge's record (``init.distill``): settings, groups, coefficients, losses."""
        return self.root / "distill.json"

    @property
    def svd(self) -> Path:
        """Default cache of the experts' SVDs."""
        return self.root / "svd"

    @property
    def eval_cache(self) -> Path:
        """SQLite cache of evaluation results by (fingerprint, task, split)."""
        return self.root / "eval_cache.sqlite"

    @property
    def report(self) -> Path:
        """The Markdown report."""
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        """Plots of the report."""
        return self.root / "plots"

    @property
    def lock(self) -> Path:
        """Held while a process works on the run."""
        return self.root / ".lock"

    def model_dir(self, model_id: str) -> Path:
        """Folder of one elite's weights."""
        return self.models / model_id
