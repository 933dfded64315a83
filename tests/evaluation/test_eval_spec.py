from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

from cycleqd.errors import ConfigError
from cycleqd.evaluation import (
    EvaluationSpec,
    Evaluator,
    WeightsBackend,
    build_backend,
    build_tasks,
    load_eval_config,
)
from cycleqd.evaluation.tasks import ExactMatchTask

EM_ROWS = [
    {"id": 1, "split": "validation", "prompt": "a", "answer": "A"},
    {"id": 2, "split": "test", "prompt": "b", "answer": "B"},
]


def write_config(folder: Path, text: str) -> Path:
    path = folder / "run.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_reads_only_its_sections_and_resolves_paths(tmp_path: Path, write_jsonl) -> None:
    write_jsonl(tmp_path / "data" / "em.jsonl", EM_ROWS)
    cfg = write_config(
        tmp_path,
        """
        models: {base: whatever, experts: [a, b]}   # other layers' sections are ignored
        archive: {bins: 15}
        tasks:
          - {name: em, kind: exact_match, data: data/em.jsonl, params: {normalize: [strip, lower]}}
        evaluation: {batch_size: 4, sandbox: {timeout_s: 3}}
        """,
    )
    specs, evaluation, root = load_eval_config(cfg)
    assert root == tmp_path.resolve()
    assert evaluation.batch_size == 4
    assert evaluation.sandbox.timeout_s == 3
    (task,) = build_tasks(specs, root=root, evaluation=evaluation)
    assert isinstance(task, ExactMatchTask)
    assert [i.id for i in task.items("validation")] == ["1"]
    assert [i.id for i in task.items("test")] == ["2"]
    assert task.context.sandbox.limits.wall_s == 3
    assert len(task.signature) == 32


