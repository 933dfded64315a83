"""Linear, task arithmetic, TIES, DARE and SLERP on small tensors, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from cycleqd.operators.merge import (
    dare_drop,
    dare_linear,
    dare_ties,
    linear,
    linear_soup,
    magnitude_prune,
    sign_consensus_merge,
    slerp,
    task_arithmetic,
    ties,
)


def vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(a: torch.Tensor, b: torch.Tensor | list[float], tol: float = 1e-6) -> bool:
    b = b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=torch.float32)
    return torch.allclose(a, b, atol=tol, rtol=0)


# -- linear and task arithmetic ------------------------------------------------------------------


def test_linear_normalised_weighted_mean():
    # (1·[1, 2] + 3·[3, −1]) / 4 = [10, −1] / 4
    assert close(linear([vec(1, 2), vec(3, -1)], weights=[1, 3]), [2.5, -0.25])


def test_linear_unnormalised_is_weighted_sum():
    assert close(linear([vec(1, 2), vec(3, -1)], weights=[1, 3], normalize=False), [10, -1])


def test_linear_zero_weight_sum_is_an_error():
    with pytest.raises(ValueError, match="sum to 0"):
        linear([vec(1.0), vec(2.0)], weights=[1, -1])


def test_linear_soup_unnormalised_sums_the_weights_themselves():
    base = vec(10, 20)
    # θ1 = [11, 22], θ2 = [13, 19]; Σ w θ = [11, 22] + 3 [13, 19] = [50, 79]; τ = that − θ0
    out = linear_soup([vec(1, 2), vec(3, -1)], base=base, weights=[1, 3], normalize=False)
    assert close(out, [40, 59])


def test_linear_soup_normalised_ignores_the_base():
    out = linear_soup([vec(1, 2), vec(3, -1)], base=vec(10, 20), weights=[1, 3])
    assert close(out, [2.5, -0.25])


def test_task_arithmetic_scales_by_lambda():
    taus = [vec(1, 2), vec(3, -1)]
    assert close(task_arithmetic(taus, weights=[1, 3], scale=0.5), [5, -0.5])
    assert close(task_arithmetic(taus, weights=[1, 3], scale=0.5, normalize=True), [1.25, -0.125])


def test_task_arithmetic_does_not_modify_inputs():
    a, b = vec(1, 2), vec(3, -1)
    task_arithmetic([a, b], weights=[1, 1], scale=2.0)
    assert close(a, [1, 2])
    assert close(b, [3, -1])


# -- TIES ------------------------------------------------------------------------------------------


def test_magnitude_prune_keeps_the_largest_entries():
    tau = vec(0.1, -3, 2, -0.5)
    assert close(magnitude_prune(tau, 0.5), [0, -3, 2, 0])
    # k = max(1, ⌊0.3 · 4⌋) = 1, and a tiny density still keeps one entry
    assert close(magnitude_prune(tau, 0.3), [0, -3, 0, 0])
    assert close(magnitude_prune(tau, 0.01), [0, -3, 0, 0])
    assert close(magnitude_prune(tau, 0.0), [0, 0, 0, 0])
    assert magnitude_prune(tau, 1.0) is tau


def test_magnitude_prune_keeps_exactly_k_when_magnitudes_tie():
    out = magnitude_prune(vec(1, -1, 1, 1), 0.5)
    assert close(out, [1, -1, 0, 0])
    assert int((out != 0).sum()) == 2


def test_ties_hand_example():
    t1, t2 = vec(1, -2, 3, 0.5), vec(2, 1, -1, -4)
    # Σ = [3, −1, 2, −3.5]: signs + − + −; entries agreeing with the sign are averaged.
    assert close(ties([t1, t2], weights=[1, 1], densities=[1, 1]), [1.5, -2, 3, -4])
    assert close(ties([t1, t2], weights=[1, 1], densities=[1, 1], normalize=False), [3, -2, 3, -4])


def test_ties_weighted_divides_by_agreeing_weights():
    t1, t2 = vec(1, -2, 3, 0.5), vec(2, 1, -1, -4)
    # δ1 = [2, −4, 6, 1], δ2 = [2, 1, −1, −4]; Σ = [4, −3, 5, −3]
    out = ties([t1, t2], weights=[2, 1], densities=[1, 1])
    assert close(out, [4 / 3, -2, 3, -4])


def test_ties_trims_before_electing():
    t1, t2 = vec(1, -2, 3, 0.5), vec(2, 1, -1, -4)
    # trimmed: [0, −2, 3, 0] and [2, 0, 0, −4]
    assert close(ties([t1, t2], weights=[1, 1], densities=[0.5, 0.5]), [2, -2, 3, -4])


def test_ties_lambda():
    out = ties([vec(1, -2), vec(3, -4)], weights=[1, 1], densities=[1, 1], scale=0.5)
    assert close(out, [1, -1.5])


def test_ties_zero_sum_elects_positive():
    assert close(ties([vec(1.0), vec(-1.0)], weights=[1, 1], densities=[1, 1]), [1.0])


def test_ties_count_consensus():
    taus = [vec(5.0), vec(-1.0), vec(-1.0)]
    assert close(sign_consensus_merge(taus, weights=[1, 1, 1], consensus="sum"), [5.0])
    assert close(sign_consensus_merge(taus, weights=[1, 1, 1], consensus="count"), [-1.0])


def test_ties_density_one_agreeing_signs_is_normalised_sum():
    g = torch.Generator().manual_seed(0)
    taus = [torch.rand((8, 5), generator=g) + 0.01 for _ in range(3)]  # all positive
    weights = [0.2, 0.5, 1.3]
    expected = sum(w * t for w, t in zip(weights, taus, strict=True)) / sum(weights)
    assert torch.allclose(ties(taus, weights=weights, densities=[1, 1, 1]), expected, atol=1e-6)
    negative = [-t for t in taus]
    assert torch.allclose(ties(negative, weights=weights, densities=[1, 1, 1]), -expected, atol=1e-6)


def test_ties_checks_lengths():
    with pytest.raises(ValueError, match="2 task vectors but 1 densities"):
        ties([vec(1.0), vec(2.0)], weights=[1, 1], densities=[1])


# -- DARE ------------------------------------------------------------------------------------------


def test_dare_drop_is_seeded_and_rescales():
    tau = torch.arange(1, 10001, dtype=torch.float32)
    a = dare_drop(tau, 0.3, generator=torch.Generator().manual_seed(7))
    b = dare_drop(tau, 0.3, generator=torch.Generator().manual_seed(7))
    c = dare_drop(tau, 0.3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    kept = a != 0
    assert torch.allclose(a[kept], tau[kept] / 0.3)
    assert abs(kept.float().mean().item() - 0.3) < 0.02


def test_dare_drop_without_rescale_keeps_values():
    tau = torch.arange(1, 101, dtype=torch.float32)
    out = dare_drop(tau, 0.5, generator=torch.Generator().manual_seed(0), rescale=False)
    kept = out != 0
    assert torch.equal(out[kept], tau[kept])


def test_dare_density_one_is_identity_and_draws_nothing():
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    taus = [vec(1, -2, 3), vec(-1, 4, 2)]
    out = dare_linear(taus, weights=[0.5, 2], densities=[1, 1], generator=g)
    assert close(out, task_arithmetic(taus, weights=[0.5, 2]))
    assert torch.equal(g.get_state(), state)
    out = dare_ties(taus, weights=[1, 1], densities=[1, 1], generator=g)
    assert close(out, ties(taus, weights=[1, 1], densities=[1, 1], normalize=False))


def test_dare_linear_hand_example():
    # With a fixed generator the mask is fixed; recompute it the way DARE defines it.
    taus = [vec(1, 2, 3, 4), vec(-1, -2, -3, -4)]
    g = torch.Generator().manual_seed(11)
    m1 = torch.rand(4, generator=g) < 0.5
    m2 = torch.rand(4, generator=g) < 0.5
    expected = 0.7 * (3 * taus[0] * m1 / 0.5 + 1 * taus[1] * m2 / 0.5)
    out = dare_linear(
        taus, weights=[3, 1], densities=[0.5, 0.5], generator=torch.Generator().manual_seed(11), scale=0.7
    )
    assert close(out, expected, tol=1e-5)


def test_dare_ties_hand_example():
    # Drop with the same masks as DARE defines them, then elect signs and keep the agreeing entries.
    taus = [vec(1, -2, 3, 4, -5, 6), vec(-2, 3, -1, -1, 4, -5)]  # every sign in conflict
    g = torch.Generator().manual_seed(5)
    d1 = taus[0] * (torch.rand(6, generator=g) < 0.8) / 0.8
    d2 = taus[1] * (torch.rand(6, generator=g) < 0.8) / 0.8
    w = [2.0, 1.0]
    sign = torch.sign(w[0] * d1 + w[1] * d2)
    agree1 = torch.sign(w[0] * d1) == sign
    agree2 = torch.sign(w[1] * d2) == sign
    expected = 0.8 * (w[0] * d1 * agree1 + w[1] * d2 * agree2)
    out = dare_ties(
        taus, weights=w, densities=[0.8, 0.8], generator=torch.Generator().manual_seed(5), scale=0.8
    )
    assert close(out, expected, tol=1e-5)
    assert not close(out, 0.8 * (w[0] * d1 + w[1] * d2), tol=1e-5)  # the election dropped something


# -- SLERP -----------------------------------------------------------------------------------------


def test_slerp_quarter_circle():
    # v0 = [1, 0], v1 = [0, 1]: Ω = π/2, slerp(½) = [√½, √½]
    out = slerp([vec(-1, 1)], base=vec(1, 0), t=0.5)
    h = math.sqrt(0.5)
    assert close(out, [h - 1, h])


def test_slerp_keeps_norms_of_unequal_vectors():
    # v0 = [2, 0], v1 = [0, 1]: s0 = s1 = sin(π/4) / sin(π/2) = √½; slerp = [2√½, √½]
    out = slerp([vec(-2, 1)], base=vec(2, 0), t=0.5)
    h = math.sqrt(0.5)
    assert close(out, [2 * h - 2, h])


def test_slerp_endpoints_and_colinear_fallback():
    base, tau = vec(1, 0), vec(-1, 1)
    assert close(slerp([tau], base=base, t=0.0), [0, 0])
    assert close(slerp([tau], base=base, t=1.0), tau)
    # v1 = 2 v0 is colinear: plain linear interpolation, τ_out = t τ
    assert close(slerp([vec(1, 2)], base=vec(1, 2), t=0.3), [0.3, 0.6])


def test_slerp_needs_exactly_one_model():
    with pytest.raises(ValueError, match="exactly one other model"):
        slerp([vec(1.0), vec(2.0)], base=vec(0.0), t=0.5)
