"""A tiny Llama, trained here for a few steps, evaluated through the real backend and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cycleqd.evaluation import Evaluator, build_tasks, load_eval_config
from cycleqd.evaluation.backends.hf import HFBackend
from cycleqd.evaluation.chartokenizer import tiny_char_llama
from cycleqd.weights import fingerprint_tensors, open_model

pytestmark = pytest.mark.slow

EM = [("2+3", "5"), ("4+4", "8"), ("1+6", "7"), ("3+6", "9")]
CODE_PROMPT = "Write f(x) returning x + 1."
CODE_TESTS = ["assert f(1) == 2", "assert f(10) == 11"]
CODE_ANSWER = "```python\ndef f(x):\n    return x + 1\n```"
CONFIG = """
tasks:
  - {name: arithmetic, kind: exact_match, data: em.jsonl, params: {stop: ["\\n"], max_new_tokens: 6}}
  - {name: coding, kind: python_code, data: code.jsonl, params: {max_new_tokens: 48, timeout_s: 5}}
evaluation: {batch_size: 4, dtype: float32, cache_file: cache.sqlite}
"""


def _train(base: Path, out: Path) -> Path:
    """Teach the base model the answers (prompt formats exactly as the tasks build them)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    code_prompt = (
        f"{CODE_PROMPT}\nYour code should pass these tests:\n" + "\n".join(CODE_TESTS) + "\n"
        "Write the Python function in a ```python code block."
    )
    texts = [f"Q: {q}\nA: {a}\n" for q, a in EM] + [code_prompt + CODE_ANSWER]
    seqs = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(s)] = torch.tensor(s)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(90):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    tiny_char_llama(root / "base", seed=0, hidden_size=64, intermediate_size=128, max_position_embeddings=256)
    _train(root / "base", root / "trained")
    em_rows = [{"id": q, "split": "validation", "prompt": f"Q: {q}\nA:", "answer": a} for q, a in EM]
    em_rows.append({"id": "unseen", "split": "test", "prompt": "Q: 5+2\nA:", "answer": "7"})
    (root / "em.jsonl").write_text("".join(json.dumps(r) + "\n" for r in em_rows))
    code_row = {"id": "inc", "split": "validation", "prompt": CODE_PROMPT, "tests": CODE_TESTS}
    (root / "code.jsonl").write_text(json.dumps(code_row) + "\n")
    (root / "run.yaml").write_text(CONFIG)
    return root


def test_children_share_one_resident_model(project: Path) -> None:
    specs, evaluation, root = load_eval_config(project / "run.yaml")
    tasks = build_tasks(specs, root=root, evaluation=evaluation)
    backend = HFBackend(project / "base", batch_size=4, dtype="float32")
    evaluator = Evaluator(tasks, backend)
    pointers = [p.data_ptr() for p in backend.model.parameters()]
    scores = {}
    for name in ("trained", "base", "trained"):
        source = open_model(project / name)
        results = evaluator.evaluate(source, fingerprint=fingerprint_tensors(source), split="validation")
        scores.setdefault(name, []).append({t: r.score for t, r in results.items()})
    assert scores["trained"][0] == {"arithmetic": 1.0, "coding": 1.0}
    assert scores["trained"][1] == scores["trained"][0]
    assert scores["base"][0] == {"arithmetic": 0.0, "coding": 0.0}
    assert [p.data_ptr() for p in backend.model.parameters()] == pointers


def test_cli_scores_a_model_and_its_saved_outputs_agree(project: Path) -> None:
    exe = shutil.which("cycleqd", path=str(Path(sys.executable).parent)) or "cycleqd"

    def run(*args: str) -> dict:
        r = subprocess.run([exe, "eval", *args], cwd=project, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    model = run("trained", "--config", "run.yaml", "--split", "validation", "--json", "-o", "items.jsonl")
    assert model["scores"] == {"arithmetic": 1.0, "coding": 1.0}
    assert len(model["fingerprint"]) == 32
    items = [json.loads(line) for line in (project / "items.jsonl").read_text().splitlines()]
    assert {i["output"] for i in items if i["task"] == "arithmetic"} == {" 5", " 8", " 7", " 9"}
    replayed = run("--predictions", "items.jsonl", "--config", "run.yaml", "--split", "validation", "--json")
    assert replayed["scores"] == model["scores"]
    test_split = run("trained", "--config", "run.yaml", "--split", "test", "--tasks", "arithmetic", "--json")
    assert test_split["tasks"]["arithmetic"]["items"] == 1
    # Both splits' results are now in the cache, keyed by the model's fingerprint.
    import sqlite3

    with sqlite3.connect(project / "cache.sqlite") as con:
        rows = con.execute("SELECT fingerprint, task, split FROM results ORDER BY task, split").fetchall()
    assert rows == [
        (model["fingerprint"], "arithmetic", "test"),
        (model["fingerprint"], "arithmetic", "validation"),
        (model["fingerprint"], "coding", "validation"),
    ]
