"""Analytic tasks for the toy example: a small MLP (not a language model) and three regression skills.

The model maps x ∈ [-1, 1]^4 to three outputs; each task scores one output against a target function
on fixed inputs, as R² clipped to [0, 1]. The experts in ``toy/models`` were each fine-tuned from the
base on one target (``toy/make_models.py``), so they are good at one skill and worse at the others,
which is the situation CycleQD is for.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cycleqd.evaluation.base import Backend, Task, TaskResult

TARGETS = {
    "sine": (0, lambda x: torch.sin(3.0 * x[:, 0])),
    "product": (1, lambda x: 2.0 * x[:, 1] * x[:, 2]),
    "abs": (2, lambda x: 2.0 * x[:, 3].abs() - 1.0),
}
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2, "select": 3}


def inputs(split: str, n: int = 512) -> torch.Tensor:
    """Fixed inputs of a split (seeded), shape (n, 4)."""
    g = torch.Generator().manual_seed(SPLIT_SEEDS[split])
    return torch.rand((n, 4), generator=g) * 2.0 - 1.0


def forward(weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP: two hidden tanh layers and a linear head with one output per task."""
    h = torch.tanh(x @ weights["fc1.weight"].float().T + weights["fc1.bias"].float())
    h = torch.tanh(h @ weights["fc2.weight"].float().T + weights["fc2.bias"].float())
    return h @ weights["head.weight"].float().T + weights["head.bias"].float()


def r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Coefficient of determination, clipped to [0, 1]."""
    ss_res = float(((pred - target) ** 2).sum())
    ss_tot = float(((target - target.mean()) ** 2).sum())
    return min(max(1.0 - ss_res / ss_tot, 0.0), 1.0)


class Regression(Task):
    """R² of one output of the toy MLP against one target function.

    Args:
        name: Task name.
        target: ``sine``, ``product`` or ``abs``.
        points: Number of fixed inputs per split.
    """

    needs_text = False
    offered_splits = ("validation", "select", "test")

    def __init__(self, *, name: str, target: str, points: int = 512) -> None:
        super().__init__(name=name)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
        self.target = target
        self.points = points

    def evaluate(self, backend: Backend, *, split: str) -> TaskResult:
        """Score the backend's current weights on a split."""
        x = inputs(split, self.points)
        column, fn = TARGETS[self.target]
        with torch.no_grad():
            pred = forward(backend.weights, x)[:, column]
        return TaskResult(task=self.name, split=split, score=r2(pred, fn(x)))
