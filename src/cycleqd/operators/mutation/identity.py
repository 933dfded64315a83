"""``none``: the identity (ablation: crossover alone)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel

from cycleqd.operators.mutation.base import Mutation, MutationContext, NoSettings


@dataclass
class NoMutation(Mutation):
    """The identity."""

    kind: ClassVar[str] = "none"
    identity: ClassVar[bool] = True
    Settings: ClassVar[type[BaseModel]] = NoSettings

    @classmethod
    def from_settings(cls, settings: BaseModel, *, context: MutationContext) -> NoMutation:  # noqa: D102
        return cls()

    def mutate_tensor(self, name, tau, *, generator, expert=None):  # noqa: D102
        return tau, None
