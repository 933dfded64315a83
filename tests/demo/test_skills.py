"""The demo's skills: splits, determinism, and reference answers checked by the real executors."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from cycleqd.demo.data import Mix, MixPart, MixSampler, task_record, task_specs, union_mix, write_task_data
from cycleqd.demo.skills import (
    ALPHABET,
    SKILLS,
    TEMPLATES,
    SkillSplits,
    basic_templates,
    enumerate_items,
    format_item,
    make_splits,
)
from cycleqd.evaluation.spec import EvaluationSpec, TaskSpec, build_tasks


@pytest.mark.parametrize("skill", SKILLS)
def test_splits_are_disjoint_and_cover_every_template(skill: str) -> None:
    sp = make_splits(skill, seed=0, validation=60, select=60, test=60)
    parts = (sp.train, sp.validation, sp.select, sp.test)
    ids = [[i.id for i in part] for part in parts]
    questions = [{i.question for i in part} for part in parts]
    assert len(ids[1]) == len(ids[2]) == len(ids[3]) == 60
    assert sum(len(x) for x in ids) == len(set().union(*map(set, ids)))
    for a in range(4):
        for b in range(a + 1, 4):
            assert not (questions[a] & questions[b])
    for part in (sp.validation, sp.select, sp.test):
        counts = Counter(i.template for i in part)
        assert set(counts) == {t.name for t in TEMPLATES[skill]}
        assert max(counts.values()) - min(counts.values()) <= 1  # templates taken in turn
    # Every template keeps at least a third of its items for training.
    every = Counter(i.template for i in enumerate_items(skill, seed=0))
    train = Counter(i.template for i in sp.train)
    assert all(train[t] >= every[t] // 3 for t in every)


@pytest.mark.parametrize("skill", SKILLS)
def test_the_default_recipe_splits_fit_with_the_same_template_mix(skill: str) -> None:
    sp = make_splits(skill, seed=0, validation=250, select=250, test=250)
    mixes = [Counter(i.template for i in part) for part in (sp.validation, sp.select, sp.test)]
    for template in mixes[0]:
        counts = [m[template] for m in mixes]
        # A template that runs dry mid-pass gives the earlier splits one more item; the last template
        # to run makes up for each of those.
        assert max(counts) - min(counts) <= len(TEMPLATES[skill])
    with pytest.raises(ValueError, match="keep a third of every template"):
        make_splits(skill, seed=0, validation=5000, select=250, test=250)


@pytest.mark.parametrize("skill", SKILLS)
def test_items_are_deterministic_with_the_seed(skill: str) -> None:
    a = make_splits(skill, seed=3, validation=20, test=20)
    b = make_splits(skill, seed=3, validation=20, test=20)
    c = make_splits(skill, seed=4, validation=20, test=20)
    assert a == b
    assert [i.id for i in a.validation] != [i.id for i in c.validation]
    checks = {i.id: i.check for i in enumerate_items(skill, seed=3)}
    other = {i.id: i.check for i in enumerate_items(skill, seed=4)}
    assert checks != other  # test inputs, tables, files change with the seed


def test_questions_and_answers_use_the_alphabet_and_the_base_knows_half() -> None:
    for skill in SKILLS:
        for item in enumerate_items(skill, seed=0):
            assert set(item.question + item.answer) <= set(ALPHABET)
        assert len(basic_templates(skill)) * 2 == len(TEMPLATES[skill])
    rng = random.Random(0)
    for _ in range(200):
        item = format_item(rng)
        assert set(item.question + item.answer) <= set(ALPHABET)


def test_too_large_splits_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot give 4000 evaluation items"):
        make_splits("db", seed=0, validation=2000, test=2000)
    with pytest.raises(ValueError, match="unknown skill"):
        enumerate_items("chess", seed=0)


def test_mixes_draw_only_what_they_name() -> None:
    splits = {s: make_splits(s, seed=0, validation=10, select=10, test=10) for s in SKILLS}
    basic = tuple(sorted(basic_templates("code")))
    sampler = MixSampler(Mix((MixPart("code", 1.0, basic),)), splits, random.Random(0))
    drawn = [sampler.draw() for _ in range(300)]
    assert {i.template for i in drawn} == set(basic)
    held_out = {i.question for s in splits.values() for i in s.validation + s.select + s.test}
    assert not {i.question for i in drawn} & held_out
    union = union_mix([Mix((MixPart("code", 1.0),)), Mix((MixPart("db", 3.0), MixPart("format", 1.0)))])
    assert sum(p.weight for p in union.parts) == pytest.approx(1.0)
    assert [p.weight for p in union.parts] == pytest.approx([0.5, 0.375, 0.125])
    with pytest.raises(ValueError, match="not a skill"):
        MixSampler(Mix((MixPart("chess", 1.0),)), splits, random.Random(0))


def _subset(skill: str, per_template: int) -> SkillSplits:
    sp = make_splits(skill, seed=0, validation=60, test=6)
    taken: list = []
    for template in TEMPLATES[skill]:
        taken += [i for i in sp.validation if i.template == template.name][:per_template]
    return SkillSplits(skill=skill, train=sp.train, validation=taken, select=[], test=sp.test[:1])


@pytest.mark.slow
def test_every_reference_passes_its_checker_and_wrong_answers_fail(tmp_path: Path) -> None:
    """Run the references through the real executors (memo off), and answers of other items."""
    splits = {s: _subset(s, per_template=2) for s in SKILLS}
    files = write_task_data(splits, tmp_path)
    entries = task_specs(files, splits)
    for e in entries:
        e["params"]["memoize"] = False
    tasks = build_tasks([TaskSpec(**e) for e in entries], root=tmp_path, evaluation=EvaluationSpec(workers=2))
    for task in tasks:
        task.prepare("validation")
        items = splits[task.name].validation
        right = task.score_predictions({i.id: i.answer for i in items}, split="validation")
        assert right.score == 1.0, [r.reason for r in right.items if not r.correct]
        # The answer of the next item of the same template is a plausible, wrong answer.
        shifted = {a.id: b.answer for a, b in zip(items[::2], items[1::2], strict=True)}
        wrong = task.score_predictions(shifted, split="validation")
        judged = [r for r in wrong.items if r.item_id in shifted]
        assert sum(r.correct for r in judged) <= len(judged) // 3, [(r.item_id, r.output) for r in judged]


def test_task_records_follow_the_kinds_formats() -> None:
    items = {s: enumerate_items(s, seed=0)[0] for s in SKILLS}
    assert set(task_record(items["code"], "test")) >= {"id", "split", "prompt", "tests", "reference"}
    assert set(task_record(items["db"], "test")) >= {"question", "tables", "reference"}
    assert set(task_record(items["os"], "validation")) >= {"instruction", "files", "reference"}
    with pytest.raises(ValueError, match="no evaluation task"):
        task_record(format_item(random.Random(0)), "test")
