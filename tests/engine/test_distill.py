"""The learned seed merge (``init.distill``): groups, the exact merge, the fit, and a run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from toyrun import cli, write_toy_config

from cycleqd.engine.distill import Example, answer_loss, group_keys, learn_coefficients, merged_tensors
from cycleqd.engine.model_registry import ModelKind
from cycleqd.engine.state import RunState
from cycleqd.weights import open_model

NAMES = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.1.self_attn.q_proj.weight",
    "model.norm.weight",
]


def test_groups_by_tensor_layer_or_model() -> None:
    assert group_keys(NAMES, grouping="tensor") == NAMES
    assert group_keys(NAMES, grouping="layer") == [
        "model.embed_tokens.weight",
        "layer 0",
        "layer 0",
        "layer 1",
        "model.norm.weight",
    ]
    assert group_keys(NAMES, grouping="model") == ["model"] * 5
    with pytest.raises(ValueError, match="unknown grouping 'block'; use one of tensor, layer, model"):
        group_keys(NAMES, grouping="block")


def test_the_merge_is_base_plus_each_groups_coefficients_times_the_task_vectors() -> None:
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(2, 3, generator=gen) for n in ("a", "b", "c")}
    tvs = [{n: torch.randn(2, 3, generator=gen) for n in base} for _ in range(2)]
    groups = [0, 1, 0]  # a and c share a coefficient
    lam = torch.tensor([[0.5, -1.0], [2.0, 0.25]], requires_grad=True)
    out = merged_tensors(base, tvs, lam, groups=groups)
    assert torch.allclose(out["a"], base["a"] + 0.5 * tvs[0]["a"] + 2.0 * tvs[1]["a"])
    assert torch.allclose(out["b"], base["b"] - 1.0 * tvs[0]["b"] + 0.25 * tvs[1]["b"])
    assert torch.allclose(out["c"], base["c"] + 0.5 * tvs[0]["c"] + 2.0 * tvs[1]["c"])
    # d(Σ_n sum θ_n)/dλ_{k,g} = Σ_{n in g} sum τ_{k,n}
    sum(t.sum() for t in out.values()).backward()
    expected = torch.tensor(
        [[float(tvs[k]["a"].sum() + tvs[k]["c"].sum()), float(tvs[k]["b"].sum())] for k in range(2)]
    )
    assert torch.allclose(lam.grad, expected, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit 2 task vectors and 3 tensors"):
        merged_tensors(base, tvs, lam, groups=[0, 1, 2])


def _tiny_lm(tmp_path: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A tiny random Llama and a task vector that makes it sure of its answers (its head × 30)."""
    from transformers import AutoModelForCausalLM

    from cycleqd.evaluation.chartokenizer import tiny_char_llama

    base_dir = tiny_char_llama(tmp_path / "base", seed=0)
    base = open_model(base_dir)
    theta0 = {n: base[n].float() for n in base}
    tv = {n: torch.zeros_like(t) for n, t in theta0.items()}
    tv["lm_head.weight"] = 29.0 * theta0["lm_head.weight"]
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, theta0, tv


def test_fitting_the_coefficients_lowers_the_loss_on_the_experts_answers_deterministically(
    tmp_path: Path,
) -> None:
    model, theta0, tv = _tiny_lm(tmp_path)
    names = list(theta0)
    # The expert's own greedy answers are the targets: λ = 1 reproduces them, λ = 0 (the start) does not.
    expert = {n: theta0[n] + tv[n] for n in names}
    prompts = [[3 + i, 4 + i, 5 + i] for i in range(6)]
    examples = []
    with torch.no_grad():
        for p in prompts:
            ids = list(p)
            for _ in range(4):
                logits = torch.func.functional_call(model, expert, (torch.tensor([ids]),)).logits
                ids.append(int(logits[0, -1].argmax()))
            examples.append(Example(tuple(p), tuple(ids[len(p) :])))
    groups = list(range(len(names)))
    kwargs = dict(
        base=theta0,
        task_vectors=[tv],
        examples=[examples],
        groups=groups,
        steps=25,
        lr=0.1,
        start=0.0,
        batch_size=4,
        seed=7,
        pad_id=0,
    )
    lam, losses = learn_coefficients(model, **kwargs)
    assert lam.shape == (1, len(names))
    at_base = float(answer_loss(model, theta0, examples, pad_id=0))
    at_expert = float(answer_loss(model, expert, examples, pad_id=0))
    assert at_expert < at_base - 0.5  # the targets are the expert's: λ = 1 fits them, λ = 0 does not
    assert losses[-1] < at_base - 0.5 * (at_base - at_expert)
    head = names.index("lm_head.weight")
    assert float(lam[0, head]) > 0.5  # moved from the base towards the expert
    others = torch.cat([lam[0, :head], lam[0, head + 1 :]])
    assert torch.equal(others, torch.zeros_like(others))  # a zero task vector gets no gradient
    again, losses_again = learn_coefficients(model, **kwargs)
    assert torch.equal(lam, again)
    assert losses == losses_again
    with pytest.raises(ValueError, match=r"expert\(s\) \[0\] have no distillation examples"):
        learn_coefficients(model, **{**kwargs, "examples": [[]]})


