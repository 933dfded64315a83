"""The merge-method registry and mergekit-style parameter settings."""

from __future__ import annotations

import pytest
import torch

from cycleqd.errors import ConfigError
from cycleqd.operators.merge import MERGE_METHODS, evaluate_setting, get_merge_method, position
from cycleqd.operators.merge.params import count_layers
from cycleqd.operators.merge.registry import REQUIRED, check_parameter


def test_registry_holds_the_methods_the_docs_promise():
    promised = {
        "linear",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "slerp",
        "tsv_m",
        "iso_c",
        "iso_cts",
    }
    assert promised <= set(MERGE_METHODS)


@pytest.mark.parametrize("name", sorted(MERGE_METHODS))
def test_every_method_declares_what_configs_and_the_streamer_need(name: str) -> None:
    method = MERGE_METHODS[name]
    assert method.name == name
    assert method.fn.__doc__
    assert method.reference
    for key in method.parameter_names:
        default = method.default(key)
        if isinstance(default, str):  # a word-valued parameter lists its words, its default among them
            assert default in method.choices[key]
        example = 0.5 if default is REQUIRED else default
        assert check_parameter(method, key, example, per_model=key in method.model_params) is None
    assert set(method.choices) <= set(method.parameter_names)
    n = method.n_models or 2
    taus = [torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    base = torch.randn(3, 4, generator=torch.Generator().manual_seed(9))
    values = {k: 0.5 for k, v in method.params.items() if v is REQUIRED}
    out = method(taus, base=base, generator=torch.Generator().manual_seed(0), values=values)
    assert out.shape == (3, 4)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    coefficients = method.weight_coefficients(n, values=values)
    if coefficients is not None:  # the streamer's one-pass form agrees with the definition
        c0, cs = coefficients
        thetas = [base + t for t in taus]
        direct = c0 * base + sum(c * th for c, th in zip(cs, thetas, strict=True)) - base
        torch.testing.assert_close(direct, out)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown merge method 'tie'; choose one of linear, .*ties"):
        get_merge_method("tie")


def test_registry_call_maps_config_names_to_keywords():
    ta = get_merge_method("task_arithmetic")
    taus = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])]
    out = ta(taus, model_values={"weight": [1, 3]}, values={"lambda": 0.5})
    assert torch.allclose(out, torch.tensor([5.0, -0.5]))
    # defaults: weight 1, λ 1, no normalisation
    assert torch.allclose(ta(taus), torch.tensor([4.0, 1.0]))


def test_registry_call_requires_t_for_slerp():
    with pytest.raises(ValueError, match="needs the parameter 't'"):
        get_merge_method("slerp")([torch.ones(2)], base=torch.ones(2))


def test_check_parameter_names_and_types():
    ties = get_merge_method("ties")
    assert check_parameter(ties, "density", [0.2, 0.8], per_model=True) is None
    assert check_parameter(ties, "int8_mask", True, per_model=False) is None
    assert "valid: density, int8_mask, weight" in check_parameter(ties, "lambda", 1.0, per_model=True)
    assert "has no parameter 'alpha'" in check_parameter(ties, "alpha", 1.0, per_model=False)
    assert "true or false" in check_parameter(ties, "normalize", 1, per_model=False)
    assert "must be a number" in check_parameter(ties, "weight", "heavy", per_model=True)
    assert "one of sum, count" in check_parameter(ties, "consensus", "vote", per_model=False)
    filtered = [{"filter": "mlp", "value": 0.3}, {"value": [0.1, 0.9]}]
    assert check_parameter(ties, "weight", filtered, per_model=True) is None


def test_evaluate_setting_scalar_gradient_filter():
    assert evaluate_setting(0.4, name="x", t=0.7) == 0.4
    assert evaluate_setting([0.0, 1.0], name="x", t=0.5) == pytest.approx(0.5)
    # three points: t = 0.25 is halfway between the first two
    assert evaluate_setting([0.0, 1.0, 0.0], name="x", t=0.25) == pytest.approx(0.5)
    assert evaluate_setting([0.0, 1.0, 0.0], name="x", t=1.0) == pytest.approx(0.0)
    cond = [{"filter": "self_attn", "value": 0.2}, {"value": 0.9}]
    assert evaluate_setting(cond, name="model.layers.0.self_attn.q_proj.weight", t=0) == 0.2
    assert evaluate_setting(cond, name="model.layers.0.mlp.up_proj.weight", t=0) == 0.9
    assert evaluate_setting([{"filter": "mlp", "value": 1.0}], name="lm_head.weight", t=1) is None
    assert evaluate_setting({"filter": "*", "value": [2.0, 4.0]}, name="a", t=0.5) == pytest.approx(3.0)


def test_position_in_the_model():
    assert position("model.layers.0.mlp.up_proj.weight", 4) == 0.0
    assert position("model.layers.2.mlp.up_proj.weight", 5) == 0.5
    assert position("model.layers.3.mlp.up_proj.weight", 4) == 1.0
    assert position("model.embed_tokens.weight", 4) == 0.0
    assert position("lm_head.weight", 4) == 1.0
    assert position("model.norm.weight", 4) == 1.0
    assert position("model.layers.0.mlp.up_proj.weight", 1) == 1.0


def test_count_layers():
    names = ["model.layers.0.a", "model.layers.5.b", "lm_head.weight"]
    assert count_layers(names) == 6
    assert count_layers(names, {"num_hidden_layers": 8}) == 8
    assert count_layers(["w", "b"]) == 0
