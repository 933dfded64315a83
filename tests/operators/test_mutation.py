from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cycleqd.operators import (
    ExpertSVDCache,
    GaussianMutation,
    NoMutation,
    SVDExpertMutation,
    SVDSelfMutation,
    mutate,
    randomized_svd,
)
from cycleqd.operators.random import make_generator


def _tau(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.layers.0.mlp.up_proj.weight": torch.randn(6, 4, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g),
        "model.layers.0.input_layernorm.weight": torch.randn(4, generator=g),
        "model.norm.weight": torch.randn(4, generator=g),
        "model.layers.0.mlp.bias": torch.randn(6, generator=g),
        "model.layers.0.special_norm_proj.weight": torch.randn(4, 4, generator=g),
    }


@pytest.fixture
def expert_cache(tmp_path: Path) -> tuple[ExpertSVDCache, dict[str, torch.Tensor]]:
    base = {k: torch.zeros_like(v) for k, v in _tau(5).items()}
    expert = _tau(5)
    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"]
    cache = ExpertSVDCache(tmp_path / "svd", rank=None)
    cache.build(expert, base, names)
    return cache, expert


def test_svd_expert_with_rho_zero_is_identity(expert_cache) -> None:
    cache, _ = expert_cache
    tau = _tau()
    out, record = mutate(tau, SVDExpertMutation(caches={"code": cache}, rho=0.0), seed=1, expert="code")
    assert all(torch.equal(out[n], tau[n]) for n in tau)
    assert record.factors["max"] == 0.0


def test_svd_expert_with_drawn_r_adds_u_diag_rs_vt(expert_cache) -> None:
    cache, expert = expert_cache
    tau = _tau()
    out, record = mutate(tau, SVDExpertMutation(caches={"code": cache}, rho=0.1), seed=9, expert="code")
    name = "model.layers.0.mlp.up_proj.weight"
    # By hand: the SVD of the expert's task vector and r drawn from the tensor's own generator.
    U, S, Vh = torch.linalg.svd(expert[name], full_matrices=False)
    r = torch.rand(S.shape, generator=make_generator(9, name)) * 0.1
    expected = tau[name] + U @ torch.diag(r * S) @ Vh
    assert torch.allclose(out[name], expected, atol=1e-5)
    assert 0.0 <= record.factors["min"] <= record.factors["max"] < 0.1
    assert record.expert == "code"
    assert record.mutated == 2  # up_proj and q_proj; special_norm_proj matches "norm"


