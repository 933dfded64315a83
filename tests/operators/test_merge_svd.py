"""TSV-M, Iso-C and Iso-CTS on small matrices, against closed forms and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from cycleqd.operators.merge import iso_c, iso_cts, tsv_m


def diag(*values: float) -> torch.Tensor:
    return torch.diag(torch.tensor(values, dtype=torch.float32))


def spectrum(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(m)


# -- TSV-M -----------------------------------------------------------------------------------------


def test_tsv_m_orthogonal_tasks_is_the_sum():
    # Tasks in orthogonal subspaces: nothing to decorrelate, TSV-M gives Δ1 + Δ2.
    out = tsv_m([diag(3, 0, 0), diag(0, 2, 0)])
    assert torch.allclose(out, diag(3, 2, 0), atol=1e-5)


def test_tsv_m_decorrelates_left_singular_vectors():
    # u1 at 0°, u2 at 45°, right vectors e1, e2. Procrustes moves the u's to −22.5° and 67.5°.
    h = math.sqrt(0.5)
    t1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    t2 = torch.tensor([[0.0, h], [0.0, h]])
    c, s = math.cos(math.pi / 8), math.sin(math.pi / 8)
    expected = torch.tensor([[c, s], [-s, c]])
    assert torch.allclose(tsv_m([t1, t2]), expected, atol=1e-5)


def test_tsv_m_keeps_r_over_t_components_per_task():
    # 3 tasks, r = 3: each keeps only its top singular triplet.
    t1, t2, t3 = diag(5, 1, 0), diag(0, 4, 0), diag(0, 0, 3)
    assert torch.allclose(tsv_m([t1, t2, t3]), diag(5, 4, 3), atol=1e-5)


def test_tsv_m_scale_and_vector_fallback():
    assert torch.allclose(tsv_m([diag(3, 0), diag(0, 2)], scale=0.5), diag(1.5, 1), atol=1e-5)
    v = tsv_m([torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])])
    assert torch.allclose(v, torch.tensor([2.0, 0.0]))


# -- Iso-C -----------------------------------------------------------------------------------------


def test_iso_c_flattens_the_spectrum_hand_example():
    # Δ = diag(3, 1): σ̄ = 2, U Vᵀ = I
    assert torch.allclose(iso_c([diag(3, 0), diag(0, 1)]), diag(2, 2), atol=1e-6)
    # weights: Δ = 2·diag(1, 0) + diag(0, 1) = diag(2, 1), σ̄ = 1.5
    assert torch.allclose(iso_c([diag(1, 0), diag(0, 1)], weights=[2, 1]), diag(1.5, 1.5), atol=1e-6)


def test_iso_c_output_has_a_flat_spectrum():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn((7, 4), generator=g) for _ in range(3)]
    out = iso_c(taus, scale=0.7)
    sv = spectrum(out)
    expected = 0.7 * spectrum(sum(taus)).mean()
    assert torch.allclose(sv, expected.expand_as(sv), rtol=1e-4)


def test_iso_c_vector_fallback_is_the_mean():
    out = iso_c([torch.tensor([1.0, 4.0]), torch.tensor([3.0, 0.0])])
    assert torch.allclose(out, torch.tensor([2.0, 2.0]))


# -- Iso-CTS ---------------------------------------------------------------------------------------


def test_iso_cts_hand_example():
    # r = 4, T = 2, f = 0.5: common k = 2 (e1, e2 of Δ = diag(6, 5, 2, 2.7)); each task adds its top
    # direction outside it: e3 (σ 2) from task 1, e4 (σ 1.2) from task 2. σ̄ = (6 + 5 + 2 + 1.2) / 4.
    t1 = diag(6, 0, 2, 1.5)
    t2 = diag(0, 5, 0, 1.2)
    out = iso_cts([t1, t2], common_space_fraction=0.5)
    assert torch.allclose(out, diag(*[3.55] * 4), atol=1e-5)
    # Iso-C keeps Δ's own directions and averages its spectrum: (6 + 5 + 2.7 + 2) / 4
    assert torch.allclose(iso_c([t1, t2]), diag(*[3.925] * 4), atol=1e-5)


def test_iso_cts_with_the_whole_rank_common_is_iso_c():
    g = torch.Generator().manual_seed(1)
    taus = [torch.randn((6, 5), generator=g) for _ in range(2)]
    assert torch.allclose(iso_cts(taus, common_space_fraction=1.0), iso_c(taus), atol=1e-5)


def test_iso_cts_output_has_a_flat_spectrum():
    g = torch.Generator().manual_seed(2)
    taus = [torch.randn((9, 8), generator=g) for _ in range(3)]
    sv = spectrum(iso_cts(taus))
    assert torch.allclose(sv, sv.mean().expand_as(sv), rtol=1e-4)


def test_iso_cts_vector_fallback_and_fraction_check():
    out = iso_cts([torch.tensor([1.0]), torch.tensor([3.0])])
    assert torch.allclose(out, torch.tensor([2.0]))
    with pytest.raises(ValueError, match="common_space_fraction"):
        iso_cts([diag(1, 1)], common_space_fraction=1.5)