def test_unknown_fields_are_named(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        """
        tasks:
          - {name: em, kind: exact_match, data: x.jsonl, parms: {}}
        evaluation: {batch_size: 0, sandbox: {timeout: 3}}
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load_eval_config(cfg)
    msg = str(exc.value)
    assert "tasks[0].parms: unknown field" in msg
    assert "evaluation.batch_size: must be a number of prompts greater than 0, or auto; got 0" in msg
    assert "evaluation.sandbox.timeout: unknown field" in msg


@pytest.mark.parametrize(
    ("tasks_yaml", "expected"),
    [
        (
            "[{name: em, kind: exact_matches, data: x.jsonl}]",
            "unknown task kind 'exact_matches'; use one of agent, choice",
        ),
        ("[{name: 'bad name', kind: exact_match, data: x.jsonl}]", "may hold only letters"),
        ("[{name: em, kind: exact_match, data: {train: x.jsonl}}]", "data has split(s) train"),
        (
            "[{name: em, kind: exact_match, data: x.jsonl}, {name: em, kind: choice, data: y.jsonl}]",
            "appear more than once",
        ),
        ("[]", "tasks is empty"),
    ],
)
def test_config_errors(tmp_path: Path, tasks_yaml: str, expected: str) -> None:
    cfg = write_config(tmp_path, f"tasks: {tasks_yaml}\n")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_eval_config(cfg)


def test_missing_sections_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_eval_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="has no tasks: section"):
        load_eval_config(write_config(tmp_path, "evaluation: {}\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_eval_config(write_config(tmp_path, "tasks: [\n"))


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["{not json"], "line 1 is not valid JSON"),
        (['{"split": "validation", "prompt": "a", "answer": "b"}'], 'has no "id"'),
        (['{"id": 1, "prompt": "a", "answer": "b"}'], "has no split"),
        (['{"id": 1, "split": "train", "prompt": "a", "answer": "b"}'], "has split 'train'"),
        (
            ['{"id": 1, "split": "test", "prompt": "a", "answer": "b"}'] * 2,
            "id '1' appears twice in split test",
        ),
        (['{"id": 1, "split": "test", "prompt": "a"}'], "answer: Field required"),
    ],
)
def test_data_errors(tmp_path: Path, lines: list[str], expected: str) -> None:
    (tmp_path / "em.jsonl").write_text("\n".join(lines) + "\n")
    cfg = write_config(tmp_path, "tasks: [{name: em, kind: exact_match, data: em.jsonl}]\n")
    specs, evaluation, root = load_eval_config(cfg)
    with pytest.raises(ConfigError, match=expected):
        build_tasks(specs, root=root, evaluation=evaluation)


def test_data_by_split_and_missing_file(tmp_path: Path, write_jsonl) -> None:
    write_jsonl(tmp_path / "val.jsonl", [{"id": "v", "prompt": "a", "answer": "A"}])
    cfg = write_config(
        tmp_path, "tasks: [{name: em, kind: exact_match, data: {validation: val.jsonl, test: t.jsonl}}]\n"
    )
    specs, _evaluation, root = load_eval_config(cfg)
    with pytest.raises(ConfigError, match=r"t\.jsonl does not exist"):
        build_tasks(specs, root=root)
    write_jsonl(tmp_path / "t.jsonl", [{"id": "t", "split": "validation", "prompt": "a", "answer": "A"}])
    with pytest.raises(ConfigError, match="says split 'validation' but the file is given for 'test'"):
        build_tasks(specs, root=root)


def test_signature_follows_params_and_data(tmp_path: Path, write_jsonl) -> None:
    write_jsonl(tmp_path / "em.jsonl", EM_ROWS)
    base = "tasks: [{name: em, kind: exact_match, data: em.jsonl%s}]\n"
    sig = []
    for extra in ("", "", ", params: {match: contains}"):
        specs, ev, root = load_eval_config(write_config(tmp_path, base % extra))
        sig.append(build_tasks(specs, root=root, evaluation=ev)[0].signature)
    write_jsonl(tmp_path / "em.jsonl", [*EM_ROWS, {"id": 3, "split": "test", "prompt": "c", "answer": "C"}])
    specs, ev, root = load_eval_config(write_config(tmp_path, base % ""))
    sig.append(build_tasks(specs, root=root, evaluation=ev)[0].signature)
    assert sig[0] == sig[1]
    assert len({sig[0], sig[2], sig[3]}) == 3


CUSTOM = '''
from cycleqd.evaluation.base import ItemResult, Task, TaskResult


class NormTask(Task):
    """Scores the weights themselves: the fraction of tensors whose mean magnitude is below a bound."""

    needs_text = False

    def __init__(self, *, name, bound=1.0, data=None):
        super().__init__(name=name)
        self.bound = bound
        self.data = data

    def evaluate(self, backend, *, split):
        w = backend.weights
        ok = [n for n, t in w.items() if float(t.float().abs().mean()) < self.bound]
        items = [ItemResult(item_id=n, correct=n in ok, score=float(n in ok)) for n in sorted(w)]
        return TaskResult(task=self.name, split=split, score=len(ok) / len(w), items=items)


class TextTask(Task):
    def evaluate(self, backend, *, split):
        return TaskResult(task=self.name, split=split, score=1.0)


NOT_A_TASK = 3
'''


def test_custom_tasks_from_the_config_folder(tmp_path: Path, write_jsonl) -> None:
    (tmp_path / "spec_tasks.py").write_text(CUSTOM)
    write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "split": "test", "x": 1}])
    cfg = write_config(
        tmp_path,
        """
        tasks:
          - {name: norm, kind: "spec_tasks:NormTask", data: d.jsonl, params: {bound: 0.5}}
        evaluation: {backend: weights}
        """,
    )
    specs, evaluation, root = load_eval_config(cfg)
    (task,) = build_tasks(specs, root=root, evaluation=evaluation)
    assert task.bound == 0.5
    assert task.data["test"][0]["id"] == "1"
    backend = build_backend(evaluation, model_dir=None)
    assert isinstance(backend, WeightsBackend)
    evaluator = Evaluator([task], backend)
    weights = {"small": torch.full((2, 2), 0.1), "big": torch.full((3,), 2.0)}
    result = evaluator.evaluate(weights, fingerprint="fp", split="test")["norm"]
    assert result.score == 0.5
    assert [(i.item_id, i.correct) for i in result.items] == [("big", False), ("small", True)]


def test_custom_task_errors(tmp_path: Path) -> None:
    (tmp_path / "spec_tasks.py").write_text(CUSTOM)
    for kind, params, expected in [
        ("spec_tasks:Missing", "{}", "has no attribute 'Missing'"),
        ("nomodule:X", "{}", "cannot import module 'nomodule'"),
        ("spec_tasks:NOT_A_TASK", "{}", "is not a subclass of cycleqd.evaluation.base.Task"),
        ("spec_tasks:NormTask", "{colour: red}", "cannot build spec_tasks:NormTask with params"),
    ]:
        cfg = write_config(tmp_path, f'tasks: [{{name: t, kind: "{kind}", params: {params}}}]\n')
        specs, evaluation, root = load_eval_config(cfg)
        with pytest.raises(ConfigError, match=expected):
            build_tasks(specs, root=root, evaluation=evaluation)


def test_text_tasks_need_a_text_backend(tmp_path: Path) -> None:
    (tmp_path / "spec_tasks.py").write_text(CUSTOM)
    cfg = write_config(
        tmp_path, 'tasks: [{name: t, kind: "spec_tasks:TextTask"}]\nevaluation: {backend: weights}\n'
    )
    specs, evaluation, root = load_eval_config(cfg)
    tasks = build_tasks(specs, root=root, evaluation=evaluation)
    with pytest.raises(
        ConfigError, match=r"need a language-model backend, but evaluation\.backend is weights"
    ):
        Evaluator(tasks, build_backend(evaluation, model_dir=None))


def test_backend_choices(tmp_path) -> None:
    from cycleqd.evaluation.backends.vllm import vllm_unavailable_reason

    with pytest.raises(ConfigError, match="the vllm backend needs a model folder"):
        build_backend(EvaluationSpec(backend="vllm"), model_dir=None)
    reason = vllm_unavailable_reason()
    if reason is not None:  # a CPU machine: the error says why and what to use instead
        with pytest.raises(ConfigError, match=r"evaluation\.backend is vllm but .*; use backend: hf"):
            build_backend(EvaluationSpec(backend="vllm"), model_dir=tmp_path)
    with pytest.raises(ConfigError, match="needs a model folder"):
        build_backend(EvaluationSpec(), model_dir=None)
    with pytest.raises(ValueError, match="unknown dtype"):
        EvaluationSpec(dtype="float8")
    with pytest.raises(ValueError, match="unknown device"):
        EvaluationSpec(device="tpu")


def test_params_cannot_override_the_entry(tmp_path: Path, write_jsonl) -> None:
    write_jsonl(tmp_path / "em.jsonl", EM_ROWS)
    cfg = write_config(
        tmp_path, "tasks: [{name: em, kind: exact_match, data: em.jsonl, params: {name: x}}]\n"
    )
    specs, evaluation, root = load_eval_config(cfg)
    with pytest.raises(ConfigError, match="params may not set name"):
        build_tasks(specs, root=root, evaluation=evaluation)