def test_a_run_without_a_language_model_refuses_init_distill_before_any_work(tmp_path: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=3, init={"distill": {}})
    run = tmp_path / "run"
    proc = cli("run", str(cfg), "--out", str(run), "--no-progress", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "init.distill cannot run: it learns a merge from the experts' generated replies" in proc.stderr
    assert "evaluation.backend is weights; use the hf or vllm backend" in proc.stderr
    assert "set init.distill.optional: true to skip it (the offplane preset does)" in proc.stderr
    assert not (run / "checkpoint.json").exists()
    assert not (run / "config.yaml").exists()


def test_the_offplane_preset_skips_a_distillation_the_run_cannot_do_and_says_why(tmp_path: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=2, preset="offplane")
    run = tmp_path / "run"
    proc = cli("run", str(cfg), "--out", str(run), "--no-progress")
    assert "init.distill skipped (optional): it learns a merge from the experts' generated" in proc.stderr
    record = json.loads((run / "distill.json").read_text())
    assert record["settings"]["optional"] is True
    assert "evaluation.backend is weights" in record["skipped"]
    state = RunState.load(run / "checkpoint.json")
    seeds = state.registry.of_kind(ModelKind.SEED)
    assert [r.crossover["method"] for r in seeds] == ["linear"] + ["task_arithmetic"] * 3  # no distill


def test_distill_obstacles_name_the_task_or_the_memory_and_the_fix(tmp_path: Path) -> None:
    from cycleqd.engine.distill import distill_obstacle, memory_needed
    from cycleqd.evaluation.base import Task, TaskResult
    from cycleqd.evaluation.chartokenizer import tiny_char_llama

    class Silent(Task):
        def evaluate(self, backend, *, split):  # type: ignore[no-untyped-def]
            return TaskResult(self.name, split, 0.0)

    class Teaching(Silent):
        def teacher_pairs(self, backend, *, split="validation", limit=None):  # type: ignore[no-untyped-def]
            return [("Q:", "A")]

    base = open_model(tiny_char_llama(tmp_path / "base", seed=0))
    floats = sum(base[n].numel() for n in base if base[n].is_floating_point())
    need = memory_needed(base, experts=2)
    assert need == 4 * 6 * floats
    kwargs = {"backend_kind": "hf", "base": base, "experts": 2}
    assert distill_obstacle([Teaching(name="a")], available=need * 2, **kwargs) is None
    reason = distill_obstacle([Teaching(name="a"), Silent(name="b")], available=need * 2, **kwargs)
    assert reason == (
        "task b (Silent) cannot say what its expert replies (it has no teacher_pairs); "
        "give its class a teacher_pairs method"
    )
    reason = distill_obstacle([Teaching(name="a")], available=need, **kwargs)  # no room for activations
    assert reason is not None
    assert reason.endswith("GiB are free; use a device with more memory")
    assert "2 task vectors, the merge, its gradient and the model in fp32" in reason


def test_cycleqd_run_offers_the_distilled_merge_and_records_its_coefficients(tmp_path: Path) -> None:
    from cycleqd.evaluation.chartokenizer import tiny_char_llama
    from cycleqd.weights.synthetic import synthetic_expert

    base_dir = tiny_char_llama(tmp_path / "base", seed=0)
    experts = {
        t: str(synthetic_expert(base_dir, tmp_path / t, seed=s, scale=0.3)) for t, s in (("a", 1), ("b", 2))
    }
    rows = [
        {"id": f"q{i}", "prompt": f"Q:{i} A:", "answer": str(i % 3), "split": split}
        for i, split in enumerate(["validation"] * 6 + ["test"] * 2)
    ]
    (tmp_path / "em.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "seed": 0,
        "generations": 2,
        "stop_without_signal": False,
        "models": {"base": str(base_dir), "experts": experts},
        "tasks": [
            {"name": t, "kind": "exact_match", "data": "em.jsonl", "params": {"max_new_tokens": 3}}
            for t in ("a", "b")
        ],
        "evaluation": {"backend": "hf", "dtype": "float32", "batch_size": 8},
        "archive": {"bins": 4},
        "mutation": {"kind": "gaussian", "sigma": 0.05},
        "init": {"merges": [{"method": "linear"}], "distill": {"steps": 3, "grouping": "layer"}},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    cli("run", str(tmp_path / "run.yaml"), "--out", str(run), "--no-progress")
    state = RunState.load(run / "checkpoint.json")
    seed = state.registry["seed-01"]  # after the one merge of init.merges
    assert seed.kind.value == "seed"
    assert seed.crossover["method"] == "distill"
    assert seed.crossover["params"]["steps"] == 3
    assert seed.parents == ["expert-a", "expert-b"]
    assert set(seed.scores["validation"]) == {"a", "b"}
    record = json.loads((run / "distill.json").read_text())
    assert record["examples"] == [6, 6]
    assert "layer 0" in record["groups"]
    assert "model.embed_tokens.weight" in record["groups"]
    assert set(record["coefficients"]) == {"a", "b"}
    assert all(len(row) == len(record["groups"]) for row in record["coefficients"].values())
    assert record["loss"]["end"] < record["loss"]["start"]  # on all targets
    status = json.loads(cli("status", str(run), "--json").stdout)
    assert sum(status["seeds"].values()) == 2


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-head"])
def test_the_distilled_merge_is_base_plus_the_recorded_coefficients_times_the_task_vectors(
    tmp_path: Path, tied: bool
) -> None:
    from cycleqd.config import DistillConfig
    from cycleqd.engine.distill import distilled_merge
    from cycleqd.evaluation.chartokenizer import tiny_char_llama
    from cycleqd.evaluation.spec import EvaluationSpec, TaskSpec, build_backend, build_tasks
    from cycleqd.weights.synthetic import synthetic_expert

    base_dir = tiny_char_llama(tmp_path / "base", seed=0, tie_word_embeddings=tied)
    experts = [
        open_model(synthetic_expert(base_dir, tmp_path / t, seed=s, scale=0.3))
        for t, s in (("a", 1), ("b", 2))
    ]
    rows = [{"id": f"q{i}", "prompt": f"Q:{i} A:", "answer": "1", "split": "validation"} for i in range(5)]
    (tmp_path / "em.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = EvaluationSpec(backend="hf", dtype="float32", batch_size=8)
    specs = [
        TaskSpec(name=t, kind="exact_match", data="em.jsonl", params={"max_new_tokens": 3}) for t in "ab"
    ]
    tasks = build_tasks(specs, root=tmp_path, evaluation=evaluation)
    backend = build_backend(evaluation, model_dir=base_dir)
    spec = DistillConfig(steps=4, lr=0.05, start=0.3, grouping="tensor", batch_size=4, max_items=3)
    base = open_model(base_dir)
    weights, record = distilled_merge(
        base, experts, tasks=tasks, backend=backend, spec=spec, seed=1, device=torch.device("cpu")
    )
    assert record["examples"] == [3, 3]  # max_items
    floats = [n for n in base if base[n].is_floating_point()]
    # A head tied to the embeddings has no coefficient of its own (whether or not the file stores it).
    assert record["groups"] == [n for n in floats if not (tied and n == "lm_head.weight")]
    assert set(weights) == set(base)
    moved = [c for row in record["coefficients"].values() for c in row if abs(c - 0.3) > 1e-3]
    assert len(moved) > len(record["groups"])  # trained, not the start
    for name in floats:
        g = record["groups"].index("model.embed_tokens.weight" if name == "lm_head.weight" and tied else name)
        lam = [record["coefficients"][t][g] for t in "ab"]
        by_hand = base[name] + sum(c * (e[name] - base[name]) for c, e in zip(lam, experts, strict=True))
        assert weights[name].allclose(by_hand, atol=1e-5), name
