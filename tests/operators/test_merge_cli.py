"""``cycleqd merge``: config validation before any work, and end-to-end merges of tiny Llamas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

import cycleqd.cli.cmd_merge  # noqa: F401  (registers the command)
from cycleqd.cli.app import app
from cycleqd.errors import ConfigError, ModelMismatchError
from cycleqd.merging import load_merge_config, parse_size
from cycleqd.operators.merge import merge_models
from cycleqd.weights import open_model

runner = CliRunner()


def write(tmp_path: Path, cfg: dict, name: str = "merge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def invoke(cfg_path: Path, out: Path, *extra: str):
    return runner.invoke(app, ["merge", str(cfg_path), "--out", str(out), "--no-progress", *extra])


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})  # noqa: SIM118
    return out


def ties_config(m: dict[str, Path]) -> dict:
    return {
        "merge_method": "ties",
        "base_model": str(m["base"]),
        "models": [
            {"model": str(m["base"])},
            {"model": str(m["e1"]), "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": str(m["e2"]), "parameters": {"weight": 0.4, "density": [0.3, 0.7]}},
        ],
        "parameters": {"normalize": True, "int8_mask": True},
        "dtype": "float32",
    }


# -- end to end ------------------------------------------------------------------------------------


def test_ties_merge_writes_a_loadable_model_equal_to_the_in_memory_merge(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    result = invoke(write(tmp_path, ties_config(tiny_models)), out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert "int8_mask is accepted for mergekit compatibility" in result.output

    base = open_model(tiny_models["base"])
    expected = dict(
        merge_models(
            base,
            [open_model(tiny_models["e1"]), open_model(tiny_models["e2"])],
            method="ties",
            model_parameters=[{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": [0.3, 0.7]}],
            parameters={"normalize": True},
            out_dtype=torch.float32,
        )
    )
    written = tensors(out)
    assert written.keys() == expected.keys()
    for name, t in expected.items():
        assert torch.equal(written[name], t), name
    # trimmed experts make it differ from the base everywhere but where both were trimmed away
    assert not torch.equal(
        written["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"]
    )

    model = AutoModelForCausalLM.from_pretrained(out)
    state = model.state_dict()
    for name, t in expected.items():
        assert torch.equal(state[name], t), name
    assert (out / "cycleqd_merge.yaml").is_file()


def test_linear_without_base_model_and_bf16_output(tiny_models, tmp_path):
    cfg = {
        "merge_method": "linear",
        "models": [
            {"model": str(tiny_models["e1"]), "parameters": {"weight": 3.0}},
            {"model": str(tiny_models["e2"]), "parameters": {"weight": 1.0}},
        ],
        "out_dtype": "bfloat16",
        "shard_size": "20KB",
    }
    out = tmp_path / "linear"
    result = invoke(write(tmp_path, cfg), out)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors.index.json").is_file()  # 20 KB shards
    e1, e2 = open_model(tiny_models["e1"]), open_model(tiny_models["e2"])
    for name, t in tensors(out).items():
        assert t.dtype == torch.bfloat16
        expected = (3 * e1[name].float() + e2[name].float()) / 4
        assert torch.allclose(t.float(), expected, rtol=2**-7, atol=1e-6), name


def test_mergekit_slerp_config_with_slices_and_filters(tiny_models, tmp_path):
    t_setting = [
        {"filter": "self_attn", "value": [0.0, 1.0]},
        {"filter": "mlp", "value": [1.0, 0.0]},
        {"value": 0.5},
    ]
    cfg = {
        "slices": [
            {
                "sources": [
                    {"model": str(tiny_models["base"]), "layer_range": [0, 2]},
                    {"model": str(tiny_models["e1"]), "layer_range": [0, 2]},
                ]
            }
        ],
        "merge_method": "slerp",
        "base_model": str(tiny_models["base"]),
        "parameters": {"t": t_setting},
        "dtype": "float32",
    }
    out = tmp_path / "slerp"
    result = invoke(write(tmp_path, cfg), out)
    assert result.exit_code == 0, result.output
    base = open_model(tiny_models["base"])
    expected = dict(merge_models(base, [open_model(tiny_models["e1"])], method="slerp", t=t_setting))
    written = tensors(out)
    for name, t in expected.items():
        assert torch.equal(written[name], t), name
    # t = 0 for attention in layer 0 gives the base, t = 1 in layer 1 gives the expert
    q0 = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(written[q0], base[q0], atol=1e-6)


# -- checks before any work ------------------------------------------------------------------------


def failure(tmp_path: Path, cfg: dict) -> Exception:
    out = tmp_path / "never"
    result = invoke(write(tmp_path, cfg), out)
    assert result.exit_code != 0
    assert not out.exists()
    return result.exception


def test_unknown_field_is_named_with_the_valid_ones(tiny_models, tmp_path):
    exc = failure(tmp_path, {**ties_config(tiny_models), "merge_methd": "ties"})
    assert isinstance(exc, ConfigError)
    assert "merge_methd: unknown field; valid fields: merge_method, models" in str(exc)


def test_unknown_method_lists_the_valid_ones(tiny_models, tmp_path):
    exc = failure(tmp_path, {**ties_config(tiny_models), "merge_method": "della"})
    assert "merge_method: unknown merge method 'della'; choose one of linear, task_arithmetic, ties" in str(
        exc
    )


def test_unknown_parameter_is_named_with_its_field(tiny_models, tmp_path):
    cfg = ties_config(tiny_models)
    cfg["models"][1]["parameters"] = {"weight": 0.6, "densty": 0.5}
    exc = failure(tmp_path, cfg)
    assert "models[1].parameters.densty: ties has no per-model parameter 'densty'" in str(exc)


def test_missing_model_path_is_named(tiny_models, tmp_path):
    cfg = ties_config(tiny_models)
    cfg["models"][2]["model"] = str(tmp_path / "nowhere")
    exc = failure(tmp_path, cfg)
    assert isinstance(exc, ConfigError)
    assert "models[2].model: model path" in str(exc)


def test_missing_base_model_and_wrong_slerp_count(tiny_models, tmp_path):
    cfg = ties_config(tiny_models)
    del cfg["base_model"]
    assert "base_model: required by ties" in str(failure(tmp_path, cfg))
    cfg = {**ties_config(tiny_models), "merge_method": "slerp", "parameters": {"t": 0.5}}
    cfg["models"] = [{"model": str(tiny_models["e1"])}, {"model": str(tiny_models["e2"])}]
    assert "slerp merges the base with exactly 1 other model(s), got 2" in str(failure(tmp_path, cfg))


def test_mismatched_models_are_refused_before_merging(tiny_models, tmp_path):
    from cycleqd.weights.synthetic import synthetic_llama

    other = synthetic_llama(tmp_path / "other", seed=3, hidden_size=16, intermediate_size=32)
    cfg = ties_config(tiny_models)
    cfg["models"][2]["model"] = str(other)
    exc = failure(tmp_path, cfg)
    assert isinstance(exc, ModelMismatchError)
    assert "shaped unlike the base's" in str(exc)


def test_out_dir_must_not_be_an_input(tiny_models, tmp_path):
    result = invoke(write(tmp_path, ties_config(tiny_models)), tiny_models["e1"])
    assert isinstance(result.exception, ConfigError)
    assert "lies inside it" in str(result.exception)


def test_load_merge_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_merge_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: ties\nmodels: [{model: a}]\ndtype: float8\nshard_size: lots\n")
    with pytest.raises(ConfigError) as info:
        load_merge_config(bad)
    assert "dtype: unknown dtype 'float8'" in str(info.value)
    assert "shard_size: size 'lots' is not a byte count" in str(info.value)
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size(10) == 10


def test_consume_in_background_passes_results_and_errors():
    from cycleqd.background import consume_in_background

    assert consume_in_background(iter(range(100)), sum, depth=2) == sum(range(100))

    def failing_producer():
        yield 1
        raise RuntimeError("producer broke")

    seen = []

    def consumer(items):
        try:
            for x in items:
                seen.append(x)
        except Exception as exc:
            seen.append(type(exc).__name__)
            raise

    with pytest.raises(RuntimeError, match="producer broke"):
        consume_in_background(failing_producer(), consumer, depth=2)
    assert seen == [1, "_AbortedError"]  # the writer was told, so it could clean up

    def failing_consumer(items):
        next(items)
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        consume_in_background(iter(range(10**6)), failing_consumer, depth=2)


def test_a_failed_merge_leaves_no_output(tiny_models, tmp_path, monkeypatch):
    import cycleqd.merging.run as mc

    def broken(*args, **kwargs):
        yield from []
        raise RuntimeError("boom")

    monkeypatch.setattr(mc, "merge_models", lambda *a, **k: broken())
    out = tmp_path / "out"
    result = invoke(write(tmp_path, ties_config(tiny_models)), out)
    assert isinstance(result.exception, RuntimeError)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "merge").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_run(example, tmp_path):
    toy = example.parent.parent / "toy" / "models" / "base.safetensors"
    if not toy.is_file():
        pytest.skip("the toy models of examples/toy are not there")
    result = invoke(example, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.safetensors").is_file()
