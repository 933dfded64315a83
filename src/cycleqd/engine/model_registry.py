"""The model registry of a run: every model the run has seen, where it came from and how it scored.

Model ids are made here too (:func:`expert_id`, :func:`child_id`, :func:`seed_id`, :data:`BASE_ID`,
:data:`AGGREGATE_ID`), so that every part of the engine names models alike.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

BASE_ID = "base"
AGGREGATE_ID = "aggregate"


def expert_id(task: str) -> str:
    """Model id of a task's expert."""
    return f"expert-{task}"


def child_id(generation: int) -> str:
    """Model id of the child of a generation."""
    return f"g{generation:06d}"


def seed_id(index: int) -> str:
    """Model id of the ``index``-th seed merge (``init.merges`` in order, then ``init.distill``)."""
    return f"seed-{index:02d}"


class ModelKind(str, enum.Enum):
    """What a model is in a run."""

    BASE = "base"
    EXPERT = "expert"
    CHILD = "child"
    SEED = "seed"  # a merge of the experts offered to the archives at the start (``init.merges``)
    AGGREGATE = "aggregate"
    SOUP = "soup"  # an average of the best elites, offered to the final choice (``final.soups``)

    @property
    def stored_in_run(self) -> bool:
        """Whether the run folder keeps this kind's weights while an archive holds it."""
        return self in (ModelKind.CHILD, ModelKind.SEED)


class ModelStatus(str, enum.Enum):
    """Where a model stands.

    ``elite``: held by at least one archive cell (weights kept). ``released``: was an elite, displaced
    from its last cell (weights deleted). ``rejected``: evaluated, taken by no archive (weights never
    saved). ``failed``: building or evaluating it raised or gave an invalid score. ``reference``: the
    base, the aggregate and the soups, which are not archive members.
    """

    ELITE = "elite"
    RELEASED = "released"
    REJECTED = "rejected"
    FAILED = "failed"
    REFERENCE = "reference"


@dataclass
class ModelRecord:
    """One model of the run.

    Attributes:
        id: Model id (``expert-<task>``, ``g<generation>``, ``seed-<i>``, ``base``, ``aggregate``,
            ``soup-<kind>``).
        kind: What it is.
        status: Where it stands.
        path: Its weights folder (absolute for the base and experts, relative to the run folder for
            children and the aggregate), ``None`` when not stored.
        fingerprint: Hash of its tensors (base, experts, aggregate) or of its recipe (children: the
            parents' fingerprints, the seed and the operators' draws and settings, which fix every bit).
        generation: The generation that made it (children).
        active_task: The task whose archive its parents came from (children).
        parents: Parent ids (children).
        seed: The generation's seed, from which every draw of this child derives.
        crossover: The drawn crossover coefficients.
        mutation: The mutation's parameters and a summary of its draws.
        scores: Scores by split, then task.
        error: Why it failed (failed children).
    """

    id: str
    kind: ModelKind
    status: ModelStatus
    path: str | None = None
    fingerprint: str | None = None
    generation: int | None = None
    active_task: str | None = None
    parents: list[str] = field(default_factory=list)
    seed: int | None = None
    crossover: dict[str, Any] | None = None
    mutation: dict[str, Any] | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["kind"] = self.kind.value
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "kind": ModelKind(d["kind"]), "status": ModelStatus(d["status"])})


class ModelRegistry:
    """All models of a run, by id, in the order they were added."""

    def __init__(self) -> None:
        self._records: dict[str, ModelRecord] = {}

    def add(self, record: ModelRecord) -> None:
        """Add a model.

        Args:
            record: Its record.

        Raises:
            ValueError: If the id is already taken.
        """
        if record.id in self._records:
            raise ValueError(f"model id {record.id!r} is already in the registry")
        self._records[record.id] = record

    def remove(self, model_id: str) -> None:
        """Forget a model if present (used when an interrupted step is redone)."""
        self._records.pop(model_id, None)

    def __getitem__(self, model_id: str) -> ModelRecord:
        return self._records[model_id]

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._records

    def __iter__(self) -> Iterator[ModelRecord]:
        return iter(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def of_kind(self, kind: ModelKind) -> list[ModelRecord]:
        """Records of one kind, in insertion order."""
        return [r for r in self._records.values() if r.kind is kind]

    def reference_fingerprints(self) -> dict[str, str]:
        """Fingerprints of the base and the experts, by model id (they locate the expert SVD caches)."""
        kinds = (ModelKind.BASE, ModelKind.EXPERT)
        return {r.id: r.fingerprint or "" for r in self._records.values() if r.kind in kinds}

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-ready form."""
        return [r.to_dict() for r in self._records.values()]

    @classmethod
    def from_list(cls, data: list[dict[str, Any]]) -> ModelRegistry:
        """Inverse of :meth:`to_list`."""
        reg = cls()
        for d in data:
            reg.add(ModelRecord.from_dict(d))
        return reg
