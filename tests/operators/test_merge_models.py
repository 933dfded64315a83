"""merge_models: a whole model streamed through a method, on small in-memory models."""

from __future__ import annotations

import pytest
import torch

from cycleqd.errors import ConfigError
from cycleqd.operators.merge import merge_models

NAMES = ["model.embed_tokens.weight", "model.layers.0.w", "model.layers.1.w", "model.norm.weight", "steps"]


def model(*values: float) -> dict[str, torch.Tensor]:
    """A toy model whose every float tensor is filled with one value per tensor."""
    a, b, c, d = values
    return {
        NAMES[0]: torch.full((2, 3), a),
        NAMES[1]: torch.full((3, 3), b),
        NAMES[2]: torch.full((3, 3), c),
        NAMES[3]: torch.full((3,), d),
        "steps": torch.tensor([7], dtype=torch.int64),
    }


BASE = model(1.0, 2.0, 3.0, 4.0)
E1 = model(2.0, 4.0, 6.0, 8.0)  # τ1 = (1, 2, 3, 4)
E2 = model(0.0, 3.0, 1.0, 4.0)  # τ2 = (−1, 1, −2, 0)


def merged(**kwargs) -> dict[str, torch.Tensor]:
    return dict(merge_models(BASE, [E1, E2], **kwargs))


def values(out: dict[str, torch.Tensor]) -> list[float]:
    return [float(out[n].flatten()[0]) for n in NAMES[:4]]


def test_task_arithmetic_streams_every_tensor_in_order():
    out = list(merge_models(BASE, [E1, E2], method="task_arithmetic", weights=[1.0, 0.5], scale=2.0))
    assert [n for n, _ in out] == NAMES
    # θ0 + 2 (τ1 + ½ τ2)
    assert values(dict(out)) == pytest.approx([1 + 2 * 0.5, 2 + 2 * 2.5, 3 + 2 * 2, 4 + 2 * 4])


def test_non_float_tensors_are_the_base_s():
    out = merged(method="linear")
    assert out["steps"].dtype == torch.int64
    assert out["steps"].item() == 7


def test_linear_is_the_normalised_average_of_weights():
    out = merged(method="linear", weights=[3, 1])
    expected = [(3 * a + b) / 4 for a, b in zip(values(E1), values(E2), strict=True)]
    assert values(out) == pytest.approx(expected)


def test_out_dtype_and_input_dtypes():
    e1 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in E1.items()}
    out = dict(merge_models(BASE, [e1, E2], method="linear", out_dtype=torch.bfloat16))
    assert out[NAMES[1]].dtype == torch.bfloat16
    assert values(out) == pytest.approx([1.0, 3.5, 3.5, 6.0])
    assert dict(merge_models(BASE, [e1, E2], method="linear"))[NAMES[1]].dtype == torch.float32
    # bf16 in any position is upcast exactly before the float32 arithmetic
    swapped = dict(merge_models(BASE, [E2, e1], method="task_arithmetic", weights=[0.5, 0.5]))
    assert values(swapped) == pytest.approx([1.0, 3.5, 3.5, 6.0])


def test_gradients_and_filters_are_resolved_per_tensor():
    # weight of model 1 goes 0 → 1 over the two layers; embeddings sit at t = 0, the norm at t = 1.
    out = merged(
        method="task_arithmetic",
        model_parameters=[
            {"weight": [0.0, 1.0]},
            {"weight": [{"filter": "norm", "value": 2.0}, {"value": 0.0}]},
        ],
    )
    # embed: 0·τ1 + 0·τ2; layer 0: 0; layer 1: 1·τ1 = 3; norm: τ1 + 2 τ2 = 4 + 0
    assert values(out) == pytest.approx([1.0, 2.0, 3 + 3, 4 + 4])


def test_global_values_are_defaults_for_per_model_ones():
    out = merged(
        method="task_arithmetic", parameters={"weight": 0.5}, model_parameters=[{"weight": 1.0}, None]
    )
    assert values(out) == pytest.approx([1 + 1 - 0.5, 2 + 2 + 0.5, 3 + 3 - 1, 4 + 4])


