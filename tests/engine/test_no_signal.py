"""A run whose experts all score zero stops before evolving, with a sample of what they wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from toyrun import cli

from cycleqd.engine.expert_signal import NoSignalError, check_signal
from cycleqd.evaluation.base import ItemResult, TaskResult


def _result(task: str, score: float, outputs: list[str]) -> TaskResult:
    items = [
        ItemResult(f"{task}{i}", correct=False, score=0.0, output=o, reason=f"expected 'x{i}'")
        for i, o in enumerate(outputs)
    ]
    return TaskResult(task, "validation", score, items)


def test_some_signal_anywhere_lets_the_run_go_on() -> None:
    results = {
        "a": {"a": _result("a", 0.0, ["?"]), "b": _result("b", 0.0, ["?"])},
        "b": {"a": _result("a", 0.01, ["?"]), "b": _result("b", 0.0, ["?"])},
    }
    check_signal(results)  # one expert scores above zero on one task: nothing raised


def test_all_zero_is_refused_with_each_experts_own_outputs() -> None:
    long = "y" * 500
    results = {
        "a": {"a": _result("a", 0.0, ["aa", "ab", "ac", "ad"]), "b": _result("b", 0.0, ["NOT SHOWN"])},
        "b": {"a": _result("a", 0.0, ["NOT SHOWN"]), "b": _result("b", 0.0, [long])},
    }
    with pytest.raises(NoSignalError) as info:
        check_signal(results)
    text = str(info.value)
    assert "every expert scores 0 on every task (validation split)" in text
    assert "expert a, item a0: wrote 'aa'; expected 'x0'" in text
    assert "item a2" in text
    assert "item a3" not in text
    assert "NOT SHOWN" not in text  # an expert's outputs on the other tasks are not the sample
    assert "y" * 120 + "…" in text
    assert "y" * 121 not in text
    assert "chat_template" in text
    assert "cycleqd eval" in text


def test_cycleqd_run_stops_before_evolving_when_the_experts_never_answer(tmp_path: Path) -> None:
    from cycleqd.evaluation.chartokenizer import tiny_char_llama

    folders = {n: tiny_char_llama(tmp_path / n, seed=s) for n, s in (("base", 0), ("a", 1), ("b", 2))}
    # Answers no random model writes: every expert scores 0 on both tasks.
    rows = [
        {"id": f"q{i}", "prompt": f"Q:{i} A:", "answer": "qwertyuiopasdf", "split": split}
        for i, split in enumerate(["validation"] * 4 + ["test"] * 2)
    ]
    (tmp_path / "em.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "seed": 0,
        "generations": 50,
        "models": {"base": str(folders["base"]), "experts": {"a": str(folders["a"]), "b": str(folders["b"])}},
        "tasks": [
            {"name": t, "kind": "exact_match", "data": "em.jsonl", "params": {"max_new_tokens": 6}}
            for t in ("a", "b")
        ],
        "evaluation": {"backend": "hf", "dtype": "float32", "batch_size": 8},
        "archive": {"bins": 4},
        "mutation": {"kind": "gaussian", "sigma": 0.05},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = cli("run", str(tmp_path / "run.yaml"), "--out", str(run), "--no-progress", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "every expert scores 0 on every task" in proc.stderr
    assert "expert a, item q0: wrote" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run / "checkpoint.json").exists()
    assert not (run / "metrics.jsonl").exists()  # no child was made
