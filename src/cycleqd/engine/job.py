"""A generation's recipe, as the driver draws it (plain data: no torch, cheap to read and send)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    """A generation's recipe, drawn by the driver.

    Attributes:
        generation: Generation number g.
        child_id: Id the child will have.
        active_task: Task whose archive the parents come from (and whose expert svd-expert uses).
        parents: The two parents' ids.
        parent_paths: Their weights (absolute paths), so a worker needs no registry.
        seed: The generation's seed; crossover and mutation draws derive from it.
        parent_fingerprints: The parents' fingerprints (part of the child's recipe fingerprint).
    """

    generation: int
    child_id: str
    active_task: str
    parents: tuple[str, ...]
    parent_paths: tuple[str, ...]
    seed: int
    parent_fingerprints: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Job:
        """Inverse of :meth:`to_dict`."""
        return cls(
            **{
                **d,
                "parents": tuple(d["parents"]),
                "parent_paths": tuple(d["parent_paths"]),
                "parent_fingerprints": tuple(d.get("parent_fingerprints", ())),
            }
        )
