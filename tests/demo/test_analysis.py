from __future__ import annotations

import pytest
import torch

from cycleqd.demo.analysis import plane_coordinates


def _models() -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g), "i": torch.arange(3)}
    experts = []
    for _ in range(3):
        experts.append(
            {
                n: t + torch.randn(t.shape, generator=g) if t.is_floating_point() else t
                for n, t in base.items()
            }
        )
    return base, experts


def test_task_arithmetic_lies_on_the_plane_with_its_lambdas() -> None:
    base, experts = _models()
    lams = [0.5, 0.2, 0.9]
    model = {
        n: base[n] + sum(lam * (e[n] - base[n]) for lam, e in zip(lams, experts, strict=True))
        if base[n].is_floating_point()
        else base[n]
        for n in base
    }
    coords = plane_coordinates(base, experts, model)
    assert coords.coefficients == pytest.approx(lams, abs=1e-6)  # float32 weights
    assert coords.total == pytest.approx(1.6)
    assert coords.off_plane == pytest.approx(0.0, abs=1e-6)
    assert plane_coordinates(base, experts, base).off_plane == 0.0


def test_a_component_orthogonal_to_the_experts_is_the_off_plane_share() -> None:
    base, experts = _models()
    flat = [torch.cat([e["w"].flatten() - base["w"].flatten(), e["b"] - base["b"]]) for e in experts]
    q, _ = torch.linalg.qr(torch.stack(flat).T.double())
    r = torch.randn(q.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    r = r - q @ (q.T @ r)  # orthogonal to every expert's task vector
    r = r / r.norm()
    on = 0.3 * flat[0].double() + 0.7 * flat[1].double()
    tau = on + r * on.norm()  # as long off the plane as on it: off share 1/√2
    model = {
        "w": base["w"] + tau[:24].reshape(6, 4).float(),
        "b": base["b"] + tau[24:].float(),
        "i": base["i"],
    }
    coords = plane_coordinates(base, experts, model)
    assert coords.coefficients == pytest.approx([0.3, 0.7, 0.0], abs=1e-5)
    assert coords.off_plane == pytest.approx(2**-0.5, abs=1e-5)
    with pytest.raises(ValueError, match="linearly dependent"):
        plane_coordinates(base, [experts[0], experts[0]], model)
