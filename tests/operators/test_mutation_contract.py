"""The contract every registered mutation keeps (run over the whole registry).

A new mutation is one module plus one line in ``MUTATIONS``; these tests then hold it to what the
engine relies on: built from its config settings alone, 1-D and skipped tensors untouched, each
tensor's result a function of (seed, name) only, an additive one equal to τ + δ, the expert SVDs it
reads named before a child is built, a record that serialises, and its settings in the run config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cycleqd.config import MutationConfig
from cycleqd.config_kinds import KindSection
from cycleqd.operators import MUTATIONS, ExpertSVDCache, LowRank, MutationContext, build_mutation, mutate
from cycleqd.operators.random import make_generator

NAMES = ("model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight")


def _tau(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        NAMES[0]: torch.randn(6, 4, generator=g),
        NAMES[1]: torch.randn(4, 4, generator=g),
        "model.layers.0.input_layernorm.weight": torch.randn(4, generator=g),
        "model.layers.0.special_norm_proj.weight": torch.randn(4, 4, generator=g),
    }


@pytest.fixture
def context(tmp_path: Path) -> MutationContext:
    expert, zeros = _tau(5), {k: torch.zeros_like(v) for k, v in _tau(5).items()}

    def caches(rank: int | None) -> dict[str, ExpertSVDCache]:
        cache = ExpertSVDCache(tmp_path / f"svd-{rank}", rank=rank)
        if not cache.complete:
            cache.build(expert, zeros, NAMES)
        return {"code": cache}

    return MutationContext(expert_svds=caches)


def _perturbing_settings(kind: str) -> dict[str, object]:
    """Settings that make the kind change something (its defaults may, by design, change little)."""
    return {"svd-expert": {"rho": 0.5}, "gaussian": {"sigma": 0.1}}.get(kind, {})


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_built_from_its_config_settings(kind: str, context: MutationContext) -> None:
    cls = MUTATIONS[kind]
    assert cls.kind == kind
    section = MutationConfig(kind=kind)
    mutation = cls.from_settings(section.settings, context=context)
    assert type(mutation) is cls
    assert type(build_mutation(kind, {}, context=context)) is cls
    assert bool(mutation.expert_svds()) == cls.uses_expert  # the SVDs it reads are named up front
    assert not (cls.identity and cls.additive)


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_touches_only_mutable_tensors_and_depends_on_seed_and_name_only(kind, context) -> None:
    mutation = build_mutation(kind, _perturbing_settings(kind), context=context)
    tau = _tau(0)
    expert = "code" if mutation.uses_expert else None
    out, record = mutate(tau, mutation, seed=3, skip_patterns=("norm",), expert=expert)
    assert out["model.layers.0.input_layernorm.weight"] is tau["model.layers.0.input_layernorm.weight"]
    assert out["model.layers.0.special_norm_proj.weight"] is tau["model.layers.0.special_norm_proj.weight"]
    changed = [not torch.equal(out[n], tau[n]) for n in NAMES]
    assert changed == [not mutation.identity] * 2
    assert record.mutated == (0 if mutation.identity else 2)
    json.dumps(record.to_record())  # the metrics line and the checkpoint hold it
    # Visiting the tensors in another order, or alone, gives the same tensors.
    reordered, _ = mutate(dict(reversed(list(tau.items()))), mutation, seed=3, expert=expert)
    alone, _ = mutate({NAMES[1]: tau[NAMES[1]]}, mutation, seed=3, expert=expert)
    assert all(torch.equal(reordered[n], out[n]) for n in NAMES)
    assert torch.equal(alone[NAMES[1]], out[NAMES[1]])
    if not mutation.identity:
        other, _ = mutate(tau, mutation, seed=4, expert=expert)
        assert not torch.equal(other[NAMES[0]], out[NAMES[0]])


@pytest.mark.parametrize("kind", sorted(k for k, c in MUTATIONS.items() if c.additive))
def test_an_additive_mutation_adds_its_delta(kind, context) -> None:
    mutation = build_mutation(kind, _perturbing_settings(kind), context=context)
    tau = _tau(1)[NAMES[0]]
    expert = "code" if mutation.uses_expert else None
    out, _ = mutation.mutate_tensor(NAMES[0], tau, generator=make_generator(7, NAMES[0]), expert=expert)
    delta, _ = mutation.delta(NAMES[0], tau.shape, generator=make_generator(7, NAMES[0]), expert=expert)
    dense = delta.dense() if isinstance(delta, LowRank) else delta
    torch.testing.assert_close(out, tau + dense)


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_config_section_names_the_kind_a_foreign_setting_belongs_to(kind: str) -> None:
    spec = MutationConfig.spec
    assert issubclass(MutationConfig, KindSection)
    own = set(MUTATIONS[kind].Settings.model_fields)
    foreign = {name: owners for name, owners in spec.owners.items() if kind not in owners}
    for name, owners in foreign.items():
        default = MutationConfig.model_fields[name].default
        changed = 7 if default is None else (default + 1 if isinstance(default, (int, float)) else default)
        with pytest.raises(ValueError, match=rf"{name} is a setting of the {owners[0]}"):
            MutationConfig(kind=kind, **{name: changed})
        MutationConfig(kind=kind, **{name: default})  # an unchanged default changes nothing: accepted
    dumped = MutationConfig(kind=kind).model_dump()
    assert MutationConfig.model_validate(dumped).settings == MutationConfig(kind=kind).settings
    assert own <= set(dumped)
