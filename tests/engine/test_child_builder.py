from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cycleqd.engine.children import ChildBuilder, Job
from cycleqd.operators import ExpertSVDCache, GaussianMutation, NoMutation, SVDExpertMutation, SVDSelfMutation
from cycleqd.operators.blocked import weighted_sum
from cycleqd.operators.random import make_generator
from cycleqd.seeding import derive_seed
from cycleqd.weights import open_model


def _job(models: dict[str, Path], seed: int = 7) -> Job:
    return Job(
        generation=3,
        child_id="g000003",
        active_task="e1",
        parents=("e1", "e2"),
        parent_paths=(str(models["e1"]), str(models["e2"])),
        seed=seed,
    )


def _by_hand(models: dict[str, Path], w: list[float], delta) -> dict[str, torch.Tensor]:
    base, p1, p2 = (open_model(models[k]) for k in ("base", "e1", "e2"))
    out = {}
    for name in base:
        b = base[name].float()
        tau = w[0] * (p1[name].float() - b) + w[1] * (p2[name].float() - b)
        out[name] = b + tau + delta(name, tau)
    return out


@pytest.mark.parametrize("mutation", [NoMutation(), GaussianMutation(sigma=0.01)], ids=["none", "gaussian"])
def test_direct_path_equals_theta0_plus_merged_task_vectors(tiny_models, mutation) -> None:
    builder = ChildBuilder(base=open_model(tiny_models["base"]), mutation=mutation, crossover_std=0.2)
    job = _job(tiny_models)
    weights, fingerprint, plan, record = builder.build(job)
    seed = derive_seed(job.seed, "mutation")

    def delta(name, tau):
        if isinstance(mutation, NoMutation) or tau.ndim != 2 or "norm" in name:
            return torch.zeros_like(tau)
        return torch.randn(tau.shape, generator=make_generator(seed, name)) * 0.01

    expected = _by_hand(tiny_models, plan.weights["all"], delta)
    for name, t in expected.items():
        assert torch.allclose(weights[name], t, atol=1e-6), name
    assert record["mutated"] == (0 if isinstance(mutation, NoMutation) else 16)  # every 2-D tensor
    # Same job, same bits and fingerprint; another seed, other bits and fingerprint.
    again, fp2, _, _ = builder.build(job)
    assert fp2 == fingerprint
    assert all(torch.equal(again[n], weights[n]) for n in weights)
    other, fp3, _, _ = builder.build(_job(tiny_models, seed=8))
    assert fp3 != fingerprint
    assert not all(torch.equal(other[n], weights[n]) for n in weights)


def test_svd_expert_child_adds_the_active_experts_factors(tiny_models, tmp_path: Path) -> None:
    base, expert = open_model(tiny_models["base"]), open_model(tiny_models["e1"])
    names = [n for n in base if len(base.shape(n)) == 2]
    cache = ExpertSVDCache(tmp_path / "svd", rank=3)
    cache.build(expert, base, names)
    builder = ChildBuilder(base=base, mutation=SVDExpertMutation(caches={"e1": cache}, rho=0.1))
    job = _job(tiny_models)
    weights, _, plan, record = builder.build(job)
    seed = derive_seed(job.seed, "mutation")

    def delta(name, tau):
        if tau.ndim != 2:
            return torch.zeros_like(tau)
        f = cache.get(name)
        r = torch.rand(f.S.shape, generator=make_generator(seed, name)) * 0.1
        return f.U @ torch.diag(r * f.S) @ f.Vh

    for name, t in _by_hand(tiny_models, plan.weights["all"], delta).items():
        assert torch.allclose(weights[name], t, atol=1e-5), name
    assert record["expert"] == "e1"
    assert 0 <= record["factors"]["min"] <= record["factors"]["max"] < 0.1


def test_a_bf16_child_multiplies_its_low_rank_mutation_in_bf16(tiny_models, tmp_path: Path) -> None:
    base, expert = open_model(tiny_models["base"]), open_model(tiny_models["e1"])
    cache = ExpertSVDCache(tmp_path / "svd", rank=3)
    cache.build(expert, base, [n for n in base if len(base.shape(n)) == 2])
    mutation = SVDExpertMutation(caches={"e1": cache}, rho=0.1)
    builder = ChildBuilder(base=base, mutation=mutation, dtype=torch.bfloat16)
    job = _job(tiny_models)
    weights, _, plan, _ = builder.build(job)
    parents = [open_model(tiny_models[k]) for k in ("e1", "e2")]
    seed = derive_seed(job.seed, "mutation")
    differs_from_float32_product = False
    for name in base:
        if len(base.shape(name)) != 2:
            continue
        d, _ = mutation.delta(name, base.shape(name), generator=make_generator(seed, name), expert="e1")
        inputs, w = [p[name] for p in parents], plan.weights["all"]
        common = {"low_rank": (d.a, d.b), "out_dtype": torch.bfloat16}
        assert torch.equal(weights[name], weighted_sum(inputs, w, **common, low_rank_dtype=torch.bfloat16)), (
            name
        )
        differs_from_float32_product |= not torch.equal(weights[name], weighted_sum(inputs, w, **common))
    assert differs_from_float32_product  # the check above tells the two products apart


