from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from cycleqd.errors import ModelLoadError
from cycleqd.weights import fingerprint_tensors, open_model, save_model
from cycleqd.weights.synthetic import synthetic_llama


def _logits(folder: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([[1, 5, 9, 23, 42, 7]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_sharded_round_trip_gives_same_logits(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "orig")
    ids = torch.tensor([[1, 5, 9, 23, 42, 7]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits

    src = open_model(tmp_path / "orig")
    save_model(src, tmp_path / "copy", template=src, max_shard_bytes=30_000)
    files = sorted(p.name for p in (tmp_path / "copy").iterdir())
    assert "model.safetensors.index.json" in files
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 2
    assert "config.json" in files

    lazy = open_model(tmp_path / "copy")
    assert list(lazy) == list(src)
    assert torch.equal(_logits(tmp_path / "copy"), expected)


def test_lazy_source_reads_headers_without_data(tiny_models: dict[str, Path]) -> None:
    src = open_model(tiny_models["base"])
    assert src.architecture == "LlamaForCausalLM"
    name = "model.layers.0.mlp.up_proj.weight"
    assert src.shape(name) == (64, 32)
    assert src.dtype(name) == torch.float32
    assert src.numel(name) == 64 * 32
    assert src._handles  # headers were read
    t = src[name]
    assert t.shape == (64, 32)
    with pytest.raises(KeyError, match="no tensor named 'nope'"):
        src["nope"]


def test_sharded_and_single_file_sources_agree(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    sharded = open_model(tiny_models["base"])
    assert (tiny_models["base"] / "model.safetensors.index.json").is_file()
    single = save_model(sharded, tmp_path / "single", template=sharded)
    assert (single / "model.safetensors").is_file()
    assert not (single / "model.safetensors.index.json").exists()
    one = open_model(single)
    assert fingerprint_tensors(one) == fingerprint_tensors(sharded)


def test_bf16_storage_and_config_dtype(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    src = open_model(tiny_models["base"])
    out = save_model(src, tmp_path / "bf16", template=src, dtype="bf16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    loaded = open_model(out)
    name = "model.embed_tokens.weight"
    assert loaded.dtype(name) == torch.bfloat16
    assert torch.equal(loaded[name], src[name].to(torch.bfloat16))


def test_save_streams_generator_and_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "m"
    save_model({"a": torch.ones(3)}, out)
    before = open_model(out)["a"]

    def broken():
        yield "a", torch.zeros(3)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_model(broken(), out)
    # The old folder is intact and no temporary folder is left behind.
    assert torch.equal(open_model(out)["a"], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_tied_weights_are_saved(tmp_path: Path) -> None:
    shared = torch.randn(4, 4)
    save_model({"embed.weight": shared, "lm_head.weight": shared}, tmp_path / "tied")
    src = open_model(tmp_path / "tied")
    assert torch.equal(src["embed.weight"], src["lm_head.weight"])


def test_torch_state_dict_and_single_safetensors_file(tmp_path: Path) -> None:
    sd = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.randn(3)}
    torch.save(sd, tmp_path / "model.pt")
    save_file(sd, str(tmp_path / "model.safetensors"))
    for path in (tmp_path / "model.pt", tmp_path / "model.safetensors"):
        src = open_model(path)
        assert sorted(src) == ["layer.bias", "layer.weight"]
        assert torch.equal(src["layer.weight"], sd["layer.weight"])


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no weights"):
        open_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="does not exist"):
        open_model(tmp_path / "nowhere")
    synthetic_llama(tmp_path / "m", max_shard_bytes=40_000)
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=r"names 1 shard\(s\) that are not in"):
        open_model(tmp_path / "m")


def test_unreachable_hub_id_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not be downloaded from the Hugging Face hub"):
        open_model("hf:no-such-org/no-such-model")


def test_a_missing_relative_path_is_missing_not_a_hub_id(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # ``experts/code`` has the shape of a hub id; without the hf: prefix it is a path, so it is
    # reported as missing at once and nothing is asked of the network.
    monkeypatch.chdir(tmp_path)
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked for a local path")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ModelLoadError, match=r"experts/code does not exist; .* is written hf:ORG/NAME"):
        open_model("experts/code")
    with pytest.raises(ModelLoadError, match="hf:a/b/c is not a Hugging Face Hub id"):
        open_model("hf:a/b/c")


def test_fingerprint_depends_on_bytes_names_and_dtype() -> None:
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.zeros(2, 2)}
    assert fingerprint_tensors(a) == fingerprint_tensors(dict(reversed(list(a.items()))))
    assert fingerprint_tensors(a) != fingerprint_tensors({**a, "x": torch.tensor([1.0, 2.0000002])})
    assert fingerprint_tensors(a) != fingerprint_tensors({"z": a["x"], "y": a["y"]})
    assert fingerprint_tensors(a) != fingerprint_tensors({**a, "x": a["x"].double()})
    bf = {"x": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    assert len(fingerprint_tensors(bf)) == 32
