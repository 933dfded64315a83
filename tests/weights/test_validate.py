from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cycleqd.errors import ModelMismatchError
from cycleqd.weights import open_model, save_model, scan_model, validate_models


def _variant(src_dir: Path, out: Path, edit) -> Path:
    src = open_model(src_dir)
    tensors = {n: src[n] for n in src}
    edit(tensors)
    return save_model(tensors, out, template=src)


def test_matching_experts_pass_and_report_fingerprints(tiny_models: dict[str, Path]) -> None:
    base = open_model(tiny_models["base"])
    experts = [open_model(tiny_models["e1"]), open_model(tiny_models["e2"])]
    scans = validate_models(base, experts)
    assert set(scans) == {"base", "e1", "e2"}
    assert len({s.fingerprint for s in scans.values()}) == 3
    assert scans["base"].n_params == sum(base[n].numel() for n in base)


def test_missing_tensors_are_listed(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    gone = ["model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"]

    def drop(t):
        for n in gone:
            del t[n]

    bad = _variant(tiny_models["e1"], tmp_path / "x", drop)
    with pytest.raises(ModelMismatchError) as err:
        validate_models(open_model(tiny_models["base"]), [open_model(bad)])
    msg = str(err.value)
    assert "expert x lacks 3 tensors of the base" in msg
    for n in gone:
        assert n in msg
    assert "all experts must be fine-tuned from the same base model" in msg


def test_wrong_shape_and_extra_tensor(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    def reshape(t):
        t["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(16, 32)
        t["lora_A.weight"] = torch.zeros(2, 2)

    bad = _variant(tiny_models["e1"], tmp_path / "y", reshape)
    with pytest.raises(ModelMismatchError) as err:
        validate_models(open_model(tiny_models["base"]), [open_model(bad)])
    msg = str(err.value)
    assert "model.layers.0.self_attn.q_proj.weight (expert [16, 32], base [32, 32])" in msg
    assert "expert y has 1 tensor that the base lacks: lora_A.weight" in msg


def test_nan_is_refused_with_tensor_name(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    def poison(t):
        t["model.layers.1.self_attn.v_proj.weight"][0, 0] = float("nan")
        t["model.norm.weight"][3] = float("inf")

    bad = _variant(tiny_models["e2"], tmp_path / "z", poison)
    assert set(scan_model(open_model(bad)).nonfinite) == {
        "model.layers.1.self_attn.v_proj.weight",
        "model.norm.weight",
    }
    with pytest.raises(ModelMismatchError, match=r"expert z has 2 tensors with NaN or Inf values: .*v_proj"):
        validate_models(open_model(tiny_models["base"]), [open_model(tiny_models["e1"]), open_model(bad)])
    # check_finite=False lets it through (for users who know what they do).
    validate_models(open_model(tiny_models["base"]), [open_model(bad)], check_finite=False)


def test_architecture_mismatch(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import json
    import shutil

    other = tmp_path / "mistral"
    shutil.copytree(tiny_models["e1"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelMismatchError, match="expert mistral is a MistralForCausalLM but the base base"):
        validate_models(open_model(tiny_models["base"]), [open_model(other)])
