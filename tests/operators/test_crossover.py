from __future__ import annotations

import math

import pytest
import torch

from cycleqd.operators import crossover, crossover_tensor, draw_crossover, layer_group
from cycleqd.operators.crossover import CrossoverPlan, MergeCrossover, draw_scale


def _taus(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(5, 3, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(4, 3, generator=g),
        "model.layers.1.mlp.up_proj.weight": torch.randn(4, 3, generator=g),
        "model.layers.1.input_layernorm.weight": torch.randn(3, generator=g),
    }


def test_known_weights_equal_hand_computation() -> None:
    t1 = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    t2 = torch.tensor([[3.0, 2.0], [-1.5, 0.0]])
    plan = CrossoverPlan(weights={"all": [0.25, 0.75]})
    out = crossover_tensor("w", [t1, t2], plan)
    # 0.25 * t1 + 0.75 * t2, by hand
    expected = torch.tensor([[2.5, 1.0], [-1.0, 1.0]])
    assert torch.allclose(out, expected, atol=1e-7)


def test_drawn_omegas_are_normal_and_normalised() -> None:
    g = torch.Generator().manual_seed(7)
    plan = draw_crossover(generator=g, mean=1.0, std=0.01)
    (w1, w2) = plan.weights["all"]
    (o1, o2) = plan.omegas["all"]
    assert w1 + w2 == pytest.approx(1.0, abs=1e-12)
    assert w1 == pytest.approx(o1 / (o1 + o2))
    # Same draws by hand from the same seed: ω = μ + σ z.
    z = torch.randn((1, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert o1 == pytest.approx(1.0 + 0.01 * float(z[0, 0]))
    assert o2 == pytest.approx(1.0 + 0.01 * float(z[0, 1]))


def test_model_wise_crossover_uses_one_weight_pair_for_all_tensors() -> None:
    p1, p2 = _taus(1), _taus(2)
    child, plan = crossover([p1, p2], generator=torch.Generator().manual_seed(3), std=0.3)
    w1, w2 = plan.weights["all"]
    for name in p1:
        assert torch.allclose(child[name], w1 * p1[name] + w2 * p2[name], atol=1e-6)


def test_per_layer_crossover_draws_per_group() -> None:
    p1, p2 = _taus(1), _taus(2)
    child, plan = crossover([p1, p2], generator=torch.Generator().manual_seed(3), std=0.3, per_layer=True)
    assert list(plan.weights) == ["layer.0", "layer.1", "other"]
    assert len({tuple(w) for w in plan.weights.values()}) == 3
    for name in p1:
        w1, w2 = plan.weights[layer_group(name)]
        assert torch.allclose(child[name], w1 * p1[name] + w2 * p2[name], atol=1e-6)


def test_layer_groups() -> None:
    assert layer_group("model.layers.12.self_attn.q_proj.weight") == "layer.12"
    assert layer_group("transformer.h.3.attn.c_attn.weight") == "layer.3"
    assert layer_group("model.embed_tokens.weight") == "other"
    assert layer_group("lm_head.weight") == "other"


def test_seeded_determinism() -> None:
    p1, p2 = _taus(1), _taus(2)
    a, _ = crossover([p1, p2], generator=torch.Generator().manual_seed(11))
    b, _ = crossover([p1, p2], generator=torch.Generator().manual_seed(11))
    c, _ = crossover([p1, p2], generator=torch.Generator().manual_seed(12))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_degenerate_draw_is_refused() -> None:
    with pytest.raises(ValueError, match="sum to"):
        draw_crossover(generator=torch.Generator().manual_seed(0), mean=0.0, std=1e-9)


def test_layer_std_draws_groups_around_one_model_wise_draw() -> None:
    names = list(_taus(1))
    plan = draw_crossover(
        generator=torch.Generator().manual_seed(5), std=0.1, names=names, per_layer=True, layer_std=0.2
    )
    # By hand from the same seed: first the model-wise ω_i, then one deviation per group and parent.
    g = torch.Generator().manual_seed(5)
    model_wise = torch.randn((1, 2), generator=g, dtype=torch.float64) * 0.1 + 1.0
    around = torch.randn((3, 2), generator=g, dtype=torch.float64)
    for row, group in enumerate(["layer.0", "layer.1", "other"]):
        expected = (model_wise[0] + 0.2 * around[row]).tolist()
        assert plan.omegas[group] == pytest.approx(expected)
        w = plan.weights[group]
        assert w == pytest.approx([expected[0] / sum(expected), expected[1] / sum(expected)])
    with pytest.raises(ValueError, match="per_layer"):
        draw_crossover(generator=torch.Generator().manual_seed(5), layer_std=0.2)


def test_without_layer_std_the_per_layer_draws_are_unchanged() -> None:
    names = list(_taus(1))
    plan = draw_crossover(generator=torch.Generator().manual_seed(5), std=0.1, names=names, per_layer=True)
    g = torch.Generator().manual_seed(5)
    draws = torch.randn((3, 2), generator=g, dtype=torch.float64) * 0.1 + 1.0
    assert plan.omegas["layer.0"] == pytest.approx(draws[0].tolist())


def test_drawn_scale_is_log_normal_and_multiplies_the_coefficients() -> None:
    s = draw_scale(generator=torch.Generator().manual_seed(9), std=0.3)
    z = torch.randn((1,), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert s == pytest.approx(math.exp(0.3 * float(z[0])))
    assert draw_scale(generator=torch.Generator().manual_seed(9), std=0.0) == 1.0
    plan = CrossoverPlan(weights={"all": [0.25, 0.75]}, scale=s)
    assert plan.weights_for("w") == pytest.approx([0.25 * s, 0.75 * s])
    assert sum(plan.weights_for("w")) == pytest.approx(s)
    assert plan.to_record()["scale"] == s
    # A plan without a drawn scale records exactly what it recorded before the option existed.
    assert set(CrossoverPlan(weights={"all": [0.5, 0.5]}).to_record()) == {"per_layer", "weights", "omegas"}


def test_merge_crossover_through_ties_matches_the_merge_method() -> None:
    from cycleqd.operators.merge.ties import ties

    t1 = torch.tensor([[1.0, -2.0, 0.1], [0.5, 4.0, -3.0]])
    t2 = torch.tensor([[-3.0, 2.0, 0.2], [1.5, -0.1, -1.0]])
    plan = CrossoverPlan(weights={"all": [0.4, 0.6]}, scale=1.5)
    merge = MergeCrossover(method="ties", params={"density": 0.5})
    out = crossover_tensor("w", [t1, t2], plan, merge=merge)
    expected = ties([t1, t2], weights=[0.6, 0.9], densities=[0.5, 0.5], normalize=False)
    assert torch.equal(out, expected)
    assert not merge.is_linear
    assert not merge.seeded
    assert MergeCrossover(method="dare_ties", params={"density": 0.5}).seeded
    # The default is the weighted sum of the paper.
    assert torch.allclose(crossover_tensor("w", [t1, t2], plan), 0.6 * t1 + 0.9 * t2)
