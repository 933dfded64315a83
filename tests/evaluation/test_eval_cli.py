"""``cycleqd eval`` through the real console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cycleqd.cli import main

CYCLEQD = shutil.which("cycleqd", path=str(Path(sys.executable).parent)) or "cycleqd"

PEOPLE = {"people": {"columns": ["name", "age"], "rows": [["ann", 31], ["bob", 25]]}}
DATA = {
    "em": [{"id": 1, "prompt": "2+2=", "answer": "4"}, {"id": 2, "prompt": "3+3=", "answer": "6"}],
    "code": [{"id": "inc", "prompt": "f(x) = x + 1", "tests": ["assert f(1) == 2"]}],
    "db": [{"id": "q", "question": "Names?", "tables": PEOPLE, "reference": "SELECT name FROM people"}],
    "os": [
        {"id": "s", "instruction": "Count files.", "files": {"a": "", "b": ""}, "reference": "ls | wc -l"}
    ],
    "agent": [
        {
            "id": "a",
            "question": "Oldest?",
            "tables": PEOPLE,
            "reference": "SELECT name FROM people ORDER BY age DESC LIMIT 1",
        }
    ],
    "mc": [{"id": "m", "prompt": "Sky?", "choices": ["blue", "red"], "answer": 0}],
}
KINDS = {
    "em": "exact_match",
    "code": "python_code",
    "db": "sql",
    "os": "shell",
    "agent": "agent",
    "mc": "choice",
}
PREDICTIONS = [
    {"task": "em", "id": "1", "output": "4"},
    {"task": "em", "id": "2", "output": "7"},
    {
        "task": "code",
        "id": "inc",
        "output": "```python\ndef f(x):\n    print('hello')\n    return x + 1\n```",
    },
    {"task": "db", "id": "q", "output": "SELECT name FROM people WHERE age > 30"},
    {"task": "os", "id": "s", "output": "ls | wc -l"},
    {
        "task": "agent",
        "id": "a",
        "output": [
            "Action: Operation\n```sql\nSELECT * FROM people\n```",
            "Action: Answer\nFinal Answer: ['bob']",
        ],
    },
    {"task": "mc", "id": "m", "output": "blue"},
]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, in a separate process."""
    return subprocess.run([CYCLEQD, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def run_here(*args: str, cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """The console script's entry point, in this process (faster): (exit status, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    tasks = []
    for name, rows in DATA.items():
        (root / "data").mkdir(exist_ok=True)
        (root / "data" / f"{name}.jsonl").write_text(
            "".join(json.dumps({**r, "split": "test"}) + "\n" for r in rows)
        )
        params = {"agent": "{env: sql, max_rounds: 3}"}.get(name, "{}")
        tasks.append(f"  - {{name: {name}, kind: {KINDS[name]}, data: data/{name}.jsonl, params: {params}}}")
    (root / "run.yaml").write_text(
        "tasks:\n" + "\n".join(tasks) + "\nevaluation: {sandbox: {timeout_s: 30, cpu_s: 2}}\n"
    )
    (root / "preds.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PREDICTIONS))
    return root


def test_scores_saved_predictions_of_every_kind(project: Path, capsys, monkeypatch) -> None:
    args = ("eval", "--predictions", "preds.jsonl", "--config", "run.yaml", "--json", "-o", "items.jsonl")
    code, out, err = run_here(*args, cwd=project, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["scores"] == {"em": 0.5, "code": 1.0, "db": 0.0, "os": 1.0, "agent": 0.0, "mc": 1.0}
    assert summary["tasks"]["em"] == {"score": 0.5, "items": 2, "correct": 1}
    items = [json.loads(line) for line in (project / "items.jsonl").read_text().splitlines()]
    agent = next(i for i in items if i["task"] == "agent")
    assert agent["output"] == PREDICTIONS[5]["output"]  # the turns: re-scorable as they are
    assert agent["reason"] == "final answer differs: expected ['ann'], got ['bob']"
    db = next(i for i in items if i["task"] == "db")
    assert db["reason"] == "result differs: expected 2 rows [('ann',), ('bob',)], got 1 row [('ann',)]"
    # What each check saw comes along: the program and its output.
    code = next(i for i in items if i["task"] == "code")
    assert code["detail"]["code"] == "def f(x):\n    print('hello')\n    return x + 1"
    assert code["detail"]["stdout"] == "hello"
    shell = next(i for i in items if i["task"] == "os")
    assert shell["detail"]["stdout"] == "2"
    assert shell["detail"]["exit_status"] == 0


@pytest.mark.slow
def test_console_script_scores_and_rescores(project: Path) -> None:
    r = run(
        "eval",
        "--predictions",
        "preds.jsonl",
        "--config",
        "run.yaml",
        "--json",
        "-o",
        "again.jsonl",
        cwd=project,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["scores"] == {"em": 0.5, "code": 1.0, "db": 0.0, "os": 1.0, "agent": 0.0, "mc": 1.0}
    assert "netns" in summary["sandbox_isolation"] or sys.platform != "linux"
    # The per-item file scores again to the same result.
    again = run("eval", "--predictions", "again.jsonl", "--config", "run.yaml", "--json", cwd=project)
    assert json.loads(again.stdout)["scores"] == summary["scores"]


def test_a_user_error_is_one_line_without_traceback(project: Path) -> None:
    r = run("eval", "--predictions", "preds.jsonl", "--config", "run.yaml", "--tasks", "em,zz", cwd=project)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: unknown task(s) zz; the config's tasks are em, code, db, os, agent, mc"


def test_table_output_and_task_selection(project: Path, capsys, monkeypatch) -> None:
    code, out, _ = run_here(
        "eval",
        "--predictions",
        "preds.jsonl",
        "--config",
        "run.yaml",
        "--tasks",
        "em,mc",
        cwd=project,
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    assert code == 0
    rows = [line for line in out.splitlines() if "│" in line]
    assert any("em" in r and "0.5000" in r and "1/2" in r for r in rows)
    assert any("mc" in r and "1.0000" in r for r in rows)
    assert not any(" db " in r or " code " in r for r in rows)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--config", "run.yaml"), "give either a MODEL folder or --predictions FILE"),
        (("--predictions", "preds.jsonl", "--config", "nope.yaml"), "config file nope.yaml does not exist"),
        (
            ("--predictions", "preds.jsonl", "--config", "run.yaml", "--split", "validation"),
            "no items in split validation",
        ),
        (
            ("--predictions", "bad.jsonl", "--config", "run.yaml"),
            "name item(s) 9 that are not in its test split",
        ),
        (("missing-model", "--config", "run.yaml"), "missing-model does not exist"),
        (("--predictions", "preds.jsonl", "--config", "bad.yaml"), "tasks[0].param: unknown field"),
    ],
)
def test_user_errors(project: Path, args: tuple[str, ...], expected: str, capsys, monkeypatch) -> None:
    (project / "bad.jsonl").write_text(json.dumps({"task": "em", "id": 9, "output": "x"}) + "\n")
    (project / "bad.yaml").write_text(
        "tasks: [{name: em, kind: exact_match, data: data/em.jsonl, param: {}}]\n"
    )
    code, _, err = run_here("eval", *args, cwd=project, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2
    assert expected in " ".join(err.split()), err


CUSTOM = """
from cycleqd.evaluation.base import Task, TaskResult


class SmallWeights(Task):
    needs_text = False

    def evaluate(self, backend, *, split):
        w = backend.weights
        share = sum(1 for t in w.values() if float(t.float().abs().max()) < 1.0) / len(w)
        return TaskResult(task=self.name, split=split, score=share)
"""


def test_weights_backend_with_a_custom_task(tmp_path: Path, capsys, monkeypatch) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "model").mkdir()
    tensors = {f"layer{i}.weight": torch.full((4, 4), 0.01 * i) for i in range(9)}
    tensors.update({f"norm{i}.weight": torch.ones(4) for i in range(3)})
    save_file(tensors, str(tmp_path / "model" / "model.safetensors"))
    (tmp_path / "cli_tasks.py").write_text(CUSTOM)
    (tmp_path / "run.yaml").write_text(
        textwrap.dedent(
            """
            tasks: [{name: small, kind: "cli_tasks:SmallWeights"}]
            evaluation: {backend: weights}
            """
        )
    )
    args = ("eval", "model", "--config", "run.yaml", "--json", "--cache", "cache.sqlite")
    code, out, err = run_here(*args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    # The norms are ones (not < 1), the matrices are small: 3 of the 12 tensors are norms.
    assert summary["scores"]["small"] == pytest.approx(9 / 12)
    assert len(summary["fingerprint"]) == 32
    assert (tmp_path / "cache.sqlite").exists()