def test_ties_model_merge_matches_the_tensor_function():
    from cycleqd.operators.merge import ties

    out = merged(method="ties", densities=[1.0, 1.0])
    tau = ties(
        [E1[NAMES[2]] - BASE[NAMES[2]], E2[NAMES[2]] - BASE[NAMES[2]]], weights=[1, 1], densities=[1, 1]
    )
    assert torch.equal(out[NAMES[2]], BASE[NAMES[2]] + tau)


def test_dare_is_seeded_per_tensor_and_independent_of_order():
    g = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.w": torch.randn(50, 40, generator=g) for i in range(3)}
    experts = [{k: v + torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    kwargs = {"method": "dare_ties", "densities": [0.3, 0.6], "seed": 5}
    a = dict(merge_models(base, experts, **kwargs))
    b = dict(merge_models(base, experts, **kwargs))
    reversed_base = dict(reversed(list(base.items())))
    c = dict(merge_models(reversed_base, experts, **kwargs))
    d = dict(merge_models(base, experts, **{**kwargs, "seed": 6}))
    for name in base:
        assert torch.equal(a[name], b[name])
        assert torch.equal(a[name], c[name])
        assert not torch.equal(a[name], d[name])


def test_slerp_merges_the_base_with_one_model():
    out = dict(merge_models(BASE, [E1], method="slerp", t=0.0))
    assert values(out) == pytest.approx(values(BASE))
    out = dict(merge_models(BASE, [E1], method="slerp", t=1.0))
    assert values(out) == pytest.approx(values(E1))


def test_errors_are_raised_before_streaming():
    with pytest.raises(ValueError, match="exactly 1 model"):
        merge_models(BASE, [E1, E2], method="slerp", t=0.5)
    with pytest.raises(ValueError, match="needs the parameter"):
        merge_models(BASE, [E1], method="slerp")
    with pytest.raises(ValueError, match="ties has no parameter 'alpha'"):
        merge_models(BASE, [E1], method="ties", alpha=1.0)
    with pytest.raises(ValueError, match="2 models but 1 weight"):
        merge_models(BASE, [E1, E2], method="linear", weights=[1.0])
    with pytest.raises(ConfigError, match="unknown merge method"):
        merge_models(BASE, [E1], method="soup")
    with pytest.raises(ValueError, match="at least one model"):
        merge_models(BASE, [], method="linear")


def test_linear_fast_path_matches_the_task_vector_form():
    # linear and task_arithmetic declare weight-space coefficients; the streamer uses them.
    from cycleqd.operators.merge import get_merge_method

    g = torch.Generator().manual_seed(4)
    base = {f"model.layers.{i}.w": torch.randn(300, 70, generator=g) for i in range(2)}
    experts = [{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    cases = [
        ("linear", {"weights": [0.2, 0.5, 0.3]}),
        ("linear", {"weights": [1.0, 2.0, 0.5], "normalize": False}),
        ("task_arithmetic", {"weights": [0.7, 0.5, -0.2], "scale": 0.8}),
        ("task_arithmetic", {"weights": [1.0, 3.0, 1.0], "normalize": True}),
    ]
    for method, kwargs in cases:
        m = get_merge_method(method)
        assert m.coefficients is not None
        fast = dict(merge_models(base, experts, method=method, **kwargs))
        slow_method = type(m)(**{**m.__dict__, "coefficients": None})
        slow = dict(merge_models(base, experts, method=slow_method, **kwargs))
        for name in base:
            assert torch.allclose(fast[name], slow[name], rtol=1e-6, atol=1e-6), (method, kwargs)


def test_release_inputs_keeps_results_and_leaves_memory_tensors_alone(tmp_path):
    from safetensors.torch import save_file

    from cycleqd.weights import open_model

    g = torch.Generator().manual_seed(5)
    tensors = {f"model.layers.{i}.w": torch.randn(512, 512, generator=g) for i in range(3)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    on_disk = open_model(tmp_path / "model.safetensors")
    in_memory = {k: v + 1 for k, v in tensors.items()}
    kept = {k: v.clone() for k, v in in_memory.items()}
    released = dict(merge_models(on_disk, [in_memory], method="linear", weights=[0.5], release_inputs=True))
    plain = dict(merge_models(on_disk, [in_memory], method="linear", weights=[0.5]))
    for name in tensors:
        assert torch.equal(released[name], plain[name])
        assert torch.equal(in_memory[name], kept[name])  # anonymous memory is never released
        assert torch.equal(on_disk[name], tensors[name])  # mapped pages read back from the file