def test_svd_self_child_goes_through_the_task_vector(tiny_models) -> None:
    builder = ChildBuilder(base=open_model(tiny_models["base"]), mutation=SVDSelfMutation(low=1.0, high=1.0))
    weights, _, plan, _ = builder.build(_job(tiny_models))
    for name, t in _by_hand(tiny_models, plan.weights["all"], lambda n, tau: torch.zeros_like(tau)).items():
        assert torch.allclose(weights[name], t, atol=1e-5), name


def test_children_are_stored_in_the_configured_dtype(tiny_models) -> None:
    builder = ChildBuilder(base=open_model(tiny_models["base"]), mutation=NoMutation(), dtype=torch.bfloat16)
    weights, _, _, _ = builder.build(_job(tiny_models))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


def test_a_recycled_child_lends_its_memory_and_the_next_is_unchanged(tiny_models, tmp_path: Path) -> None:
    base, expert = open_model(tiny_models["base"]), open_model(tiny_models["e1"])
    cache = ExpertSVDCache(tmp_path / "svd", rank=3)
    cache.build(expert, base, [n for n in base if len(base.shape(n)) == 2])

    def builder() -> ChildBuilder:
        return ChildBuilder(base=base, mutation=SVDExpertMutation(caches={"e1": cache}, rho=0.1), dtype=None)

    recycling = builder()
    first, _, _, _ = recycling.build(_job(tiny_models, seed=1))
    addresses = {n: t.data_ptr() for n, t in first.items()}
    recycling.recycle(first)
    second, _, _, _ = recycling.build(_job(tiny_models, seed=2))
    reused = [n for n in second if second[n].data_ptr() == addresses[n]]
    assert len(reused) == len(second)  # every tensor written into the first child's memory
    fresh, _, _, _ = builder().build(_job(tiny_models, seed=2))
    assert all(torch.equal(second[n], fresh[n]) for n in fresh)


def test_tensors_of_the_base_files_are_never_recycled(tiny_models) -> None:
    base = open_model(tiny_models["base"])
    builder = ChildBuilder(base=base, mutation=NoMutation(), dtype=None)
    mapped = {n: base[n] for n in base}
    before = {n: t.clone() for n, t in mapped.items()}
    builder.recycle(mapped)
    builder.build(_job(tiny_models))
    assert all(torch.equal(mapped[n], before[n]) for n in mapped)  # the mapped file was not written


@pytest.mark.parametrize("mutation", [NoMutation(), GaussianMutation(sigma=0.01)], ids=["none", "gaussian"])
def test_a_drawn_scale_gives_theta0_plus_s_times_the_merged_task_vectors(tiny_models, mutation) -> None:
    builder = ChildBuilder(
        base=open_model(tiny_models["base"]),
        mutation=mutation,
        crossover_std=0.2,
        per_layer=True,
        layer_std=0.1,
        scale_std=0.3,
    )
    job = _job(tiny_models)
    weights, fingerprint, plan, _ = builder.build(job)
    assert plan.scale != 1.0
    assert plan.to_record()["scale"] == plan.scale
    seed = derive_seed(job.seed, "mutation")
    base, p1, p2 = (open_model(tiny_models[k]) for k in ("base", "e1", "e2"))
    for name in base:
        b = base[name].float()
        w = plan.weights_for(name)  # already multiplied by the scale
        assert sum(w) == pytest.approx(plan.scale)
        expected = b + w[0] * (p1[name].float() - b) + w[1] * (p2[name].float() - b)
        if isinstance(mutation, GaussianMutation) and expected.ndim == 2 and "norm" not in name:
            expected = expected + torch.randn(expected.shape, generator=make_generator(seed, name)) * 0.01
        assert torch.allclose(weights[name], expected, atol=1e-6), name
    # The scale is part of what the fingerprint hashes.
    plain = ChildBuilder(base=open_model(tiny_models["base"]), mutation=mutation, crossover_std=0.2)
    assert plain.build(job)[1] != fingerprint


def test_a_ties_crossover_merges_the_parents_task_vectors_with_the_drawn_weights(tiny_models) -> None:
    from cycleqd.operators.crossover import MergeCrossover
    from cycleqd.operators.merge.ties import ties

    merge = MergeCrossover(method="ties", params={"density": 0.5})
    builder = ChildBuilder(
        base=open_model(tiny_models["base"]), mutation=NoMutation(), crossover_std=0.2, merge=merge
    )
    job = _job(tiny_models)
    weights, fingerprint, plan, _ = builder.build(job)
    base, p1, p2 = (open_model(tiny_models[k]) for k in ("base", "e1", "e2"))
    for name in base:
        b = base[name].float()
        taus = [p1[name].float() - b, p2[name].float() - b]
        tau = ties(taus, weights=plan.weights_for(name), densities=[0.5, 0.5], normalize=False)
        assert torch.allclose(weights[name], b + tau, atol=1e-6), name
    linear = ChildBuilder(base=open_model(tiny_models["base"]), mutation=NoMutation(), crossover_std=0.2)
    assert linear.build(job)[1] != fingerprint