def test_svd_expert_rank_truncation(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    expert = {"w": torch.randn(8, 6, generator=g)}
    base = {"w": torch.zeros(8, 6)}
    cache = ExpertSVDCache(tmp_path / "r2", rank=2)
    cache.build(expert, base, ["w"])
    f = cache.get("w")
    assert f.U.shape == (8, 2)
    assert f.S.shape == (2,)
    assert f.Vh.shape == (2, 6)
    # Reopened from disk, lazily, gives the same factors.
    again = ExpertSVDCache(tmp_path / "r2", rank=2).get("w")
    assert torch.equal(again.S, f.S)
    out, _ = mutate(
        {"w": torch.zeros(8, 6)}, SVDExpertMutation(caches={"e": cache}, rho=0.5), seed=3, expert="e"
    )
    assert torch.linalg.matrix_rank(out["w"]) == 2


def test_svd_expert_needs_the_active_expert(expert_cache) -> None:
    cache, _ = expert_cache
    with pytest.raises(ValueError, match="needs the active expert's SVD cache"):
        mutate(_tau(), SVDExpertMutation(caches={"code": cache}), seed=1, expert="db")


def test_svd_cache_build_is_resumable(tmp_path: Path) -> None:
    expert = {"a": torch.randn(4, 3), "b": torch.randn(5, 2)}
    base = {k: torch.zeros_like(v) for k, v in expert.items()}
    cache = ExpertSVDCache(tmp_path / "c")
    calls = []
    cache.build(expert, base, ["a", "b"], progress=calls.append)
    assert cache.complete
    assert calls == ["a", "b"]
    (tmp_path / "c" / "manifest.json").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").iterdir()}
    ExpertSVDCache(tmp_path / "c").build(expert, base, ["a", "b"])
    assert all((tmp_path / "c" / n).stat().st_mtime_ns == m for n, m in mtimes.items())


def test_svd_self_with_w_one_returns_tau() -> None:
    tau = _tau()
    out, record = mutate(tau, SVDSelfMutation(low=1.0, high=1.0), seed=4)
    for n in tau:
        assert torch.allclose(out[n], tau[n], atol=1e-5)
    assert record.factors["mean"] == 1.0


def test_svd_self_scales_singular_values() -> None:
    tau = {"w": torch.randn(6, 4, generator=torch.Generator().manual_seed(1))}
    out, _ = mutate(tau, SVDSelfMutation(low=0.5, high=1.5), seed=2)
    U, S, Vh = torch.linalg.svd(tau["w"], full_matrices=False)
    g = make_generator(2, "w")
    w = torch.rand(S.shape, generator=g) * 1.0 + 0.5
    assert torch.allclose(out["w"], U @ torch.diag(S * w) @ Vh, atol=1e-5)


def test_svd_self_randomized_keeps_remainder_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)
    tau = {"w": low_rank}
    mut = SVDSelfMutation(low=1.0, high=1.0, randomized_above=100, rank=3)
    out, _ = mutate(tau, mut, seed=0)
    assert torch.allclose(out["w"], low_rank, atol=1e-4)
    f = randomized_svd(low_rank, rank=3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(f.reconstruct(), low_rank, atol=1e-4)
    a, _ = mutate(tau, SVDSelfMutation(randomized_above=100, rank=3), seed=5)
    b, _ = mutate(tau, SVDSelfMutation(randomized_above=100, rank=3), seed=5)
    assert torch.equal(a["w"], b["w"])


@pytest.mark.parametrize(
    "mutation",
    [SVDSelfMutation(), GaussianMutation(sigma=0.1), NoMutation()],
    ids=["svd-self", "gaussian", "none"],
)
def test_skipped_tensors_are_bit_identical(mutation) -> None:
    tau = _tau()
    out, record = mutate(tau, mutation, seed=1)
    for n in ("model.layers.0.input_layernorm.weight", "model.norm.weight", "model.layers.0.mlp.bias"):
        assert out[n] is tau[n]
    assert out["model.layers.0.special_norm_proj.weight"] is tau["model.layers.0.special_norm_proj.weight"]
    custom, _ = mutate(tau, mutation, seed=1, skip_patterns=("q_proj",))
    assert custom["model.layers.0.self_attn.q_proj.weight"] is tau["model.layers.0.self_attn.q_proj.weight"]
    if not isinstance(mutation, NoMutation):
        assert record.mutated == 2
        assert not torch.equal(
            custom["model.layers.0.special_norm_proj.weight"], tau["model.layers.0.special_norm_proj.weight"]
        )


def test_gaussian_matches_hand_draws() -> None:
    tau = {"w": torch.zeros(3, 2)}
    out, _ = mutate(tau, GaussianMutation(sigma=3e-4), seed=8)
    expected = torch.randn((3, 2), generator=make_generator(8, "w")) * 3e-4
    assert torch.equal(out["w"], expected)


@pytest.mark.parametrize("mutation", [SVDSelfMutation(), GaussianMutation()], ids=["svd-self", "gaussian"])
def test_same_seed_same_bits_different_seed_different(mutation) -> None:
    tau = _tau()
    a, _ = mutate(tau, mutation, seed=21)
    b, _ = mutate(tau, mutation, seed=21)
    c, _ = mutate(tau, mutation, seed=22)
    name = "model.layers.0.mlp.up_proj.weight"
    assert all(torch.equal(a[n], b[n]) for n in tau)
    assert not torch.equal(a[name], c[name])


def test_order_of_tensors_does_not_change_draws() -> None:
    tau = _tau()
    rev = dict(reversed(list(tau.items())))
    a, _ = mutate(tau, GaussianMutation(), seed=3)
    b, _ = mutate(rev, GaussianMutation(), seed=3)
    assert all(torch.equal(a[n], b[n]) for n in tau)


def test_rank_truncated_cache_uses_an_accurate_randomized_svd(tmp_path: Path) -> None:
    # A slowly decaying spectrum (s_i ∝ i^-0.3), as task vectors have: the hard case for a
    # randomized SVD. Its top-8 term must match the exact one closely.
    g = torch.Generator().manual_seed(0)
    m, n, k = 120, 90, 8
    q1, _ = torch.linalg.qr(torch.randn(m, n, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    s = torch.arange(1, n + 1, dtype=torch.float32) ** -0.3
    tau = q1 @ torch.diag(s) @ q2.T
    cache = ExpertSVDCache(tmp_path / "rand", rank=k, randomized_above=100)
    cache.build({"w": tau}, {"w": torch.zeros(m, n)}, ["w"])
    exact = torch.linalg.svd(tau, full_matrices=False)
    top = exact.U[:, :k] @ torch.diag(exact.S[:k]) @ exact.Vh[:k]
    approx = cache.get("w").reconstruct()
    assert float((approx - top).norm() / top.norm()) < 0.05


def test_cache_build_adds_only_missing_tensors(tmp_path: Path) -> None:
    expert = {"a": torch.randn(4, 3), "b": torch.randn(5, 2)}
    base = {k: torch.zeros_like(v) for k, v in expert.items()}
    cache = ExpertSVDCache(tmp_path / "c")
    cache.build(expert, base, ["a"])
    assert cache.missing(["a", "b"]) == ["b"]
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("*.safetensors")}
    done = []
    cache.build(expert, base, ["a", "b"], progress=done.append)
    assert done == ["b"]
    assert cache.missing(["a", "b"]) == []
    assert all((tmp_path / "c" / name).stat().st_mtime_ns == t for name, t in first.items())
    assert torch.allclose(ExpertSVDCache(tmp_path / "c").get("b").reconstruct(), expert["b"], atol=1e-5)


def test_svd_expert_leaves_skipped_tensors_bit_identical(expert_cache) -> None:
    cache, _ = expert_cache
    tau = _tau()
    mutation = SVDExpertMutation(caches={"code": cache}, rho=0.1)
    out, record = mutate(tau, mutation, seed=1, expert="code", skip_patterns=("norm", "q_proj"))
    for n in ("model.layers.0.input_layernorm.weight", "model.norm.weight", "model.layers.0.mlp.bias"):
        assert out[n] is tau[n]
    assert out["model.layers.0.special_norm_proj.weight"] is tau["model.layers.0.special_norm_proj.weight"]
    assert out["model.layers.0.self_attn.q_proj.weight"] is tau["model.layers.0.self_attn.q_proj.weight"]
    assert record.mutated == 1
    assert not torch.equal(out["model.layers.0.mlp.up_proj.weight"], tau["model.layers.0.mlp.up_proj.weight"])


def test_svd_expert_same_seed_same_bits_different_seed_different(expert_cache) -> None:
    cache, _ = expert_cache
    tau = _tau()
    mutation = SVDExpertMutation(caches={"code": cache}, rho=0.1)
    skip = ("norm",)
    a, _ = mutate(tau, mutation, seed=21, expert="code", skip_patterns=skip)
    b, _ = mutate(tau, mutation, seed=21, expert="code", skip_patterns=skip)
    c, _ = mutate(tau, mutation, seed=22, expert="code", skip_patterns=skip)
    assert all(torch.equal(a[n], b[n]) for n in tau)
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(a[name], c[name])
